"""Training data on disk: documents' chunks, gold subjects, candidate features.

A training run writes ``tmp-ebm-train.duckdb`` in the project's datadir and,
once the ranker trained from it is saved, renames it to ``ebm-train.duckdb``
(so a failed run never replaces the previous run's data; Annif ignores
``*-train*`` files when deciding whether a project is trained). Every table
grows batch by batch and is read back by document ranges in insertion order
(DuckDB's zone maps skip the rest), so memory stays bounded however large the
corpus, and ``annif train --cached`` retrains the ranker without embedding
anything. Vectors come from the embedding cache (:mod:`annif_ebm.cache`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import duckdb
import numpy as np
import polars as pl

from annif import logger
from annif.exception import NotInitializedException, OperationFailedException

from . import duckdb_pool
from .cache import EmbeddingCache, Encode, join_rows
from .features import FEATURE_NAMES
from .model_files import TRAIN_FILE, remove, tmp_name
from .store import OPENING_CHARS

# The run and the reads of its candidates use DuckDB's buffer pool of
# duckdb_pool.MEMORY_LIMIT_MB: it spills joins, sorts and large results to the
# run's spill folder beyond that, and otherwise keeps the pages it wrote or
# read cached up to it, so it bounds how much memory the run's tables take
# however large the corpus.
# candidate rows per batch the ranker reads, at most (about 12 MB of
# features): whole documents, so a batch of long documents is no larger than
# one of short ones; a smaller pool gets smaller batches (ranker_batch_rows)
RANKER_BATCH_ROWS = 100_000
# a batch's features and its sorted copy stay within this share of the pool
RANKER_BATCH_SHARE_OF_POOL = 8

_METADATA_TABLE = "model_metadata"
_CANDIDATE_COLUMNS = ", ".join(f"{name} FLOAT" for name in FEATURE_NAMES)


class ChunkVectors:
    """The chunk vectors of a run that has embedded its chunks (only
    :meth:`TrainingRun.embed_chunks` makes one), read back by document ranges."""

    def __init__(self, con: duckdb.DuckDBPyConnection, dimension: int, n_docs: int,
                 embedded: int) -> None:
        self._con = con
        self.dimension = dimension
        self.n_docs = n_docs
        self.embedded = embedded  # chunks the encoder embedded (the rest were cached)

    def batches(self, docs_per_batch: int, n_docs: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """(first document, doc offsets, positions, n_chunks, vectors) per
        range of ``docs_per_batch`` of the first ``n_docs`` documents; docs
        are relative to the first."""
        for first in range(0, min(n_docs, self.n_docs), docs_per_batch):
            last = min(first + docs_per_batch, n_docs, self.n_docs)
            arrow = self._con.execute(
                "SELECT doc, pos, vec FROM chunk_vectors WHERE doc >= ? AND doc < ? "
                "ORDER BY doc, pos", [first, last]
            ).to_arrow_table()
            doc = (arrow.column("doc").to_numpy() - first).astype(np.uint32)
            position = arrow.column("pos").to_numpy().astype(np.uint32)
            flat = arrow.column("vec").combine_chunks().values.to_numpy()
            # a copy: Arrow's buffers are read-only, and torch warns of those
            vectors = flat.reshape(len(doc), self.dimension).astype(np.float32)
            n_chunks = np.bincount(doc, minlength=last - first)
            yield first, doc, position, n_chunks, vectors

    def texts(self, first: int, last: int) -> list[str]:
        """The texts of the chunks of documents ``first`` to ``last``, in the
        order of :meth:`batches`."""
        return [row[0] for row in self._con.execute(
            "SELECT text FROM chunks WHERE doc >= ? AND doc < ? ORDER BY doc, pos",
            [first, last]).fetchall()]


class TrainingRun:
    """The on-disk state of one training run, in two phases: documents are
    added (their chunks and gold subjects) while :attr:`cache` is open, the
    embedding cache that also gives the labels' vectors; :meth:`embed_chunks`
    closes it and returns the :class:`ChunkVectors`; then the run takes
    candidates."""

    def __init__(self, datadir: str, threads: int = 0) -> None:
        self.datadir = datadir
        self._path = os.path.join(datadir, tmp_name(TRAIN_FILE))
        remove(self._path, self._path + ".wal")
        self.spill_dir = duckdb_pool.new_spill_directory(datadir)
        self._con = duckdb_pool.connect(self._path, self.spill_dir, threads=threads)
        self.cache = EmbeddingCache(self._con, datadir)
        self._con.execute("CREATE TABLE chunks (doc BIGINT, pos INTEGER, text VARCHAR)")
        self._con.execute("CREATE TABLE gold (doc BIGINT, concept_id INTEGER)")
        self._con.execute(
            f"CREATE TABLE candidates (doc BIGINT, concept_id INTEGER, "
            f"{_CANDIDATE_COLUMNS}, gold BOOLEAN)"
        )
        self.n_docs = 0
        self.n_rows = 0

    # ---- documents ----

    def add_documents(self, doc: np.ndarray, position: np.ndarray, chunks: list[str],
                      gold: list[list[int]]) -> None:
        """Add a batch of documents: chunk ``i`` is chunk ``position[i]`` of
        batch document ``doc[i]``; ``gold[d]`` are document ``d``'s subject ids."""
        frame = pl.DataFrame({
            "doc": pl.Series(doc, dtype=pl.Int64) + self.n_docs,
            "pos": pl.Series(position, dtype=pl.Int32),
            "text": pl.Series(chunks, dtype=pl.String),
        })
        gold_frame = pl.DataFrame({
            "doc": pl.Series([d + self.n_docs for d, ids in enumerate(gold) for _ in ids],
                             dtype=pl.Int64),
            "concept_id": pl.Series([i for ids in gold for i in ids], dtype=pl.Int32),
        })
        self._insert("chunks", frame)
        self._insert("gold", gold_frame)
        self.n_docs += len(gold)

    def _insert(self, table: str, frame: pl.DataFrame) -> None:
        self._con.register("batch_rows", frame.to_arrow())
        self._con.execute(f"INSERT INTO {table} SELECT * FROM batch_rows")
        self._con.unregister("batch_rows")

    # ---- embedding through the cache ----

    def embed_chunks(self, space: dict, dimension: int, encode: Encode,
                     progress: bool = False) -> ChunkVectors:
        """Embed the chunks not in the cache yet, take every chunk's vector
        into the run and close the cache."""
        table, embedded = self.cache.fill("SELECT text FROM chunks", space, dimension, encode,
                                          "train chunks", progress)
        self._con.execute(f"CREATE TABLE chunk_vectors (doc BIGINT, pos INTEGER, vec FLOAT[{dimension}])")
        (n_chunks,) = self._con.execute("SELECT count(*) FROM chunks").fetchone()
        docs_per_join = max(1, join_rows(dimension) * self.n_docs // max(n_chunks, 1))
        for first in range(0, self.n_docs, docs_per_join):
            self._join_vectors(table, first, min(first + docs_per_join, self.n_docs))
        # each document's first chunk: its first words in explanations (one
        # streaming statement: a table filled along with the chunks pushed a
        # run under a 32 MB pool out of memory in the join above)
        self._con.execute(f"CREATE TABLE openings AS SELECT doc, left(text, {OPENING_CHARS}) "
                          "AS text FROM chunks WHERE pos = 0")
        # the rest reads chunk_vectors, the chunks' texts (lexical features)
        # and gold by ranges: the cache is done with
        self.cache.close()
        self._con.execute("CHECKPOINT")
        return ChunkVectors(self._con, dimension, self.n_docs, embedded)

    def _join_vectors(self, table: str, first: int, last: int) -> None:
        """Take the cached vectors of documents ``first`` to ``last`` into
        ``chunk_vectors``: the join builds on the range's chunks and streams
        the cache; unsorted (chunk_batches sorts each range it reads), as a sort
        here ran out of the pool. A range that still runs out of the pool (the
        insert's buffers vary with thread timing: one test run in four under a
        32 MB pool) is done again in halves; a failed statement left nothing."""
        try:
            self._con.execute(
                "INSERT INTO chunk_vectors SELECT ch.doc, ch.pos, c.vec FROM chunks ch "
                f"JOIN {table} c ON md5_number(ch.text) = c.key "
                "WHERE ch.doc >= ? AND ch.doc < ?",
                [first, last],
            )
        except duckdb.OutOfMemoryException as err:
            if last - first <= 1:
                raise
            logger.info("joining the vectors of documents %d-%d in halves: %s", first, last,
                         duckdb_pool.error_line(err))
            middle = (first + last) // 2
            self._join_vectors(table, first, middle)
            self._join_vectors(table, middle, last)

    def openings(self, docs_per_batch: int = 10_000) -> Iterator[list[str]]:
        """The first words of every document in order, a batch at a time
        (empty for a document without chunks)."""
        for first in range(0, self.n_docs, docs_per_batch):
            last = min(first + docs_per_batch, self.n_docs)
            found = dict(self._con.execute(
                "SELECT doc, text FROM openings WHERE doc >= ? AND doc < ?", [first, last]
            ).fetchall())
            yield [found.get(doc, "") for doc in range(first, last)]

    def gold_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(document, concept_id) of every gold subject."""
        pairs = self._con.execute("SELECT doc, concept_id FROM gold ORDER BY doc").fetchnumpy()
        return np.asarray(pairs["doc"]), np.asarray(pairs["concept_id"])

    # ---- candidates ----

    def add_candidates(self, first_doc: int, last_doc: int, candidates: pl.DataFrame) -> None:
        """Store one range's candidates (``doc`` relative to ``first_doc``),
        labelled with the gold subjects."""
        rows = candidates.with_columns(doc=pl.col("doc").cast(pl.Int64) + first_doc).select(
            "doc", "concept_id", *FEATURE_NAMES)
        self._con.register("batch_rows", rows.to_arrow())
        self._con.execute(
            "INSERT INTO candidates SELECT b.*, g.doc IS NOT NULL FROM batch_rows b "
            "LEFT JOIN (SELECT DISTINCT doc, concept_id FROM gold WHERE doc >= ? AND doc < ?) g "
            "ON g.doc = b.doc AND g.concept_id = b.concept_id", [first_doc, last_doc]
        )
        self._con.unregister("batch_rows")
        self.n_rows += len(rows)

    def finish(self, metadata: dict) -> str:
        """Keep only the candidates, with the metadata of the model they were
        collected for (``train --cached`` trains its ranker from them), and
        close the file; return its path."""
        for table in ("chunks", "chunk_vectors", "gold"):
            self._con.execute(f"DROP TABLE IF EXISTS {table}")
        self._con.execute(f"CREATE TABLE {_METADATA_TABLE} (json VARCHAR)")
        self._con.execute(f"INSERT INTO {_METADATA_TABLE} VALUES (?)", [json.dumps(metadata)])
        self._con.execute("CHECKPOINT")
        self._close()
        return self._path

    def _close(self) -> None:
        if self._con is not None:
            self.cache.close()
            self._con.close()
            self._con = None
        duckdb_pool.remove_spill_directory(self.spill_dir)

    def publish(self) -> None:
        """Make the finished file the project's ``ebm-train.duckdb`` (once)."""
        if os.path.exists(self._path):
            os.replace(self._path, os.path.join(self.datadir, TRAIN_FILE))

    def abort(self) -> None:
        self._close()
        remove(self._path, self._path + ".wal")


def cached_training_data(datadir: str) -> str:
    """The path of the previous run's training data (``train --cached``)."""
    return os.path.join(datadir, TRAIN_FILE)


def stored_metadata(path: str) -> dict | None:
    """The metadata of the model whose candidates the training data file
    ``path`` holds; None for a missing, unreadable or older file."""
    if not os.path.exists(path):
        return None
    try:
        with duckdb.connect(path, read_only=True) as con:
            tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
            if _METADATA_TABLE not in tables:
                return None
            row = con.execute(f"SELECT json FROM {_METADATA_TABLE}").fetchone()
    except duckdb.Error:
        return None
    return json.loads(row[0]) if row else None


def stored_features(con: duckdb.DuckDBPyConnection) -> list[str]:
    """SQL for each of :data:`FEATURE_NAMES` from the candidates table: the
    column, or NULL for a feature added after the file was written (``train
    --cached`` on an older run's candidates; its model's settings leave that
    feature off)."""
    stored = {row[0] for row in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = 'candidates'").fetchall()}
    return [name if name in stored else f"NULL::FLOAT AS {name}" for name in FEATURE_NAMES]


def _document_ranges(con: duckdb.DuckDBPyConnection, max_rows: int) -> list[tuple[int, int]]:
    """[first, last) document ranges of at most ``max_rows`` candidates each
    (a document with more gets a range of its own)."""
    counts = con.execute(
        "SELECT doc, count(*) AS n FROM candidates GROUP BY doc ORDER BY doc").fetchnumpy()
    ranges, first, rows = [], None, 0
    for doc, n in zip(counts["doc"].tolist(), counts["n"].tolist()):
        if first is None:
            first = doc
        elif rows + n > max_rows:
            ranges.append((first, doc))
            first, rows = doc, 0
        rows += n
    if first is not None:
        ranges.append((first, int(counts["doc"][-1]) + 1))
    return ranges


def ranker_batch_rows() -> int:
    """Candidate rows per ranker batch under the current DuckDB pool."""
    row_bytes = 4 * (len(FEATURE_NAMES) + 3)  # features, gold, doc, concept_id
    fit = (duckdb_pool.MEMORY_LIMIT_MB << 20) // (RANKER_BATCH_SHARE_OF_POOL * row_bytes)
    return max(1_000, min(RANKER_BATCH_ROWS, fit))


def candidate_batches(path: str, workdir: str,
                      cached: bool = False
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(features, gold flags, document ids) of the training candidates in the file ``path``,
    whole documents of at most :func:`ranker_batch_rows` rows at a time; a
    fresh iterator each call. ``cached``: the file is an earlier run's."""
    if not os.path.exists(path):
        raise NotInitializedException(
            f"cached training data {path} not found; train without --cached first")
    try:
        with duckdb_pool.spill_directory(workdir) as spill_dir, \
                duckdb_pool.connect(path, spill_dir, read_only=True) as con:
            stored = ", ".join(stored_features(con))
            for first, last in _document_ranges(con, ranker_batch_rows()):
                columns = con.execute(
                    f"SELECT doc, {stored}, gold FROM candidates "
                    "WHERE doc >= ? AND doc < ? ORDER BY doc, concept_id", [first, last],
                ).fetchnumpy()
                gold = np.asarray(columns["gold"], dtype=bool)
                docs = np.asarray(columns["doc"], dtype=np.int64)
                features = np.column_stack([  # NULL (a missing feature) -> NaN
                    np.ma.filled(np.ma.asarray(columns[name], dtype=np.float32), np.nan)
                    for name in FEATURE_NAMES])
                # nothing of DuckDB's result may outlive the next query: held
                # results fragment the heap, and memory grew with every batch
                del columns
                yield features, gold, docs
    except duckdb.Error as err:
        advice = "; train without --cached to collect them again" if cached else ""
        raise OperationFailedException(
            f"cannot read training candidates {path}: {duckdb_pool.error_line(err)}{advice}"
        ) from err
