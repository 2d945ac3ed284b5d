"""Stage 6: the XGBoost model that scores candidate concepts.

Two objectives: ``pairwise`` learns the order of each training document's
candidates (the documents are XGBoost's query groups), and a logistic curve
fitted on the training candidates maps its ranking scores to probabilities
(Platt scaling), so that thresholds and ensembles see the same scale as
``binary``, which classifies each candidate on its own.

Saved in XGBoost's own UBJSON format (never pickle), with the feature names
and the curve inside, so a model from another feature set is refused rather
than misread.
Training reads the candidates batch by batch through XGBoost's external-memory
data (pages cached on disk), so it never holds all training rows at once.
"""

from __future__ import annotations

import json
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

# booster attribute with the (slope, intercept) of a pairwise ranker's curve
CALIBRATION_ATTR = "ebm_calibration"
# training rows the curve is fitted on, at most (every k-th row beyond)
CALIBRATION_ROWS = 1_000_000

# (features, gold flags, document ids in ascending order) of training rows
Batches = Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]


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
        # the booster's features among FEATURE_NAMES: a model trained before
        # a feature was added reads the columns it knows
        self.columns = [FEATURE_NAMES.index(name) for name in booster.feature_names]
        curve = booster.attr(CALIBRATION_ATTR)
        self.calibration = tuple(json.loads(curve)) if curve else None
        self._lock = threading.Lock()
        self._threads = None

    @classmethod
    def train(cls, batches: Batches, params: RankerSettings, workdir: str,
              feature_names: tuple[str, ...] = FEATURE_NAMES) -> Ranker:
        """Train on ``batches()``: a fresh iterator of (features, gold flags,
        document ids) per call, each document's rows in one batch, its columns
        ``feature_names`` (a subset of :data:`FEATURE_NAMES`). XGBoost's page
        cache lives in a temporary folder in ``workdir``."""
        n_rows = n_gold = n_batches = 0
        for _, labels, _ in batches():
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
                    _BatchIter(batches, params, os.path.join(cache_dir, "pages"), bar,
                               n_batches, feature_names),
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
        if params.xgb_objective == "pairwise":
            curve = platt_scaling(*_margins_and_gold(booster, batches, n_rows))
            booster.set_attr(**{CALIBRATION_ATTR: json.dumps(curve)})
        return cls(booster)

    @staticmethod
    def _fit(data: xgb.DMatrix, params: RankerSettings,
             progress: xgb.callback.TrainingCallback | None = None) -> xgb.Booster:
        return xgb.train(
            {
                **({"objective": "rank:pairwise", "eval_metric": "ndcg@5"}
                   if params.xgb_objective == "pairwise"
                   else {"objective": "binary:logistic", "eval_metric": "logloss"}),
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
        if not booster.feature_names or not set(booster.feature_names) <= set(FEATURE_NAMES):
            raise OperationFailedException(
                f"ranker model {path} was trained with other features "
                f"({booster.feature_names}); retrain the project"
            )
        return cls(booster)

    def predict(self, features: np.ndarray, threads: int = 0,
                boosts: np.ndarray | None = None) -> np.ndarray:
        """Probability that each candidate is a correct subject
        (``features``: the columns of :data:`FEATURE_NAMES`); ``boosts``:
        log-odds added to each candidate's (see :meth:`margin_boosts`)."""
        if len(features) == 0:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            if threads != self._threads:
                self.booster.set_param({"nthread": threads})
                self._threads = threads
            if boosts is not None or self.calibration is not None:
                margins = self.booster.inplace_predict(self._own_columns(features),
                                                       predict_type="margin")
                return self.probability(margins, boosts)
            return self.booster.inplace_predict(self._own_columns(features)).astype(np.float32)

    def _own_columns(self, features: np.ndarray) -> np.ndarray:
        return features[:, self.columns] if len(self.columns) != features.shape[1] else features

    def contributions(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How much each of the booster's features (:attr:`feature_names`)
        moved each candidate's margin, and the bias: XGBoost's own SHAP
        values, which sum with the bias to the margin (see :meth:`probability`)."""
        if len(features) == 0:
            return np.zeros((0, len(self.columns)), dtype=np.float32), np.zeros(0, np.float32)
        data = xgb.DMatrix(self._own_columns(features), feature_names=self.feature_names)
        with self._lock:
            values = self.booster.predict(data, pred_contribs=True)
        return values[:, :-1], values[:, -1]

    @property
    def baseline(self) -> float:
        """The margin before any feature (the bias of :meth:`contributions`)."""
        return float(self.contributions(np.full((1, len(FEATURE_NAMES)), np.nan,
                                                dtype=np.float32))[1][0])

    def margins(self, features: np.ndarray) -> np.ndarray:
        """The booster's raw scores (before the logistic curve)."""
        if len(features) == 0:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            return self.booster.inplace_predict(self._own_columns(features),
                                                predict_type="margin")

    def probability(self, margins: np.ndarray, boosts: np.ndarray | None = None) -> np.ndarray:
        """The score :meth:`predict` gives for these margins (and boosts)."""
        a, b = self.calibration if self.calibration is not None else (1.0, 0.0)
        logits = a * np.asarray(margins, dtype=np.float64) + b
        if boosts is not None:
            logits = logits + boosts
        return _sigmoid(logits).astype(np.float32)

    def margin_boosts(self, boosts: np.ndarray) -> np.ndarray:
        """Log-odds ``boosts`` in the booster's margin units: a margin raised
        by these gets the boosted probability."""
        a = self.calibration[0] if self.calibration is not None else 1.0
        return (np.asarray(boosts, dtype=np.float64) / a).astype(np.float32)

    @property
    def feature_names(self) -> list[str]:
        return list(self.booster.feature_names)


def relevance(features: np.ndarray, gold: np.ndarray, params: RankerSettings,
              feature_names: tuple[str, ...] = FEATURE_NAMES) -> np.ndarray:
    """The label of each training row: 0, or 1 for a gold subject, or
    ``unseen_relevance`` (pairwise) for a gold subject no other training
    document has (its leave-one-out prior is 0)."""
    labels = gold.astype(np.float32)
    if params.xgb_objective == "pairwise" and params.unseen_relevance != 1.0:
        unseen = gold & (features[:, feature_names.index("prior")] == 0)  # NaN: no prior
        labels[unseen] = params.unseen_relevance
    return labels


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0)))


