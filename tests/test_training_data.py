"""The on-disk training run and the embedding cache, with the real model."""

import os

import duckdb
import numpy as np
import polars as pl
import pytest
from annif.exception import NotInitializedException

from annif_ebm import duckdb_pool
from annif_ebm.features import FEATURE_NAMES
from annif_ebm.model_files import CACHE_FILE, TRAIN_FILE
from annif_ebm.training_data import (TrainingRun, cached_training_data, candidate_batches,
                                     stored_metadata)

LABELS = ["Economics", "Labour market", "Neural networks", "Economics"]
SPACE_A = {"model": "m", "role": "document"}
SPACE_B = {"model": "m", "role": "query"}


class Counting:
    """Counts the texts handed to the real embedder."""

    def __init__(self, encode):
        self.encode, self.texts = encode, []

    def __call__(self, texts):
        self.texts += texts
        return self.encode(texts)


def test_labels_are_embedded_once_and_reused(tmp_path, embedder):
    encode = Counting(embedder.encode_documents)
    run = TrainingRun(str(tmp_path))
    vectors, embedded = run.cache.vectors(LABELS, SPACE_A, embedder.dimension, encode, "labels")
    assert embedded == 3 and sorted(encode.texts) == sorted(set(LABELS))
    np.testing.assert_allclose(vectors, embedder.encode_documents(LABELS), atol=1e-6)
    run.abort()

    again = Counting(embedder.encode_documents)
    run = TrainingRun(str(tmp_path))
    cached, embedded = run.cache.vectors(LABELS[::-1], SPACE_A, embedder.dimension, again, "labels")
    assert embedded == 0 and again.texts == []
    np.testing.assert_array_equal(cached, vectors[::-1])
    # another embedding space (e.g. prompt or model) never reuses these vectors
    _, embedded = run.cache.vectors(LABELS, SPACE_B, embedder.dimension, again, "labels")
    assert embedded == 3
    run.abort()
    assert not os.path.exists(tmp_path / f"tmp-{TRAIN_FILE}")


def add_two_batches(run):
    # batch 1: doc 0 has two chunks, doc 1 none; batch 2: one doc repeating a chunk
    run.add_documents(np.array([0, 0], np.uint32), np.array([0, 1], np.uint32),
                      ["Wages and jobs.", "Neural networks learn."], [[7], [8, 9]])
    run.add_documents(np.array([0], np.uint32), np.array([0], np.uint32),
                      ["Wages and jobs."], [[7]])


def test_chunks_embedded_once_and_read_back_by_document(tmp_path, embedder):
    encode = Counting(embedder.encode_queries)
    run = TrainingRun(str(tmp_path))
    add_two_batches(run)
    assert run.n_docs == 3
    chunk_vectors = run.embed_chunks(SPACE_B, embedder.dimension, encode)
    assert chunk_vectors.embedded == 2
    assert sorted(encode.texts) == ["Neural networks learn.", "Wages and jobs."]
    batches = list(chunk_vectors.batches(2, run.n_docs))
    assert [b[0] for b in batches] == [0, 2]
    first, doc, position, n_chunks, vectors = batches[0]
    assert doc.tolist() == [0, 0] and position.tolist() == [0, 1] and n_chunks.tolist() == [2, 0]
    expected = embedder.encode_queries(["Wages and jobs.", "Neural networks learn."])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    np.testing.assert_allclose(batches[1][4], expected[:1], atol=1e-6)
    # the chunks' texts, for the lexical features, in the same order
    assert chunk_vectors.texts(0, 2) == ["Wages and jobs.", "Neural networks learn."]
    assert chunk_vectors.texts(2, 3) == ["Wages and jobs."]
    run.abort()


def candidates(doc, concept):
    frame = {"doc": pl.Series(doc, dtype=pl.UInt32), "concept_id": pl.Series(concept, dtype=pl.Int32)}
    for i, name in enumerate(FEATURE_NAMES):
        frame[name] = pl.Series([float(i)] * len(doc), dtype=pl.Float32)
    return pl.DataFrame(frame)


