"""Accuracy, train cost and suggest speed of ebm beside Annif's own backends
(and, optionally, DNB's ebm4subjects), in one run on one dataset.

  python bench/accuracy.py tibcore-en
  python bench/accuracy.py yso-finna-en --train-limit 10000
  python bench/accuracy.py custom --vocab V.tsv --train T.tsv --validate D.tsv
  ... --reference-python /tmp/ref-venv/bin/python     # add ebm4subjects 0.9.2
  ... --ensemble-weights omikuji:0.4,mllm:0.3,ebm:0.3  # from annif hyperopt
  ... --reference-trained bench/work/memory/ebm4subjects-100000  # reuse its training

Writes bench/results/accuracy-<dataset>-<date>.md and prints it.
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
from annif_ebm.model_files import CACHE_FILE
from common import BENCH, DATA_ROOT, DATASETS, time_stats, timed_run, write_report

BIN = Path(sys.executable).parent
PROJECTS = {
    # the defaults: fine-tuned since the 2026-12-04 s13 results, on ONNX
    # Runtime with int8 weights on the CPU since 2026-12-05 s16
    "ebm": "backend=ebm",
    "ebm-torch": "backend=ebm\nencode_backend=torch",  # the default before s16
    "ebm-frozen": "backend=ebm\nfinetune=false",
    # ranked by the ranker's probability alone: no boost of unseen subjects (issue 18)
    "ebm-no-unseen-boost": "backend=ebm\nunseen_boost=0",
    # trained without a corpus: the shipped general ranker (issue 20)
    "ebm-zero-shot": "backend=ebm",
    # another model without documents: the scale-free ranker
    "ebm-static-zero-shot": "backend=ebm\nstatic_embedding=true",
    "ebm-static": "backend=ebm\nstatic_embedding=true\nfinetune=false",
    # fine-tuned on the project's own data (issue 19)
    "ebm-finetune": "backend=ebm\nfinetune=true",
    "ebm-static-finetune": "backend=ebm\nstatic_embedding=true\nfinetune=true",
    # a larger corpus tunes on more of its documents (issue 19: yso-finna-en has 100k)
    "ebm-finetune-10k": "backend=ebm\nfinetune_docs=10000",
    # the ranker on more documents where the corpus has them (yso-finna-en: 100k)
    "ebm-ranker-20k": "backend=ebm\nmax_train_docs=20000",
    "ebm-ranker-40k": "backend=ebm\nmax_train_docs=40000",
    "ebm-ranker-all": "backend=ebm\nmax_train_docs=0",
    # more neighbours vote in the kNN features
    "ebm-knn-40": "backend=ebm\nknn_neighbors=40",
    "ebm-knn-40-ranker-40k": "backend=ebm\nknn_neighbors=40\nmax_train_docs=40000",
    # a static model is cheap to tune: on more documents
    "ebm-static-finetune-20k": "backend=ebm\nstatic_embedding=true\nfinetune=true\n"
                               "finetune_docs=20000",
    "ebm-static-finetune-3-epochs": "backend=ebm\nstatic_embedding=true\nfinetune=true\n"
                                    "finetune_epochs=3",
    # the same (fine-tuned) model on ONNX Runtime, float32 and int8 (issue 22)
    "ebm-onnx": "backend=ebm\nencode_backend=onnx",
    "ebm-onnx-int8": "backend=ebm\nencode_backend=onnx\nencode_quantization=int8",
    # ablation of the feature families (issue 6); ebm-labels-only has none of them
    "ebm-no-knn": "backend=ebm\nknn_neighbors=0",
    "ebm-no-prior": "backend=ebm\nuse_prior=false",
    "ebm-no-hierarchy": "backend=ebm\nuse_hierarchy=false",
    "ebm-no-label": "backend=ebm\nuse_label_features=false",
    "ebm-labels-only": "backend=ebm\nknn_neighbors=0\nuse_prior=false\nuse_hierarchy=false\n"
                       "use_label_features=false",
    "tfidf": "backend=tfidf\nanalyzer=snowball(english)",
    "mllm": "backend=mllm\nanalyzer=snowball(english)",
    "omikuji": "backend=omikuji\nanalyzer=snowball(english)",
}


def ensembles(backends: list[str], ensemble_ebm: str) -> list[list[str]]:
    """The ensembles to measure: omikuji+mllm, and with the ``ensemble_ebm``
    variant of ebm, where their members are among ``backends``."""
    candidates = (["omikuji", "mllm"], ["omikuji", "mllm", ensemble_ebm])
    return [members for members in candidates if set(members) <= set(backends)]


def projects_cfg(backends: list[str], weights: dict[str, float], ensemble_ebm: str = "ebm") -> str:
    sections = [f"[{b}]\nname={b}\nlanguage=en\nvocab=voc\n{PROJECTS[b]}\n" for b in backends]
    for members in ensembles(backends, ensemble_ebm):
        # weights name the members as in omikuji:W1,mllm:W2,ebm:W3
        sources = ",".join(f"{m}:{weights.get(m.split('-')[0], 1.0)}" for m in members)
        sections.append(
            f"[{'+'.join(members)}]\nname=ensemble\nlanguage=en\nvocab=voc\n"
            f"backend=ensemble\nsources={sources}\n"
        )
    return "\n".join(sections)




def share_embedding_cache(datadir: Path, system: str) -> None:
    """Give an ebm variant the embedding cache of one trained before it (same
    model, possibly in an earlier run in this workdir), so the variants differ
    only in what they measure."""
    target = datadir / "projects" / system / CACHE_FILE
    if not system.startswith("ebm") or "static" in system or target.exists():
        return
    for source in sorted((datadir / "projects").glob(f"ebm*/{CACHE_FILE}")):
        if "static" not in source.parent.name:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            wal = source.with_name(source.name + ".wal")  # not yet checkpointed
            if wal.exists():
                shutil.copyfile(wal, target.with_name(target.name + ".wal"))
            return


def limited(path: Path, limit: int, workdir: Path) -> Path:
    if not limit:
        return path
    target = workdir / f"{path.stem}-{limit}.tsv"
    with open(path, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as dst:
        dst.writelines(itertools.islice(src, limit))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--vocab")
    parser.add_argument("--train")
    parser.add_argument("--validate")
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--backends", default="ebm,tfidf,mllm,omikuji")
    parser.add_argument("--ensemble-weights", default="")
    parser.add_argument("--ensemble-ebm", default="ebm",
                        help="the ebm variant in the omikuji+mllm+ebm ensemble, e.g. ebm-finetune")
    parser.add_argument("--reference-python", help="python of a venv with ebm4subjects")
    parser.add_argument("--reference-trained", type=Path,
                        help="reuse the ebm4subjects model trained in this folder "
                             "(e.g. by memory.py on the same training corpus)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--tag", default="", help="added to the results file name")
    parser.add_argument("--suggest-only", action="store_true",
                        help="reuse the projects trained by an earlier run in the workdir")
    args = parser.parse_args()

    if args.dataset in DATASETS:
        names = DATASETS[args.dataset]
        vocab, train, validate = (DATA_ROOT / args.dataset / n for n in names)
    else:
        vocab, train, validate = Path(args.vocab), Path(args.train), Path(args.validate)
    workdir = (args.workdir or BENCH / "work" / args.dataset).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    train = limited(train, args.train_limit, workdir)
    backends = [b for b in args.backends.split(",") if b]
    weights = {k: float(v) for k, v in (w.split(":") for w in args.ensemble_weights.split(",") if w)}

    nltk_data = workdir / "nltk_data"
    import punkt_tab

    punkt_tab.write_punkt_tab(str(nltk_data), ["en"])
    (workdir / "projects.cfg").write_text(projects_cfg(backends, weights, args.ensemble_ebm),
                                          encoding="utf-8")
    env = dict(os.environ, ANNIF_PROJECTS=str(workdir / "projects.cfg"),
               ANNIF_DATADIR=str(workdir / "data"), NLTK_DATA=str(nltk_data),
               HF_HUB_OFFLINE="1")
    annif = str(BIN / "annif")
    if not args.suggest_only:
        timed_run([annif, "load-vocab", "--force", "--language", "en", "voc", str(vocab)], env)
    gold = metrics.read_gold(str(validate))
    seen = set().union(*metrics.read_gold(str(train)))

    rows = []
    systems = backends + ["+".join(members) for members in ensembles(backends, args.ensemble_ebm)]
    for system in systems:
        row = {"system": system}
        train_log = workdir / f"train-{system}.log"  # GNU time output of annif train
        if "+" not in system and not args.suggest_only:
            share_embedding_cache(workdir / "data", system)
            corpus = [] if system.endswith("zero-shot") else [str(train)]
            timed_run([annif, "train", system, *corpus], env, log=train_log)
        if "+" not in system and train_log.exists():
            trained = time_stats(train_log.read_text(encoding="utf-8"))
            row.update(train_s=trained["wall_s"], train_rss_mb=trained["peak_rss_mb"])
        predictions = workdir / f"predictions-{system}.tsv"
        run = timed_run([sys.executable, str(BENCH / "annif_predict.py"), system,
                         str(validate), str(predictions)], env, log=workdir / f"suggest-{system}.log")
        report = json.loads(run["stdout"].strip().splitlines()[-1])
        row.update(suggest_docs_s=report["docs_per_s"], suggest_rss_mb=run["peak_rss_mb"])
        ranked = metrics.read_predictions(str(predictions), len(gold))
        row.update(metrics.evaluate(ranked, gold))
        row["Seen-R@5"] = metrics.seen_recall(ranked, gold, seen)
        row["Unseen-R@5"] = metrics.unseen_recall(ranked, gold, seen)
        rows.append(row)
        print(json.dumps(row), flush=True)

    if args.reference_python:
        rows.append(reference_row(args.reference_python, vocab, train, validate,
                                  args.reference_trained or workdir / "ebm4subjects", gold,
                                  seen, trained=args.reference_trained is not None))

    columns = ["system", "F1@5", "NDCG", "Precision@1", "Recall@5", "Seen-R@5", "Unseen-R@5",
               "train_s",
               "train_rss_mb", "suggest_docs_s", "suggest_rss_mb"]
    write_report(f"accuracy-{args.dataset}", args.tag, f"Accuracy: {args.dataset}", [
        f"- data: vocab `{vocab.name}`, train `{train.name}`, validate `{validate.name}` "
        f"({len(gold)} documents)",
        "- train_s / *_rss_mb: wall time and peak RSS of the whole `annif train` / suggest "
        "process; suggest_docs_s excludes model loading",
        f"- Unseen-R@5 / Seen-R@5: recall@5 over the validate gold subjects that no / some "
        f"training document has ({sum(len(g - seen) for g in gold)} / "
        f"{sum(len(g & seen) for g in gold)} of {sum(len(g) for g in gold)})"], rows, columns)


def reference_row(python, vocab, train, validate, refdir, gold, seen, trained=False) -> dict:
    """DNB's ebm4subjects with DNB's Annif backend defaults, same model;
    ``trained``: reuse the model in ``refdir`` and its recorded train cost."""
    common = [python, str(BENCH / "reference_ebm4subjects.py"), "--vocab", str(vocab),
              "--train", str(train), "--test", str(validate), "--workdir", str(refdir),
              "--threads", str(os.cpu_count())]  # all cores, as ours uses
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if trained:
        recorded = json.loads((refdir / "train.json").read_text())
        train_cost = {"wall_s": recorded["train_wall_seconds"],
                      "peak_rss_mb": recorded["train_peak_rss_mib"]["self"]}
    else:
        train_cost = timed_run([*common, "--phase", "train", "--out",
                                str(refdir / "train.json")], env)
    suggested = timed_run([*common, "--phase", "suggest", "--out", str(refdir / "suggest.json")], env)
    report = json.loads((refdir / "suggest.json").read_text())
    row = {"system": "ebm4subjects 0.9.2", "train_s": train_cost["wall_s"],
           "train_rss_mb": train_cost["peak_rss_mb"], "suggest_docs_s": report.get("docs_per_second_excluding_load"),
           "suggest_rss_mb": suggested["peak_rss_mb"]}
    ranked = metrics.read_predictions(str(refdir / "predictions.tsv"), len(gold))
    row.update(metrics.evaluate(ranked, gold))
    row["Seen-R@5"] = metrics.seen_recall(ranked, gold, seen)
    row["Unseen-R@5"] = metrics.unseen_recall(ranked, gold, seen)
    return row


if __name__ == "__main__":
    main()
