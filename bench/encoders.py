"""The embedding model on each engine (issue 22): torch, ONNX Runtime
float32 and ONNX Runtime int8, encoding the chunks the pipeline makes of
validate documents, in alternating rounds on one machine; texts/s, the speed-up
over torch, and how close the vectors are to torch's (cosine per chunk).

  python bench/encoders.py ../shared/data/tibcore-en/validate.tsv [--docs 100] [--rounds 3]

No trained project needed: the ONNX models are exported (and quantized) as
training exports them, into a temporary folder. Writes
bench/results/encoders-<date>[-<tag>].md.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time

import numpy as np

from common import write_report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    from annif_ebm.chunking import Chunker, chunk_texts
    from annif_ebm.embedding import load_encoder, model_location
    from annif_ebm.onnx_export import export_model, kernel_set
    from annif_ebm.params import EbmParams

    with open(args.corpus, encoding="utf-8") as file:
        texts = [line.split("\t")[0] for line in itertools.islice(file, args.docs)]
    base = EbmParams.parse({"device": "cpu"})
    chunks = chunk_texts(Chunker("en", base.texts.max_chunk_length, base.texts.max_chunks),
                         texts).chunks
    engines = {"torch": ({}, None)}
    with tempfile.TemporaryDirectory() as folder:
        for name, raw in (("onnx float32", {"encode_backend": "onnx"}),
                          ("onnx int8", {"encode_backend": "onnx",
                                         "encode_quantization": "int8"})):
            p = EbmParams.parse({"device": "cpu", **raw})
            path = f"{folder}/{name.replace(' ', '-')}"
            export_model(*model_location(p.embedding.model), p.embedding, path)
            engines[name] = (raw, path)
        encoders = {name: load_encoder(EbmParams.parse({"device": "cpu", **raw}).embedding,
                                       base.api, path)
                    for name, (raw, path) in engines.items()}
        seconds = {name: [] for name in encoders}
        vectors = {}
        for round_ in range(args.rounds):
            order = list(encoders) if round_ % 2 == 0 else list(reversed(encoders))
            for name in order:
                start = time.perf_counter()
                vectors[name] = encoders[name].encode_queries(chunks)
                seconds[name].append(time.perf_counter() - start)
    rows = []
    for name, times in seconds.items():
        cosine = (vectors[name] * vectors["torch"]).sum(axis=1)
        best = min(times)
        rows.append({"engine": name, "chunks": len(chunks),
                     "texts/s (best round)": len(chunks) / best,
                     "speed-up over torch": min(seconds["torch"]) / best,
                     "median s": statistics.median(times),
                     "cosine to torch (mean)": float(cosine.mean()),
                     "cosine to torch (min)": float(np.min(cosine))})
    write_report("encoders", args.tag, "The embedding model on torch and ONNX Runtime (CPU)", [
        f"- corpus: {args.corpus}, first {len(texts)} documents as the pipeline chunks them; "
        f"{args.rounds} rounds, engines in alternating order; int8 quantized for {kernel_set()}",
    ], rows, list(rows[0]))


if __name__ == "__main__":
    main()
