"""Write ranked suggestions of an Annif project for a TSV corpus, with stage
timings for ``ebm`` projects.

Usage (in the annif-ebm venv, with ANNIF_PROJECTS / ANNIF_DATADIR set):
  python bench/annif_predict.py PROJECT CORPUS.tsv PREDICTIONS.tsv [--limit 100]
Prints one JSON line: documents, suggest seconds (model loading excluded),
docs/s and, for ebm, seconds per pipeline stage.
"""

from __future__ import annotations

import argparse
import json
import time

from annif.cli_util import open_documents
from annif.corpus import Document

from common import annif_project


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("corpus")
    parser.add_argument("predictions")
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    with annif_project(args.project) as project:
        corpus = open_documents((args.corpus,), project.subjects, project.vocab_lang, None)
        project.initialize()
        project.suggest([Document(text="warm up")])  # load models
        getattr(project.backend, "stage_seconds", {}).clear()
        n_docs, start = 0, time.perf_counter()
        with open(args.predictions, "w", encoding="utf-8") as out:
            for batch in project.suggest_corpus(corpus).filter(args.limit).batches:
                for result in batch:
                    for hit in result:
                        uri = project.subjects[hit.subject_id].uri
                        print(n_docs, uri, f"{hit.score:.6f}", sep="\t", file=out)
                    n_docs += 1
        seconds = time.perf_counter() - start
    report = {"documents": n_docs, "suggest_seconds": seconds, "docs_per_s": n_docs / seconds}
    stages = getattr(project.backend, "stage_seconds", None)
    if stages is not None:
        report["stage_seconds"] = dict(stages)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
