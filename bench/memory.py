"""Peak RSS and time of ``annif train`` for ebm (and optionally ebm4subjects)
as the training corpus grows; writes a table and a plot.

  python bench/memory.py [--sizes 10000,30000,100000] [--reference-python PY]
Uses yso-finna-en (train-100k.tsv, validate.tsv) from ../shared/data.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import sys
from pathlib import Path

from common import BENCH, DATA_ROOT, RESULTS, machine_facts, markdown_table, timed_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--reference-python")
    parser.add_argument("--workdir", type=Path, default=BENCH / "work" / "memory")
    args = parser.parse_args()
    data = DATA_ROOT / "yso-finna-en"
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "projects.cfg").write_text(
        "[ebm]\nname=ebm\nlanguage=en\nbackend=ebm\nvocab=yso\n", encoding="utf-8")
    env = dict(os.environ, ANNIF_PROJECTS=str(workdir / "projects.cfg"),
               ANNIF_DATADIR=str(workdir / "data"), HF_HUB_OFFLINE="1")
    annif = str(Path(sys.executable).parent / "annif")
    timed_run([annif, "load-vocab", "--force", "--language", "en", "yso",
               str(data / "yso-en.tsv")], env)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        train = workdir / f"train-{size}.tsv"
        with open(data / "train-100k.tsv", encoding="utf-8") as src:
            train.write_text("".join(itertools.islice(src, size)), encoding="utf-8")
        run = timed_run([annif, "train", "ebm", str(train)], env,
                        log=workdir / f"train-ebm-{size}.log")
        rows.append({"system": "ebm", "documents": size, "train_s": run["wall_s"],
                     "peak_rss_mb": run["peak_rss_mb"], "docs_per_s": size / run["wall_s"]})
        if args.reference_python:
            refdir = workdir / f"ebm4subjects-{size}"
            run = timed_run([args.reference_python, str(BENCH / "reference_ebm4subjects.py"),
                             "--vocab", str(data / "yso-en.tsv"), "--train", str(train),
                             "--test", str(data / "validate.tsv"), "--workdir", str(refdir),
                             "--threads", str(os.cpu_count()),
                             "--phase", "train", "--out", str(refdir / "train.json")],
                            dict(os.environ, HF_HUB_OFFLINE="1"))
            rows.append({"system": "ebm4subjects 0.9.2", "documents": size,
                         "train_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
                         "docs_per_s": size / run["wall_s"]})
        print(json.dumps(rows[-1]), flush=True)

    growth = []
    for system in sorted({r["system"] for r in rows}):
        own = sorted((r for r in rows if r["system"] == system), key=lambda r: r["documents"])
        if len(own) > 1:
            growth.append(f"- {system}: peak RSS {own[-1]['documents']}/{own[0]['documents']} "
                          f"documents = {own[-1]['peak_rss_mb'] / own[0]['peak_rss_mb']:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    stem = f"memory-yso-finna-en-{datetime.date.today()}"
    plot(rows, RESULTS / f"{stem}.png")
    text = "\n".join([
        "# Memory scaling: annif train on yso-finna-en", "", *machine_facts(),
        f"- command: `python bench/memory.py {' '.join(sys.argv[1:])}`", "",
        markdown_table(rows, ["system", "documents", "train_s", "peak_rss_mb", "docs_per_s"]),
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
