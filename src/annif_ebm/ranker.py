"""Stage 6: the XGBoost model that scores candidate concepts.

Saved in XGBoost's own UBJSON format (never pickle), with the feature names
inside, so a model from another feature set is refused rather than misread.
Training reads the candidates batch by batch through XGBoost's external-memory
data (pages cached on disk), so it never holds all training rows at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator

import numpy as np
import xgboost as xgb

from annif.exception import OperationFailedException

from .features import FEATURE_NAMES
from .model_files import XGB_CACHE_PREFIX
from .params import RankerSettings
from .progress import progress_bar


def xgboost_message(err: Exception) -> str:
    """XGBoost's own words without its C++ location and stack trace."""
    text = str(err).split("Stack trace:")[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # "[12:00:00] /path/to/file.cc:123: Check failed: ..." -> "Check failed: ..."
    return " ".join(line.split(": ", 2)[-1] if line.startswith("[") else line
                    for line in lines) or type(err).__name__


class NothingToLearnError(OperationFailedException):
    """No candidate is a gold subject: the collected candidates are useless."""


class Ranker:
    def __init__(self, booster: xgb.Booster) -> None:
        self.booster = booster
        self._lock = threading.Lock()
        self._threads = None

    @classmethod
    def train(cls, batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
              params: RankerSettings, workdir: str) -> Ranker:
        """Train on ``batches()``: a fresh iterator of (features, gold flags)
        per call. XGBoost's page cache lives in a temporary folder in ``workdir``."""
        n_rows = n_gold = n_batches = 0
        for _, labels in batches():
            n_rows += len(labels)
            n_gold += int(labels.sum())
            n_batches += 1
        if n_gold == 0:
            raise NothingToLearnError(
                f"no candidate (of {n_rows}) matches any gold subject of the training "
                "documents, so the ranker has nothing to learn from; check that the "
                "training corpus uses this vocabulary and language"
            )
        cache_dir = tempfile.mkdtemp(prefix=XGB_CACHE_PREFIX, dir=workdir)
        try:
            with progress_bar(n_batches, "ranker data", "batch") as bar:
                data = xgb.ExtMemQuantileDMatrix(
                    _BatchIter(batches, os.path.join(cache_dir, "pages"), bar, n_batches),
                    nthread=params.xgb_jobs or None,
                )
            with progress_bar(params.xgb_rounds, "ranker rounds", "round") as bar:
                trained = cls._fit(data, params, _RoundProgress(bar))
            # a copy that holds no reference to the data, so XGBoost releases
            # (and deletes) its page files before the folder goes
            booster = xgb.Booster(model_file=trained.save_raw())
            del trained, data
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        return cls(booster)

    @staticmethod
    def _fit(data: xgb.DMatrix, params: RankerSettings,
             progress: xgb.callback.TrainingCallback | None = None) -> xgb.Booster:
        return xgb.train(
            {
                "objective": "binary:logistic",
                "eval_metric": "logloss",
                "eta": params.xgb_eta,
                "max_depth": params.xgb_max_depth,
                "subsample": params.xgb_subsample,
                "tree_method": "hist",
                "nthread": params.xgb_jobs or 0,
                "seed": 42,
            },
            data,
            num_boost_round=params.xgb_rounds,
            callbacks=[progress] if progress is not None else None,
        )

    def save(self, path: str) -> None:
        self.booster.save_model(path)

    @classmethod
    def load(cls, path: str) -> Ranker:
        booster = xgb.Booster()
        try:
            booster.load_model(path)
        except xgb.core.XGBoostError as err:
            raise OperationFailedException(
                f"cannot read ranker model {path}: {xgboost_message(err)}; retrain the project"
            ) from None
        if tuple(booster.feature_names or ()) != FEATURE_NAMES:
            raise OperationFailedException(
                f"ranker model {path} was trained with other features "
                f"({booster.feature_names}); retrain the project"
            )
        return cls(booster)

    def predict(self, features: np.ndarray, threads: int = 0) -> np.ndarray:
        """Probability that each candidate is a correct subject."""
        if len(features) == 0:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            if threads != self._threads:
                self.booster.set_param({"nthread": threads})
                self._threads = threads
            return self.booster.inplace_predict(features).astype(np.float32)


class _RoundProgress(xgb.callback.TrainingCallback):
    def __init__(self, bar) -> None:
        super().__init__()
        self._bar = bar

    def after_iteration(self, model, epoch, evals_log) -> bool:
        self._bar.update(1)
        return False  # go on


class _BatchIter(xgb.DataIter):
    """Feeds XGBoost one batch of training rows at a time; counts the first
    ``total`` batches (the first pass) on ``bar``."""

    def __init__(self, batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
                 cache_prefix: str, bar=None, total: int = 0) -> None:
        self._batches = batches
        self._iterator = None
        self._bar, self._uncounted = bar, total
        super().__init__(cache_prefix=cache_prefix)

    def next(self, input_data: Callable) -> bool:
        if self._iterator is None:
            self._iterator = self._batches()
        batch = next(self._iterator, None)
        if batch is None:
            return False
        features, labels = batch
        input_data(data=features, label=labels.astype(np.float32),
                   feature_names=list(FEATURE_NAMES))
        if self._bar is not None and self._uncounted > 0:
            self._bar.update(1)
            self._uncounted -= 1
        return True

    def reset(self) -> None:
        self._iterator = None
