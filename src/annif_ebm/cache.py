"""The embedding cache: every vector that training computed, by text.

Kept in ``ebm-train-embeddings.duckdb`` in the project's datadir (Annif ignores
``*-train*`` files when it decides whether a project is trained), one table per
*embedding space*: the model-defining settings plus the prompt, so a vector is
only ever reused for the same model, dimension and prompt. Rows are keyed by
the MD5 of the text. Retraining with the same model embeds no label and no
chunk it has embedded before.

Lookups are set operations over a whole training run: one anti-join finds the
texts to embed, joins read the vectors back. Per-text or per-batch probes
would scan the whole table each time (DuckDB has no fast point lookups for
this), which grows quadratically with the corpus. So the cache is attached to
the training run's own DuckDB connection (a process can open a file only
once), for as long as the :class:`EmbeddingCache` is open.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
from annif import logger
from annif.exception import OperationFailedException

from . import duckdb_pool
from .memory import return_free_heap
from .model_files import CACHE_FILE, remove
from .onnx_export import kernel_set
from .params import EmbeddingSettings
from .progress import progress_bar

ALIAS = "embeddings"
ENCODE_BLOCK = 4096  # texts handed to the encoder at once
# vectors per join of texts with their cached ones: an INSERT holds its new
# rows in the (capped) pool until it commits, so a join must fit well inside:
# a quarter of it (16 MB of the 64 MB pool; at half, one of five runs of a test
# under a 32 MB pool failed with DuckDB's out-of-memory error)
JOIN_SHARE_OF_POOL = 4

Encode = Callable[[list[str]], np.ndarray]


def space_table(space: dict) -> str:
    """The cache table of one embedding space (model settings and prompt)."""
    digest = hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()
    return f"{ALIAS}.vectors_{digest[:16]}"


SPACES_TABLE = f"{ALIAS}.spaces"  # table name -> the project's own model it is of, if any


def embedding_space(params: EmbeddingSettings, role: str, model_dir: str = "") -> dict:
    """What a text's vector depends on: the model (each project's own model,
    distilled or tuned, in ``model_dir``, is its own), the engine it runs on
    (an ONNX export of the base model is the same each time it is made, for
    one instruction set), its dimensions and the prompt of the role, ``query``
    (chunks) or ``document`` (labels); names the embedding cache's table."""
    space = {
        "role": role,
        "model": params.model,
        "static_model": model_dir,  # the key's name is kept: it names the tables
        "truncate_dim": params.truncate_dim,
        "prompt": getattr(params, f"{role}_prompt"),
        "prompt_name": getattr(params, f"{role}_prompt_name"),
    }
    if params.encode_backend == "onnx":  # (torch's tables keep their names)
        int8 = params.encode_quantization == "int8"
        space["engine"] = "onnx " + (f"int8 {kernel_set()}" if int8 else "float32")
    return space


