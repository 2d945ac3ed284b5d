"""Stage 4: the label vector store (one DuckDB file) and nearest-label search.

The file holds every embedded label with its concept and a FLOAT[dim]
vector. Search is exact by default: the label matrix is read once and each
batch of chunk vectors is matched with one matrix product and a top-k (on the
GPU when the embedder runs there; in bfloat16 where that is native, with the
candidates scored again in float32). Optionally an HNSW index from DuckDB's
``vss`` extension is built and queried; the extension is loaded from the
``duckdb-extension-vss`` package's file, never downloaded.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import threading

import duckdb
import numpy as np
import polars as pl

from annif.exception import OperationFailedException

from . import duckdb_pool
from .knn import VECTOR_DTYPE, TrainingDocuments
from .labels import LabelSet, Relations
from .topk import blocked_top_k

EXACT_QUERY_BLOCK = 1024  # chunk vectors per matrix product, at most
EXACT_LABEL_BLOCK = 32768  # labels per matrix product, at most
SCORE_BUFFER_BYTES = 64 << 20  # per thread and device, for the block's scores
INSERT_ROWS = 10_000  # vectors copied into DuckDB at a time
SEARCH_MARGIN = 20  # extra candidates per query kept until the final top-k


def search_precision(setting: str, device: str) -> str:
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


def vss_extension_path() -> pathlib.Path:
    import duckdb_extension_vss

    path = (
        pathlib.Path(duckdb_extension_vss.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / "vss.duckdb_extension"
    )
    if not path.exists():
        raise OperationFailedException(
            f"DuckDB vss extension for DuckDB {duckdb.__version__} not found at {path}; "
            "install matching versions of duckdb and duckdb-extension-vss"
        )
    return path


def _quoted(path) -> str:
    """A file path as an SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def load_vss(con: duckdb.DuckDBPyConnection) -> None:
    """Load the vss extension from the PyPI package's file (no download)."""
    con.execute(f"LOAD {_quoted(vss_extension_path())}")


def _connect(threads: int) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(":memory:", config={"threads": threads} if threads else {})


def write_store(
    path: str,
    labels: LabelSet,
    vectors: np.ndarray,
    model_id: str,
    *,
    relations: Relations | None = None,
    hnsw: bool = False,
    hnsw_m: int = 16,
    hnsw_ef_construction: int = 128,
    threads: int = 0,
) -> None:
    """Write a new store file at ``path`` (which must not exist yet)."""
    dim = vectors.shape[1]
    frame = pl.DataFrame(
        {
            "label_id": np.arange(len(labels), dtype=np.int32),
            "concept_id": labels.concept_ids,
            "is_pref": labels.is_pref,
            "label": labels.texts,
            "vec": vectors.astype(np.float32),
        }
    )
    con = _connect(threads)
    try:
        if hnsw:
            load_vss(con)
            con.execute("SET hnsw_enable_experimental_persistence = true")
        con.execute(f"ATTACH {_quoted(path)} AS store")
        con.execute(
            "CREATE TABLE store.labels (label_id INTEGER PRIMARY KEY, "
            f"concept_id INTEGER, is_pref BOOLEAN, label VARCHAR, vec FLOAT[{dim}])"
        )
        con.register("new_labels", frame)
        con.execute("INSERT INTO store.labels SELECT * FROM new_labels")
        relations = relations or Relations.empty()
        con.execute("CREATE TABLE store.relations "
                    "(concept_id INTEGER, other_id INTEGER, relation TINYINT)")
        con.register("new_relations", relations.frame())
        con.execute("INSERT INTO store.relations SELECT * FROM new_relations")
        con.execute("CREATE TABLE store.meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.executemany(
            "INSERT INTO store.meta VALUES (?, ?)",
            [["model", model_id], ["dimension", str(dim)], ["hnsw", str(hnsw)]],
        )
        if hnsw:
            con.execute(
                "CREATE INDEX labels_hnsw ON store.labels USING HNSW (vec) WITH "
                f"(metric = 'cosine', M = {hnsw_m}, "
                f"ef_construction = {hnsw_ef_construction})"
            )
        con.execute("CHECKPOINT store")
    finally:
        con.close()


