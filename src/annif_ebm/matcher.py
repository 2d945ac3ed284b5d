"""Stages 4-5: embedded chunks -> candidate concepts with their features.

A :class:`Matcher` holds no embedder and fetches nothing: the label store,
the label search and the training documents (kNN and priors) are handed to
it. Suggesting is chunk -> encode -> match; training is chunk -> encode
through the embedding cache -> match, with each training document left out
of its own kNN neighbours and prior.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .features import (candidate_features, disabled_families, document_query_features,
                       finish_features, hierarchy_features, hits_frame, merge_candidates)
from .knn import TrainingDocuments, pool_documents
from .lexical import Lexicon, lexical_features
from .params import FeatureSettings
from .search import LabelSearch
from .store import LabelStore
from .timing import StageTimer


class Matcher:
    def __init__(self, store: LabelStore, search: LabelSearch, per_chunk: int,
                 features: FeatureSettings, training: TrainingDocuments | None,
                 timer: StageTimer, lexicon: Lexicon | None = None) -> None:
        """``per_chunk``: labels searched per chunk; ``training``: the stored
        training documents, or None (then no kNN and prior features);
        ``lexicon``: the store's labels as words, or None (then no lexical
        features)."""
        self.store = store
        self.search = search
        self.per_chunk = per_chunk
        self.features = features
        self.disabled = disabled_families(features)
        self.training = training
        self.timer = timer
        self.lexicon = lexicon if "lexical" not in self.disabled else None

    def match(self, doc: np.ndarray, position: np.ndarray, n_chunks: np.ndarray,
              vectors: np.ndarray, chunks: list[str], own_docs: np.ndarray | None = None
              ) -> pl.DataFrame:
        """Candidates with all features for embedded chunks (chunk ``i``, with
        the text ``chunks[i]``, is chunk ``position[i]`` of document
        ``doc[i]``, see :class:`~annif_ebm.chunking.ChunkedTexts`). ``own_docs``:
        while making the ranker's training data, each document's index among
        the training documents, left out of its own kNN neighbours and prior."""
        return self.match_with_hits(doc, position, n_chunks, vectors, chunks, own_docs)[0]

    def match_with_hits(self, doc: np.ndarray, position: np.ndarray, n_chunks: np.ndarray,
                        vectors: np.ndarray, chunks: list[str],
                        own_docs: np.ndarray | None = None
                        ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """:meth:`match`'s candidates and the label hits they came from (one
        row per chunk and retrieved label, :data:`~annif_ebm.features.HITS_SCHEMA`)."""
        p, disabled, training = self.features, self.disabled, self.training
        pooled = pool_documents(doc, vectors, len(n_chunks))
        # the document vectors go with the chunks into one search: each
        # search call reads the whole label matrix once
        documents = (np.flatnonzero(n_chunks > 0) if "document" not in disabled
                     else np.zeros(0, dtype=np.int64))
        with self.timer.stage("search"):
            query, label, score = self.search.search(
                np.concatenate([vectors, pooled[documents]]) if len(documents) else vectors,
                self.per_chunk)
            rank = np.arange(len(query)) - np.searchsorted(query, query)
        is_chunk = query < len(vectors)
        with self.timer.stage("features"):
            hits = self._hits(doc, position, query[is_chunk], label[is_chunk],
                              score[is_chunk], rank[is_chunk])
            candidates = candidate_features(hits, n_chunks, p.candidates_per_doc)
            if len(documents):
                hit = ~is_chunk
                candidates = document_query_features(
                    candidates, documents[query[hit] - len(vectors)],
                    self.store.concept_ids[label[hit]], score[hit], rank[hit])
        if training is not None and "knn" not in disabled:
            with self.timer.stage("knn"):
                knn = training.candidates(pooled, p.knn_neighbors, p.knn_candidates, own_docs)
                candidates = merge_candidates(candidates, knn, n_chunks)
        if self.lexicon is not None:
            with self.timer.stage("lexical"):
                candidates = lexical_features(candidates, self.lexicon, chunks, doc, n_chunks)
        with self.timer.stage("features"):
            if training is not None and "prior" not in disabled:
                own = None if own_docs is None else own_docs[candidates["doc"].to_numpy()]
                prior = training.prior(candidates["concept_id"].to_numpy(), own)
                candidates = candidates.with_columns(prior=pl.Series(prior, dtype=pl.Float32))
            if len(self.store.relations) and "hierarchy" not in disabled:
                candidates = hierarchy_features(candidates, self.store.relations.frame())
            return finish_features(candidates, disabled), hits

    def _hits(self, doc: np.ndarray, position: np.ndarray, query: np.ndarray,
              label: np.ndarray, score: np.ndarray, rank: np.ndarray) -> pl.DataFrame:
        """The search's hits (chunk ``query[i]`` found ``label[i]`` at
        ``rank[i]``) as the hit table."""
        store = self.store
        return hits_frame(
            doc=doc[query],
            chunk=position[query].astype(np.uint32),
            label_id=label,
            concept_id=store.concept_ids[label],
            is_pref=store.is_pref[label],
            label_tokens=store.label_tokens[label],
            concept_labels=store.concept_labels[label],
            score=score,
            rank=rank.astype(np.uint16),
        )
