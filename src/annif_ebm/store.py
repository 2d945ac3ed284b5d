"""Stage 4: the label store file, one DuckDB database, written at training
and then only read.

It holds every embedded label with its concept and a FLOAT[dim] vector, the
concept relations, a few meta keys (model, dimension, hnsw) and, optionally,
the training documents for kNN and priors, and an HNSW index over the label
vectors from DuckDB's ``vss`` extension (loaded from the
``duckdb-extension-vss`` package's file, never downloaded). Searching the
vectors is :mod:`annif_ebm.search`'s job.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import threading
from collections.abc import Iterable, Iterator

import duckdb
import numpy as np
import polars as pl

from annif.exception import OperationFailedException

from . import duckdb_pool
from .knn import VECTOR_DTYPE, TrainingDocuments
from .labels import LabelSet, Relations

INSERT_ROWS = 10_000  # vectors copied into DuckDB at a time
OPENING_CHARS = 160  # of each training document's first chunk, kept for explanations


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


def read_error(path: str, err: duckdb.Error) -> OperationFailedException:
    return OperationFailedException(f"cannot read label store {path}: {err}; retrain the project")


def open_store(path: str, threads: int = 0, with_vss: bool = False) -> duckdb.DuckDBPyConnection:
    """A new connection with the store file attached read-only as ``store``;
    ``with_vss``: the vss extension loaded first, so the stored index is used."""
    con = _connect(threads)
    try:
        if with_vss:
            load_vss(con)
        con.execute(f"ATTACH {_quoted(path)} AS store (READ_ONLY)")
    except duckdb.Error as err:
        con.close()
        raise read_error(path, err) from err
    return con


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


class TrainingDocumentsWriter:
    """Appends training documents (kNN and priors) to a store file, numbered
    on from those it holds; the tables are made where it has none. Only while
    nothing reads the file (a :class:`LabelStore` opened earlier does not see
    what it adds)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, dimension: int) -> None:
        self.con = con
        con.execute(f"CREATE TABLE IF NOT EXISTS store.train_docs (doc INTEGER, "
                    f"vec FLOAT[{dimension}])")
        con.execute("CREATE TABLE IF NOT EXISTS store.train_subjects "
                    "(doc INTEGER, concept_id INTEGER)")
        con.execute("CREATE TABLE IF NOT EXISTS store.train_openings "
                    "(doc INTEGER, opening VARCHAR)")
        self.n_documents = con.execute("SELECT count(*) FROM store.train_docs").fetchone()[0]

    def add(self, documents: TrainingDocuments, openings: list[str] | None = None) -> None:
        """Append ``documents`` (a bounded number of vectors copied at a time)
        with their ``openings`` (first words, shown by explanations), if given."""
        first = self.n_documents
        if openings is not None:
            self.add_openings(first, openings)
        for start in range(0, len(documents), INSERT_ROWS):
            vectors = documents.vectors[start : start + INSERT_ROWS].astype(np.float32)
            self._insert("train_docs", {
                "doc": np.arange(first + start, first + start + len(vectors), dtype=np.int32),
                "vec": vectors})
        owner = np.repeat(np.arange(len(documents), dtype=np.int32), np.diff(documents.offsets))
        self._insert("train_subjects", {"doc": owner + np.int32(first),
                                        "concept_id": documents.subjects})
        self.n_documents += len(documents)

    def add_openings(self, first: int, openings: list[str]) -> None:
        """The first words of documents ``first``, ``first + 1``, ...; each
        cut to :data:`OPENING_CHARS`."""
        self._insert("train_openings", {
            "doc": np.arange(first, first + len(openings), dtype=np.int32),
            "opening": pl.Series([text[:OPENING_CHARS] for text in openings], dtype=pl.String)})

    def keep_newest(self, n: int) -> int:
        """Drop all but the ``n`` last documents (the others keep their order,
        numbered from 0); return how many went."""
        dropped = max(0, self.n_documents - n)
        if dropped:
            for table in ("train_docs", "train_subjects", "train_openings"):
                self.con.execute(f"DELETE FROM store.{table} WHERE doc < ?", [dropped])
                self.con.execute(f"UPDATE store.{table} SET doc = doc - ?", [dropped])
            self.n_documents -= dropped
        return dropped

    def _insert(self, table: str, columns: dict) -> None:
        self.con.register("new_rows", pl.DataFrame(columns))
        self.con.execute(f"INSERT INTO store.{table} SELECT * FROM new_rows")
        self.con.unregister("new_rows")


