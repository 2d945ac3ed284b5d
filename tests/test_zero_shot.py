"""Zero-shot projects through the real ``annif`` command: ``annif train``
without a corpus embeds the vocabulary and ranks with the shipped general
ranker; ``annif learn`` then brings in subjects at once."""

from __future__ import annotations

import json

import pytest

from annif_ebm import general
from annif_ebm.features import FEATURE_NAMES
from annif_ebm.params import EbmParams
from annif_ebm.ranker import Ranker
from annif_ebm.store import LabelStore

from .conftest import AnnifEnv, parse_metrics
from .test_learn import BIRDS, QUERY, store_documents, suggested

ZERO_SHOT_PROJECT = """
[ebm-en]
name=EBM English
language=en
backend=ebm
vocab=gnd
allow_learn=true
"""


def zero_shot_env(path, vocab, extra: str = "") -> AnnifEnv:
    env = AnnifEnv(path, ZERO_SHOT_PROJECT + extra)
    env.run("load-vocab", "--language", "en", "gnd", str(vocab))
    return env


def metadata(env: AnnifEnv) -> dict:
    return json.loads((env.project_dir("ebm-en") / "ebm-model.json").read_text())


def test_the_shipped_rankers_and_their_provenance():
    provenance = general.provenance()
    assert {"data", "command", "commit", "validate"} <= set(provenance)
    assert provenance["command"].startswith("python bench/general_ranker.py")
    for name, entry in provenance["rankers"].items():
        ranker = Ranker.load(f"{general.GENERAL_DIR}/{entry['file']}")
        assert ranker.booster.feature_names == entry["features"]
        assert ranker.calibration is not None  # probabilities, as a project's own ranker
    assert provenance["rankers"]["general"]["features"] == list(FEATURE_NAMES)
    assert provenance["rankers"]["scale-free"]["features"] == list(general.SCALE_FREE_FEATURES)
    # nothing in the scale-free ranker reads a similarity value itself
    assert not {"max_score", "score_sum", "knn_best", "doc_query_score"} & set(
        general.SCALE_FREE_FEATURES)


def test_the_general_ranker_belongs_to_the_default_model():
    # (training without enough documents to tune leaves the model frozen)
    default = general.general_ranker(EbmParams.parse({}).replace(finetune=False).model_settings())
    assert default.name == "general"
    tuned = general.general_ranker(EbmParams.parse({}).model_settings())
    assert tuned.name == "scale-free" and "finetune=True" in tuned.reason
    other = general.general_ranker(EbmParams.parse(
        {"model": "intfloat/multilingual-e5-small", "finetune": "false"}).model_settings())
    assert other.name == "scale-free"
    assert "model=intfloat/multilingual-e5-small" in other.reason
    truncated = general.general_ranker(
        EbmParams.parse({"truncate_dim": "128", "finetune": "false"}).model_settings())
    assert truncated.name == "scale-free" and "truncate_dim=128" in truncated.reason


@pytest.mark.slow
def test_train_without_a_corpus_then_learn(sample_corpus, tmp_path):
    env = zero_shot_env(tmp_path / "env", sample_corpus["vocab"])
    result = env.run("train", "ebm-en")
    assert "training backend ebm with no documents" not in result.stderr
    assert "the training corpus is empty: a zero-shot model" in result.stderr
    assert "ranking with the shipped general ranker" in result.stderr
    stored = metadata(env)
    assert stored["ranker_source"] == "general" and stored["n_train_docs"] == 0
    assert stored["model"]["use_lexical"] is True  # the general rankers have the family
    project = env.project_dir("ebm-en")
    assert not LabelStore(str(project / stored["store_file"])).has_training_documents
    assert not (project / "ebm-train.duckdb").exists()
    assert not list(project.glob("tmp-*"))

    # it suggests by meaning from the first call: a text about a concept
    # finds it without naming its label ("Coastal protection")
    vocab = {line.split("\t")[1].strip(): line.split("\t")[0].strip("<>")
             for line in sample_corpus["vocab"].read_text(encoding="utf-8").splitlines()}
    found = suggested(env, "Dikes and dunes shield the shore from storm floods. "
                           "Sea walls are raised as the sea level rises.")
    assert len(found) == 10
    assert vocab["Coastal protection"] in found[:3]
    assert len(suggested(env, QUERY)) == 10
    # (the bundled sample's 200 test documents measured 0.328 zero-shot)
    test_metrics = parse_metrics(env.run("eval", "ebm-en", str(sample_corpus["test"])).stdout)
    assert test_metrics["F1@5"] > 0.2

    # a subject that only learnt documents carry appears at once
    before = suggested(env, QUERY, 100)
    subject = next(uri for uri in vocab.values() if uri not in before)
    corpus = tmp_path / "learn.tsv"
    corpus.write_text("".join(f"{text}\t<{subject}>\n" for text in BIRDS), encoding="utf-8")
    result = env.run("learn", "ebm-en", str(corpus))
    assert "learnt 6 documents" in result.stderr
    assert subject in suggested(env, QUERY)
    after = metadata(env)
    assert after["ranker_file"] == stored["ranker_file"]  # the same ranker


