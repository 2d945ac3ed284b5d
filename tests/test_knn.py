"""kNN candidates, priors, hierarchy and label features (issue 6)."""

import annif.corpus  # noqa: F401  (Annif needs this import order)
import numpy as np
import polars as pl
import pytest
from annif.vocab import VocabFileSKOS
from annif.vocab.vocab import AnnifVocabulary

from annif_ebm.features import (FEATURE_FAMILIES, disabled_families, finish_features,
                                hierarchy_features)
from annif_ebm.knn import TrainingDocuments, pool_documents
from annif_ebm.labels import BROADER, NARROWER, RELATED, LabelSet, vocabulary_relations
from annif_ebm.chunking import Chunker, chunk_texts
from annif_ebm.lexical import Lexicon
from annif_ebm.matcher import Matcher
from annif_ebm.params import EbmParams
from annif_ebm.search import label_search
from annif_ebm.store import LabelStore, write_store, write_training_documents
from annif_ebm.suggest import candidates as suggest_candidates
from annif_ebm.timing import StageTimer

from .conftest import SHARED_DATA


def unit(*rows):
    array = np.array(rows, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_pooled_document_vector_is_the_normalised_mean_of_its_chunks():
    vectors = unit([1, 0], [0, 1], [1, 0])
    pooled = pool_documents(np.array([0, 0, 2]), vectors, 4)
    assert pooled[0] == pytest.approx(unit([1, 1])[0])
    assert pooled[2] == pytest.approx([1, 0])
    assert not pooled[1].any() and not pooled[3].any()  # documents without chunks


def test_subjects_priors_and_leave_one_out():
    docs = TrainingDocuments.from_pairs(
        unit([1, 0], [0, 1], [1, 1]), np.array([2, 0, 0, 1, 0]), np.array([7, 5, 7, 7, 5]))
    assert docs.offsets.tolist() == [0, 2, 3, 4]  # duplicates (0, 5) once
    assert docs.subjects.tolist() == [5, 7, 7, 7]
    assert docs.has_subject(np.array([0, 0, 1, 2, -1]), np.array([5, 6, 5, 7, 7])).tolist() == [
        True, False, False, True, False]
    assert docs.prior(np.array([7, 5, 3, 99])) == pytest.approx(np.log1p([3, 1, 0, 0]))
    # training: a document's own subjects do not count
    assert docs.prior(np.array([7, 5, 7]), own_doc=np.array([0, 0, 1])) == pytest.approx(
        np.log1p([2, 0, 2]))


def test_unseen_subjects_and_their_share():
    """Subject 5 is on one document of three, 7 on three: one of the four
    (document, subject) pairs has a subject that no other document has."""
    docs = TrainingDocuments.from_pairs(
        unit([1, 0], [0, 1], [1, 1]), np.array([0, 0, 1, 2]), np.array([5, 7, 7, 7]))
    assert docs.unseen_share == pytest.approx(0.25)
    assert docs.unseen(np.array([5, 7, 6, 99, -1])).tolist() == [False, False, True, True, True]
    empty = TrainingDocuments.from_pairs(unit([1, 0]), np.zeros(0, int), np.zeros(0, int))
    assert empty.unseen_share == 0.0


def test_neighbours_vote_for_their_subjects_never_for_themselves():
    # documents 0 and 1 are about "x", document 2 about "y"
    docs = TrainingDocuments.from_pairs(
        unit([1, 0.1], [1, 0.2], [0, 1]), np.array([0, 0, 1, 2]), np.array([10, 11, 10, 20]))
    query = unit([1, 0.15], [0.1, 1], [0, 0] if False else [1, 0.1])
    query[2] = 0  # a document without text has no neighbours
    frame = docs.candidates(query, k=2, n_candidates=10)
    first = {r["concept_id"]: r for r in frame.filter(pl.col("doc") == 0).iter_rows(named=True)}
    assert set(first) == {10, 11}
    assert first[10]["knn_count"] == 2 and first[11]["knn_count"] == 1
    assert first[10]["knn_rank"] == 0
    assert first[10]["knn_share"] == pytest.approx(1.0)
    assert first[11]["knn_share"] < 1.0
    assert 20 in frame.filter(pl.col("doc") == 1)["concept_id"].to_list()
    assert frame.filter(pl.col("doc") == 2).height == 0
    # leave-one-out: training document 2 (the only "y" one) as query
    own = docs.candidates(docs.vectors[[2]], k=1, n_candidates=10, own_doc=np.array([2]))
    assert 20 not in own["concept_id"].to_list()
    # n_candidates keeps the best-voted subjects
    assert docs.candidates(query[:1], k=2, n_candidates=1)["concept_id"].to_list() == [10]


def test_neighbours_in_blocks_equal_a_brute_force_search(monkeypatch):
    # 700 training documents in blocks of 64 columns, 300 queries in blocks of
    # 32: the merged per-block top-k is the top-k of the full score matrix,
    # and leave-one-out drops exactly each query's own document; the vectors
    # are held in float16, which moves a similarity by far less than 1e-3
    import annif_ebm.knn as knn_module

    monkeypatch.setattr(knn_module, "KNN_QUERY_BLOCK", 32)
    monkeypatch.setattr(knn_module, "KNN_BLOCK_BYTES", 4 * 32 * 64)
    rng = np.random.default_rng(3)
    vectors = unit(*rng.normal(size=(700, 16)))
    docs = TrainingDocuments.from_pairs(vectors, np.arange(700), np.zeros(700, dtype=np.int64))
    own = rng.permutation(700)[:300]
    queries = unit(*(vectors[own] + rng.normal(size=(300, 16)) * 0.3))
    assert docs.vectors.dtype == np.float16
    scores = queries @ docs.vectors.astype(np.float32).T
    query, neighbour, similarity, rank = docs.neighbours(queries, 5)
    np.testing.assert_array_equal(neighbour.reshape(300, 5), np.argsort(-scores, axis=1)[:, :5])
    np.testing.assert_allclose(similarity, scores[query, neighbour], rtol=1e-5)
    np.testing.assert_allclose(similarity, (queries @ vectors.T)[query, neighbour], atol=1e-3)
    assert rank.tolist() == [0, 1, 2, 3, 4] * 300
    masked = scores.copy()
    masked[np.arange(300), own] = -np.inf
    _, neighbour, _, _ = docs.neighbours(queries, 5, own_doc=own)
    np.testing.assert_array_equal(neighbour.reshape(300, 5), np.argsort(-masked, axis=1)[:, :5])


def test_training_documents_round_trip_through_the_store(tmp_path, embedder):
    labels = LabelSet(["Economics"], np.array([3], dtype=np.int32), np.array([True]))
    path = str(tmp_path / "labels.duckdb")
    write_store(path, labels, embedder.encode_documents(labels.texts), "m")
    docs = TrainingDocuments.from_pairs(unit([1, 0, 0], [0, 1, 0]), np.array([0, 1, 1]),
                                        np.array([3, 3, 4]))
    write_training_documents(path, docs)
    loaded = LabelStore(path).training_documents()
    assert loaded.vectors == pytest.approx(docs.vectors)
    assert loaded.offsets.tolist() == docs.offsets.tolist()
    assert loaded.subjects.tolist() == docs.subjects.tolist()
    assert LabelStore(str(tmp_path / "labels.duckdb")).has_training_documents


TEXTS = ["Economics", "Labour market", "Neural networks", "Medieval poetry",
         "Artificial neural network architecture"]


@pytest.fixture
def knn_store(tmp_path, embedder):
    """A label store whose training documents carry subjects their text
    does not name: only kNN can find concept 104 ("Medieval poetry") for a
    text about neural networks."""
    labels = LabelSet(TEXTS, np.arange(100, 105, dtype=np.int32),
                      np.array([True, True, True, True, False]))
    path = str(tmp_path / "labels.duckdb")
    write_store(path, labels, embedder.encode_documents(TEXTS), "m")
    train_texts = ["Training deep neural networks with backpropagation.",
                   "Wages, jobs and unemployment in the labour market."]
    vectors = embedder.encode_queries(train_texts)
    write_training_documents(path, TrainingDocuments.from_pairs(
        vectors, np.array([0, 0, 1]), np.array([102, 103, 101])))
    return LabelStore(path), train_texts


def matcher_of(store, params, timer=None):
    """A matcher with the store's training documents, as suggest builds it."""
    return Matcher(store, label_search(store, "exact"), params.retrieval.candidates_per_chunk,
                   params.features, store.training_documents(), timer or StageTimer(),
                   Lexicon.of_store(store, "en"))


def candidates_of(texts, store, params, embedder, timer=None):
    matcher = matcher_of(store, params, timer)
    chunker = Chunker("en", params.texts.max_chunk_length, params.texts.max_chunks)
    return suggest_candidates(texts, chunker, embedder, matcher, matcher.timer)


def test_knn_candidates_join_label_candidates_in_one_row_per_concept(knn_store, embedder):
    store, train_texts = knn_store
    params = EbmParams.parse({"knn_neighbors": "1", "max_chunk_length": "200",
                                "candidates_per_chunk": "2"})
    timer = StageTimer()
    frame = candidates_of(["Backpropagation for training deep neural networks."], store,
                          params, embedder, timer)
    rows = {r["concept_id"]: r for r in frame.iter_rows(named=True)}
    assert frame.select("doc", "concept_id").is_unique().all()
    assert rows[102]["knn_count"] == 1 and rows[102]["max_score"] is not None  # both sources
    assert rows[103]["knn_count"] == 1 and rows[103]["max_score"] is None  # kNN only
    assert rows[103]["n_chunks"] == 1
    assert rows[102]["prior"] == pytest.approx(np.log1p(1))
    assert rows[104]["knn_count"] is None and rows[104]["max_score"] > 0  # label match only
    assert "knn" in timer.seconds
    # the ranker's training data: a training document is not its own neighbour
    chunked = chunk_texts(Chunker("en", params.texts.max_chunk_length, params.texts.max_chunks),
                          train_texts[:1])
    own = matcher_of(store, params).match(
        chunked.doc, chunked.position, chunked.n_chunks,
        embedder.encode_queries(chunked.chunks), chunked.chunks, own_docs=np.array([0]))
    own_rows = {r["concept_id"]: r for r in own.iter_rows(named=True)}
    assert 103 not in own_rows  # only its own subjects would have brought it
    assert own_rows[101]["knn_count"] == 1  # from the other document
    assert own_rows[102]["prior"] == pytest.approx(0.0)  # its own subject not counted


@pytest.mark.parametrize("switch, family", [
    ({"knn_neighbors": "0"}, "knn"), ({"use_prior": "false"}, "prior"),
    ({"use_label_features": "false"}, "label"), ({"use_hierarchy": "false"}, "hierarchy"),
    ({"use_lexical": "false"}, "lexical")])
def test_each_feature_family_can_be_switched_off(knn_store, embedder, switch, family):
    store, _ = knn_store
    params = EbmParams.parse({"knn_neighbors": "1", "candidates_per_chunk": "2", **switch})
    assert disabled_families(params.features) == (family,)
    frame = candidates_of(["Backpropagation for training deep neural networks."], store,
                          params, embedder)
    assert frame.height > 0
    for name in FEATURE_FAMILIES[family]:
        assert frame[name].is_null().all(), name
    others = [n for f, names in FEATURE_FAMILIES.items() if f not in (family, "hierarchy")
              for n in names]
    assert all(frame[n].is_not_null().any() for n in others)
    if family == "knn":  # the zero-shot path alone: label matches only
        assert 103 not in frame["concept_id"].to_list()


def test_label_features(knn_store, embedder):
    store, _ = knn_store
    params = EbmParams.parse({"knn_neighbors": "0"})
    frame = candidates_of(["Artificial neural network architecture"], store, params, embedder)
    row = frame.filter(pl.col("concept_id") == 104).row(0, named=True)
    assert row["label_tokens"] == 4 and row["concept_labels"] == 1


def test_hierarchy_features_from_other_candidates():
    candidates = finish_features(pl.DataFrame({
        "doc": pl.Series([0, 0, 0, 1], dtype=pl.UInt32),
        "concept_id": pl.Series([1, 2, 3, 2], dtype=pl.Int32),
        "max_score": pl.Series([0.9, 0.5, None, 0.7], dtype=pl.Float32),
        "knn_best": pl.Series([None, None, 0.4, None], dtype=pl.Float32),
    }))
    relations = pl.DataFrame({  # 1 is broader than 2; 2 related to 3
        "concept_id": pl.Series([2, 1, 2, 3], dtype=pl.Int32),
        "other_id": pl.Series([1, 2, 3, 2], dtype=pl.Int32),
        "relation": pl.Series([BROADER, NARROWER, RELATED, RELATED], dtype=pl.Int8),
    })
    rows = {(r["doc"], r["concept_id"]): r for r in
            hierarchy_features(candidates, relations).iter_rows(named=True)}
    assert rows[(0, 2)]["broader_best"] == pytest.approx(0.9)
    assert rows[(0, 2)]["related_best"] == pytest.approx(0.4)  # kNN-only candidate
    assert rows[(0, 2)]["related_candidates"] == 2
    assert rows[(0, 1)]["narrower_best"] == pytest.approx(0.5)
    assert rows[(1, 2)]["broader_best"] is None  # concept 1 is no candidate of doc 1
    assert rows[(1, 2)]["related_candidates"] == 0


SKOS_TTL = """
@prefix skos: <http://www.w3.org/2004/02/skos/core#> .
@prefix ex: <http://example.org/> .
ex:a a skos:Concept ; skos:prefLabel "A"@en ; skos:narrower ex:b .
ex:b a skos:Concept ; skos:prefLabel "B"@en ; skos:related ex:c .
ex:c a skos:Concept ; skos:prefLabel "C"@en ; skos:broader ex:a ; skos:broader ex:gone .
"""


def _vocab(tmp_path, path):
    vocab = AnnifVocabulary("v", str(tmp_path / "data"))
    vocab.load_vocabulary(VocabFileSKOS(str(path)))
    return vocab


def test_relations_in_both_directions(tmp_path):
    path = tmp_path / "v.ttl"
    path.write_text(SKOS_TTL, encoding="utf-8")
    vocab = _vocab(tmp_path, path)
    relations = vocabulary_relations(vocab.skos.graph, vocab.subjects)
    ids = {vocab.subjects[i].uri[-1]: i for i in range(len(vocab.subjects))}
    links = {(vocab.subjects[int(a)].uri[-1], vocab.subjects[int(b)].uri[-1], int(r))
             for a, b, r in zip(relations.concept_id, relations.other_id, relations.relation)}
    assert links == {("b", "a", BROADER), ("a", "b", NARROWER), ("c", "a", BROADER),
                     ("a", "c", NARROWER), ("b", "c", RELATED), ("c", "b", RELATED)}
    assert len(ids) == 3


@pytest.mark.skipif(not (SHARED_DATA / "stw").exists(), reason="shared data not present")
def test_real_stw_hierarchy(tmp_path):
    vocab = _vocab(tmp_path, SHARED_DATA / "stw" / "stw-skos.ttl")
    relations = vocabulary_relations(vocab.skos.graph, vocab.subjects)
    kinds = np.bincount(relations.relation, minlength=3)
    assert kinds[BROADER] == kinds[NARROWER] > 5000
    assert kinds[RELATED] > 1000 and kinds[RELATED] % 2 == 0


def test_a_single_training_document_has_no_neighbour_but_itself():
    docs = TrainingDocuments.from_pairs(unit([1, 0]), np.array([0]), np.array([4]))
    assert docs.candidates(docs.vectors, 5, 5, own_doc=np.array([0])).height == 0
    assert docs.candidates(docs.vectors, 5, 5)["concept_id"].to_list() == [4]
    assert docs.candidates(np.zeros((0, 2), np.float32), 5, 5).height == 0