def test_candidates_are_labelled_with_gold_and_published(tmp_path, embedder):
    run = TrainingRun(str(tmp_path))
    add_two_batches(run)
    run.add_candidates(0, 2, candidates([0, 0, 1], [7, 8, 8]))  # doc 0 gold 7, doc 1 gold 8, 9
    run.add_candidates(2, 3, candidates([0, 0], [7, 9]))  # doc 2 gold 7
    assert run.n_rows == 5
    path = run.finish({"store_file": "ebm-labels-x.duckdb"})
    assert not os.path.exists(tmp_path / TRAIN_FILE)  # not before the ranker is saved
    assert stored_metadata(path) == {"store_file": "ebm-labels-x.duckdb"}
    batches = list(candidate_batches(path, str(tmp_path)))
    features = np.concatenate([f for f, _, _ in batches])
    gold = np.concatenate([g for _, g, _ in batches])
    docs = np.concatenate([d for _, _, d in batches])
    assert gold.tolist() == [True, False, True, True, False]
    assert docs.tolist() == [0, 0, 1, 2, 2]  # the ranker's query groups
    assert features.shape == (5, len(FEATURE_NAMES))
    assert features[0].tolist() == [float(i) for i in range(len(FEATURE_NAMES))]
    run.publish()
    assert os.path.exists(tmp_path / TRAIN_FILE) and not os.path.exists(path)
    assert len(list(candidate_batches(cached_training_data(str(tmp_path)),
                                      str(tmp_path)))) == 1
    assert not list(tmp_path.glob(duckdb_pool.SPILL_PREFIX + "*"))  # spill folders removed


def test_missing_features_are_read_back_as_nan(tmp_path, embedder):
    # a label-only candidate has no kNN features: NULL in DuckDB, NaN for XGBoost
    run = TrainingRun(str(tmp_path))
    add_two_batches(run)
    rows = candidates([0, 1], [7, 8]).with_columns(
        pl.when(pl.col("concept_id") == 8).then(None).otherwise(pl.col(FEATURE_NAMES[-1]))
        .alias(FEATURE_NAMES[-1]))
    run.add_candidates(0, 2, rows)
    features, gold, _ = next(candidate_batches(run.finish({}), str(tmp_path)))
    assert features.dtype == np.float32 and gold.tolist() == [True, True]
    assert features[0, -1] == len(FEATURE_NAMES) - 1 and np.isnan(features[1, -1])
    assert not np.isnan(features[:, :-1]).any()


def test_missing_cached_training_data_is_a_clear_error(tmp_path):
    with pytest.raises(NotInitializedException, match="train without --cached"):
        next(candidate_batches(cached_training_data(str(tmp_path)), str(tmp_path)))


class _FirstJoinOutOfMemory:
    """A run's connection whose first join of chunk vectors fails as DuckDB
    fails when the pool is full (which real runs meet by thread timing)."""

    def __init__(self, con):
        self._con, self.failed = con, []

    def execute(self, sql, *args):
        if sql.startswith("INSERT INTO chunk_vectors") and not self.failed:
            self.failed.append(args)  # a failed statement writes nothing
            raise duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate")
        return self._con.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._con, name)


def _join_under_a_32_mb_pool(tmp_path, monkeypatch, first_join_fails=False):
    # 30,000 chunk vectors (46 MB) through a 32 MB DuckDB pool: the run must
    # spill or stream, never fail with DuckDB's out-of-memory error. Random
    # vectors stand in for the model: the point is the run's memory use.
    monkeypatch.setattr(duckdb_pool, "MEMORY_LIMIT_MB", 32)
    run = TrainingRun(str(tmp_path), threads=2)
    for first in range(0, 20_000, 500):
        doc = np.repeat(np.arange(500, dtype=np.uint32), 1 + np.arange(500) % 2)
        position = (np.arange(len(doc)) - np.searchsorted(doc, doc)).astype(np.uint32)
        texts = [f"chunk {first + d} {p}" for d, p in zip(doc, position)]
        run.add_documents(doc, position, texts, [[d % 50] for d in range(500)])

    def encode(texts):  # a text's vector depends on the text alone
        return np.stack([np.random.default_rng(int(t.split()[1]) * 2 + int(t.split()[2]))
                         .normal(size=384).astype(np.float32) for t in texts])

    if first_join_fails:
        run._con = _FirstJoinOutOfMemory(run._con)
    chunk_vectors = run.embed_chunks(SPACE_B, 384, encode)
    assert chunk_vectors.embedded == 30_000
    if first_join_fails:
        assert run._con.failed  # and no vector is missing or twice below
    seen = 0
    for first, doc, position, n_chunks, vectors in chunk_vectors.batches(1024, run.n_docs):
        assert (np.diff(doc.astype(np.int64)) >= 0).all()
        assert n_chunks.tolist() == [1 + (first + d) % 2 for d in range(len(n_chunks))]
        some = np.flatnonzero(position == 1)[:3]
        expected = encode([f"chunk {first + doc[i]} 1" for i in some])
        np.testing.assert_array_equal(vectors[some], expected)
        seen += len(doc)
    assert seen == 30_000
    run.abort()


def test_a_run_larger_than_its_memory_limit_joins_and_reads_back_in_order(tmp_path, monkeypatch):
    _join_under_a_32_mb_pool(tmp_path, monkeypatch)


