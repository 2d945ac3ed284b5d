"""Stage 6: the XGBoost model that scores candidate concepts.

Saved in XGBoost's own UBJSON format (never pickle), with the feature names
inside, so a model from another feature set is refused rather than misread.
"""

from __future__ import annotations

import threading

import numpy as np
import xgboost as xgb

from annif.exception import OperationFailedException

from .features import FEATURE_NAMES
from .params import EbmParams


class Ranker:
    def __init__(self, booster: xgb.Booster) -> None:
        self.booster = booster
        self._lock = threading.Lock()
        self._threads = None

    @classmethod
    def train(cls, features: np.ndarray, labels: np.ndarray, params: EbmParams) -> Ranker:
        if len(labels) == 0 or not labels.any():
            raise OperationFailedException(
                "no candidate matches any gold subject of the training documents, so "
                "the ranker has nothing to learn from; check that the training corpus "
                "uses this vocabulary and language"
            )
        data = xgb.DMatrix(features, label=labels, feature_names=list(FEATURE_NAMES))
        booster = xgb.train(
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
        )
        return cls(booster)

    def save(self, path: str) -> None:
        self.booster.save_model(path)

    @classmethod
    def load(cls, path: str) -> Ranker:
        booster = xgb.Booster()
        try:
            booster.load_model(path)
        except xgb.core.XGBoostError as err:
            raise OperationFailedException(
                f"cannot read ranker model {path}: {err}; retrain the project"
            ) from err
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
