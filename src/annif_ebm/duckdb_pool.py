"""DuckDB connections whose memory cap slows them down but never fails them.

Training runs DuckDB under a small buffer pool (:data:`MEMORY_LIMIT_MB`), so its
tables cost the same memory however large the corpus. A query or a result
larger than the pool must then go to disk: every capped connection gets a
``temp_directory`` of its own inside the project's data directory (a
``tmp-ebm-spill-*`` folder, removed with the run, and as a leftover of a
killed run by the next one). Without it a read-only connection cannot spill
at all and fails with "Out of Memory Error".
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator

import duckdb

from .model_files import SPILL_PREFIX

MEMORY_LIMIT_MB = 64


def error_line(err: Exception) -> str:
    """The first line of a DuckDB error (its advice follows on further lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def new_spill_directory(datadir: str) -> str:
    """A fresh folder for one run's spilled pages, inside ``datadir``."""
    return tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=datadir)


def remove_spill_directory(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def spill_directory(datadir: str) -> Iterator[str]:
    """A spill folder for the duration of a ``with`` block."""
    path = new_spill_directory(datadir)
    try:
        yield path
    finally:
        remove_spill_directory(path)


def connect(database: str, spill_dir: str, *, read_only: bool = False,
            threads: int = 0) -> duckdb.DuckDBPyConnection:
    """A connection to ``database`` (a file or ``:memory:``) capped at
    :data:`MEMORY_LIMIT_MB` that spills to ``spill_dir`` beyond it. Written
    rows are checkpointed to the file whenever a quarter of the pool is new
    (DuckDB's default, 16 MB, would let them fill a small pool)."""
    config = {
        "memory_limit": f"{MEMORY_LIMIT_MB}MB",
        "temp_directory": spill_dir,
        "checkpoint_threshold": f"{max(1, MEMORY_LIMIT_MB // 4)}MB",
    }
    if threads:
        config["threads"] = threads
    return duckdb.connect(database, read_only=read_only, config=config)