@pytest.mark.slow
def test_another_model_ranks_by_the_scale_free_score(sample_corpus, tmp_path):
    env = zero_shot_env(tmp_path / "env", sample_corpus["vocab"], "truncate_dim=128\n")
    result = env.run("train", "ebm-en")
    assert "ranking with the shipped scale-free ranker (the general ranker belongs to " \
           "another embedding model (truncate_dim=128 differ)" in result.stderr
    assert metadata(env)["ranker_source"] == "scale-free"
    assert len(suggested(env, QUERY)) == 10
    # no documents to tune on: asked for explicitly, a clear error, the model kept
    result = env.run("train", "ebm-en", "-b", "ebm.finetune=true", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "finetune=true needs at least 2 documents with subjects (the training corpus " \
           "is empty)" in result.stderr
    assert metadata(env)["ranker_source"] == "scale-free"


@pytest.mark.slow
def test_few_documents_use_the_general_ranker_and_keep_them_for_knn(sample_corpus, tmp_path):
    env = zero_shot_env(tmp_path / "env", sample_corpus["vocab"])
    corpus = tmp_path / "few.tsv"
    lines = sample_corpus["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    corpus.write_text("".join(lines[:40]), encoding="utf-8")
    result = env.run("train", "ebm-en", str(corpus))
    assert "40 training documents are fewer than min_train_docs=" in result.stderr
    assert metadata(env)["ranker_source"] == "general"
    assert store_documents(env) == 40
    # min_train_docs=0: a ranker of its own, from as few documents
    env.run("train", "ebm-en", str(corpus), "-b", "ebm.min_train_docs=0")
    assert metadata(env)["ranker_source"] == ""
    assert (env.project_dir("ebm-en") / "ebm-train.duckdb").exists()


@pytest.mark.slow
def test_learn_in_a_project_without_knn(sample_corpus, tmp_path):
    """kNN off: learnt documents still count through the priors; with priors
    off too, learning has nothing to add to and says so."""
    env = zero_shot_env(tmp_path / "env", sample_corpus["vocab"], "knn_neighbors=0\n")
    env.run("train", "ebm-en")
    corpus = tmp_path / "learn.tsv"
    subject = sample_corpus["vocab"].read_text(encoding="utf-8").split()[0].strip("<>")
    corpus.write_text("".join(f"{text}\t<{subject}>\n" for text in BIRDS), encoding="utf-8")
    result = env.run("learn", "ebm-en", str(corpus))
    assert "learnt 6 documents" in result.stderr
    assert store_documents(env) == 6
    assert len(suggested(env, QUERY)) == 10

    env = zero_shot_env(tmp_path / "off", sample_corpus["vocab"],
                        "knn_neighbors=0\nuse_prior=false\n")
    env.run("train", "ebm-en")
    result = env.run("learn", "ebm-en", str(corpus), check=False)
    assert result.returncode != 0 and "this project uses neither" in result.stderr
    assert "Traceback" not in result.stderr
