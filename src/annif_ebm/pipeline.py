"""Chunk -> embed -> search -> features, for one batch of texts.

The one place where the stages meet; the backend uses it for training and
suggesting alike. Training embeds through the embedding cache, so it runs the
stages separately: :meth:`CandidateGenerator.chunk`, then
:meth:`CandidateGenerator.candidates_from_vectors`. Time spent per stage is
accumulated in ``stage_seconds``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time

import numpy as np
import polars as pl

from .chunking import Chunker
from .embedding import Embedder
from .features import (candidate_features, finish_features, hierarchy_features,
                       hits_frame, merge_candidates)
from .knn import pool_documents
from .params import EbmParams
from .store import LabelStore, search_precision


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


class CandidateGenerator:
    def __init__(self, language: str, embedder: Embedder | None, store: LabelStore,
                 params: EbmParams) -> None:
        self.chunker = Chunker(language, params.max_chunk_length, params.max_chunks)
        self.embedder = embedder
        # where the label search runs: the embedder's (first) device
        self.device = embedder.devices[0] if embedder is not None else "cpu"
        self.store = store
        self.params = params
        self.stage_seconds: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        """Time a block as pipeline stage ``name``."""
        start = time.perf_counter()
        yield
        self.stage_seconds[name] += time.perf_counter() - start

    def drop_embedder(self) -> None:
        """Let the embedding model go: training needs only the stored vectors
        once its chunks are embedded (candidates_from_vectors)."""
        self.embedder = None

    def chunk(self, texts: list[str]) -> ChunkedTexts:
        with self.stage("chunk"):
            return ChunkedTexts.from_lists([self.chunker.chunk(text) for text in texts])

    def candidates(self, texts: list[str]) -> pl.DataFrame:
        """Candidate concepts with features; ``doc`` is the index into ``texts``."""
        chunked = self.chunk(texts)
        with self.stage("embed"):
            vectors = self.embedder.encode_queries(chunked.chunks)
        return self.candidates_from_vectors(chunked.doc, chunked.position,
                                            chunked.n_chunks, vectors)

    def candidates_from_vectors(self, doc: np.ndarray, position: np.ndarray,
                                n_chunks: np.ndarray, vectors: np.ndarray,
                                own_docs: np.ndarray | None = None) -> pl.DataFrame:
        """Candidates with all features for embedded chunks (see
        :class:`ChunkedTexts`). ``own_docs``: while making the ranker's
        training data, each text's index among the stored training documents,
        left out of its own kNN neighbours and prior."""
        p = self.params
        disabled = p.disabled_feature_families()
        candidates = self._label_matches(doc, position, n_chunks, vectors)
        uses_training = not {"knn", "prior"} <= set(disabled)
        training = self.store.training_documents() if uses_training else None
        if training is not None and "knn" not in disabled:
            with self.stage("knn"):
                pooled = pool_documents(doc, vectors, len(n_chunks))
                knn = training.candidates(pooled, p.knn_neighbors, p.knn_candidates, own_docs)
                candidates = merge_candidates(candidates, knn, n_chunks)
        with self.stage("features"):
            if training is not None and "prior" not in disabled:
                own = None if own_docs is None else own_docs[candidates["doc"].to_numpy()]
                prior = training.prior(candidates["concept_id"].to_numpy(), own)
                candidates = candidates.with_columns(prior=pl.Series(prior, dtype=pl.Float32))
            if len(self.store.relations) and "hierarchy" not in disabled:
                candidates = hierarchy_features(candidates, self.store.relations.frame())
            return finish_features(candidates, disabled)

    def _label_matches(self, doc: np.ndarray, position: np.ndarray,
                       n_chunks: np.ndarray, vectors: np.ndarray) -> pl.DataFrame:
        """Candidates from the nearest labels of each chunk."""
        p = self.params
        with self.stage("search"):
            query, label, score = self.store.search(
                vectors, p.candidates_per_chunk, p.search, device=self.device,
                ef_search=p.ef_search,
                precision=search_precision(p.search_precision, self.device),
            )
            rank = np.arange(len(query)) - np.searchsorted(query, query)
        with self.stage("features"):
            hits = hits_frame(
                doc=doc[query],
                chunk=position[query].astype(np.uint32),
                label_id=label,
                concept_id=self.store.concept_ids[label],
                is_pref=self.store.is_pref[label],
                label_tokens=self.store.label_tokens[label],
                concept_labels=self.store.concept_labels[label],
                score=score,
                rank=rank.astype(np.uint16),
            )
            return candidate_features(hits, n_chunks, p.candidates_per_doc)
