"""End-to-end suggest time of an ebm project against the physical limit: the
time to encode exactly the chunks the pipeline produces, with the same model
and batch size and nothing else. Also the time per pipeline stage.

  python bench/speed.py PROJECT CORPUS.tsv [--docs 500] [--repeats 3] [--versus PROJECT2]
      [--reference-python /tmp/ref-venv/bin/python --reference-workdir DIR
       --reference-train TRAIN.tsv --reference-vocab VOCAB.tsv]
(ANNIF_PROJECTS / ANNIF_DATADIR point at a trained project, e.g. one made by
bench/accuracy.py: ANNIF_PROJECTS=bench/work/<dataset>/projects.cfg
ANNIF_DATADIR=bench/work/<dataset>/data python bench/speed.py ebm ...)

With --reference-python, DNB's ebm4subjects 0.9.2 (bench/reference_ebm4subjects.py,
DNB's defaults, the same model, all cores) suggests for the same documents in
Annif's batches of 32, and its docs/s (model loading excluded, as ours) stands
beside ours. Its model is trained first in --reference-workdir unless one is
there; suggest speed does not depend on how many documents trained its ranker,
so --reference-train-limit may keep that short.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from annif.corpus import Document

from common import BENCH, annif_projects, timed_run, write_report


def reference_docs_per_second(args, texts_path: str) -> float:
    """ebm4subjects' suggest docs/s on the documents in ``texts_path``."""
    workdir = Path(args.reference_workdir)
    common = [args.reference_python, str(BENCH / "reference_ebm4subjects.py"),
              "--vocab", args.reference_vocab, "--workdir", str(workdir),
              "--threads", str(os.cpu_count()), "--out", str(workdir / "speed.json")]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if not (workdir / "ebm-model.gz").exists():
        timed_run([*common, "--phase", "train", "--train", args.reference_train,
                   "--train-limit", str(args.reference_train_limit)], env)
    timed_run([*common, "--phase", "suggest", "--test", texts_path], env)
    return json.loads((workdir / "speed.json").read_text())["docs_per_second_excluding_load"]