@contextlib.contextmanager
def training_documents_writer(path: str, dimension: int,
                              threads: int = 0) -> Iterator[TrainingDocumentsWriter]:
    """A :class:`TrainingDocumentsWriter` on the store file at ``path``,
    checkpointed at the end. Under the capped pool DuckDB writes the pages
    beyond it to the file (or spills) instead of holding all of them."""
    with duckdb_pool.spill_directory(os.path.dirname(os.path.abspath(path))) as spill, \
            duckdb_pool.connect(":memory:", spill, threads=threads) as con:
        load_vss(con)  # a store with an HNSW index is written with the extension only
        con.execute("SET hnsw_enable_experimental_persistence = true")
        con.execute(f"ATTACH {_quoted(path)} AS store")
        yield TrainingDocumentsWriter(con, dimension)
        con.execute("CHECKPOINT store")


def write_training_documents(path: str, documents: TrainingDocuments, threads: int = 0,
                             openings: Iterable[list[str]] = ()) -> None:
    """Add the training documents (kNN and priors) to the new store file at
    ``path``, while training, with their openings in batches, in order."""
    with training_documents_writer(path, documents.vectors.shape[1], threads) as writer:
        writer.add(documents)
        first = 0
        for batch in openings:
            writer.add_openings(first, batch)
            first += len(batch)


class LabelStore:
    """Read-only access to a store file; safe to share between threads and
    across ``fork`` (Annif's ``--jobs``): no DuckDB connection is kept open.
    The label columns are read at once, the label vectors and the training
    documents on first use (each once)."""

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
        self.has_openings = "train_openings" in tables  # stores since explanations
        self._training_documents = None
        self._vectors = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _connect(self):
        """A short-lived connection, closed after use (nothing kept across fork)."""
        con = open_store(self.path, self.threads)
        try:
            yield con
        except duckdb.Error as err:
            raise read_error(self.path, err) from err
        finally:
            con.close()

    def __len__(self) -> int:
        return len(self.concept_ids)

    def _read_vectors(self, sql: str, dtype) -> np.ndarray:
        """The FLOAT[dim] column ``vec`` of a query as a new (rows, dim) array."""
        # arrow, not polars: this may run in a process that forks later
        # (annif eval --jobs), and polars' pool dies in forks
        with self._connect() as con:
            column = con.execute(sql).to_arrow_table().column("vec").combine_chunks()
        return column.values.to_numpy().astype(dtype).reshape(-1, column.type.list_size)

    def label_vectors(self) -> np.ndarray:
        """All label vectors, float32 (labels, dimension), in label order (read once)."""
        with self._lock:
            if self._vectors is None:
                self._vectors = self._read_vectors(
                    "SELECT vec FROM store.labels ORDER BY label_id", np.float32)
            return self._vectors

    def training_documents(self) -> TrainingDocuments | None:
        """The stored training documents (read once), or None."""
        with self._lock:
            if self._training_documents is None and self.has_training_documents:
                vectors = self._read_vectors(
                    "SELECT vec FROM store.train_docs ORDER BY doc", VECTOR_DTYPE)
                with self._connect() as con:
                    pairs = con.execute(
                        "SELECT doc, concept_id FROM store.train_subjects").fetchnumpy()
                self._training_documents = TrainingDocuments.from_pairs(
                    vectors, np.asarray(pairs["doc"]), np.asarray(pairs["concept_id"]))
            return self._training_documents

    def all_label_texts(self) -> list[str]:
        """Every label's text, in label order."""
        with self._connect() as con:
            return [row[0] for row in con.execute(
                "SELECT label FROM store.labels ORDER BY label_id").fetchall()]

    def label_texts(self, label_ids) -> dict[int, str]:
        """The text of each of these labels."""
        return self._texts("SELECT label_id, label FROM store.labels", "label_id", label_ids)

    def document_openings(self, docs) -> dict[int, str]:
        """The first words of these training documents (where the store has them)."""
        if not self.has_openings:
            return {}
        return self._texts("SELECT doc, opening FROM store.train_openings", "doc", docs)

    def _texts(self, select: str, key: str, ids) -> dict[int, str]:
        ids = sorted({int(i) for i in ids})
        if not ids:
            return {}
        with self._connect() as con:
            rows = con.execute(f"{select} WHERE {key} IN (SELECT unnest(?))", [ids]).fetchall()
        return dict(rows)
