"""The embedding cache: every vector that training computed, by text.

Kept in ``ebm-train-embeddings.duckdb`` in the project's datadir (Annif ignores
``*-train*`` files when it decides whether a project is trained), one table per
*embedding space*: the model-defining settings plus the prompt, so a vector is
only ever reused for the same model, dimension and prompt. Rows are keyed by
the MD5 of the text. Retraining with the same model embeds no label and no
chunk it has embedded before.

Lookups are set operations over a whole training run: one anti-join finds the
texts to embed, one join reads the vectors back. Per-text or per-batch probes
would scan the whole table each time (DuckDB has no fast point lookups for
this), which grows quadratically with the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import duckdb
import numpy as np
import pyarrow as pa
from annif import logger

from .progress import progress_bar

CACHE_FILE = "ebm-train-embeddings.duckdb"
ALIAS = "embeddings"
ENCODE_BLOCK = 4096  # texts handed to the embedder at once


def space_table(space: dict) -> str:
    """The cache table of one embedding space (model settings and prompt)."""
    digest = hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()
    return f"{ALIAS}.vectors_{digest[:16]}"


def attach(con: duckdb.DuckDBPyConnection, datadir: str) -> None:
    """Attach the project's cache file to ``con`` as ``embeddings``. A damaged
    cache (it is only a cache) is removed with a warning and starts afresh."""
    path = os.path.join(datadir, CACHE_FILE)
    try:
        _attach_and_check(con, path)
    except duckdb.Error as err:
        con.execute(f"DETACH DATABASE IF EXISTS {ALIAS}")
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        logger.warning("the embedding cache %s is damaged (%s): removing it; every label "
                       "and chunk is embedded again", path, message)
        for damaged in (path, path + ".wal"):
            if os.path.exists(damaged):
                os.remove(damaged)
        _attach_and_check(con, path)


def _attach_and_check(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Attach ``path`` and read every table's size (pages of a truncated
    file fail here rather than in the middle of a run)."""
    quoted = path.replace("'", "''")
    con.execute(f"ATTACH '{quoted}' AS {ALIAS}")
    tables = [row[0] for row in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [ALIAS]).fetchall()]
    for table in tables:
        con.execute(f"SELECT count(*), max(key), max(vec[1]) FROM {ALIAS}.{table}").fetchone()


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A float32 matrix as an Arrow column of FLOAT[dim] values."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def fill(
    con: duckdb.DuckDBPyConnection,
    texts_query: str,
    table: str,
    dimension: int,
    encode: Callable[[list[str]], np.ndarray],
    description: str,
    progress: bool = False,
) -> int:
    """Embed the distinct texts of ``texts_query`` (a query with a column
    ``text``) that ``table`` lacks, and store them; return how many."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} (key UHUGEINT, vec FLOAT[{dimension}])")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE cache_missing AS "
        "SELECT row_number() OVER () - 1 AS i, text FROM ("
        f"SELECT DISTINCT t.text FROM ({texts_query}) t "
        f"ANTI JOIN {table} c ON md5_number(t.text) = c.key)"
    )
    (missing,) = con.execute("SELECT count(*) FROM cache_missing").fetchone()
    with progress_bar(missing, description, "text", progress) as bar:
        for start in range(0, missing, ENCODE_BLOCK):
            texts = [
                row[0]
                for row in con.execute(
                    "SELECT text FROM cache_missing WHERE i >= ? AND i < ? ORDER BY i",
                    [start, start + ENCODE_BLOCK],
                ).fetchall()
            ]
            vectors = encode(texts)
            block = pa.table({"text": pa.array(texts, pa.string()),
                              "vec": vector_array(vectors)})
            con.register("cache_block", block)
            con.execute(
                f"INSERT INTO {table} SELECT md5_number(text), vec FROM cache_block"
            )
            con.unregister("cache_block")
            bar.update(len(texts))
    con.execute("DROP TABLE cache_missing")
    return missing