def test_a_join_that_runs_out_of_the_pool_is_done_again_in_halves(tmp_path, monkeypatch, caplog):
    # the first range's join fails as a full pool fails it: done again in
    # halves, with every vector once and in its place
    with caplog.at_level("INFO", logger="annif"):
        _join_under_a_32_mb_pool(tmp_path, monkeypatch, first_join_fails=True)
    assert "documents 0-3640 in halves: Out of Memory Error" in caplog.text


def test_candidates_of_five_times_the_pool_are_stored_and_read_back(tmp_path, monkeypatch):
    # 27,648 documents x 50 candidates = 1.4M rows of 30 features (180 MB,
    # 5x the 32 MB pool), written as training writes them (256 documents at a
    # time) and read back for the ranker in bounded batches of whole
    # documents, in order. Read under the pool of a read-only connection
    # without a spill folder, this failed with "Out of Memory Error" (issue 16).
    import annif_ebm.training_data as training_data

    monkeypatch.setattr(duckdb_pool, "MEMORY_LIMIT_MB", 32)
    run = TrainingRun(str(tmp_path), threads=2)
    n_docs, per_doc, batch_docs = 108 * 256, 50, 256
    for first in range(0, n_docs, batch_docs):
        run.add_documents(np.zeros(0, np.uint32), np.zeros(0, np.uint32), [],
                          [[(first + d) % 97] for d in range(batch_docs)])
        doc = np.repeat(np.arange(batch_docs, dtype=np.uint32), per_doc)
        concept = np.tile(np.arange(per_doc, dtype=np.int32) * 2, batch_docs)
        frame = {"doc": pl.Series(doc), "concept_id": pl.Series(concept)}
        for i, name in enumerate(FEATURE_NAMES):
            frame[name] = pl.Series((first + doc).astype(np.float32) + i / 100)
        run.add_candidates(first, first + batch_docs, pl.DataFrame(frame))
    path = run.finish({})
    assert n_docs * per_doc * (8 + 4 + 4 * len(FEATURE_NAMES)) > 5 * 32 * 2**20
    rows = gold_rows = 0
    last_doc = -1.0
    for features, gold, docs in candidate_batches(path, str(tmp_path)):
        assert len(gold) <= training_data.ranker_batch_rows()
        assert len(gold) % per_doc == 0  # whole documents
        assert (np.diff(features[:, 0]) >= 0).all() and features[0, 0] > last_doc
        assert (np.diff(docs) >= 0).all() and len(np.unique(docs)) == len(gold) // per_doc
        last_doc = features[-1, 0]
        rows += len(gold)
        gold_rows += int(gold.sum())
    assert rows == n_docs * per_doc
    # gold concept (d % 97) is a candidate (an even id) for about half the documents
    assert gold_rows == sum(1 for d in range(n_docs) if (d % 97) % 2 == 0)
    assert not list(tmp_path.glob(duckdb_pool.SPILL_PREFIX + "*"))


def test_a_damaged_embedding_cache_is_rebuilt_with_a_warning(tmp_path, embedder, caplog):
    run = TrainingRun(str(tmp_path))
    run.cache.vectors(LABELS, SPACE_A, embedder.dimension, embedder.encode_documents, "labels")
    run.abort()
    path = tmp_path / CACHE_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated
    encode = Counting(embedder.encode_documents)
    run = TrainingRun(str(tmp_path))
    vectors, embedded = run.cache.vectors(LABELS, SPACE_A, embedder.dimension, encode, "labels")
    run.abort()
    assert embedded == 3  # embedded again
    np.testing.assert_allclose(vectors, embedder.encode_documents(LABELS), atol=1e-6)
    assert f"embedding cache {path} is damaged" in caplog.text


FRAGMENTED_HEAP = """
import numpy as np
from annif_ebm.memory import libc_malloc_trim, return_free_heap

def rss_mb():
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) // 1024

if libc_malloc_trim() is None:
    print("no-glibc")
    raise SystemExit
arrays = [np.ones(100_000, dtype=np.uint8) for _ in range(3000)]  # on the heap
kept = arrays[::50]  # every 50th stays: the freed ones are holes in the heap
del arrays
before = rss_mb()
return_free_heap()
print(before, rss_mb())
"""


def test_the_free_heap_between_candidate_batches_goes_back_to_the_system():
    # 300 MB of small arrays, 294 MB of them freed between live ones: glibc
    # keeps the holes until the heap is trimmed (done after each batch)
    import subprocess
    import sys

    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux /proc")
    result = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True,
                            text=True, check=True)
    if result.stdout.strip() == "no-glibc":
        pytest.skip("malloc_trim is glibc's")
    before, after = map(int, result.stdout.split())
    assert before - after > 200, (before, after)