class LabelStore:
    """Read-only access to a store file; safe to share between threads and
    across ``fork`` (Annif's ``--jobs``): no DuckDB connection is kept open,
    except a per-process one for HNSW search."""

    def __init__(self, path: str, threads: int = 0) -> None:
        self.path = path
        self.threads = threads
        with self._connect() as con:
            meta = dict(con.execute("SELECT key, value FROM store.meta").fetchall())
            columns = con.execute(
                "SELECT concept_id, is_pref, len(string_split(trim(label), ' ')) AS tokens "
                "FROM store.labels ORDER BY label_id"
            ).fetchnumpy()
            relations = con.execute(
                "SELECT concept_id, other_id, relation FROM store.relations"
            ).fetchnumpy()
            tables = {row[0] for row in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'store'"
            ).fetchall()}
        self.model_id = meta["model"]
        self.dimension = int(meta["dimension"])
        self.has_hnsw = meta.get("hnsw") == "True"
        self.concept_ids = np.asarray(columns["concept_id"], dtype=np.int32)
        self.is_pref = np.asarray(columns["is_pref"], dtype=bool)
        self.label_tokens = np.minimum(np.asarray(columns["tokens"]), 65535).astype(np.uint16)
        labels_of_concept = np.bincount(self.concept_ids) if len(self.concept_ids) else np.zeros(0)
        self.concept_labels = np.minimum(labels_of_concept[self.concept_ids], 65535).astype(np.uint16)
        self.relations = Relations(**{k: np.asarray(v) for k, v in relations.items()})
        self.has_training_documents = "train_docs" in tables
        self._training_documents = None
        self._matrix = {}
        self._buffers = threading.local()
        self._lock = threading.Lock()
        self._hnsw_con = None  # (pid, connection)

    def _read_error(self, err: duckdb.Error) -> OperationFailedException:
        return OperationFailedException(
            f"cannot read label store {self.path}: {err}; retrain the project"
        )

    def _open(self, with_vss: bool = False) -> duckdb.DuckDBPyConnection:
        """A new read-only connection with the store file attached as ``store``."""
        con = _connect(self.threads)
        try:
            if with_vss:
                load_vss(con)  # before ATTACH, so the stored index is usable
            con.execute(f"ATTACH {_quoted(self.path)} AS store (READ_ONLY)")
        except duckdb.Error as err:
            con.close()
            raise self._read_error(err) from err
        return con

    @contextlib.contextmanager
    def _connect(self):
        """A short-lived connection, closed after use (nothing kept across fork)."""
        con = self._open()
        try:
            yield con
        except duckdb.Error as err:
            raise self._read_error(err) from err
        finally:
            con.close()

    def __len__(self) -> int:
        return len(self.concept_ids)

    def add_training_documents(self, documents: TrainingDocuments) -> None:
        """Store the training documents (kNN and priors) in the file; only
        while training, before anything reads the store."""
        dim = documents.vectors.shape[1]
        doc = np.repeat(np.arange(len(documents), dtype=np.int32), np.diff(documents.offsets))
        # under the capped pool, DuckDB writes the pages beyond it to the file
        # (or spills) instead of holding all of them until the end
        with duckdb_pool.spill_directory(os.path.dirname(os.path.abspath(self.path))) as spill, \
                duckdb_pool.connect(":memory:", spill, threads=self.threads) as con:
            con.execute(f"ATTACH {_quoted(self.path)} AS store")
            con.execute(f"CREATE TABLE store.train_docs (doc INTEGER, vec FLOAT[{dim}])")
            con.execute("CREATE TABLE store.train_subjects (doc INTEGER, concept_id INTEGER)")
            for start in range(0, len(documents), INSERT_ROWS):  # bounded copies
                vectors = documents.vectors[start : start + INSERT_ROWS].astype(np.float32)
                con.register("new_docs", pl.DataFrame({
                    "doc": np.arange(start, start + len(vectors), dtype=np.int32),
                    "vec": vectors}))
                con.execute("INSERT INTO store.train_docs SELECT * FROM new_docs")
                con.unregister("new_docs")
            con.register("new_subjects", pl.DataFrame({"doc": doc, "concept_id": documents.subjects}))
            con.execute("INSERT INTO store.train_subjects SELECT * FROM new_subjects")
            con.execute("CHECKPOINT store")
        with self._lock:
            self.has_training_documents = True
            self._training_documents = documents

    def training_documents(self) -> TrainingDocuments | None:
        """The stored training documents (read once), or None."""
        with self._lock:
            if self._training_documents is None and self.has_training_documents:
                with self._connect() as con:
                    table = con.execute(
                        "SELECT vec FROM store.train_docs ORDER BY doc").to_arrow_table()
                    pairs = con.execute(
                        "SELECT doc, concept_id FROM store.train_subjects").fetchnumpy()
                flat = table.column("vec").combine_chunks().values.to_numpy()
                vectors = flat.astype(VECTOR_DTYPE).reshape(table.num_rows, -1)
                self._training_documents = TrainingDocuments.from_pairs(
                    vectors, np.asarray(pairs["doc"]), np.asarray(pairs["concept_id"]))
            return self._training_documents

    def label_matrix(self, device: str = "cpu", dtype: str = "float32"):
        """All label vectors as a torch tensor on ``device`` (read once)."""
        import torch

        with self._lock:
            if (device, dtype) not in self._matrix:
                if ("cpu", "float32") not in self._matrix:
                    # arrow, not polars: this may run in a process that forks
                    # later (annif eval --jobs), and polars' pool dies in forks
                    with self._connect() as con:
                        table = con.execute(
                            "SELECT vec FROM store.labels ORDER BY label_id"
                        ).to_arrow_table()
                    flat = table.column("vec").combine_chunks().values.to_numpy()
                    vectors = flat.astype(np.float32).reshape(len(self), self.dimension)
                    self._matrix["cpu", "float32"] = torch.from_numpy(vectors)
                self._matrix[device, dtype] = self._matrix["cpu", "float32"].to(
                    device=device, dtype=getattr(torch, dtype))
            return self._matrix[device, dtype]

    def search(
        self, queries: np.ndarray, k: int, method: str = "exact", device: str = "cpu",
        ef_search: int = 64, precision: str = "float32",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` nearest labels of each query vector, best first, as flat
        arrays (query index, label index, cosine similarity). ``precision``
        of the exact search's matrix products: ``float32``, or ``bfloat16``
        to select candidates that are then scored again in float32 (see
        :func:`search_precision`)."""
        k = min(k, len(self))
        if len(queries) == 0 or k == 0:
            empty = np.zeros(0, dtype=np.int32)
            return empty, empty, np.zeros(0, dtype=np.float32)
        if method == "hnsw":
            return self._search_hnsw(queries, k, ef_search)
        return self._search_exact(queries, k, device, precision)

    def _score_buffer(self, device: str, dtype):
        """A reusable flat score buffer of this thread for (queries, labels)
        blocks: writing into memory already touched spares a fresh
        allocation's page faults, which cost about a sixth of the search time
        on CPU. Returns (buffer, query rows, label columns) per block."""
        import torch

        buffers = self._buffers.__dict__.setdefault("by_device", {})
        if (device, dtype) not in buffers:
            columns = min(len(self), EXACT_LABEL_BLOCK)
            fit = max(16, min(EXACT_QUERY_BLOCK, SCORE_BUFFER_BYTES // (4 * columns)))
            rows = 1 << (fit.bit_length() - 1)  # a power of two: fastest in BLAS
            buffer = torch.empty(rows * columns, dtype=dtype, device=device)
            buffers[device, dtype] = (buffer, rows, columns)
        return buffers[device, dtype]

    def _search_exact(self, queries: np.ndarray, k: int, device: str, precision: str):
        """Blocks of queries against blocks of labels, a top-k per label block
        merged into the running top-k: many queries per matrix product (BLAS
        runs faster) with a bounded score buffer, whatever the vocabulary size.
        The running top-k is wider (:data:`SEARCH_MARGIN`): it holds labels
        tied at the cut, and in bfloat16 the labels whose rounded scores
        passed a better one. Its labels are scored again in float32, one
        product per pair, so that a label's score never depends on the
        precision or on the block it was found in."""
        import torch

        matrix = self.label_matrix(device)
        coarse = self.label_matrix(device, precision)
        pool = min(len(self), k + SEARCH_MARGIN)
        buffer, rows, columns = self._score_buffer(device, coarse.dtype)
        label_parts, score_parts = [], []
        with torch.inference_mode():
            for start in range(0, len(queries), rows):
                block = torch.from_numpy(queries[start : start + rows]).to(
                    device=device, dtype=matrix.dtype)
                coarse_block = block.to(coarse.dtype)
                _, best_labels = blocked_top_k(coarse_block, coarse, pool, columns, buffer)
                # every precision ends with the same float32 product per pair
                best_scores = torch.einsum("qd,qpd->qp", block, matrix[best_labels])
                best_scores, best_labels = best_first(best_scores, best_labels, k)
                label_parts.append(best_labels.cpu().numpy())
                score_parts.append(best_scores.float().cpu().numpy())
        labels = np.concatenate(label_parts).astype(np.int32).reshape(-1)
        scores = np.concatenate(score_parts).astype(np.float32).reshape(-1)
        query_idx = np.repeat(np.arange(len(queries), dtype=np.int32), k)
        return query_idx, labels, scores

    def _hnsw_connection(self) -> duckdb.DuckDBPyConnection:
        """A connection of this process (a forked child opens its own)."""
        with self._lock:
            if self._hnsw_con is None or self._hnsw_con[0] != os.getpid():
                self._hnsw_con = (os.getpid(), self._open(with_vss=True))
            return self._hnsw_con[1]

    def hnsw_sql(self, vector: np.ndarray, k: int) -> str:
        """The query that the HNSW index serves: one constant vector, ORDER BY
        the index's metric, LIMIT. (A LATERAL join or a bound parameter falls
        back to a full scan; a literal also binds several times faster than a
        list parameter.)"""
        literal = f"[{','.join(map(repr, vector.tolist()))}]::FLOAT[{self.dimension}]"
        return (
            f"SELECT label_id, array_cosine_distance(vec, {literal}) AS distance "
            f"FROM store.labels ORDER BY distance LIMIT {int(k)}"
        )

    def _search_hnsw(self, queries: np.ndarray, k: int, ef_search: int):
        if not self.has_hnsw:
            raise OperationFailedException(
                f"search=hnsw but the label store {self.path} has no HNSW index; "
                "retrain with ebm.hnsw=true or use search=exact"
            )
        cursor = self._hnsw_connection().cursor()
        cursor.execute(f"SET hnsw_ef_search = {int(ef_search)}")
        query_idx, labels, scores = [], [], []
        for i, vector in enumerate(queries):
            rows = cursor.execute(self.hnsw_sql(vector, k)).fetchall()
            query_idx += [i] * len(rows)
            labels += [row[0] for row in rows]
            scores += [1.0 - row[1] for row in rows]
        return (
            np.array(query_idx, dtype=np.int32),
            np.array(labels, dtype=np.int32),
            np.array(scores, dtype=np.float32),
        )


