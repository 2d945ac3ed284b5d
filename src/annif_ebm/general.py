"""The general rankers that ship inside the package: how a project ranks
before it has training documents of its own (zero-shot), or fewer than
``min_train_docs``.

Both are XGBoost rankers trained by ``bench/general_ranker.py`` on the public
corpora of ``../shared/data``, on features that no vocabulary owns: similarity
statistics, positions, hits, label tokens, and the kNN and prior features
both present and absent (so that documents added by ``annif learn`` improve a
zero-shot project without a retrain). Nothing in them is learned per subject.
``provenance.json`` beside them names the data, the command, the commit and
the validate figures.

- ``general``: every feature, for the embedding model it was trained with
  (the default model, not fine-tuned, not truncated, no prompts).
- ``scale-free``: only the features that do not depend on a model's
  similarity scale (ranks, shares, positions, counts), with its scores
  calibrated (Platt) on the same data: the label-match score for any other
  embedding model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from annif.exception import OperationFailedException

from .lexical import LEXICAL_FEATURES

GENERAL_DIR = os.path.join(os.path.dirname(__file__), "general")
PROVENANCE_FILE = "provenance.json"

# features whose values do not depend on the scale of the model's similarities
SCALE_FREE_FEATURES = (
    "n_chunks", "hit_ratio", "scaled_score", "best_rank", "mean_rank", "first_pos",
    "last_pos", "spread", "pref_ratio", "n_labels", "doc_rank", "label_tokens",
    "concept_labels", "knn_count", "knn_rank", "knn_share", "prior",
    "related_candidates", "doc_query_rank", *LEXICAL_FEATURES,
)


@dataclasses.dataclass(frozen=True)
class GeneralRanker:
    """One of the shipped rankers: its file and why it was chosen."""

    name: str  # "general" or "scale-free"
    path: str
    reason: str  # for the log

    @property
    def describe(self) -> str:
        return f"the shipped {self.name} ranker ({self.reason})"


def provenance() -> dict[str, Any]:
    path = os.path.join(GENERAL_DIR, PROVENANCE_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError) as err:
        raise OperationFailedException(
            f"the general ranker's {path} cannot be read ({err}); reinstall annif-ebm"
        ) from err


def general_ranker(model_settings: dict[str, Any]) -> GeneralRanker:
    """The shipped ranker for a model with these model-defining settings:
    ``general`` where the embedding model is the one it was trained with,
    ``scale-free`` otherwise."""
    rankers = provenance()["rankers"]
    general = rankers["general"]
    differs = {name: model_settings.get(name) for name, value in general["model"].items()
               if model_settings.get(name, value) != value}
    if not differs:
        name, reason = "general", f"trained for {general['model']['model']}"
    else:
        name = "scale-free"
        reason = ("the general ranker belongs to another embedding model "
                  f"({', '.join(f'{k}={v}' for k, v in differs.items())} differ): "
                  "ranking by the calibrated label-match score")
    return GeneralRanker(name, os.path.join(GENERAL_DIR, rankers[name]["file"]), reason)
