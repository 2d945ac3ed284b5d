"""Ranker variants on one trained ebm project, tuned on validate (issue 18).

The candidates do not depend on the ranker: the training candidates are the
project's ``ebm-train.duckdb`` (written by ``annif train``), the validate
candidates are collected once with the project's own store, encoder and
matcher and kept in WORKDIR/validate-candidates-PROJECT.parquet. Each variant
then only fits a ranker and scores them.

  python bench/ranker_variants.py tibcore-en --workdir bench/work/tibcore-en \\
      --variants binary "binary,unseen_weight=3" rank:ndcg

A variant is an XGBoost objective, then comma-separated settings:
``unseen_weight=W`` (weight of the gold candidates with no training document
of their subject, prior 0), ``unseen_label=L`` (their relevance for the
``rank:`` objectives: above the other gold subjects' 1), ``rounds=N``, ``depth=N``, ``eta=X``;
``blend=L``: the score is (1 - L) x this ranker's + L x a label-only
ranker's (trained on the label-match candidates with the kNN, prior,
hierarchy and label features left out, as ebm-labels-only sees them);
``blend_max=A``: the larger of this ranker's score and A x the label-only one;
``drop=F1+F2``: the feature families F1, F2 (features.FEATURE_FAMILIES) left
out of training and validate, as if switched off; ``docs=N``: the ranker
fitted on the candidates of N of the training documents, drawn at random
(seeded: a learning curve); ``pair_method=topk|mean`` and ``pairs=N``:
XGBoost's ``lambdarank_pair_method`` and ``lambdarank_num_pair_per_sample``
(the truncation level for ``topk``, pairs per row for ``mean``);
``relative=ratio+rank``: within-document columns added to the features
(each of RELATIVE_TO over the document's largest, and its rank there);
``unseen_boost=B``: the project's ``unseen_boost``
(B x the stored training documents' unseen share added to the log-odds of each
candidate that no training document has, on this variant's own Platt curve;
pairwise variants).
Writes bench/results/ranker-variants-DATASET-DATE[-TAG].md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import polars as pl

import metrics
from common import BENCH, DATA_ROOT, DATASETS, write_report


def training_candidates(datadir: Path, project: str) -> pl.DataFrame:
    import duckdb

    from annif_ebm.model_files import TRAIN_FILE
    from annif_ebm.training_data import stored_features

    path = datadir / "projects" / project / TRAIN_FILE
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(f"SELECT doc, concept_id, {', '.join(stored_features(con))}, gold "
                           "FROM candidates "
                           "ORDER BY doc, concept_id").pl()


def validate_candidates(project_id: str, texts: list[str], cache: Path) -> pl.DataFrame:
    """Candidates of every validate text, with their concept's URI."""
    if cache.exists():
        return pl.read_parquet(cache)
    from annif_ebm import suggest
    from annif_ebm.matcher import Matcher
    from annif_ebm.timing import StageTimer
    from common import annif_project

    frames = []
    with annif_project(project_id) as project:
        backend = project.backend
        model = backend._load_model()
        p = backend._parse(backend.params).with_stored_model(model.metadata.model)
        static = model.metadata.model_dir
        encoder = backend._encoder_for(p, os.path.join(backend.datadir, static) if static else None)
        timer = StageTimer()
        matcher = Matcher(model.store, model.search(p.retrieval, encoder.search_device),
                          p.retrieval.candidates_per_chunk, p.features,
                          model.training_documents(p.features), timer,
                          model.lexicon(p.features, project.language))
        chunker = backend._chunker_for(p)
        for first in range(0, len(texts), 32):
            found = suggest.candidates(texts[first:first + 32], chunker, encoder, matcher, timer)
            frames.append(found.with_columns(doc=pl.col("doc").cast(pl.Int64) + first))
        frame = pl.concat(frames)
        uris = [project.subjects[int(i)].uri for i in frame["concept_id"].to_list()]
    frame = frame.with_columns(uri=pl.Series(uris, dtype=pl.String))
    frame.write_parquet(cache)
    return frame


def unseen_share(project_id: str) -> float:
    """The stored training documents' unseen share (Pipeline.unseen_boosts)."""
    from common import annif_project

    with annif_project(project_id) as project:
        return project.backend._load_model().store.training_documents().unseen_share


