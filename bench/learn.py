"""``annif learn`` against ``annif train``: a project trained on the first
documents of a training split learns the rest in steps; after each step the
validate split is evaluated, and each learn is timed against the training run.

  python bench/learn.py tibcore-en --initial 500 --steps 1000,2480
  (learns documents 500-1499, then 1500-3979). The project, ``ebm-learn``,
  lives beside accuracy.py's in its workdir (bench/work/<dataset>) and starts
  from their embedding cache.

  python bench/learn.py tibcore-en --initial 0 --steps 500,500,1000,1980 \
      --compare "finetune=false;min_train_docs=0" --compare-until 2000
  (the learning curve from zero: ``annif train`` without a corpus, a
  zero-shot project ranked by the shipped general ranker, then learns; after
  each step a second project, ``ebm-learn-train``, is trained with ``annif
  train`` on the same documents and these settings, and evaluated too).

Writes bench/results/learn-<dataset>-<date>.md (with --compare also a PNG
plot beside it) and prints it. Compare with ``annif train`` on all of them:
bench/accuracy.py's ebm row on the same split.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import metrics
from accuracy import share_embedding_cache
from common import BENCH, DATA_ROOT, DATASETS, RESULTS, time_stats, timed_run, write_report

BIN = Path(sys.executable).parent
PROJECT = "ebm-learn"
COMPARED = "ebm-learn-train"


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
    parser.add_argument("--compare", help="after each step, also train a project with these "
                                          "lines on the same documents, e.g. "
                                          "'finetune=false;min_train_docs=0'")
    parser.add_argument("--compare-until", type=int, default=0,
                        help="compare only up to this many documents (e.g. where an "
                             "accuracy.py row already has the train on all of them)")
    parser.add_argument("--reference", default="",
                        help="points measured elsewhere for the plot, 'label=docs:F1;...', "
                             "e.g. 'annif train, fine-tuned (default)=3980:0.2836'")
    parser.add_argument("--plot-only", type=Path,
                        help="only draw the plot from this report's table (.md)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    references = [(label, *map(float, point.split(":")))
                  for label, point in (item.split("=") for item in args.reference.split(";")
                                       if item)]
    if args.plot_only:
        plot(table_rows(args.plot_only), args.plot_only.with_suffix(".png"), args.dataset,
             references)
        return
    vocab, train, validate = (DATA_ROOT / args.dataset / n for n in DATASETS[args.dataset])
    workdir = (args.workdir or BENCH / "work" / args.dataset).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    import punkt_tab

    nltk_data = workdir / "nltk_data"
    punkt_tab.write_punkt_tab(str(nltk_data), ["en"])
    def lines(text: str) -> str:
        return "".join(f"{line.strip()}\n" for line in text.split(";") if line.strip())

    projects = workdir / "projects-learn.cfg"  # accuracy.py's projects.cfg stays
    projects.write_text(f"[{PROJECT}]\nname={PROJECT}\nlanguage=en\nvocab=voc\nbackend=ebm\n"
                        f"allow_learn=true\n{lines(args.params)}\n"
                        f"[{COMPARED}]\nname={COMPARED}\nlanguage=en\nvocab=voc\nbackend=ebm\n"
                        f"{lines(args.compare or '')}", encoding="utf-8")
    env = dict(os.environ, ANNIF_PROJECTS=str(projects),
               ANNIF_DATADIR=str(workdir / "data"), NLTK_DATA=str(nltk_data), HF_HUB_OFFLINE="1")
    annif = str(BIN / "annif")
    if not (workdir / "data" / "vocabs" / "voc").exists():
        timed_run([annif, "load-vocab", "--language", "en", "voc", str(vocab)], env)
    gold = metrics.read_gold(str(validate))

    def evaluate(row: dict, known: Path, project: str = PROJECT) -> dict:
        seen = set().union(*metrics.read_gold(str(known))) if known.stat().st_size else set()
        predictions = workdir / f"predictions-{project}.tsv"
        timed_run([sys.executable, str(BENCH / "annif_predict.py"), project, str(validate),
                   str(predictions)], env)
        ranked = metrics.read_predictions(str(predictions), len(gold))
        row.update(metrics.evaluate(ranked, gold))
        row["Seen-R@5"] = metrics.seen_recall(ranked, gold, seen)
        row["Unseen-R@5"] = metrics.unseen_recall(ranked, gold, seen)
        print(json.dumps(row), flush=True)
        return row

    def compare(done: int, known: Path) -> None:
        """``annif train`` of the compared project on the documents known now."""
        if args.compare is None or not done or done > (args.compare_until or done):
            return
        share_embedding_cache(workdir / "data", COMPARED)
        log = workdir / f"train-{COMPARED}.log"
        timed_run([annif, "train", COMPARED, str(known)], env, log=log)
        rows.append(evaluate({"step": f"annif train on {done}", "documents": done,
                              "seconds": time_stats(log.read_text())["wall_s"]}, known,
                             COMPARED))

    rows = []
    first = write_part(train, 0, args.initial, workdir / "learn-part-0.tsv")
    for project in (PROJECT, COMPARED):
        shutil.rmtree(workdir / "data" / "projects" / project, ignore_errors=True)
    share_embedding_cache(workdir / "data", PROJECT)
    log = workdir / f"train-{PROJECT}.log"
    # no documents: annif train without a corpus (a zero-shot project)
    timed_run([annif, "train", PROJECT] + ([str(first)] if args.initial else []), env, log=log)
    known = workdir / "learn-known.tsv"
    shutil.copyfile(first, known)
    rows.append(evaluate({"step": f"train on {args.initial}" if args.initial
                          else "train without documents (zero-shot)",
                          "documents": args.initial,
                          "seconds": time_stats(log.read_text())["wall_s"]}, known))
    compare(args.initial, known)
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
        compare(done, known)

    columns = ["step", "documents", "seconds", "F1@5", "NDCG", "Precision@1", "Seen-R@5",
               "Unseen-R@5"]
    write_report(f"learn-{args.dataset}", args.tag, f"annif learn: {args.dataset}", [
        f"- data: vocab `{vocab.name}`, train `{train.name}` (first documents, in file order), "
        f"validate `{validate.name}` ({len(gold)} documents)",
        "- seconds: wall time of the whole `annif train` / `annif learn` process; Seen/Unseen "
        "relative to the documents known at that step"]
        + ([f"- annif train rows: project `{COMPARED}` with `{args.compare}`, trained on the "
            "documents known at that step"] if args.compare else []), rows, columns)
    if args.compare is not None:
        plot(rows, RESULTS / f"learn-{args.dataset}-{datetime.date.today()}"
                             f"{'-' + args.tag if args.tag else ''}.png", args.dataset,
             references)


def table_rows(report: Path) -> list[dict]:
    """step, documents and F1@5 of the rows of a report's table."""
    lines = [line.strip("|").split("|") for line in report.read_text(encoding="utf-8")
             .splitlines() if line.startswith("| ") and not line.startswith("| step")]
    return [{"step": cells[0].strip(), "documents": float(cells[1]), "F1@5": float(cells[3])}
            for cells in lines]


def plot(rows: list[dict], path: Path, dataset: str,
         references: list[tuple[str, float, float]] = ()) -> None:
    """F1@5 on validate against the documents known, learn and train."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learnt = [r for r in rows if not r["step"].startswith("annif train")]
    trained = [r for r in rows if r["step"].startswith("annif train")]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([r["documents"] for r in learnt], [r["F1@5"] for r in learnt], "o-",
              label="zero-shot, then annif learn (shipped general ranker)")
    axes.plot([r["documents"] for r in trained], [r["F1@5"] for r in trained], "s--",
              label="annif train on the same documents (own ranker)")
    for (label, docs, f1), marker in zip(references, "^vD*"):
        axes.plot([docs], [f1], marker, markersize=8, label=label)
    axes.set_xlabel("training documents")
    axes.set_ylabel("F1@5 on validate")
    axes.set_title(f"Learning curve: {dataset}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
