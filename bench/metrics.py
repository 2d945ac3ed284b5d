"""Ranking metrics computed the same way for every system in a benchmark.

They follow Annif's definitions (``annif/eval.py``): F1@5, Precision@1 and
Recall@5 are averaged over documents; NDCG, as ``annif eval`` reports it with
its default ``--limit 10``, uses the top 10 suggestions and counts a document
without gold subjects as 1. Works with the standard library and
numpy only, so the reference venv can use it too.

Predictions file: ``doc_index<TAB>uri<TAB>score`` per line, any order.
"""

from __future__ import annotations

import collections
import math


def read_gold(corpus_tsv: str, known_uris: set[str] | None = None) -> list[set[str]]:
    """Gold subject URIs per document of an Annif TSV corpus."""
    gold = []
    with open(corpus_tsv, encoding="utf-8-sig", errors="replace") as file:
        for line in file:
            if "\t" not in line:
                continue
            uris = {u.strip("<>") for u in line.rstrip("\n").split("\t", 1)[1].split()}
            gold.append({u for u in uris if known_uris is None or u in known_uris})
    return gold


def read_predictions(path: str, n_docs: int) -> list[list[str]]:
    """Ranked URIs per document, best first."""
    scored = collections.defaultdict(list)
    with open(path, encoding="utf-8") as file:
        for line in file:
            doc, uri, score = line.rstrip("\n").split("\t")
            scored[int(doc)].append((-float(score), uri.strip("<>")))
    return [[uri for _, uri in sorted(scored[d])] for d in range(n_docs)]


def _f1(tp: int, n_pred: int, n_gold: int) -> float:
    return 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0


def _ndcg(ranked: list[str], gold: set[str], limit: int) -> float:
    if not gold:
        return 1.0
    dcg = sum(1 / math.log2(i + 2) for i, uri in enumerate(ranked[:limit]) if uri in gold)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(gold), limit)))
    return dcg / idcg


def evaluate(ranked: list[list[str]], gold: list[set[str]], ndcg_limit: int = 10) -> dict[str, float]:
    """F1@5, NDCG, Precision@1 and Recall@5 averaged over documents."""
    n = len(gold)
    sums = collections.Counter()
    for preds, truth in zip(ranked, gold):
        top5 = preds[:5]
        tp5 = len(set(top5) & truth)
        sums["F1@5"] += _f1(tp5, len(top5), len(truth))
        sums["NDCG"] += _ndcg(preds, truth, ndcg_limit)
        sums["Precision@1"] += float(bool(preds) and preds[0] in truth)
        sums["Recall@5"] += tp5 / len(truth) if truth else 0.0
    return {name: sums[name] / n for name in ("F1@5", "NDCG", "Precision@1", "Recall@5")}


def unseen_recall(ranked: list[list[str]], gold: list[set[str]], seen: set[str], k: int = 5) -> float | None:
    """Recall@k over the gold subjects that no training document has (micro:
    found unseen gold subjects / all unseen gold subjects); None if none."""
    return _recall_of(ranked, [truth - seen for truth in gold], k)


def seen_recall(ranked: list[list[str]], gold: list[set[str]], seen: set[str], k: int = 5) -> float | None:
    """Recall@k over the gold subjects that some training document has
    (micro, as :func:`unseen_recall`); None if none."""
    return _recall_of(ranked, [truth & seen for truth in gold], k)


def _recall_of(ranked: list[list[str]], wanted: list[set[str]], k: int) -> float | None:
    found = total = 0
    for preds, truth in zip(ranked, wanted):
        total += len(truth)
        found += len(truth & set(preds[:k]))
    return found / total if total else None
