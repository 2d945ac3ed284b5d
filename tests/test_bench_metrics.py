"""bench/metrics.py must agree with Annif's own evaluation."""

import sys

import numpy as np
import pytest
from annif.eval import EvaluationBatch
from annif.suggestion import SubjectSuggestion

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import metrics  # noqa: E402


class _Subjects:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, subject_id):
        return subject_id


def test_metrics_match_annif_eval():
    rng = np.random.default_rng(0)
    n_subjects, gold, ranked, batches = 40, [], [], []
    for _ in range(30):
        truth = set(rng.choice(n_subjects, size=rng.integers(0, 4), replace=False).tolist())
        preds = rng.permutation(n_subjects)[: rng.integers(0, 15)].tolist()
        gold.append({str(s) for s in truth})
        ranked.append([str(p) for p in preds])
        batches.append((truth, [SubjectSuggestion(p, 1.0 - i / 20) for i, p in enumerate(preds[:10])]))
    evaluation = EvaluationBatch(_Subjects(n_subjects))
    for truth, suggestions in batches:
        evaluation.evaluate_many([suggestions], [list(truth)])
    annif = evaluation.results(metrics=["F1@5", "NDCG", "Precision@1"])
    ours = metrics.evaluate(ranked, gold)
    for name in ("F1@5", "NDCG", "Precision@1"):
        assert ours[name] == pytest.approx(annif[name], abs=1e-6), name
    assert 0 <= ours["Recall@5"] <= 1


def test_unseen_recall_counts_only_subjects_absent_from_training():
    ranked = [["a", "x", "b"], ["y"], []]
    gold = [{"a", "x", "z"}, {"y"}, {"a"}]
    # unseen: x, z (doc 0) and y (doc 1); found in the top 5: x and y
    assert metrics.unseen_recall(ranked, gold, seen={"a", "b"}) == pytest.approx(2 / 3)
    assert metrics.unseen_recall(ranked, gold, seen={"a", "x", "y", "z"}) is None
    assert metrics.unseen_recall(ranked, gold, seen=set(), k=1) == pytest.approx(2 / 5)


def test_seen_recall_counts_only_subjects_some_training_document_has():
    ranked = [["a", "x", "b"], ["y"], []]
    gold = [{"a", "x", "z"}, {"y"}, {"a"}]
    # seen: a (doc 0) and a (doc 2); found in the top 5: the first only
    assert metrics.seen_recall(ranked, gold, seen={"a", "b"}) == pytest.approx(1 / 2)
    assert metrics.seen_recall(ranked, gold, seen=set()) is None
    # together the two halves count every gold subject once
    seen = {"a", "y"}
    found = (metrics.seen_recall(ranked, gold, seen) * 3
             + metrics.unseen_recall(ranked, gold, seen) * 2)
    assert found == pytest.approx(3)
