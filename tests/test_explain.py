"""Explanations (``annif-ebm explain``): the same suggestions as ``annif
suggest``, evidence that agrees with the ranker's features, contributions
that sum to the ranker's own margin, errors, and the HTML page in a real
headless browser. Real model, real store, real XGBoost, real CLIs."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from .conftest import ANNIF, EXAMPLES, AnnifEnv, read_tsv_lines

pytestmark = pytest.mark.slow

ANNIF_EBM = str(pathlib.Path(ANNIF).parent / "annif-ebm")
CHROMIUM = "/usr/bin/chromium"
# kNN, prior and hierarchy off; and a project trained without documents
PROJECTS = """
[ebm-plain]
name=EBM without training documents
language=en
backend=ebm
vocab=gnd
min_train_docs=0
knn_neighbors=0
use_prior=false
use_hierarchy=false

[ebm-zero]
name=EBM zero-shot
language=en
backend=ebm
vocab=gnd

[tfidf-en]
name=TF-IDF
language=en
backend=tfidf
vocab=gnd
analyzer=simple
"""


def explain_cli(env: AnnifEnv, *args: str, check: bool = True, stdin: str | None = None):
    result = subprocess.run([ANNIF_EBM, "explain", *args], cwd=env.path, env=env.env(),
                            input=stdin, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"annif-ebm explain {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def documents(trained_env, sample_corpus) -> list[pathlib.Path]:
    """Three test documents of the sample as files."""
    paths = []
    for i, line in enumerate(read_tsv_lines(sample_corpus["test"], 3)):
        path = trained_env.path / f"doc{i}.txt"
        path.write_text(line.split("\t")[0], encoding="utf-8")
        paths.append(path)
    return paths


def explain_json(env: AnnifEnv, documents: list[pathlib.Path], limit: int) -> list[dict]:
    result = explain_cli(env, "ebm-en", *map(str, documents), "--limit", str(limit),
                         "--format", "json")
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def explained(trained_env, documents) -> list[dict]:
    return explain_json(trained_env, documents, 8)


def test_explain_gives_the_suggestions_and_scores_of_annif_suggest(trained_env, documents,
                                                                   explained):
    suggested = trained_env.run("suggest", "ebm-en", *map(str, documents), "--limit", "8").stdout
    blocks = re.split(r"^Suggestions for .*$", suggested, flags=re.M)[1:]
    assert len(blocks) == len(documents) == len(explained)
    for block, explanation in zip(blocks, explained):
        expected = [(line.split("\t")[0].strip("<>"), float(line.split("\t")[-1]))
                    for line in block.strip().splitlines()]
        got = [(s["uri"], s["score"]) for s in explanation["subjects"]]
        assert len(expected) == 8
        assert [uri for uri, _ in got] == [uri for uri, _ in expected]
        assert np.allclose([s for _, s in got], [s for _, s in expected], atol=1e-4)


def test_contributions_sum_to_the_rankers_margin_and_give_its_score(explained):
    curve = _curve(explained)
    for explanation in explained:
        for subject in explanation["subjects"]:
            total = explanation["baseline"] + sum(subject["feature_contributions"].values())
            assert total == pytest.approx(subject["margin"], abs=1e-3)
            assert sum(subject["contributions"].values()) == pytest.approx(
                total - explanation["baseline"], abs=1e-4)
            assert curve(subject["margin"]) == pytest.approx(subject["score"], abs=1e-4)


def _curve(explained):
    """The score as a function of the margin, as the project's ranker maps it
    (fitted from two suggestions, checked on all the others)."""
    points = sorted({(s["margin"], s["score"]) for e in explained for s in e["subjects"]
                     if 0.001 < s["score"] < 0.999})
    (m1, s1), (m2, s2) = points[0], points[-1]
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    a = (logit(s2) - logit(s1)) / (m2 - m1)
    b = logit(s1) - a * m1
    return lambda margin: 1 / (1 + math.exp(-(a * margin + b)))


@pytest.fixture(scope="module")
def explained_candidates(trained_env, documents) -> list[dict]:
    """The best 100 candidates of each document explained, not only the top:
    kNN subjects among them, and concepts only kNN brought in."""
    return explain_json(trained_env, documents, 100)


def test_evidence_agrees_with_the_rankers_features(explained_candidates, sample_corpus):
    train_text = re.sub(r"\s+", " ", sample_corpus["train"].read_text(encoding="utf-8"))
    seen_neighbours = seen_passages = 0
    for explanation in explained_candidates:
        chunks = {c["position"]: c for c in explanation["chunks"]}
        text = explanation["text"]
        for chunk in chunks.values():  # each placed passage is where it says
            assert chunk["start"] is not None
            assert re.sub(r"\s+", " ", text[chunk["start"]:chunk["end"]]) == chunk["text"]
        for subject in explanation["subjects"]:
            features, passages = subject["features"], subject["passages"]
            if features["max_score"] is None:
                assert passages == []
            else:
                seen_passages += 1
                assert max(p["similarity"] for p in passages) == pytest.approx(
                    features["max_score"], abs=1e-5)
                assert len(passages) == round(features["hit_ratio"] * features["n_chunks"])
                assert {p["position"] for p in passages} <= set(chunks)
            assert subject["training_documents"] == round(math.expm1(features["prior"]))
            neighbours = subject["neighbours"]
            if features["knn_count"] is None:
                assert neighbours == []
            else:
                seen_neighbours += 1
                assert neighbours[0]["similarity"] == pytest.approx(features["knn_best"],
                                                                    abs=1e-3)
                assert neighbours[0]["rank"] == features["knn_rank"]
                assert len(neighbours) == min(int(features["knn_count"]), 5)
                for neighbour in neighbours:  # the first words of a training document
                    assert neighbour["opening"] and neighbour["opening"] in train_text
    assert seen_passages and seen_neighbours


def test_text_format_names_passages_labels_and_contributions(trained_env, documents,
                                                             explained):
    text = explain_cli(trained_env, "ebm-en", "--limit", "3",
                       stdin=documents[0].read_text(encoding="utf-8")).stdout
    best = explained[0]["subjects"][0]
    assert "Explanations for standard input" in text
    assert f"<{best['uri']}>\t{best['label']}\t{best['score']:.4f}" in text
    assert "moved by: passages matching its labels" in text
    assert f"\"{best['passages'][0]['label']}\" {best['passages'][0]['similarity']:.3f}" in text
    assert len(re.findall(r"^ ?\d+\. <", text, flags=re.M)) == 3


@pytest.fixture(scope="module")
def other_env(trained_env, sample_corpus, tmp_path_factory) -> AnnifEnv:
    """Projects without kNN, prior and hierarchy; zero-shot; not ebm."""
    env = AnnifEnv(tmp_path_factory.mktemp("explain") / "env", PROJECTS)
    env.run("load-vocab", "--language", "en", "gnd", str(sample_corpus["vocab"]))
    env.run("train", "ebm-plain", str(sample_corpus["train"]))
    env.run("train", "ebm-zero", os.devnull)
    return env


@pytest.mark.parametrize("project_id", ["ebm-plain", "ebm-zero"])
def test_explains_projects_without_knn_prior_hierarchy_and_zero_shot(other_env, documents,
                                                                     project_id):
    (explanation,) = json.loads(explain_cli(other_env, project_id, str(documents[0]),
                                            "--format", "json").stdout)
    suggested = other_env.run("suggest", project_id, str(documents[0])).stdout
    uris = [line.split("\t")[0].strip("<>") for line in suggested.splitlines()
            if line.startswith("<")]
    assert [s["uri"] for s in explanation["subjects"]] == uris and uris
    assert explanation["ranker"] == ("own" if project_id == "ebm-plain" else "general")
    for subject in explanation["subjects"]:
        assert subject["neighbours"] == [] and subject["training_documents"] is None
        assert subject["passages"] or subject["features"]["doc_query_score"] is not None
        if project_id == "ebm-plain":  # families the model does not have move nothing
            assert subject["contributions"]["knn"] == subject["contributions"]["prior"] == 0
            assert subject["contributions"]["hierarchy"] == 0


def test_clear_errors_for_unknown_non_ebm_and_untrained_projects(other_env, documents):
    path = str(documents[0])
    unknown = explain_cli(other_env, "no-such-project", path, check=False)
    assert unknown.returncode != 0 and "No projects found with id 'no-such-project'" in unknown.stderr
    tfidf = explain_cli(other_env, "tfidf-en", path, check=False)
    assert tfidf.returncode != 0
    assert "uses the tfidf backend; explanations need a project with backend=ebm" in tfidf.stderr
    untrained = AnnifEnv(other_env.path.parent / "untrained", PROJECTS)
    shutil.copytree(other_env.path / "data" / "vocabs", untrained.path / "data" / "vocabs")
    result = explain_cli(untrained, "ebm-plain", path, check=False)
    assert result.returncode != 0 and "ebm-plain is not trained" in result.stderr
    assert "Traceback" not in unknown.stderr + tfidf.stderr + result.stderr
    override = explain_cli(other_env, "ebm-plain", path, "-b", "ebm.model=other", check=False)
    assert override.returncode != 0 and "retrain the project" in override.stderr


def test_backend_overrides_apply_as_in_annif_suggest(trained_env, documents):
    args = ["-b", "ebm.candidates_per_doc=5", "--limit", "10"]
    explained = json.loads(explain_cli(trained_env, "ebm-en", str(documents[1]), *args,
                                       "--format", "json").stdout)
    suggested = trained_env.run("suggest", "ebm-en", str(documents[1]), *args).stdout
    n_suggested = sum(line.startswith("<") for line in suggested.splitlines())
    assert len(explained[0]["subjects"]) == n_suggested <= 5 + 20  # + kNN candidates


def test_python_api_matches_the_project(trained_env, documents):
    import annif
    from annif.registry import AnnifRegistry

    from annif.corpus import Document

    from annif_ebm.explain import explain_project

    app = annif.create_flask_app()
    with app.app_context():
        registry = AnnifRegistry(str(trained_env.path / "projects.cfg"),
                                 str(trained_env.path / "data"), False)
        project = registry.get_project("ebm-en")
        texts = [path.read_text(encoding="utf-8") for path in documents]
        explanations = explain_project(project, texts, limit=5)
        batch = project.suggest([Document(text=text) for text in texts]).filter(limit=5)
        ranker = project.backend._load_model().ranker
    for explanation, result in zip(explanations, batch):
        expected = [(hit.subject_id, hit.score) for hit in result]
        assert [s.subject_id for s in explanation.subjects] == [i for i, _ in expected]
        assert [s.score for s in explanation.subjects] == pytest.approx(
            [score for _, score in expected], abs=1e-6)
        margins = np.array([s.margin for s in explanation.subjects])
        assert ranker.probability(margins) == pytest.approx([s for _, s in expected], abs=1e-5)


# ---- the HTML page in a real browser ----

def _browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium "
                    "(apt-get install chromium) to test the HTML page in a browser")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def test_html_page_works_offline_in_a_real_browser(trained_env, documents, explained,
                                                   tmp_path):
    page_path = tmp_path / "explain.html"
    explain_cli(trained_env, "ebm-en", *map(str, documents), "--limit", "8",
                "--format", "html", "--output", str(page_path))
    with _browser() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1366, "height": 800})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning")
                else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_path.as_uri())
        sections = page.locator(".document")
        assert sections.count() == len(explained)
        for index, explanation in enumerate(explained):
            section = sections.nth(index)
            labels = section.locator(".pick .label").all_inner_texts()
            assert labels == [s["label"] + (f" {s['notation']}" if s["notation"] else "")
                              for s in explanation["subjects"]]
            for number in (1, len(explanation["subjects"]) - 1):
                subject = explanation["subjects"][number]
                section.locator(".pick").nth(number).click()
                highlighted = {int(p) for p in section.locator(".chunk.hit").evaluate_all(
                    "nodes => nodes.map(n => n.dataset.pos)")}
                assert highlighted == {p["position"] for p in subject["passages"]}
                assert section.locator(".pick").nth(number).get_attribute(
                    "aria-pressed") == "true"
                assert section.locator(".detail.open").count() == 1
                assert subject["uri"] in section.locator(".detail.open").inner_text()
        page.emulate_media(media="print")  # printed: every suggestion's details
        assert page.locator(".detail").first.is_visible()
        assert page.locator(".detail").nth(3).is_visible()
        if os.environ.get("EBM_SCREENSHOT"):  # docs/explain.png: see bench/explain.py
            page.emulate_media(media="screen")
            page.screenshot(path=os.environ["EBM_SCREENSHOT"])
        browser.close()
    assert errors == []
    assert requests == [page_path.as_uri()]  # nothing fetched: no external assets


def test_locate_places_chunks_in_the_original_text():
    from annif_ebm.chunking import Chunker
    from annif_ebm.explain import locate

    text = ("Coastal  protection\n\nagainst storm surges.\x00Dikes   and dunes are built. "
            + "A very long sentence " * 20 + "ends here. Last one.")
    chunks = Chunker("en", 60, 50).chunk(text)
    spans = locate(text, chunks)
    assert len(chunks) > 3 and None not in spans
    for chunk, (start, end) in zip(chunks, spans):
        assert re.sub(r"\s+", " ", text[start:end].replace("\x00", " ")).strip() == chunk
    assert [start for start, _ in spans] == sorted(start for start, _ in spans)
    assert locate("nothing like it", ["Coastal protection"]) == [None]


def test_contentless_documents_are_explained_as_no_suggestions(trained_env, documents,
                                                               explained, tmp_path):
    empty, junk = tmp_path / "empty.txt", tmp_path / "junk.txt"
    empty.write_text("")
    junk.write_text("\x00\x01 ... --")
    result = json.loads(explain_cli(trained_env, "ebm-en", str(empty), str(documents[0]),
                                    str(junk), "--limit", "8", "--format", "json").stdout)
    assert [r["subjects"] for r in (result[0], result[2])] == [[], []]
    assert [s["uri"] for s in result[1]["subjects"]] == [
        s["uri"] for s in explained[0]["subjects"]]
    page = explain_cli(trained_env, "ebm-en", "--format", "html", stdin="").stdout
    assert "no suggestions" in page
