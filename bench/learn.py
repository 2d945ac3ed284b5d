"""``annif learn`` against ``annif train``: a project trained on the first
documents of a training split learns the rest in steps; after each step the
validate split is evaluated, and each learn is timed against the training run.

  python bench/learn.py tibcore-en --initial 500 --steps 1000,2480
  (learns documents 500-1499, then 1500-3979). The project, ``ebm-learn``,
  lives beside accuracy.py's in its workdir (bench/work/<dataset>) and starts
  from their embedding cache.

Writes bench/results/learn-<dataset>-<date>.md and prints it. Compare with
``annif train`` on all of them: bench/accuracy.py's ebm row on the same split.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import metrics
from accuracy import share_embedding_cache
from common import BENCH, DATA_ROOT, DATASETS, time_stats, timed_run, write_report

BIN = Path(sys.executable).parent
PROJECT = "ebm-learn"


def write_part(source: Path, start: int, stop: int, target: Path) -> Path:
    with open(source, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as dst:
        dst.writelines(itertools.islice(src, start, stop))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--initial", type=int, default=500, help="documents trained on first")
    parser.add_argument("--steps", default="1000,2480", help="documents learnt per step")
    parser.add_argument("--params", default="", help="extra project lines, e.g. finetune=false")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    vocab, train, validate = (DATA_ROOT / args.dataset / n for n in DATASETS[args.dataset])
    workdir = (args.workdir or BENCH / "work" / args.dataset).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    import punkt_tab

    nltk_data = workdir / "nltk_data"
    punkt_tab.write_punkt_tab(str(nltk_data), ["en"])
    extra = "".join(f"{line.strip()}\n" for line in args.params.split(";") if line.strip())
    projects = workdir / "projects-learn.cfg"  # accuracy.py's projects.cfg stays
    projects.write_text(f"[{PROJECT}]\nname={PROJECT}\nlanguage=en\nvocab=voc\nbackend=ebm\n"
                        f"allow_learn=true\n{extra}", encoding="utf-8")
    env = dict(os.environ, ANNIF_PROJECTS=str(projects),
               ANNIF_DATADIR=str(workdir / "data"), NLTK_DATA=str(nltk_data), HF_HUB_OFFLINE="1")
    annif = str(BIN / "annif")
    if not (workdir / "data" / "vocabs" / "voc").exists():
        timed_run([annif, "load-vocab", "--language", "en", "voc", str(vocab)], env)
    gold = metrics.read_gold(str(validate))

    def evaluate(row: dict, known: Path) -> dict:
        seen = set().union(*metrics.read_gold(str(known)))
        predictions = workdir / f"predictions-{PROJECT}.tsv"
        timed_run([sys.executable, str(BENCH / "annif_predict.py"), PROJECT, str(validate),
                   str(predictions)], env)
        ranked = metrics.read_predictions(str(predictions), len(gold))
        row.update(metrics.evaluate(ranked, gold))
        row["Seen-R@5"] = metrics.seen_recall(ranked, gold, seen)
        row["Unseen-R@5"] = metrics.unseen_recall(ranked, gold, seen)
        print(json.dumps(row), flush=True)
        return row

    rows = []
    first = write_part(train, 0, args.initial, workdir / "learn-part-0.tsv")
    shutil.rmtree(workdir / "data" / "projects" / PROJECT, ignore_errors=True)
    share_embedding_cache(workdir / "data", PROJECT)
    log = workdir / f"train-{PROJECT}.log"
    timed_run([annif, "train", PROJECT, str(first)], env, log=log)
    known = workdir / "learn-known.tsv"
    shutil.copyfile(first, known)
    rows.append(evaluate({"step": f"train on {args.initial}", "documents": args.initial,
                          "seconds": time_stats(log.read_text())["wall_s"]}, known))
    done = args.initial
    for i, size in enumerate(int(s) for s in args.steps.split(",") if s):
        part = write_part(train, done, done + size, workdir / f"learn-part-{i + 1}.tsv")
        log = workdir / f"learn-{i + 1}.log"
        timed_run([annif, "learn", PROJECT, str(part)], env, log=log)
        with open(known, "a", encoding="utf-8") as out:
            out.write(part.read_text(encoding="utf-8"))
        done += size
        rows.append(evaluate({"step": f"learn {size}", "documents": done,
                              "seconds": time_stats(log.read_text())["wall_s"]}, known))

    columns = ["step", "documents", "seconds", "F1@5", "NDCG", "Precision@1", "Seen-R@5",
               "Unseen-R@5"]
    write_report(f"learn-{args.dataset}", args.tag, f"annif learn: {args.dataset}", [
        f"- data: vocab `{vocab.name}`, train `{train.name}` (first documents, in file order), "
        f"validate `{validate.name}` ({len(gold)} documents)",
        "- seconds: wall time of the whole `annif train` / `annif learn` process; Seen/Unseen "
        "relative to the documents known at that step"], rows, columns)


if __name__ == "__main__":
    main()
