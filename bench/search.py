"""Nearest-label search options against one label store, side by side:
chunk queries per second and recall of the exact top-k.

  python bench/search.py STORE.duckdb CORPUS.tsv [--queries 2000] [--k 20]
STORE is an ebm label store (ebm-labels-*.duckdb in a trained project's
datadir); the queries are the chunks of CORPUS's first documents, embedded
with the default model. Options measured:

* exact: what annif-ebm does (matrix read once, batched matmul + top-k, torch)
* exact SQL: the same in one DuckDB query (cross product, max_by top-k)
* HNSW: DuckDB vss index (M 16, ef_construction 128, built here on a copy),
  one ORDER BY ... LIMIT query per chunk, as the index requires
* LATERAL: the reference's form (a LATERAL join per batch); EXPLAIN shows
  whether the index is used
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from common import RESULTS, machine_facts, markdown_table


def queries_from(corpus: str, n: int) -> np.ndarray:
    from annif_ebm.chunking import Chunker
    from annif_ebm.embedding import load_encoder
    from annif_ebm.params import EbmParams

    params = EbmParams.parse({"device": "cpu"})
    chunker = Chunker("en", params.texts.max_chunk_length, params.texts.max_chunks)
    chunks = []
    with open(corpus, encoding="utf-8") as file:
        for line in file:
            chunks += chunker.chunk(line.split("\t", 1)[0])
            if len(chunks) >= n:
                break
    return load_encoder(params.embedding, params.api).encode_queries(chunks[:n])


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def recall(found: list[set], exact: list[set]) -> float:
    return float(np.mean([len(f & e) / len(e) for f, e in zip(found, exact)]))


def per_query(query_idx, labels, n) -> list[set]:
    sets = [set() for _ in range(n)]
    for q, label in zip(query_idx, labels):
        sets[q].add(int(label))
    return sets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("corpus")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--lateral-queries", type=int, default=50)
    parser.add_argument("--tag", default="", help="added to the results file name")
    args = parser.parse_args()
    from annif_ebm.search import ExactSearch, label_search, resolve_precision
    from annif_ebm.store import LabelStore, load_vss

    queries = queries_from(args.corpus, args.queries)
    n, k = len(queries), args.k
    store = LabelStore(args.store)
    vectors = store.label_vectors()  # read once, as the backend does at initialize
    rows = []

    (q, labels, _), seconds = timed(ExactSearch(vectors, precision="float32").search, queries, k)
    exact = per_query(q, labels, n)
    rows.append({"method": "exact (torch matmul + grouped top-k, float32)", "queries": n,
                 "seconds": seconds, "queries_per_s": n / seconds, "recall": 1.0})
    native = resolve_precision("auto", "cpu") == "bfloat16"
    bfloat16 = ExactSearch(vectors, precision="bfloat16")
    bfloat16.matrices()  # the bfloat16 copy, made before the clock starts
    (q, labels, _), seconds = timed(bfloat16.search, queries, k)
    rows.append({"method": "exact, bfloat16 candidates scored again in float32"
                 + (" (native bfloat16: the auto setting here)" if native else " (emulated here)"),
                 "queries": n, "seconds": seconds, "queries_per_s": n / seconds,
                 "recall": recall(per_query(q, labels, n), exact)})

    con = duckdb.connect()
    con.execute(f"ATTACH '{args.store}' AS store (READ_ONLY)")
    con.execute("CREATE TEMP TABLE q AS SELECT * FROM (SELECT unnest(range(?)) AS i, "
                f"unnest(?::FLOAT[{store.dimension}][]) AS vec)", [n, queries.tolist()])
    sql = ("SELECT i, unnest(max_by(label_id, score, ?)) FROM (SELECT q.i, l.label_id, "
           "array_inner_product(q.vec, l.vec) AS score FROM q, store.labels l) GROUP BY i")
    result, seconds = timed(lambda: con.execute(sql, [k]).fetchall())
    rows.append({"method": "exact SQL (cross product, max_by)", "queries": n,
                 "seconds": seconds, "queries_per_s": n / seconds,
                 "recall": recall(per_query(*zip(*result), n), exact)})
    con.close()

    with tempfile.TemporaryDirectory() as tmp:
        indexed = str(Path(tmp) / "hnsw.duckdb")
        shutil.copy(args.store, indexed)
        con = duckdb.connect()
        load_vss(con)
        con.execute("SET hnsw_enable_experimental_persistence = true")
        con.execute(f"ATTACH '{indexed}' AS store")
        _, build = timed(con.execute, "CREATE INDEX hnsw ON store.labels USING HNSW (vec) "
                         "WITH (metric = 'cosine', M = 16, ef_construction = 128)")
        con.close()
        con = duckdb.connect()
        load_vss(con)
        con.execute(f"ATTACH '{indexed}' AS store")
        con.execute("UPDATE store.meta SET value = 'True' WHERE key = 'hnsw'")
        con.close()
        hnsw = label_search(LabelStore(indexed), "hnsw")
        for ef in (64, 256):  # one connection for both
            hnsw.ef_search = ef
            (q, labels, _), seconds = timed(hnsw.search, queries, k)
            rows.append({"method": f"HNSW, query per chunk (ef_search {ef}; build {build:.0f} s)",
                         "queries": n, "seconds": seconds, "queries_per_s": n / seconds,
                         "recall": recall(per_query(q, labels, n), exact)})

        m = min(args.lateral_queries, n)
        con = duckdb.connect()
        load_vss(con)
        con.execute(f"ATTACH '{indexed}' AS store (READ_ONLY)")
        con.execute("SET hnsw_ef_search = 256")
        con.execute("CREATE TEMP TABLE q AS SELECT * FROM (SELECT unnest(range(?)) AS i, "
                    f"unnest(?::FLOAT[{store.dimension}][]) AS vec)", [m, queries[:m].tolist()])
        lateral = ("SELECT q.i, r.label_id FROM q, LATERAL (SELECT label_id FROM store.labels l "
                   f"ORDER BY array_cosine_distance(l.vec, q.vec) LIMIT {k}) r")
        plan = con.execute("EXPLAIN " + lateral).fetchall()[0][1]
        result, seconds = timed(lambda: con.execute(lateral).fetchall())
        rows.append({"method": "LATERAL join (the reference's form)"
                     + ("" if "HNSW_INDEX_SCAN" in plan else ", index not used"),
                     "queries": m, "seconds": seconds, "queries_per_s": m / seconds,
                     "recall": recall(per_query(*zip(*result), m), exact[:m])})
        con.close()

    text = "\n".join([
        f"# Label search: {len(store)} labels, {store.dimension} dimensions, k={k}", "",
        *machine_facts(), f"- command: `python bench/search.py {' '.join(sys.argv[1:])}`",
        "- recall: share of the exact top-k found", "",
        markdown_table(rows, ["method", "queries", "seconds", "queries_per_s", "recall"]), "",
    ])
    RESULTS.mkdir(exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    (RESULTS / f"search-{len(store)}-labels-{datetime.date.today()}{tag}.md").write_text(
        text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
