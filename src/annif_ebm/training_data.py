"""Candidate features of the training documents, kept on disk.

Written batch by batch into ``ebm-train.duckdb`` in the project's datadir
(Annif ignores ``*-train*`` files when deciding whether a project is
trained), so memory stays bounded however large the corpus, and
``annif train --cached`` retrains the ranker without embedding anything.
"""

from __future__ import annotations

import os

import duckdb
import numpy as np
import polars as pl

from annif.exception import NotInitializedException, OperationFailedException

from .features import FEATURE_NAMES
from .model_files import tmp_name

TRAIN_FILE = "ebm-train.duckdb"


class TrainingDataWriter:
    """Appends labelled candidate rows; :meth:`finish` publishes the file."""

    def __init__(self, datadir: str) -> None:
        self.datadir = datadir
        self._tmp_path = os.path.join(datadir, tmp_name(TRAIN_FILE))
        for path in (self._tmp_path, self._tmp_path + ".wal"):
            if os.path.exists(path):
                os.remove(path)
        self._con = duckdb.connect(self._tmp_path)
        columns = ", ".join(f"{name} FLOAT" for name in FEATURE_NAMES)
        self._con.execute(
            f"CREATE TABLE candidates (doc BIGINT, concept_id INTEGER, {columns}, "
            "gold BOOLEAN)"
        )
        self.n_docs = 0
        self.n_rows = 0

    def append(self, candidates: pl.DataFrame, gold: list) -> None:
        """Add one batch: ``gold[d]`` is the gold subject ids of batch doc ``d``."""
        gold_pairs = pl.DataFrame(
            {
                "doc": pl.Series([d for d, ids in enumerate(gold) for _ in ids], dtype=pl.UInt32),
                "concept_id": pl.Series([i for ids in gold for i in ids], dtype=pl.Int32),
                "gold": pl.Series([True] * sum(len(ids) for ids in gold), dtype=pl.Boolean),
            }
        )
        rows = (
            candidates.join(gold_pairs, on=["doc", "concept_id"], how="left")
            .with_columns(
                doc=pl.col("doc").cast(pl.Int64) + self.n_docs,
                gold=pl.col("gold").fill_null(False),
            )
            .select("doc", "concept_id", *FEATURE_NAMES, "gold")
        )
        self._con.register("batch_rows", rows)
        self._con.execute("INSERT INTO candidates SELECT * FROM batch_rows")
        self._con.unregister("batch_rows")
        self.n_docs += len(gold)
        self.n_rows += len(rows)

    def finish(self) -> None:
        self._con.execute("CHECKPOINT")
        self._con.close()
        os.replace(self._tmp_path, os.path.join(self.datadir, TRAIN_FILE))

    def abort(self) -> None:
        self._con.close()
        for path in (self._tmp_path, self._tmp_path + ".wal"):
            if os.path.exists(path):
                os.remove(path)


def read_training_data(datadir: str, backend_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and gold flags of all stored training candidates."""
    path = os.path.join(datadir, TRAIN_FILE)
    if not os.path.exists(path):
        raise NotInitializedException(
            f"cached training data {path} not found; train without --cached first",
            backend_id=backend_id,
        )
    try:
        with duckdb.connect(path, read_only=True) as con:
            frame = con.execute(
                f"SELECT {', '.join(FEATURE_NAMES)}, gold FROM candidates ORDER BY doc, concept_id"
            ).pl()
    except duckdb.Error as err:
        raise OperationFailedException(
            f"cannot read cached training data {path}: {err}; train without --cached"
        ) from err
    features = frame.select(FEATURE_NAMES).to_numpy().astype(np.float32)
    return features, frame["gold"].to_numpy()
