"""End-to-end suggest time of an ebm project against the physical limit: the
time to encode exactly the chunks the pipeline produces, with the same model
and batch size and nothing else. Also the time per pipeline stage.

  python bench/speed.py PROJECT CORPUS.tsv [--docs 500] [--repeats 3]
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

from common import BENCH, annif_project, timed_run, write_report


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("corpus")
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

    with annif_project(args.project) as project:
        backend = project.backend
        project.initialize()
        project.suggest([Document(text="warm up")], {"ebm": overrides})
        batches = [texts[i : i + 32] for i in range(0, len(texts), 32)]  # Annif's batches

        # the limit: the same chunks, encoded by the bare model, same batches
        from annif_ebm.chunking import Chunker
        from annif_ebm.params import EbmParams
        from annif_ebm.search import resolve_precision

        params = EbmParams.parse({**backend.params, **overrides})
        embedder = backend._encoder_for(params)
        chunker = Chunker(project.language, params.texts.max_chunk_length,
                          params.texts.max_chunks)
        chunk_batches = [[c for t in batch for c in chunker.chunk(t)] for batch in batches]

        # batch by batch alternating, so that a machine that speeds up or
        # slows down during the run (shared cores, clocks) shifts both alike
        end_to_end, stages, encode = [], [], []
        for _ in range(args.repeats):
            backend.stage_seconds.clear()
            suggest_s = encode_s = 0.0
            for batch, chunks in zip(batches, chunk_batches):
                start = time.perf_counter()
                project.suggest([Document(text=t) for t in batch], {"ebm": overrides})
                suggest_s += time.perf_counter() - start
                start = time.perf_counter()
                embedder.model.encode(chunks, batch_size=embedder.batch_size,
                                      normalize_embeddings=True, convert_to_numpy=True)
                encode_s += time.perf_counter() - start
            end_to_end.append(suggest_s)
            encode.append(encode_s)
            stages.append(dict(backend.stage_seconds))

    reference = None
    if args.reference_python:
        with tempfile.NamedTemporaryFile("w", suffix=".tsv", encoding="utf-8") as same_docs:
            same_docs.writelines(lines)
            same_docs.flush()
            reference = reference_docs_per_second(args, same_docs.name)

    n_chunks = sum(len(c) for c in chunk_batches)
    total, limit = statistics.median(end_to_end), statistics.median(encode)
    rows = [{"measure": "documents", "value": len(texts)},
            {"measure": "chunks", "value": n_chunks},
            {"measure": "device", "value": ",".join(embedder.devices)},
            {"measure": "label search precision",
             "value": resolve_precision(params.retrieval.search_precision, embedder.search_device)},
            {"measure": "pure encode s (median)", "value": limit},
            {"measure": "end-to-end suggest s (median)", "value": total},
            {"measure": "ratio end-to-end / encode", "value": total / limit},
            {"measure": "ratio, median of the runs' own ratios",
             "value": statistics.median(e / p for e, p in zip(end_to_end, encode))},
            {"measure": "suggest docs/s", "value": len(texts) / total}]
    if reference is not None:
        rows += [{"measure": "ebm4subjects 0.9.2 suggest docs/s (one run)", "value": reference},
                 {"measure": "suggest docs/s ours / ebm4subjects", "value": len(texts) / total / reference}]
    stage_median = {k: statistics.median(s.get(k, 0.0) for s in stages)
                    for k in ("chunk", "embed", "search", "knn", "features", "rank")}
    rows += [{"measure": f"stage {k} s", "value": v} for k, v in stage_median.items()]
    write_report(f"speed-{Path(args.corpus).parent.name}", args.tag,
                 f"Speed: {args.project} on {Path(args.corpus).name}",
                 [f"- medians of {args.repeats} runs"], rows, ["measure", "value"])


if __name__ == "__main__":
    main()