def join_rows(dimension: int) -> int:
    """Rows of ``dimension``-float vectors in a quarter of the DuckDB pool."""
    join_bytes = (duckdb_pool.MEMORY_LIMIT_MB << 20) // JOIN_SHARE_OF_POOL
    return max(1, join_bytes // (4 * dimension))


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A float32 matrix as an Arrow column of FLOAT[dim] values."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


class EmbeddingCache:
    """The project's cache file, attached to ``con`` as ``embeddings``. A
    damaged cache (it is only a cache) is removed with a warning and starts
    afresh."""

    def __init__(self, con: duckdb.DuckDBPyConnection, datadir: str) -> None:
        self._con = con
        self.path = os.path.join(datadir, CACHE_FILE)
        try:
            self._attach_and_check()
        except duckdb.Error as err:
            con.execute(f"DETACH DATABASE IF EXISTS {ALIAS}")
            message = duckdb_pool.error_line(err)
            logger.warning("the embedding cache %s is damaged (%s): removing it; every label "
                           "and chunk is embedded again", self.path, message)
            remove(self.path, self.path + ".wal")
            self._attach_and_check()

    def _attach_and_check(self) -> None:
        """Attach the file and read every table's size (pages of a truncated
        file fail here rather than in the middle of a run)."""
        quoted = self.path.replace("'", "''")
        self._con.execute(f"ATTACH '{quoted}' AS {ALIAS}")
        tables = [row[0] for row in self._con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? "
            "AND table_name LIKE 'vectors_%'", [ALIAS]).fetchall()]
        for table in tables:
            self._con.execute(f"SELECT count(*), max(key), max(vec[1]) FROM {ALIAS}.{table}")

    def forget_own_models(self, keep: str) -> None:
        """Drop the vectors of the project's own models (distilled or tuned)
        other than ``keep``: each training run makes a new one, so they are
        never asked for again and would only grow the file."""
        con = self._con
        exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = ? "
                             "AND table_name = 'spaces'", [ALIAS]).fetchone()[0]
        if not exists:
            return
        stale = [row[0] for row in con.execute(
            f"SELECT table_name FROM {SPACES_TABLE} WHERE own_model <> '' AND own_model <> ?",
            [keep]).fetchall()]
        for table in stale:
            con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute(f"DELETE FROM {SPACES_TABLE} WHERE table_name = ?", [table])
        if stale:
            logger.info("embedding cache: dropped %d tables of earlier own models", len(stale))

    def close(self) -> None:
        """Detach the file (the run goes on without it)."""
        if self._con is not None:
            self._con.execute(f"DETACH DATABASE IF EXISTS {ALIAS}")
            self._con = None

    def fill(self, texts_query: str, space: dict, dimension: int, encode: Encode,
             description: str, progress: bool = False) -> tuple[str, int]:
        """Embed the distinct texts of ``texts_query`` (a query of the run
        with a column ``text``) that the space's table lacks, and store them;
        return that table (to join with) and how many were embedded."""
        table = space_table(space)
        con = self._con
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} (key UHUGEINT, vec FLOAT[{dimension}])")
        con.execute(f"CREATE TABLE IF NOT EXISTS {SPACES_TABLE} "
                    "(table_name VARCHAR PRIMARY KEY, own_model VARCHAR)")
        con.execute(f"INSERT OR IGNORE INTO {SPACES_TABLE} VALUES (?, ?)",
                    [table, space.get("static_model", "")])
        con.execute(
            "CREATE OR REPLACE TEMP TABLE cache_missing AS "
            "SELECT row_number() OVER () - 1 AS i, text FROM ("
            f"SELECT DISTINCT t.text FROM ({texts_query}) t "
            f"ANTI JOIN {table} c ON md5_number(t.text) = c.key)"
        )
        (missing,) = con.execute("SELECT count(*) FROM cache_missing").fetchone()
        with progress_bar(missing, description, "text", progress) as bar:
            for start in range(0, missing, ENCODE_BLOCK):
                texts = [row[0] for row in con.execute(
                    "SELECT text FROM cache_missing WHERE i >= ? AND i < ? ORDER BY i",
                    [start, start + ENCODE_BLOCK]).fetchall()]
                block = pa.table({"text": pa.array(texts, pa.string()),
                                  "vec": vector_array(encode(texts))})
                con.register("cache_block", block)
                con.execute(f"INSERT INTO {table} SELECT md5_number(text), vec FROM cache_block")
                con.unregister("cache_block")
                bar.update(len(texts))
                del texts, block
                # each block's tokens and activations differ in size: the heap
                # drifted up by ~170 MB over 150k chunks without this
                return_free_heap()
        con.execute("DROP TABLE cache_missing")
        # the new vectors to the file before a join streams the table (under
        # a 32 MB pool the join ran out of memory in 5 of 8 test runs without
        # this, 1 of 8 with it: the join's retry in halves does the rest)
        con.execute(f"CHECKPOINT {ALIAS}")
        return table, missing

    def vectors(self, texts: list[str], space: dict, dimension: int, encode: Encode,
                description: str, progress: bool = False) -> tuple[np.ndarray, int]:
        """Vectors of ``texts`` in order (embedding those not cached yet), and
        how many had to be embedded."""
        con = self._con
        con.execute("CREATE OR REPLACE TEMP TABLE cache_texts (i BIGINT, text VARCHAR)")
        con.register("new_texts", pl.DataFrame({
            "i": pl.Series(np.arange(len(texts)), dtype=pl.Int64),
            "text": pl.Series(texts, dtype=pl.String)}).to_arrow())
        con.execute("INSERT INTO cache_texts SELECT * FROM new_texts")
        con.unregister("new_texts")
        table, embedded = self.fill("SELECT text FROM cache_texts", space, dimension, encode,
                                    description, progress)
        vectors = np.zeros((len(texts), dimension), dtype=np.float32)
        found = 0
        rows_per_join = join_rows(dimension)
        for start in range(0, len(texts), rows_per_join):  # bounded joins, nothing to sort
            arrow = con.execute(
                f"SELECT t.i, c.vec FROM cache_texts t JOIN {table} c "
                "ON md5_number(t.text) = c.key WHERE t.i >= ? AND t.i < ?",
                [start, start + rows_per_join],
            ).to_arrow_table()
            rows = arrow.column("i").to_numpy()
            vectors[rows] = arrow.column("vec").combine_chunks().values.to_numpy().reshape(
                len(rows), dimension)
            found += len(rows)
        con.execute("DROP TABLE cache_texts")
        if found != len(texts):
            raise OperationFailedException(
                f"the embedding cache returned {found} vectors for {len(texts)} texts; "
                f"delete {self.path} and train again"
            )
        return vectors, embedded
