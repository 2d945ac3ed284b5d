"""End-to-end suggest time of an ebm project against the physical limit: the
time to encode exactly the chunks the pipeline produces, with the same model
and batch size and nothing else. Also the time per pipeline stage.

  python bench/speed.py PROJECT CORPUS.tsv [--docs 500] [--repeats 3]
(ANNIF_PROJECTS / ANNIF_DATADIR point at a trained project, e.g. one made by
bench/accuracy.py: ANNIF_PROJECTS=bench/work/<dataset>/projects.cfg
ANNIF_DATADIR=bench/work/<dataset>/data python bench/speed.py ebm ...)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import statistics
import sys
import time
from pathlib import Path

from annif.corpus import Document

from common import RESULTS, annif_project, machine_facts, markdown_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("corpus")
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="")
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as file:
        texts = [line.split("\t", 1)[0] for line in itertools.islice(file, args.docs)]
    overrides = {"device": args.device} if args.device else {}

    with annif_project(args.project) as project:
        backend = project.backend
        project.initialize()
        project.suggest([Document(text="warm up")], {"ebm": overrides})
        batches = [texts[i : i + 32] for i in range(0, len(texts), 32)]  # Annif's batches
        end_to_end, stages = [], []
        for _ in range(args.repeats):
            backend.stage_seconds.clear()
            start = time.perf_counter()
            for batch in batches:
                project.suggest([Document(text=t) for t in batch], {"ebm": overrides})
            end_to_end.append(time.perf_counter() - start)
            stages.append(dict(backend.stage_seconds))

        # the limit: the same chunks, encoded by the bare model, same batches
        from annif_ebm.chunking import Chunker
        from annif_ebm.params import EbmParams

        params, _ = EbmParams.parse({**backend.params, **overrides})
        embedder = backend._embedder_for(params)
        chunker = Chunker(project.language, params.max_chunk_length, params.max_chunks)
        chunk_batches = [[c for t in batch for c in chunker.chunk(t)] for batch in batches]
        encode = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for chunks in chunk_batches:
                embedder.model.encode(chunks, batch_size=embedder.batch_size,
                                      normalize_embeddings=True, convert_to_numpy=True)
            encode.append(time.perf_counter() - start)

    n_chunks = sum(len(c) for c in chunk_batches)
    total, limit = statistics.median(end_to_end), statistics.median(encode)
    rows = [{"measure": "documents", "value": len(texts)},
            {"measure": "chunks", "value": n_chunks},
            {"measure": "device", "value": ",".join(embedder.devices)},
            {"measure": "pure encode s (median)", "value": limit},
            {"measure": "end-to-end suggest s (median)", "value": total},
            {"measure": "ratio end-to-end / encode", "value": total / limit},
            {"measure": "suggest docs/s", "value": len(texts) / total}]
    stage_median = {k: statistics.median(s.get(k, 0.0) for s in stages)
                    for k in ("chunk", "embed", "search", "knn", "features", "rank")}
    rows += [{"measure": f"stage {k} s", "value": v} for k, v in stage_median.items()]
    text = "\n".join([
        f"# Speed: {args.project} on {Path(args.corpus).name}", "", *machine_facts(),
        f"- command: `python bench/speed.py {' '.join(sys.argv[1:])}`",
        f"- medians of {args.repeats} runs", "",
        markdown_table(rows, ["measure", "value"]), "",
    ])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"speed-{Path(args.corpus).parent.name}-{datetime.date.today()}.md"
    out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
