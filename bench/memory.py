"""Peak RSS and time of ``annif train`` for ebm (and optionally ebm4subjects)
as the training corpus grows; writes a table and a plot.

  python bench/memory.py [--sizes 10000,30000,100000] [--reference-python PY]
                         [--systems ebm,ebm4subjects]
Uses yso-finna-en (train-100k.tsv, validate.tsv) from ../shared/data. The RSS of each ebm
run is sampled twice a second into WORKDIR/trace-ebm-SIZE.tsv, with the line
it logged last, so the table says in which phase the peak came. Every
measurement is also appended to WORKDIR/rows.jsonl; the table shows the latest
row per system and size from there, so systems can be measured in separate runs.
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

from annif_ebm.model_files import CACHE_FILE
from common import BENCH, DATA_ROOT, RESULTS, machine_facts, markdown_table, timed_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--reference-python")
    parser.add_argument("--systems", default="ebm,ebm4subjects",
                        help="ebm4subjects runs only with --reference-python")
    parser.add_argument("--workdir", type=Path, default=BENCH / "work" / "memory")
    parser.add_argument("--reference-threads", type=int, default=os.cpu_count())
    parser.add_argument("--name", default="ebm",
                        help="system name in the table (e.g. for an older checkout "
                             "put first on PYTHONPATH)")
    parser.add_argument("--tag", default="", help="added to the results file name")
    parser.add_argument("--ebm-params", default="",
                        help="extra ebm project lines, e.g. 'max_train_docs=0'")
    parser.add_argument("--warm-cache", type=Path,
                        help="start each size with a copy of this embedding cache "
                             "(ebm-train-embeddings.duckdb) instead of none: measures "
                             "training without the encode time")
    args = parser.parse_args()
    systems = set(args.systems.split(","))
    data = DATA_ROOT / "yso-finna-en"
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "projects.cfg").write_text(
        "[ebm]\nname=ebm\nlanguage=en\nbackend=ebm\nvocab=yso\n"
        + "".join(f"{line}\n" for line in args.ebm_params.split(";") if line), encoding="utf-8")
    env = dict(os.environ, ANNIF_PROJECTS=str(workdir / "projects.cfg"),
               ANNIF_DATADIR=str(workdir / "data"), HF_HUB_OFFLINE="1")
    annif = str(Path(sys.executable).parent / "annif")
    if "ebm" in systems:
        timed_run([annif, "load-vocab", "--force", "--language", "en", "yso",
                   str(data / "yso-en.tsv")], env)
    measured = workdir / "rows.jsonl"
    for size in (int(s) for s in args.sizes.split(",")):
        train = workdir / f"train-{size}.tsv"
        with open(data / "train-100k.tsv", encoding="utf-8") as src:
            train.write_text("".join(itertools.islice(src, size)), encoding="utf-8")
        new_rows = []
        if "ebm" in systems:
            # cold: no embedding cache from an earlier size (or a given warm one)
            project_dir = workdir / "data" / "projects" / "ebm"
            for cached in project_dir.glob(f"{CACHE_FILE}*"):
                cached.unlink()
            if args.warm_cache:
                project_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(args.warm_cache, project_dir / CACHE_FILE)
            run = timed_run([annif, "train", "ebm", str(train)], env,
                            log=workdir / f"train-ebm-{size}.log",
                            trace=workdir / f"trace-ebm-{size}.tsv")
            new_rows.append({"system": args.name, "params": args.ebm_params, "documents": size,
                             "train_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
                             "docs_per_s": size / run["wall_s"],
                             "peak_after": run.get("peak_after", "")})
        if args.reference_python and "ebm4subjects" in systems:
            refdir = workdir / f"ebm4subjects-{size}"
            run = timed_run([args.reference_python, str(BENCH / "reference_ebm4subjects.py"),
                             "--vocab", str(data / "yso-en.tsv"), "--train", str(train),
                             "--test", str(data / "validate.tsv"), "--workdir", str(refdir),
                             "--threads", str(args.reference_threads),
                             "--phase", "train", "--out", str(refdir / "train.json")],
                            dict(os.environ, HF_HUB_OFFLINE="1"))
            new_rows.append({"system": "ebm4subjects 0.9.2", "documents": size,
                             "train_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
                             "docs_per_s": size / run["wall_s"]})
        with open(measured, "a", encoding="utf-8") as out:
            for row in new_rows:
                out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    sizes = {int(s) for s in args.sizes.split(",")}
    latest = {}
    for line in measured.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["documents"] in sizes:
            latest[row["system"], row["documents"]] = row
    rows = sorted(latest.values(), key=lambda r: (r["system"], r["documents"]))

    growth = []
    for system in sorted({r["system"] for r in rows}):
        own = sorted((r for r in rows if r["system"] == system), key=lambda r: r["documents"])
        if len(own) > 1:
            growth.append(f"- {system}: peak RSS {own[-1]['documents']}/{own[0]['documents']} "
                          f"documents = {own[-1]['peak_rss_mb'] / own[0]['peak_rss_mb']:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    stem = f"memory-yso-finna-en-{datetime.date.today()}{f'-{args.tag}' if args.tag else ''}"
    plot(rows, RESULTS / f"{stem}.png")
    text = "\n".join([
        "# Memory scaling: annif train on yso-finna-en", "", *machine_facts(),
        f"- command: `python bench/memory.py {' '.join(sys.argv[1:])}`", "",
        markdown_table(rows, ["system", "params", "documents", "train_s", "peak_rss_mb",
                              "docs_per_s", "peak_after"]),
        "", "peak_after: the last line the run logged before its sampled RSS peak "
        f"(twice a second; the whole trace in {workdir.name}/trace-ebm-SIZE.tsv).",
        "", *growth, "", f"![docs/s and peak RSS]({stem}.png)", "",
    ])
    (RESULTS / f"{stem}.md").write_text(text, encoding="utf-8")
    print(text)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for system in sorted({r["system"] for r in rows}):
        own = sorted((r for r in rows if r["system"] == system), key=lambda r: r["documents"])
        sizes = [r["documents"] for r in own]
        left.plot(sizes, [r["docs_per_s"] for r in own], marker="o", label=system)
        right.plot(sizes, [r["peak_rss_mb"] for r in own], marker="o", label=system)
    left.set(xlabel="training documents", ylabel="train docs/s", title="training speed")
    right.set(xlabel="training documents", ylabel="peak RSS (MB)", title="training memory")
    for axis in (left, right):
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
