import numpy as np
import pytest

from annif_ebm.features import (
    FEATURE_NAMES, LABEL_MATCH_FEATURES, candidate_features, feature_matrix, finish_features,
    hits_frame,
)


def hits(rows):
    """Hit rows (doc, chunk, label_id, concept_id, is_pref, score, rank[,
    label_tokens, concept_labels]); label features default to 1 and 2."""
    rows = [tuple(row) + (1, 2)[len(row) - 7:] for row in rows]
    columns = list(zip(*rows)) if rows else [[]] * 9
    names = ["doc", "chunk", "label_id", "concept_id", "is_pref", "score", "rank",
             "label_tokens", "concept_labels"]
    return hits_frame(**{n: np.array(c) for n, c in zip(names, columns)})


def test_features_of_one_concept():
    # doc 0 has 4 chunks; concept 7 is hit in chunks 1 and 3 (once via altLabel)
    frame = candidate_features(
        hits([
            (0, 1, 100, 7, True, 0.8, 0),
            (0, 1, 101, 7, False, 0.6, 2),
            (0, 1, 200, 8, True, 0.7, 1),
            (0, 3, 101, 7, False, 0.4, 1),
            (0, 3, 300, 9, True, 0.5, 0),
        ]),
        np.array([4]),
        candidates_per_doc=10,
    )
    row = frame.filter(frame["concept_id"] == 7).row(0, named=True)
    assert row["n_chunks"] == 4
    assert row["hit_ratio"] == pytest.approx(2 / 4)
    assert row["max_score"] == pytest.approx(0.8)
    assert row["min_score"] == pytest.approx(0.4)
    assert row["mean_score"] == pytest.approx(0.6)
    assert row["score_sum"] == pytest.approx(1.2)
    assert row["scaled_score"] == pytest.approx((0.8 / 0.8 + 0.4 / 0.5) / 4)
    assert row["best_rank"] == 0 and row["mean_rank"] == pytest.approx(0.5)
    assert row["first_pos"] == pytest.approx(1 / 3)
    assert row["last_pos"] == pytest.approx(1.0)
    assert row["spread"] == pytest.approx(2 / 3)
    assert row["pref_ratio"] == pytest.approx(0.5)
    assert row["n_labels"] == 2
    assert row["gap_to_best"] == pytest.approx(0.0)
    assert row["doc_rank"] == 1
    other = frame.filter(frame["concept_id"] == 9).row(0, named=True)
    assert other["gap_to_best"] == pytest.approx(-0.3)


def test_candidates_per_doc_keeps_the_best_per_document():
    rows = [(d, 0, c, c, True, 0.1 * c, 0) for d in (0, 1) for c in range(1, 6)]
    frame = candidate_features(hits(rows), np.array([1, 1]), candidates_per_doc=2)
    assert frame.select("doc", "concept_id").rows() == [(0, 4), (0, 5), (1, 4), (1, 5)]


def test_documents_are_kept_apart_and_docs_without_hits_have_no_rows():
    rows = [(0, 0, 1, 1, True, 0.5, 0), (2, 0, 1, 1, True, 0.9, 0)]
    frame = candidate_features(hits(rows), np.array([1, 0, 3]), candidates_per_doc=5)
    assert frame["doc"].to_list() == [0, 2]
    assert frame["max_score"].to_list() == pytest.approx([0.5, 0.9])
    assert frame["n_chunks"].to_list() == [1, 3]


def test_no_hits_gives_an_empty_frame_with_the_schema():
    frame = candidate_features(hits([]), np.array([0, 0]), candidates_per_doc=5)
    assert frame.height == 0
    assert frame.columns == ["doc", "concept_id", *LABEL_MATCH_FEATURES]
    assert feature_matrix(finish_features(frame)).shape == (0, len(FEATURE_NAMES))
    assert candidate_features(hits([]), np.array([], dtype=int), 5).height == 0


def test_features_are_bitwise_the_same_whatever_the_order_of_the_hits():
    """Float sums and ties must not depend on row order or polars' threads:
    ``annif index`` with other thread settings must write the same files."""
    rng = np.random.default_rng(0)
    doc, chunk, rank = (a.ravel() for a in np.meshgrid(
        np.arange(10), np.arange(200), np.arange(20), indexing="ij"))  # 20 hits per chunk
    n = len(doc)
    label_id = rng.integers(0, 3000, n)
    columns = {
        "doc": doc, "chunk": chunk, "label_id": label_id,
        "concept_id": label_id // 3, "is_pref": label_id % 3 == 0,
        "score": rng.random(n).astype(np.float32).round(2),  # many ties
        "rank": rank, "label_tokens": rng.integers(1, 5, n),
        "concept_labels": np.full(n, 3),
    }
    n_chunks = np.full(10, 200)
    first = candidate_features(hits_frame(**columns), n_chunks, candidates_per_doc=100)
    assert first.height == 1000
    for _ in range(3):
        order = rng.permutation(n)
        again = candidate_features(
            hits_frame(**{name: values[order] for name, values in columns.items()}),
            n_chunks, candidates_per_doc=100)
        assert again.equals(first)