def margin_boosts(booster, train: pl.DataFrame, found: pl.DataFrame, boost: float,
                  share: float) -> np.ndarray:
    """``boost`` x ``share`` in log-odds, in ``booster``'s margin units (its
    Platt curve fitted on the training rows, as training fits it), for the
    candidates no training document has."""
    from annif_ebm.ranker import platt_scaling

    margins = booster.inplace_predict(
        train.select(booster.feature_names).to_numpy().astype(np.float32))
    slope, _ = platt_scaling(margins, train["gold"].to_numpy())
    return boost * share / slope * (found["prior"].to_numpy() == 0)


def parse_variant(text: str) -> dict:
    objective, *settings = text.split(",")
    variant = {"name": text, "objective": objective, "unseen_weight": 1.0, "unseen_label": 1.0,
               "rounds": 300, "depth": 6, "eta": 0.05, "blend": 0.0, "blend_max": 0.0, "drop": "",
               "unseen_boost": 0.0, "docs": 0, "pair_method": "", "pairs": 0, "relative": ""}
    for setting in settings:
        key, value = setting.split("=")
        variant[key] = type(variant[key])(value)
    return variant


def fit(train: pl.DataFrame, variant: dict, threads: int, names: list[str] | None = None):
    """A ranker for ``variant`` on the columns ``names`` of ``train`` (the
    features of the backend where not given)."""
    import xgboost as xgb

    from annif_ebm.features import FEATURE_NAMES

    names = list(names or FEATURE_NAMES)
    features = train.select(names).to_numpy().astype(np.float32)
    gold = train["gold"].to_numpy().astype(np.float32)
    prior = np.nan_to_num(train["prior"].to_numpy(), nan=0.0)
    unseen_gold = (gold > 0) & (prior == 0)
    weight = np.where(unseen_gold, variant["unseen_weight"], 1.0)
    ranking = variant["objective"].startswith("rank:")
    if ranking:
        gold = np.where(unseen_gold, variant["unseen_label"], gold)
    data = xgb.DMatrix(features, label=gold, feature_names=names,
                       qid=train["doc"].to_numpy() if ranking else None,
                       weight=None if ranking else weight)
    if ranking and variant["unseen_weight"] != 1.0:
        raise SystemExit("unseen_weight applies to per-row objectives only")
    params = {"objective": variant["objective"], "eta": variant["eta"],
              "max_depth": variant["depth"], "subsample": 0.8, "tree_method": "hist",
              "nthread": threads, "seed": 42}
    if variant["pair_method"]:
        params["lambdarank_pair_method"] = variant["pair_method"]
    if variant["pairs"]:
        params["lambdarank_num_pair_per_sample"] = variant["pairs"]
    return xgb.train(params, data, num_boost_round=variant["rounds"])


RELATIVE_TO = ["knn_score_sum", "knn_count", "knn_best", "prior", "doc_query_score", "max_score",
               "score_sum", "lexical_share"]


def with_relative(frame: pl.DataFrame, kinds: str) -> tuple[pl.DataFrame, list[str]]:
    """The frame with within-document columns for :data:`RELATIVE_TO`:
    ``ratio`` (the value over the document's largest), ``rank`` (1 = the
    document's largest); ``kinds`` is '+'-separated. Returns it and the
    added column names."""
    added = []
    for name in RELATIVE_TO:
        value = pl.col(name)
        if "ratio" in kinds:
            added.append((value / value.max().over("doc")).alias(f"{name}_ratio"))
        if "rank" in kinds:
            added.append(value.rank("min", descending=True).over("doc")
                         .cast(pl.Float32).alias(f"{name}_rank"))
    frame = frame.with_columns(added)
    return frame, [column.meta.output_name() for column in added]


def some_documents(train: pl.DataFrame, n_docs: int) -> pl.DataFrame:
    """The rows of ``n_docs`` training documents drawn at random (all if 0)."""
    docs = train["doc"].unique().sort()
    if not n_docs or n_docs >= len(docs):
        return train
    return train.filter(pl.col("doc").is_in(docs.sample(n_docs, seed=42).implode()))


def without(frame: pl.DataFrame, families: str) -> pl.DataFrame:
    """The frame with the features of the '+'-separated families missing."""
    from annif_ebm.features import FEATURE_FAMILIES

    off = [name for family in filter(None, families.split("+"))
           for name in FEATURE_FAMILIES[family]]
    return frame.with_columns([pl.lit(None, dtype=pl.Float32).alias(n) for n in off])