class Side:
    """One project under measurement: its suggest calls and the bare encoding
    of the chunks it makes, batch by batch."""

    def __init__(self, project, texts: list[str], overrides: dict) -> None:
        self.project, self.overrides = project, overrides
        self.backend = project.backend
        project.initialize()
        project.suggest([Document(text="warm up")], {"ebm": overrides})
        self.batches = [texts[i : i + 32] for i in range(0, len(texts), 32)]  # Annif's batches
        # the limit: the same chunks, encoded by the project's own model (the
        # one suggest loads: tuned, exported) in the same batches
        pipeline = self.backend._pipeline({**self.backend.params, **overrides})
        self.params, self.embedder, chunker = pipeline.params, pipeline.encoder, pipeline.chunker
        self.chunk_batches = [[c for t in batch for c in chunker.chunk(t)]
                              for batch in self.batches]
        self.end_to_end: list[float] = []
        self.encode: list[float] = []
        self.stages: list[dict] = []

    def start_run(self) -> None:
        self.backend.stage_seconds.clear()
        self.end_to_end.append(0.0)
        self.encode.append(0.0)

    def batch(self, i: int) -> None:
        start = time.perf_counter()
        self.project.suggest([Document(text=t) for t in self.batches[i]], {"ebm": self.overrides})
        self.end_to_end[-1] += time.perf_counter() - start
        start = time.perf_counter()
        self.embedder.model.encode(self.chunk_batches[i], batch_size=self.embedder.batch_size,
                                   normalize_embeddings=True, convert_to_numpy=True)
        self.encode[-1] += time.perf_counter() - start

    def end_run(self) -> None:
        self.stages.append(dict(self.backend.stage_seconds))

    def rows(self) -> list[tuple[str, object]]:
        from annif_ebm.search import resolve_precision

        n_docs = sum(len(b) for b in self.batches)
        total, limit = statistics.median(self.end_to_end), statistics.median(self.encode)
        embedding = self.params.embedding
        rows = [("documents", n_docs),
                ("chunks", sum(len(c) for c in self.chunk_batches)),
                ("device", ",".join(self.embedder.devices)),
                ("encoder", f"{embedding.encode_backend} {embedding.encode_quantization}"),
                ("label search precision",
                 resolve_precision(self.params.retrieval.search_precision,
                                   self.embedder.search_device)),
                ("pure encode s (median)", limit),
                ("end-to-end suggest s (median)", total),
                ("ratio end-to-end / encode", total / limit),
                ("ratio, median of the runs' own ratios",
                 statistics.median(e / p for e, p in zip(self.end_to_end, self.encode))),
                ("suggest docs/s", n_docs / total)]
        return rows + [(f"stage {k} s", statistics.median(s.get(k, 0.0) for s in self.stages))
                       for k in ("chunk", "embed", "search", "knn", "lexical", "features", "rank")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("corpus")
    parser.add_argument("--versus", help="a second project of the same ANNIF_PROJECTS, "
                                         "measured batch by batch alternating with the first")
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="ebm parameter for this run, e.g. search_precision=float32")
    parser.add_argument("--tag", default="", help="added to the results file name")
    parser.add_argument("--reference-python", help="python of a venv with ebm4subjects")
    parser.add_argument("--reference-workdir", default="work/ebm4subjects-speed")
    parser.add_argument("--reference-vocab", help="Annif TSV vocabulary (with --reference-python)")
    parser.add_argument("--reference-train", help="training corpus, if not yet trained")
    parser.add_argument("--reference-train-limit", type=int, default=500)
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as file:
        lines = [line for line in itertools.islice(file, args.docs) if "\t" in line]
    texts = [line.split("\t", 1)[0] for line in lines]
    overrides = dict(p.split("=", 1) for p in args.param)
    if args.device:
        overrides["device"] = args.device

    ids = [args.project] + ([args.versus] if args.versus else [])
    with annif_projects(*ids) as projects:
        sides = [Side(project, texts, overrides) for project in projects]
        # batch by batch alternating (and the projects in turn), so that a
        # machine that speeds up or slows down during the run (shared cores,
        # clocks) shifts every measure alike
        for _ in range(args.repeats):
            for side in sides:
                side.start_run()
            for i in range(len(sides[0].batches)):
                for side in sides:
                    side.batch(i)
            for side in sides:
                side.end_run()

    reference = None
    if args.reference_python:
        with tempfile.NamedTemporaryFile("w", suffix=".tsv", encoding="utf-8") as same_docs:
            same_docs.writelines(lines)
            same_docs.flush()
            reference = reference_docs_per_second(args, same_docs.name)

    measured = [side.rows() for side in sides]
    rows = [{"measure": name, **{i: r[n][1] for i, r in zip(ids, measured)}}
            for n, (name, _) in enumerate(measured[0])]
    docs_per_s = {i: dict(r)["suggest docs/s"] for i, r in zip(ids, measured)}
    if len(ids) == 2:
        rows.append({"measure": f"suggest docs/s {ids[1]} / {ids[0]}", ids[1]:
                     docs_per_s[ids[1]] / docs_per_s[ids[0]]})
    if reference is not None:
        rows += [{"measure": "ebm4subjects 0.9.2 suggest docs/s (one run)", ids[0]: reference},
                 {"measure": "suggest docs/s ours / ebm4subjects",
                  **{i: d / reference for i, d in docs_per_s.items()}}]
    write_report(f"speed-{Path(args.corpus).parent.name}", args.tag,
                 f"Speed: {' vs '.join(ids)} on {Path(args.corpus).name}",
                 [f"- medians of {args.repeats} runs"], rows, ["measure", *ids])


if __name__ == "__main__":
    main()
