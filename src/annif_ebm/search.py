"""Nearest-label search: the ``k`` most similar labels of each chunk vector.

Exact search (the default) matches blocks of chunk vectors against the label
matrix with one matrix product and a top-k per block, on the embedder's
device; in bfloat16 where that is native, with the candidates scored again
in float32, so a label's score never depends on the precision. HNSW search
asks the store file's DuckDB ``vss`` index, one query per chunk. Both give
the same flat arrays (query index, label index, cosine similarity), best
first, and are safe to share between threads and across ``fork`` (Annif's
``--jobs``).
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

import numpy as np

from annif.exception import OperationFailedException

from .store import LabelStore, open_store
from .topk import blocked_top_k

EXACT_QUERY_BLOCK = 1024  # chunk vectors per matrix product, at most
EXACT_LABEL_BLOCK = 32768  # labels per matrix product, at most
SCORE_BUFFER_BYTES = 64 << 20  # per thread and search, for the block's scores
SEARCH_MARGIN = 20  # extra candidates per query kept until the final top-k


class LabelSearch(Protocol):
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, label index, similarity) of each query's ``k``
        nearest labels, best first, as flat arrays."""


def resolve_precision(setting: str, device: str) -> str:
    """The dtype of the exact search's matrix products: ``setting`` unless
    ``auto``; auto = bfloat16 where its products are native (CUDA, CPUs with
    AMX or AVX512-BF16: several times faster than float32), else float32."""
    if setting != "auto":
        return setting
    import torch

    if device.startswith("cuda"):
        return "bfloat16"
    native = (getattr(torch.cpu, name, lambda: False)()
              for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return "bfloat16" if device == "cpu" and any(native) else "float32"


def best_first(scores, labels, k: int):
    """The ``k`` best (score, label) pairs of each row, best first, equal
    scores in label order: which of several identical labels make the cut, and
    in what order, never depends on the order the search found them in (that
    order varies with the batch, the threads and the precision)."""
    import torch

    labels, by_label = torch.sort(labels, dim=1)
    scores, order = torch.sort(torch.gather(scores, 1, by_label), dim=1,
                               descending=True, stable=True)
    return scores[:, :k], torch.gather(labels, 1, order[:, :k])


def _no_results():
    empty = np.zeros(0, dtype=np.int32)
    return empty, empty, np.zeros(0, dtype=np.float32)


class ExactSearch:
    """Exact search over a float32 (labels, dimension) matrix. On the CPU the
    matrix is used in place (forked workers share its pages); the copies on
    another device or in bfloat16 are made on the first search, never here:
    a bfloat16 copy starts torch's OpenMP pool, and workers forked from a
    process with that pool (or with CUDA) hang in their first torch call."""

    def __init__(self, vectors: np.ndarray, device: str = "cpu", precision: str = "auto") -> None:
        import torch

        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.device = device
        self.precision = resolve_precision(precision, device)
        self._matrices = None  # (float32, precision) on the device
        self._lock = threading.Lock()
        self._buffers = threading.local()

    def __len__(self) -> int:
        return len(self.vectors)

    def matrices(self):
        """The label matrix on the device in float32 and in the search's
        precision (the same tensor where they agree)."""
        import torch

        with self._lock:
            if self._matrices is None:
                matrix = self.vectors.to(self.device)
                self._matrices = matrix, matrix.to(getattr(torch, self.precision))
            return self._matrices

    def _score_buffer(self):
        """A reusable flat score buffer of this thread for (queries, labels)
        blocks: writing into memory already touched spares a fresh
        allocation's page faults, which cost about a sixth of the search time
        on CPU. Returns (buffer, query rows, label columns) per block."""
        import torch

        if not hasattr(self._buffers, "score"):
            columns = min(len(self), EXACT_LABEL_BLOCK)
            fit = max(16, min(EXACT_QUERY_BLOCK, SCORE_BUFFER_BYTES // (4 * columns)))
            rows = 1 << (fit.bit_length() - 1)  # a power of two: fastest in BLAS
            buffer = torch.empty(rows * columns, dtype=getattr(torch, self.precision),
                                 device=self.device)
            self._buffers.score = buffer, rows, columns
        return self._buffers.score

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` nearest labels of each query vector, best first (equal
        scores in label order), as flat arrays (query index, label index,
        cosine similarity).

        Blocks of queries against blocks of labels, a top-k per label block
        merged into the running top-k: many queries per matrix product (BLAS
        runs faster) with a bounded score buffer, whatever the vocabulary size.
        The running top-k is wider (:data:`SEARCH_MARGIN`): it holds labels
        tied at the cut, and in bfloat16 the labels whose rounded scores
        passed a better one. Its labels are scored again in float32, one
        product per pair, so that a label's score never depends on the
        precision or on the block it was found in."""
        import torch

        k = min(k, len(self))
        if len(queries) == 0 or k <= 0:
            return _no_results()
        matrix, coarse = self.matrices()
        pool = min(len(self), k + SEARCH_MARGIN)
        buffer, rows, columns = self._score_buffer()
        label_parts, score_parts = [], []
        with torch.inference_mode():
            for start in range(0, len(queries), rows):
                block = torch.from_numpy(queries[start : start + rows]).to(
                    device=self.device, dtype=matrix.dtype)
                _, best_labels = blocked_top_k(block.to(coarse.dtype), coarse, pool,
                                               columns, buffer)
                # every precision ends with the same float32 product per pair
                best_scores = torch.einsum("qd,qpd->qp", block, matrix[best_labels])
                best_scores, best_labels = best_first(best_scores, best_labels, k)
                label_parts.append(best_labels.cpu().numpy())
                score_parts.append(best_scores.float().cpu().numpy())
        labels = np.concatenate(label_parts).astype(np.int32).reshape(-1)
        scores = np.concatenate(score_parts).astype(np.float32).reshape(-1)
        query_idx = np.repeat(np.arange(len(queries), dtype=np.int32), k)
        return query_idx, labels, scores


class HnswSearch:
    """Search through the HNSW index of the store file at ``store_path``
    (without one every query scans all labels: :func:`label_search` refuses
    that). One DuckDB connection per process, opened on first use (a forked
    child opens its own)."""

    def __init__(self, store_path: str, dimension: int, ef_search: int = 64,
                 threads: int = 0) -> None:
        self.store_path = store_path
        self.dimension = dimension
        self.ef_search = ef_search
        self.threads = threads
        self._connection = None  # (pid, connection)
        self._lock = threading.Lock()

    def connection(self):
        """This process's connection, with the store attached as ``store``
        and the vss extension loaded before, so the stored index is used."""
        with self._lock:
            if self._connection is None or self._connection[0] != os.getpid():
                self._connection = (os.getpid(),
                                    open_store(self.store_path, self.threads, with_vss=True))
            return self._connection[1]

    def sql(self, vector: np.ndarray, k: int) -> str:
        """The query that the HNSW index serves: one constant vector, ORDER BY
        the index's metric, LIMIT. (A LATERAL join or a bound parameter falls
        back to a full scan; a literal also binds several times faster than a
        list parameter.)"""
        literal = f"[{','.join(map(repr, vector.tolist()))}]::FLOAT[{self.dimension}]"
        return (
            f"SELECT label_id, array_cosine_distance(vec, {literal}) AS distance "
            f"FROM store.labels ORDER BY distance LIMIT {int(k)}"
        )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` nearest labels of each query vector that the index finds
        (at most the number of labels), best first, as flat arrays (query
        index, label index, cosine similarity)."""
        if len(queries) == 0 or k <= 0:
            return _no_results()
        cursor = self.connection().cursor()
        cursor.execute(f"SET hnsw_ef_search = {int(self.ef_search)}")
        query_idx, labels, scores = [], [], []
        for i, vector in enumerate(queries):
            rows = cursor.execute(self.sql(vector, k)).fetchall()
            query_idx += [i] * len(rows)
            labels += [row[0] for row in rows]
            scores += [1.0 - row[1] for row in rows]
        return (
            np.array(query_idx, dtype=np.int32),
            np.array(labels, dtype=np.int32),
            np.array(scores, dtype=np.float32),
        )


def label_search(store: LabelStore, method: str, device: str = "cpu",
                 precision: str = "auto", ef_search: int = 64) -> LabelSearch:
    """The search of ``store``'s labels for the ``search`` setting ``method``
    (``exact`` or ``hnsw``); ``device`` and ``precision`` apply to exact
    search, ``ef_search`` to HNSW."""
    if method != "hnsw":
        return ExactSearch(store.label_vectors(), device, precision)
    if not store.has_hnsw:
        raise OperationFailedException(
            f"search=hnsw but the label store {store.path} has no HNSW index; "
            "retrain with ebm.hnsw=true or use search=exact"
        )
    return HnswSearch(store.path, store.dimension, ef_search, store.threads)
