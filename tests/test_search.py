import numpy as np
import torch
import pytest
from annif.exception import OperationFailedException

import annif_ebm.search as search_module
from annif_ebm.labels import LabelSet
from annif_ebm.search import ExactSearch, HnswSearch, label_search, resolve_precision
from annif_ebm.store import LabelStore, write_store

from .test_store import TEXTS, label_set, store_path  # noqa: F401 (fixtures)


def exact(store: LabelStore, **kwargs) -> ExactSearch:
    return label_search(store, "exact", precision=kwargs.pop("precision", "float32"), **kwargs)


def test_exact_search_finds_nearest_labels_best_first(store_path, embedder):
    store = LabelStore(str(store_path))
    queries = embedder.encode_queries(["deep neural networks", "the job market for workers"])
    query, label, score = exact(store).search(queries, 3)
    np.testing.assert_array_equal(query, [0, 0, 0, 1, 1, 1])
    assert TEXTS[label[0]] == "Neural networks"
    assert TEXTS[label[3]] == "Labour market"
    assert (np.diff(score[:3]) <= 0).all() and (np.diff(score[3:]) <= 0).all()
    assert -1.0 <= score.min() and score.max() <= 1.0


def test_k_larger_than_vocabulary_and_empty_queries(store_path, embedder):
    search = exact(LabelStore(str(store_path)))
    query, label, _ = search.search(embedder.encode_queries(["x"]), 100)
    assert sorted(label) == list(range(len(TEXTS)))
    assert all(len(part) == 0 for part in search.search(np.zeros((0, 384), np.float32), 5))
    assert all(len(part) == 0 for part in search.search(embedder.encode_queries(["x"]), 0))


def test_exact_search_over_label_and_query_blocks_equals_brute_force(monkeypatch):
    # 1000 random labels in blocks of 64, 300 queries in blocks of 16: the
    # merged per-block top-k must be the plain top-k of the full score matrix
    monkeypatch.setattr(search_module, "EXACT_LABEL_BLOCK", 64)
    monkeypatch.setattr(search_module, "SCORE_BUFFER_BYTES", 16 * 64 * 4)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    search = ExactSearch(vectors, precision="float32")
    queries = rng.normal(size=(300, 384)).astype(np.float32)
    query, label, score = search.search(queries, 7)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :7]
    np.testing.assert_array_equal(query, np.repeat(np.arange(300), 7))
    np.testing.assert_array_equal(label.reshape(300, 7), expected)
    np.testing.assert_allclose(score.reshape(300, 7),
                               np.take_along_axis(queries @ vectors.T, expected, 1), rtol=1e-5)
    assert search._score_buffer()[1:] == (16, 64)  # really in blocks


