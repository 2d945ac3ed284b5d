"""Candidates from the nearest training documents (kNN) and subject priors.

At train time every processed training document is kept as one vector (its
chunk vectors pooled) with its gold subjects. At suggest time a document's
nearest training documents vote for their subjects: each subject becomes a
candidate with the neighbours' summed and best similarity, count and rank.
While the ranker's training data is made, a training document is never its
own neighbour and its own subjects never count in the prior (leave-one-out).
The document vectors are held in float16 (half the memory of the one part of
the model that grows with the corpus) and taken to float32 a block at a time
for the products: a similarity moves by about 1e-5.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import polars as pl

from .topk import blocked_top_k

# scores held at once: query documents x a block of training documents, so
# memory does not grow with the number of training documents
KNN_BLOCK_BYTES = 16 << 20
KNN_QUERY_BLOCK = 256  # query documents per matrix product, at most
KNN_UPCAST_BYTES = 8 << 20  # float32 copy of a block of training documents
VECTOR_DTYPE = np.float16  # training document vectors as held in memory

KNN_SCHEMA = {
    "doc": pl.UInt32,
    "concept_id": pl.Int32,
    "knn_score_sum": pl.Float32,
    "knn_count": pl.Float32,
    "knn_best": pl.Float32,
    "knn_rank": pl.Float32,
    "knn_share": pl.Float32,
}


def pool_documents(doc: np.ndarray, vectors: np.ndarray, n_docs: int) -> np.ndarray:
    """One L2-normalised vector per document: the mean of its chunk vectors
    (``doc`` sorted, as chunks come); a document without chunks gets zeros."""
    pooled = np.zeros((n_docs, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=np.float32)
    if len(doc) == 0:
        return pooled
    starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    pooled[doc[starts]] = np.add.reduceat(vectors, starts, axis=0)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    np.divide(pooled, norms, out=pooled, where=norms > 0)
    return pooled


@dataclasses.dataclass
class TrainingDocuments:
    """Training documents as vectors with their subjects (CSR-like:
    document ``i``'s subjects are ``subjects[offsets[i]:offsets[i + 1]]``)."""

    vectors: np.ndarray  # (n, dim) VECTOR_DTYPE, normalised (zeros: no text)
    offsets: np.ndarray  # (n + 1,) int64
    subjects: np.ndarray  # int32

    @classmethod
    def from_pairs(cls, vectors: np.ndarray, doc: np.ndarray, concept_id: np.ndarray) -> TrainingDocuments:
        """From (document, subject) pairs, in any order, duplicates allowed."""
        pairs = np.unique(np.column_stack([doc.astype(np.int64), concept_id.astype(np.int64)]), axis=0)
        counts = np.bincount(pairs[:, 0], minlength=len(vectors)) if len(pairs) else np.zeros(len(vectors), dtype=np.int64)
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        return cls(np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE), offsets,
                   pairs[:, 1].astype(np.int32) if len(pairs) else np.zeros(0, dtype=np.int32))

    def __post_init__(self) -> None:
        n_concepts = int(self.subjects.max()) + 1 if len(self.subjects) else 0
        self.subject_counts = np.bincount(self.subjects, minlength=n_concepts)
        owner = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.offsets))
        self._stride = max(n_concepts, 1)
        self._pair_keys = owner * self._stride + self.subjects  # sorted
        self._matrix = None

    def __len__(self) -> int:
        return len(self.vectors)

    @functools.cached_property
    def unseen_share(self) -> float:
        """The share of a training document's subjects that no other training
        document has (leave-one-out): an estimate of the share of a new
        document's subjects that no training document has."""
        return float((self.subject_counts == 1).sum() / len(self.subjects)) if len(self.subjects) else 0.0

    def subject_count(self, concept_id: np.ndarray) -> np.ndarray:
        """How many training documents have subject ``concept_id[i]`` (0 for
        an id no training document knows)."""
        concept_id = np.asarray(concept_id, dtype=np.int64)
        inside = (concept_id >= 0) & (concept_id < len(self.subject_counts))
        return np.where(inside, self.subject_counts[np.where(inside, concept_id, 0)], 0)

    def unseen(self, concept_id: np.ndarray) -> np.ndarray:
        """Whether no training document has subject ``concept_id[i]``."""
        return self.subject_count(concept_id) == 0

    def has_subject(self, doc: np.ndarray, concept_id: np.ndarray) -> np.ndarray:
        """Whether training document ``doc[i]`` has subject ``concept_id[i]``."""
        doc = np.asarray(doc, dtype=np.int64)
        concept_id = np.asarray(concept_id, dtype=np.int64)
        known = (doc >= 0) & (concept_id >= 0) & (concept_id < self._stride)
        keys = np.where(known, doc * self._stride + concept_id, -1)
        at = np.searchsorted(self._pair_keys, keys).clip(max=max(len(self._pair_keys) - 1, 0))
        return known & (len(self._pair_keys) > 0) & (self._pair_keys[at] == keys)

    def prior(self, concept_id: np.ndarray, own_doc: np.ndarray | None = None) -> np.ndarray:
        """log(1 + number of training documents with the subject), leaving
        out document ``own_doc[i]`` (training) where given."""
        counts = self.subject_count(concept_id)
        if own_doc is not None:
            counts = counts - self.has_subject(own_doc, concept_id)
        return np.log1p(counts).astype(np.float32)

    def _torch_matrix(self):
        import torch

        if self._matrix is None:
            self._matrix = torch.from_numpy(self.vectors)
        return self._matrix

    def neighbours(self, queries: np.ndarray, k: int, own_doc: np.ndarray | None = None):
        """The ``k`` most similar training documents of each query vector:
        flat arrays (query index, document index, similarity, rank), best
        first; document ``own_doc[i]`` is never a neighbour of query ``i``."""
        import torch

        k = min(k, len(self) - (1 if own_doc is not None else 0))
        if len(queries) == 0 or k <= 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.float32), empty
        matrix = self._torch_matrix()
        queries = np.asarray(queries, dtype=np.float32)
        rows = min(len(queries), KNN_QUERY_BLOCK)
        columns = max(k + 1, min(KNN_BLOCK_BYTES // (4 * rows),
                                 KNN_UPCAST_BYTES // (4 * matrix.shape[1])))
        index_parts, score_parts = [], []
        with torch.inference_mode():
            for start in range(0, len(queries), rows):
                exclude = None if own_doc is None else torch.from_numpy(
                    np.asarray(own_doc[start : start + rows], dtype=np.int64))
                values, found = blocked_top_k(torch.from_numpy(queries[start : start + rows]),
                                              matrix, k, columns, exclude=exclude)
                index_parts.append(found.numpy())
                score_parts.append(values.numpy())
        neighbour = np.concatenate(index_parts).reshape(-1)
        similarity = np.concatenate(score_parts).reshape(-1)
        query = np.repeat(np.arange(len(queries), dtype=np.int64), k)
        rank = np.tile(np.arange(k, dtype=np.int64), len(queries))
        return query, neighbour, similarity, rank

    def candidates(self, queries: np.ndarray, k: int, n_candidates: int,
                   own_doc: np.ndarray | None = None) -> pl.DataFrame:
        """Subjects of the ``k`` nearest training documents of each query
        (zero vectors have none), the ``n_candidates`` with the highest
        summed similarity per query; columns of :data:`KNN_SCHEMA`."""
        has_text = np.flatnonzero(np.abs(queries).sum(axis=1) > 0)
        query, neighbour, similarity, rank = self.neighbours(
            queries[has_text], k, None if own_doc is None else own_doc[has_text])
        keep = similarity > 0
        query, neighbour, similarity, rank = (a[keep] for a in (query, neighbour, similarity, rank))
        n_subjects = self.offsets[neighbour + 1] - self.offsets[neighbour]
        starts = np.repeat(self.offsets[neighbour], n_subjects)
        within = np.arange(n_subjects.sum()) - np.repeat(np.cumsum(n_subjects) - n_subjects, n_subjects)
        votes = pl.DataFrame({
            "doc": pl.Series(np.repeat(has_text[query], n_subjects), dtype=pl.UInt32),
            "concept_id": pl.Series(self.subjects[starts + within], dtype=pl.Int32),
            "similarity": pl.Series(np.repeat(similarity, n_subjects), dtype=pl.Float32),
            "rank": pl.Series(np.repeat(rank, n_subjects), dtype=pl.Float32),
        })
        total = pl.DataFrame({
            "doc": pl.Series(has_text[query], dtype=pl.UInt32),
            "similarity": pl.Series(similarity, dtype=pl.Float32),
        }).group_by("doc", maintain_order=True).agg(total=pl.col("similarity").sum())
        return (  # order-keeping groups: the same float sums on every run
            votes.group_by("doc", "concept_id", maintain_order=True)
            .agg(
                knn_score_sum=pl.col("similarity").sum(),
                knn_count=pl.len().cast(pl.Float32),
                knn_best=pl.col("similarity").max(),
                knn_rank=pl.col("rank").min(),
            )
            .join(total, on="doc", how="left")
            .with_columns(knn_share=pl.col("knn_score_sum") / pl.col("total"))
            .sort("doc", "concept_id")
            .filter(pl.col("knn_score_sum").rank("ordinal", descending=True).over("doc")
                    <= n_candidates)
            .select([pl.col(name).cast(dtype) for name, dtype in KNN_SCHEMA.items()])
        )
