import numpy as np
import pytest
from annif.exception import OperationFailedException

from annif_ebm.knn import TrainingDocuments
from annif_ebm.labels import LabelSet
from annif_ebm.store import (OPENING_CHARS, LabelStore, training_documents_writer, write_store,
                             write_training_documents)

TEXTS = ["Economics", "Labour market", "Machine learning", "Neural networks",
         "Medieval poetry", "Economic science"]


@pytest.fixture(scope="module")
def label_set():
    return LabelSet(
        texts=TEXTS,
        concept_ids=np.array([10, 11, 12, 13, 14, 10], dtype=np.int32),
        is_pref=np.array([True, True, True, True, True, False]),
    )


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, label_set, embedder):
    path = tmp_path_factory.mktemp("store") / "labels.duckdb"
    write_store(str(path), label_set, embedder.encode_documents(TEXTS), "test-model",
                hnsw=True, hnsw_m=8, hnsw_ef_construction=32)
    return path


def test_store_keeps_labels_concepts_and_metadata(store_path, label_set, embedder):
    store = LabelStore(str(store_path))
    assert len(store) == len(TEXTS)
    assert store.model_id == "test-model" and store.dimension == 384
    np.testing.assert_array_equal(store.concept_ids, label_set.concept_ids)
    np.testing.assert_array_equal(store.is_pref, label_set.is_pref)
    vectors = store.label_vectors()
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert store.label_vectors() is vectors  # read once
    np.testing.assert_allclose(vectors, embedder.encode_documents(TEXTS), atol=1e-6)
    assert not store.has_training_documents and store.training_documents() is None


@pytest.mark.parametrize("n_docs", [3, 0])
def test_training_documents_round_trip(tmp_path, label_set, embedder, n_docs):
    path = str(tmp_path / "labels.duckdb")
    write_store(path, label_set, embedder.encode_documents(TEXTS), "m")
    vectors = embedder.encode_queries(["wages and jobs", "neural nets", "no subjects"])[:n_docs]
    docs = TrainingDocuments.from_pairs(vectors, np.array([0, 1, 1][:n_docs]),
                                        np.array([11, 12, 13][:n_docs]))
    write_training_documents(path, docs)
    store = LabelStore(path)
    assert store.has_training_documents
    loaded = store.training_documents()
    assert store.training_documents() is loaded  # read once
    assert loaded.vectors.dtype == docs.vectors.dtype and loaded.vectors.shape == (n_docs, 384)
    np.testing.assert_array_equal(loaded.vectors, docs.vectors)
    assert loaded.offsets.tolist() == docs.offsets.tolist()
    assert loaded.subjects.tolist() == docs.subjects.tolist()
    assert len(store) == len(TEXTS)


def test_openings_and_label_texts_follow_their_documents(tmp_path, label_set, embedder):
    path = str(tmp_path / "labels.duckdb")
    write_store(path, label_set, embedder.encode_documents(TEXTS), "m")
    assert LabelStore(path).document_openings([0]) == {}  # a store without any
    vectors = embedder.encode_queries(["wages", "nets", "poems", "coins"])
    openings = ["Wages and jobs.", "Neural nets " * 40, "", "Coins of Rome."]
    with training_documents_writer(path, 384) as writer:
        writer.add(TrainingDocuments.from_pairs(vectors[:2], np.array([0, 1]),
                                                np.array([11, 12])), openings[:2])
        writer.add(TrainingDocuments.from_pairs(vectors[2:], np.array([0, 1]),
                                                np.array([14, 10])), openings[2:])
        assert writer.keep_newest(3) == 1  # the first goes; the others are 0, 1, 2
    store = LabelStore(path)
    assert store.document_openings([2, 0, 1, 7]) == {
        0: openings[1][:OPENING_CHARS], 1: "", 2: "Coins of Rome."}
    assert store.training_documents().subjects.tolist() == [12, 14, 10]
    assert store.label_texts([5, 0]) == {0: "Economics", 5: "Economic science"}


def test_store_file_is_opened_read_only(store_path):
    before = store_path.stat().st_mtime_ns
    first, second = LabelStore(str(store_path)), LabelStore(str(store_path))
    assert len(first) == len(second)
    first.label_vectors()
    assert store_path.stat().st_mtime_ns == before


@pytest.mark.parametrize("content", [b"", b"not a database" * 100])
def test_damaged_store_is_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.duckdb"
    path.write_bytes(content)
    with pytest.raises(OperationFailedException, match="broken.duckdb"):
        LabelStore(str(path))


def test_paths_with_quotes_and_spaces(tmp_path, label_set, embedder):
    path = tmp_path / "project's data" / "labels.duckdb"
    path.parent.mkdir()
    write_store(str(path), label_set, embedder.encode_documents(TEXTS), "m")
    assert len(LabelStore(str(path))) == len(TEXTS)