def _margins_and_gold(booster: xgb.Booster, batches: Batches,
                      n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The booster's scores of the training rows and their gold flags, every
    k-th row where there are more than :data:`CALIBRATION_ROWS`."""
    step = -(-n_rows // CALIBRATION_ROWS)
    margins, golds, seen = [], [], 0
    for features, gold, _ in batches():
        keep = slice((-seen) % step, None, step)
        margins.append(booster.inplace_predict(features[keep]))
        golds.append(gold[keep])
        seen += len(gold)
    return np.concatenate(margins), np.concatenate(golds)


def platt_scaling(margins: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    """(a, b) of the curve P(gold) = sigmoid(a x margin + b) with the least
    log loss, by Newton's method."""
    x = np.column_stack([margins, np.ones_like(margins)]).astype(np.float64)
    y = gold.astype(np.float64)
    w = np.array([1.0, 0.0])
    for _ in range(100):
        p = _sigmoid(x @ w)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        step = np.linalg.solve(hessian, x.T @ (p - y))
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


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

    def __init__(self, batches: Batches, params: RankerSettings, cache_prefix: str,
                 bar=None, total: int = 0,
                 feature_names: tuple[str, ...] = FEATURE_NAMES) -> None:
        self._batches = batches
        self._names = feature_names
        self._params = params
        self._iterator = None
        self._bar, self._uncounted = bar, total
        super().__init__(cache_prefix=cache_prefix)

    def next(self, input_data: Callable) -> bool:
        if self._iterator is None:
            self._iterator = self._batches()
        batch = next(self._iterator, None)
        if batch is None:
            return False
        features, gold, docs = batch
        pairwise = self._params.xgb_objective == "pairwise"
        input_data(data=features, label=relevance(features, gold, self._params, self._names),
                   qid=docs if pairwise else None, feature_names=list(self._names))
        if self._bar is not None and self._uncounted > 0:
            self._bar.update(1)
            self._uncounted -= 1
        return True

    def reset(self) -> None:
        self._iterator = None
