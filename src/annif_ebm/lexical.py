"""Stage 5, one feature family: where a candidate's labels occur word for word.

Embeddings find labels by meaning; a label that a text states literally is
strong evidence of its own. Labels and chunks are cut into words (lowercased,
stemmed with nltk's Snowball stemmer where it has the project's language); a
label occurs in a chunk where its words stand there in a row.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import polars as pl
from nltk.stem.snowball import SnowballStemmer

from .chunking import PUNKT_LANGUAGES

_WORD = re.compile(r"\w+")
MAX_LABEL_WORDS = 8  # longer labels are not looked for in the text

# ISO 639-1 -> nltk's name of the languages its Snowball stemmer has: those
# of the Punkt models, and three that Punkt lacks
_SNOWBALL = {
    code: name
    for code, name in {**PUNKT_LANGUAGES, "ar": "arabic", "hu": "hungarian",
                       "ro": "romanian"}.items()
    if name in SnowballStemmer.languages
}

LEXICAL_FEATURES = (
    "lexical_share",  # share of the document's chunks in which a label of the concept occurs
    "lexical_pref",  # 1 where a prefLabel occurs, 0 where only an altLabel or none
    "lexical_words",  # words of the longest label that occurs (0: none)
)


class Lexicon:
    """The labels of a store as word sequences, to look them up in texts."""

    def __init__(self, labels: list[str], concept_ids: np.ndarray, is_pref: np.ndarray,
                 language: str) -> None:
        snowball = _SNOWBALL.get(language.lower().split("-")[0])
        stemmer = SnowballStemmer(snowball) if snowball else None
        self._stem = functools.lru_cache(maxsize=200_000)(
            stemmer.stem if stemmer else (lambda word: word))
        # phrase ("w1 w2") -> its labels; first word -> lengths of its phrases
        by_phrase: dict[str, list[int]] = {}
        lengths: dict[str, set[int]] = {}
        self.label_words = np.zeros(len(labels), dtype=np.float32)
        for label_id, text in enumerate(labels):
            words = self.words(text)
            if not 0 < len(words) <= MAX_LABEL_WORDS:
                continue
            by_phrase.setdefault(" ".join(words), []).append(label_id)
            lengths.setdefault(words[0], set()).add(len(words))
            self.label_words[label_id] = len(words)
        self._labels = {phrase: tuple(ids) for phrase, ids in by_phrase.items()}
        self._lengths = {word: tuple(sorted(n)) for word, n in lengths.items()}
        self.concept_ids = np.asarray(concept_ids, dtype=np.int32)
        self.is_pref = np.asarray(is_pref, dtype=bool)

    @classmethod
    def of_store(cls, store, language: str) -> Lexicon:
        """The labels of a :class:`~annif_ebm.store.LabelStore`."""
        return cls(store.all_label_texts(), store.concept_ids, store.is_pref, language)

    def words(self, text: str) -> list[str]:
        return [self._stem(word) for word in _WORD.findall(text.lower())]

    def occurrences(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(text index, label id) of every label occurring in ``texts``."""
        found_text: list[int] = []
        found_label: list[int] = []
        for index, text in enumerate(texts):
            words = self.words(text)
            for i, word in enumerate(words):
                for n in self._lengths.get(word, ()):
                    if i + n > len(words):
                        break
                    ids = self._labels.get(" ".join(words[i:i + n]))
                    if ids is not None:
                        found_text.extend([index] * len(ids))
                        found_label.extend(ids)
        return np.array(found_text, dtype=np.int64), np.array(found_label, dtype=np.int32)


def lexical_features(candidates: pl.DataFrame, lexicon: Lexicon, chunks: list[str],
                     doc: np.ndarray, n_chunks: np.ndarray) -> pl.DataFrame:
    """:data:`LEXICAL_FEATURES` joined onto the candidates (doc, concept_id):
    chunk ``i``, of document ``doc[i]``, has the text ``chunks[i]``; a
    candidate none of whose labels occurs has 0 for each."""
    chunk, label = lexicon.occurrences(chunks)
    found = (
        pl.DataFrame({
            "doc": pl.Series(doc[chunk], dtype=pl.UInt32),
            "chunk": pl.Series(chunk, dtype=pl.Int64),
            "concept_id": pl.Series(lexicon.concept_ids[label], dtype=pl.Int32),
            "is_pref": pl.Series(lexicon.is_pref[label], dtype=pl.Boolean),
            "words": pl.Series(lexicon.label_words[label], dtype=pl.Float32),
        })
        .group_by("doc", "concept_id")
        .agg(
            chunks=pl.col("chunk").n_unique(),
            lexical_pref=pl.col("is_pref").any().cast(pl.Float32),
            lexical_words=pl.col("words").max(),
        )
    )
    per_doc = np.maximum(n_chunks, 1).astype(np.float32)
    found = found.select(
        "doc", "concept_id",
        lexical_share=pl.Series(found["chunks"].to_numpy() / per_doc[found["doc"].to_numpy()],
                                dtype=pl.Float32),
        lexical_pref="lexical_pref", lexical_words="lexical_words")
    return candidates.drop(LEXICAL_FEATURES, strict=False).join(
        found, on=["doc", "concept_id"], how="left", maintain_order="left").with_columns(
        pl.col(name).fill_null(0.0) for name in LEXICAL_FEATURES)