def test_precision_is_resolved_once_and_the_cpu_matrix_used_in_place(monkeypatch):
    vectors = np.eye(4, 384, dtype=np.float32)
    for setting in ("float32", "bfloat16"):
        assert ExactSearch(vectors, precision=setting).precision == setting
    assert ExactSearch(vectors).precision == resolve_precision("auto", "cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    search = ExactSearch(vectors, precision="auto")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert search.precision == "bfloat16"  # the CPU was native when it was made
    assert search._matrices is None  # no bfloat16 copy (and torch pool) before a search
    assert search.vectors.data_ptr() == vectors.ctypes.data  # no copy: forks share it
    _, label, _ = search.search(vectors[:2], 1)
    np.testing.assert_array_equal(label, [0, 1])
    matrix, coarse = search.matrices()
    assert matrix is search.vectors and coarse.dtype == torch.bfloat16
    assert search._score_buffer()[0].dtype == torch.bfloat16


@pytest.mark.parametrize("columns", [100, 4096, 5037])
def test_grouped_top_k_equals_a_plain_top_k(columns):
    # 5037: a ragged tail after the last full group; rounding makes ties
    from annif_ebm.topk import top_k

    rng = np.random.default_rng(columns)
    for scores in (rng.normal(size=(50, columns)), rng.normal(size=(50, columns)).round(1)):
        scores = torch.from_numpy(scores.astype(np.float32))
        values, columns_found = top_k(scores, 20)
        expected = torch.topk(scores, 20, dim=1)
        assert torch.equal(values, expected.values)
        assert torch.equal(torch.gather(scores, 1, columns_found), values)
        assert all(len(set(row.tolist())) == 20 for row in columns_found)


def clustered_store(path, n_labels=5000, n_queries=300):
    """Labels and queries clustered like text embeddings (cosines 0.3-0.5):
    (store, label vectors, query vectors)."""
    rng = np.random.default_rng(1)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    common = rng.normal(size=384)
    vectors = unit(2 * common / np.linalg.norm(common) + rng.normal(size=(n_labels, 384)) * 0.06)
    queries = unit(vectors[rng.integers(0, n_labels, n_queries)]
                   + rng.normal(size=(n_queries, 384)) * 0.08)
    labels = LabelSet(texts=[f"label {i}" for i in range(n_labels)],
                      concept_ids=np.arange(n_labels, dtype=np.int32),
                      is_pref=np.ones(n_labels, dtype=bool))
    write_store(str(path), labels, vectors, "test-model")
    return LabelStore(str(path)), vectors, queries


def overlap(found: np.ndarray, expected: np.ndarray, k: int) -> float:
    """Mean share of each query's expected labels that were found."""
    return np.mean([len(set(a) & set(b)) / k
                    for a, b in zip(found.reshape(-1, k), expected.reshape(-1, k))])


def test_bfloat16_search_scores_its_candidates_exactly(tmp_path, monkeypatch):
    # the bfloat16 pass must keep the float32 top-k, with float32 scores
    monkeypatch.setattr(search_module, "EXACT_LABEL_BLOCK", 2048)
    store, vectors, queries = clustered_store(tmp_path / "labels.duckdb")
    _, exact_labels, _ = exact(store, precision="float32").search(queries, 20)
    bfloat16 = exact(store, precision="bfloat16")
    query, label, score = bfloat16.search(queries, 20)
    np.testing.assert_array_equal(query, np.repeat(np.arange(300), 20))
    np.testing.assert_allclose(score, np.einsum("qd,qd->q", queries[query], vectors[label]),
                               atol=1e-6)  # float32 scores, best first
    assert (np.diff(score.reshape(300, 20), axis=1) <= 0).all()
    assert overlap(label, exact_labels, 20) > 0.999
    assert bfloat16._score_buffer()[0].dtype == torch.bfloat16


def test_identical_labels_come_in_label_order_whatever_the_precision(tmp_path):
    # labels i, i+500 and i+1000 share a vector (one text, three concepts):
    # their order, and which of them make the cut, must not depend on the
    # order the search met them in (it varies with precision, batch, threads),
    # and a label's score must not depend on the precision
    rng = np.random.default_rng(3)
    base = rng.normal(size=(500, 384)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    vectors = np.concatenate([base, base, base])
    labels = LabelSet(texts=[f"label {i % 500}" for i in range(1500)],
                      concept_ids=np.arange(1500, dtype=np.int32),
                      is_pref=np.ones(1500, dtype=bool))
    write_store(str(tmp_path / "labels.duckdb"), labels, vectors, "test-model")
    store = LabelStore(str(tmp_path / "labels.duckdb"))
    queries = base[:40] + rng.normal(size=(40, 384)).astype(np.float32) * 0.05
    found = {}
    for precision in ("float32", "bfloat16"):
        _, label, score = exact(store, precision=precision).search(queries, 7)
        found[precision] = label.reshape(40, 7), score
        for row in found[precision][0]:
            # two whole groups of three, then the first of the third group
            assert (row[:6:3] < 500).all() and row[6] < 500
            np.testing.assert_array_equal(row[:6], np.repeat(row[:6:3], 3) + [0, 500, 1000] * 2)
    for bfloat16, float32 in zip(found["bfloat16"], found["float32"]):
        np.testing.assert_array_equal(bfloat16, float32)  # bitwise: same labels, same scores


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_search_on_cuda_agrees_with_the_cpu(tmp_path, precision):
    store, _, queries = clustered_store(tmp_path / "labels.duckdb")
    _, cpu_labels, cpu_scores = exact(store, precision="float32").search(queries, 20)
    cuda = exact(store, device="cuda", precision=precision)
    _, labels, scores = cuda.search(queries, 20)
    assert cuda.matrices()[1].is_cuda
    assert overlap(labels, cpu_labels, 20) > 0.999
    np.testing.assert_allclose(np.sort(scores), np.sort(cpu_scores), atol=1e-3)


def test_search_precision_auto_is_bfloat16_only_where_native(monkeypatch):
    assert resolve_precision("float32", "cuda") == "float32"
    assert resolve_precision("auto", "cuda:1") == "bfloat16"
    assert resolve_precision("auto", "mps") == "float32"
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
        assert resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")


def test_hnsw_search_agrees_with_exact(store_path, embedder):
    store = LabelStore(str(store_path))
    assert store.has_hnsw
    queries = embedder.encode_queries(["poetry of the middle ages", "economics", "AI"])
    exact_found = exact(store).search(queries, 2)
    hnsw = label_search(store, "hnsw", ef_search=64)
    assert isinstance(hnsw, HnswSearch)
    approx = hnsw.search(queries, 2)
    np.testing.assert_array_equal(exact_found[1], approx[1])
    np.testing.assert_allclose(exact_found[2], approx[2], atol=1e-4)
    assert all(len(part) == 0 for part in hnsw.search(np.zeros((0, 384), np.float32), 2))


def test_hnsw_query_uses_the_index(store_path, embedder):
    hnsw = HnswSearch(str(store_path), 384)
    sql = hnsw.sql(embedder.encode_queries(["economics"])[0], 2)
    plan = "".join(row[1] for row in hnsw.connection().execute("EXPLAIN " + sql).fetchall())
    assert "HNSW_INDEX_SCAN" in plan


def test_hnsw_search_without_index_is_a_clear_error(tmp_path, label_set, embedder):
    path = tmp_path / "plain.duckdb"
    write_store(str(path), label_set, embedder.encode_documents(TEXTS), "m")
    with pytest.raises(OperationFailedException, match="no HNSW index"):
        label_search(LabelStore(str(path)), "hnsw").search(embedder.encode_queries(["x"]), 2)
