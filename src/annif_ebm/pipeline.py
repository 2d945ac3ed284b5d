"""Chunk -> embed -> search -> features, for one batch of texts.

The one place where the stages meet; the backend uses it for training and
suggesting alike. Time spent per stage is accumulated in ``stage_seconds``.
"""

from __future__ import annotations

import collections
import contextlib
import time

import numpy as np
import polars as pl

from .chunking import Chunker
from .embedding import Embedder
from .features import candidate_features, hits_frame
from .params import EbmParams
from .store import LabelStore


class CandidateGenerator:
    def __init__(self, language: str, embedder: Embedder, store: LabelStore,
                 params: EbmParams) -> None:
        self.chunker = Chunker(language, params.max_chunk_length, params.max_chunks)
        self.embedder = embedder
        self.store = store
        self.params = params
        self.stage_seconds: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        """Time a block as pipeline stage ``name``."""
        start = time.perf_counter()
        yield
        self.stage_seconds[name] += time.perf_counter() - start

    def candidates(self, texts: list[str]) -> pl.DataFrame:
        """Candidate concepts with features; ``doc`` is the index into ``texts``."""
        p = self.params
        with self.stage("chunk"):
            chunk_lists = [self.chunker.chunk(text) for text in texts]
            n_chunks = np.array([len(chunks) for chunks in chunk_lists], dtype=np.int64)
            chunks = [chunk for chunk_list in chunk_lists for chunk in chunk_list]
            doc_of_chunk = np.repeat(np.arange(len(texts), dtype=np.uint32), n_chunks)
            starts = np.cumsum(n_chunks) - n_chunks
            position = np.arange(len(chunks)) - np.repeat(starts, n_chunks)
        with self.stage("embed"):
            vectors = self.embedder.encode_queries(chunks)
        with self.stage("search"):
            query, label, score = self.store.search(
                vectors, p.candidates_per_chunk, p.search,
                device=self.embedder.devices[0], ef_search=p.ef_search,
            )
            rank = np.arange(len(query)) - np.searchsorted(query, query)
        with self.stage("features"):
            hits = hits_frame(
                doc=doc_of_chunk[query],
                chunk=position[query].astype(np.uint32),
                label_id=label,
                concept_id=self.store.concept_ids[label],
                is_pref=self.store.is_pref[label],
                score=score,
                rank=rank.astype(np.uint16),
            )
            return candidate_features(hits, n_chunks, p.candidates_per_doc)