def label_only(frame: pl.DataFrame) -> pl.DataFrame:
    """The candidates as the label-only model sees them: label matches only,
    without the kNN, prior, hierarchy and label features."""
    from annif_ebm.features import FEATURE_FAMILIES

    off = [name for names in FEATURE_FAMILIES.values() for name in names]
    return frame.with_columns([pl.lit(None, dtype=pl.Float32).alias(n) for n in off])


def label_only_scores(train: pl.DataFrame, found: pl.DataFrame, threads: int) -> np.ndarray:
    from annif_ebm.features import FEATURE_NAMES

    booster = fit(label_only(train.filter(pl.col("max_score").is_not_null())),
                  parse_variant("binary:logistic"), threads)
    features = label_only(found).select(FEATURE_NAMES).to_numpy().astype(np.float32)
    scores = booster.inplace_predict(features)
    return np.where(found["max_score"].is_null().to_numpy(), 0.0, scores)


def ranked_uris(found: pl.DataFrame, scores: np.ndarray, n_docs: int) -> list[list[str]]:
    top = (found.select("doc", "uri").with_columns(score=pl.Series(scores))
           .sort(["doc", "score"], descending=[False, True])
           .group_by("doc", maintain_order=True).head(10))
    ranked = [[] for _ in range(n_docs)]
    for doc, uri in top.select("doc", "uri").iter_rows():
        ranked[doc].append(uri.strip("<>"))
    return ranked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--workdir", type=Path, required=True,
                        help="a bench/accuracy.py workdir with the project trained")
    parser.add_argument("--project", default="ebm")
    parser.add_argument("--variants", nargs="+", default=["binary:logistic"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    _, train_name, validate_name = DATASETS[args.dataset]
    train_tsv = DATA_ROOT / args.dataset / train_name
    validate_tsv = DATA_ROOT / args.dataset / validate_name
    workdir = args.workdir.resolve()
    os.environ.update(ANNIF_PROJECTS=str(workdir / "projects.cfg"),
                      ANNIF_DATADIR=str(workdir / "data"),
                      NLTK_DATA=str(workdir / "nltk_data"), HF_HUB_OFFLINE="1")
    with open(validate_tsv, encoding="utf-8") as file:
        texts = [line.split("\t", 1)[0] for line in file if "\t" in line]
    gold = metrics.read_gold(str(validate_tsv))
    seen = set().union(*metrics.read_gold(str(train_tsv)))
    found = validate_candidates(args.project, texts,
                                workdir / f"validate-candidates-{args.project}.parquet")
    train = training_candidates(workdir / "data", args.project)
    from annif_ebm.features import FEATURE_NAMES

    rows, label_scores, share = [], None, None
    for text in args.variants:
        variant = parse_variant(text)
        variant_train = without(train, variant["drop"])
        variant_found = without(found, variant["drop"])
        names = list(FEATURE_NAMES)
        if variant["relative"]:
            variant_train, added = with_relative(variant_train, variant["relative"])
            variant_found, _ = with_relative(variant_found, variant["relative"])
            names += added
        booster = fit(some_documents(variant_train, variant["docs"]), variant, args.threads, names)
        scores = booster.inplace_predict(
            variant_found.select(names).to_numpy().astype(np.float32))
        if variant["unseen_boost"]:
            if share is None:
                share = unseen_share(args.project)
            scores = scores + margin_boosts(booster, variant_train, found,
                                            variant["unseen_boost"], share)
        if variant["blend"] or variant["blend_max"]:
            if label_scores is None:
                label_scores = label_only_scores(train, found, args.threads)
            if variant["blend"]:
                scores = (1 - variant["blend"]) * scores + variant["blend"] * label_scores
            else:
                scores = np.maximum(scores, variant["blend_max"] * label_scores)
        ranked = ranked_uris(found, scores, len(gold))
        row = {"variant": variant["name"], **metrics.evaluate(ranked, gold),
               "Seen-R@5": metrics.seen_recall(ranked, gold, seen),
               "Unseen-R@5": metrics.unseen_recall(ranked, gold, seen)}
        rows.append(row)
        print(row, flush=True)
    columns = ["variant", "F1@5", "NDCG", "Precision@1", "Recall@5", "Seen-R@5", "Unseen-R@5"]
    write_report(f"ranker-variants-{args.dataset}", args.tag, f"Ranker variants: {args.dataset}", [
        f"- candidates: {train.height} training rows from `{args.project}`'s "
        f"`ebm-train.duckdb`, {found.height} validate rows ({len(gold)} documents)"],
        rows, columns)


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    main()
