"""The lexical family: a candidate's labels found word for word in the text (issue 19)."""

import duckdb
import numpy as np
import polars as pl
import pytest

from annif_ebm.lexical import LEXICAL_FEATURES, MAX_LABEL_WORDS, Lexicon, lexical_features
from annif_ebm.model_files import TRAIN_FILE
from annif_ebm.ranker import Ranker


def lexicon(labels, language="en"):
    """Concept 100 + i has label i; labels starting with "=" are altLabels."""
    return Lexicon([label.lstrip("=") for label in labels],
                   np.arange(100, 100 + len(labels), dtype=np.int32),
                   np.array([not label.startswith("=") for label in labels]), language)


def found(lex, texts):
    text, label = lex.occurrences(texts)
    return sorted(zip(text.tolist(), label.tolist()))


def test_labels_are_found_as_whole_stemmed_words_in_a_row():
    lex = lexicon(["Monetary policy", "Cats", "Policy", "Category theory"])
    assert found(lex, ["The monetary policies of central banks.",  # plural, stemmed
                       "Concatenating policy; cats.",  # "cat" inside a word is no cat
                       "Monetary and fiscal policy",  # not in a row
                       "CATEGORY THEORY"]) == [
        (0, 0), (0, 2), (1, 1), (1, 2), (2, 2), (3, 3)]


def test_without_a_stemmer_for_the_language_words_are_only_lowercased():
    lex = lexicon(["Kass"], language="et")  # nltk has no Estonian Snowball stemmer
    assert found(lex, ["Kass ja koer", "Kassid"]) == [(0, 0)]


def test_labels_too_long_or_without_words_are_not_looked_for():
    long_label = " ".join(f"w{i}" for i in range(MAX_LABEL_WORDS + 1))
    lex = lexicon([long_label, "---", "w1 w2"])
    assert found(lex, [long_label, "---"]) == [(0, 2)]


def test_features_of_each_candidate_from_the_chunks_of_its_document():
    lex = lexicon(["Monetary policy", "=Money policy", "Inflation", "Banks"])
    # document 0 has 2 chunks, document 1 one
    chunks = ["Monetary policy and money policy.", "Inflation rose.", "Banks and money policy"]
    doc = np.array([0, 0, 1], dtype=np.uint32)
    candidates = pl.DataFrame({
        "doc": pl.Series([1, 0, 0, 0, 1], dtype=pl.UInt32),
        "concept_id": pl.Series([103, 101, 100, 102, 100], dtype=pl.Int32),
    })
    result = lexical_features(candidates, lex, chunks, doc, np.array([2, 1]))
    assert result.select("doc", "concept_id").equals(candidates)  # rows stay in order
    rows = {(r["doc"], r["concept_id"]): [r[name] for name in LEXICAL_FEATURES]
            for r in result.iter_rows(named=True)}
    # share of chunks, prefLabel, words of the longest label found
    assert rows[(0, 100)] == [0.5, 1.0, 2.0]
    assert rows[(0, 101)] == [0.5, 0.0, 2.0]  # an altLabel only
    assert rows[(0, 102)] == [0.5, 1.0, 1.0]
    assert rows[(1, 103)] == [1.0, 1.0, 1.0]
    assert rows[(1, 100)] == [0.0, 0.0, 0.0]  # not in this document's text


def test_no_chunks_give_zero_features_for_every_candidate():
    candidates = pl.DataFrame({"doc": pl.Series([0], dtype=pl.UInt32),
                               "concept_id": pl.Series([100], dtype=pl.Int32)})
    result = lexical_features(candidates, lexicon(["Banks"]), [], np.zeros(0, np.uint32),
                              np.array([0]))
    assert result.select(LEXICAL_FEATURES).row(0) == (0.0, 0.0, 0.0)


def test_the_trained_ranker_learns_from_the_lexical_features(trained_env):
    """On the example corpus, candidates whose label the text states are far
    more often gold subjects than the others, and the ranker uses the family."""
    project = trained_env.project_dir("ebm-en")
    with duckdb.connect(str(project / TRAIN_FILE), read_only=True) as con:
        rates = dict(con.execute(
            "SELECT lexical_share > 0, avg(gold::INT) FROM candidates GROUP BY 1").fetchall())
    assert rates[True] > 3 * rates[False]
    booster = Ranker.load(str(next(project.glob("ebm-ranker-*.ubj")))).booster
    used = booster.get_score(importance_type="weight")
    assert set(LEXICAL_FEATURES) <= set(booster.feature_names)
    assert any(used.get(name, 0) > 0 for name in LEXICAL_FEATURES)


@pytest.mark.parametrize("language", ["en", "de", "fi"])
def test_every_snowball_language_builds(language):
    assert found(lexicon(["Test"], language), ["test"]) == [(0, 0)]
