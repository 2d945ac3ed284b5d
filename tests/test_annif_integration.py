"""End to end through the real ``annif`` command with Annif's other parts: the
REST API (``annif run``), ensembles (``ensemble``, ``pav``, ``nn_ensemble``)
with ebm as a source, ``annif hyperopt`` and ``annif optimize``, projects in
``projects.toml``, ``annif index`` with more threads, and the example projects
files in ``examples/``. Real model, DuckDB, XGBoost; nothing mocked."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from .conftest import ANNIF, EBM_PROJECT, ROOT, AnnifEnv, parse_metrics, read_tsv_lines

pytestmark = pytest.mark.slow

TEXT = "Deep learning with artificial neural networks for image recognition."
TEXT2 = "Labour market policy and unemployment in Germany."

# nn_ensemble needs Annif's "nn" extra (TensorFlow and LMDB), which annif-ebm does not install
NN_MISSING = [name for name in ("tensorflow", "keras", "lmdb")
              if importlib.util.find_spec(name) is None]


class ProjectsEnv(AnnifEnv):
    """An AnnifEnv whose projects file may be TOML, whose data directory may be
    another environment's, and which may provide NLTK data for Annif's own
    analyzers (tfidf, omikuji, mllm)."""

    def __init__(self, path, projects: str, *, filename: str = "projects.cfg",
                 datadir=None, nltk_data=None) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.projects_file = path / filename
        self.projects_file.write_text(projects, encoding="utf-8")
        self.datadir = datadir if datadir is not None else path / "data"
        self.nltk_data = nltk_data

    def env(self) -> dict:
        env = super().env()
        env["ANNIF_PROJECTS"] = str(self.projects_file)
        env["ANNIF_DATADIR"] = str(self.datadir)
        if self.nltk_data is not None:
            env["NLTK_DATA"] = str(self.nltk_data)
        return env

    def project_dir(self, project_id: str):
        return self.datadir / "projects" / project_id


def assert_five_ranked_suggestions(env, project: str) -> None:
    """``annif suggest --limit 5`` gives five scores in (0, 1], best first."""
    rows = suggestions(env.run("suggest", project, "--limit", "5", stdin=TEXT).stdout)
    assert len(rows) == 5
    scores = [score for _, _, score in rows]
    assert all(0 < s <= 1 for s in scores) and scores == sorted(scores, reverse=True)


def suggestions(output: str) -> list[tuple[str, str, float]]:
    """(uri, label, score) rows of ``annif suggest`` output."""
    rows = []
    for line in output.strip().splitlines():
        uri, label, score = line.split("\t")
        rows.append((uri.strip("<>"), label, float(score)))
    return rows


# ---------------------------------------------------------------- REST API


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, data: bytes | None = None, content_type: str | None = None):
    request = urllib.request.Request(url, data=data)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _post_form(url: str, fields: dict):
    body = urllib.parse.urlencode(fields).encode()
    return _request(url, body, "application/x-www-form-urlencoded")


def _post_json(url: str, payload):
    return _request(url, json.dumps(payload).encode(), "application/json")


@pytest.fixture
def api_server(trained_env, tmp_path):
    """``annif run`` on a free local port, serving the trained project; stopped
    with SIGTERM (and killed only if that fails)."""
    port = _free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w", encoding="utf-8") as log:
        server = subprocess.Popen(
            [ANNIF, "run", "--host", "127.0.0.1", "--port", str(port)],
            cwd=trained_env.path, env=trained_env.env(),
            stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"annif run exited with {server.returncode}:\n{log_path.read_text()}")
            try:
                status, _ = _request(base + "/projects")
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"annif run did not answer in 180 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield base, server, log_path
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def test_rest_api_suggests_the_same_as_the_cli(trained_env, api_server):
    base, server, log_path = api_server
    expected = suggestions(trained_env.run("suggest", "ebm-en", "--limit", "5", stdin=TEXT).stdout)
    expected2 = suggestions(trained_env.run("suggest", "ebm-en", "--limit", "5", stdin=TEXT2).stdout)
    assert len(expected) == 5 and len(expected2) == 5

    status, projects = _request(base + "/projects")
    project = next(p for p in projects["projects"] if p["project_id"] == "ebm-en")
    assert project["backend"]["backend_id"] == "ebm" and project["is_trained"] is True

    status, single = _post_form(base + "/projects/ebm-en/suggest", {"text": TEXT, "limit": 5})
    assert status == 200, single
    got = [(r["uri"], r["label"], r["score"]) for r in single["results"]]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    assert [g[2] for g in got] == pytest.approx([e[2] for e in expected], abs=1e-4)

    documents = [{"document_id": "a", "text": TEXT}, {"document_id": "empty", "text": ""},
                 {"document_id": "b", "text": TEXT2}]
    status, batch = _post_json(base + "/projects/ebm-en/suggest-batch?limit=5",
                               {"documents": documents})
    assert status == 200, batch
    assert [r["document_id"] for r in batch] == ["a", "empty", "b"]
    assert batch[1]["results"] == []
    for result, want in ((batch[0], expected), (batch[2], expected2)):
        got = [(r["uri"], r["label"], r["score"]) for r in result["results"]]
        assert [g[:2] for g in got] == [e[:2] for e in want]
        assert [g[2] for g in got] == pytest.approx([e[2] for e in want], abs=1e-4)

    status, _ = _post_form(base + "/projects/no-such-project/suggest", {"text": TEXT})
    assert status == 404

    # uvicorn shuts down gracefully on SIGTERM, then ends by the signal itself
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) in (0, -signal.SIGTERM), log_path.read_text()
    log = log_path.read_text()
    assert "Traceback" not in log
    assert "Application shutdown complete" in log and "Finished server process" in log


# ---------------------------------------------------------------- ensembles

ENSEMBLE_PROJECTS = EBM_PROJECT + """
[tfidf-en]
name=TF-IDF English
language=en
backend=tfidf
analyzer=snowball(english)
vocab=gnd

[ensemble-en]
name=EBM + TF-IDF
language=en
backend=ensemble
vocab=gnd
sources=ebm-en:2,tfidf-en:1

[pav-en]
name=PAV EBM + TF-IDF
language=en
backend=pav
vocab=gnd
sources=ebm-en,tfidf-en
min-docs=2
"""

NN_PROJECT = """
[nn-en]
name=NN ensemble EBM + TF-IDF
language=en
backend=nn_ensemble
vocab=gnd
sources=ebm-en:1,tfidf-en:1
nodes=64
epochs=10
"""


@pytest.fixture(scope="module")
def nltk_data(tmp_path_factory):
    """NLTK's punkt_tab for Annif's analyzers, written offline as bench/ does."""
    path = tmp_path_factory.mktemp("nltk_data")
    subprocess.run([sys.executable, str(ROOT / "bench" / "punkt_tab.py"), str(path), "en"],
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def ensemble_env(tmp_path_factory, trained_env, sample_corpus, nltk_data) -> ProjectsEnv:
    """A copy of the trained ebm project with a tfidf project trained beside it,
    and ensembles over the two."""
    path = tmp_path_factory.mktemp("ensemble") / "env"
    shutil.copytree(trained_env.path / "data", path / "data")
    env = ProjectsEnv(path, ENSEMBLE_PROJECTS + ("" if NN_MISSING else NN_PROJECT),
                      nltk_data=nltk_data)
    env.run("train", "tfidf-en", str(sample_corpus["train"]))
    return env


def test_ensemble_averages_ebm_and_tfidf_with_their_weights(ensemble_env, sample_corpus):
    metrics = parse_metrics(ensemble_env.run("eval", "ensemble-en", str(sample_corpus["test"]),
                                             "--docs-limit", "30").stdout)
    assert metrics["Documents evaluated"] == 30
    assert metrics["F1@5"] > 0.15 and metrics["NDCG"] > 0.35  # tf-idf alone: below 0.1

    # each ensemble score is (2 * ebm + 1 * tfidf) / 3 of the sources' scores
    ebm = {uri: score for uri, _, score in suggestions(
        ensemble_env.run("suggest", "ebm-en", "--limit", "100", stdin=TEXT).stdout)}
    tfidf = {uri: score for uri, _, score in suggestions(
        ensemble_env.run("suggest", "tfidf-en", "--limit", "100", stdin=TEXT).stdout)}
    combined = suggestions(ensemble_env.run("suggest", "ensemble-en", "--limit", "10",
                                            stdin=TEXT).stdout)
    assert len(combined) == 10 and ebm and tfidf
    for uri, _, score in combined:
        assert score == pytest.approx((2 * ebm.get(uri, 0) + tfidf.get(uri, 0)) / 3, abs=2e-4)
    assert combined[0][0] in ebm


def test_pav_ensemble_trains_and_suggests(ensemble_env, sample_corpus):
    result = ensemble_env.run("train", "pav-en", str(sample_corpus["train"]),
                              "--docs-limit", "60")
    # (Annif's log drops a message repeated word for word, so there may be one line for both)
    created = [int(n) for n in re.findall(r"created PAV model for (\d+) concepts", result.stderr)]
    assert created and all(n > 0 for n in created), result.stderr
    files = {p.name for p in ensemble_env.project_dir("pav-en").iterdir()}
    assert {"pav-model-ebm-en", "pav-model-tfidf-en"} <= files

    metrics = parse_metrics(ensemble_env.run("eval", "pav-en", str(sample_corpus["test"]),
                                             "--docs-limit", "30").stdout)
    assert metrics["Documents evaluated"] == 30
    assert metrics["F1@5"] > 0.1 and metrics["NDCG"] > 0.3
    assert_five_ranked_suggestions(ensemble_env, "pav-en")


@pytest.mark.skipif(bool(NN_MISSING), reason=(
    f"nn_ensemble needs Annif's 'nn' extra (pip install 'annif[nn]': tensorflow-cpu, lmdb); "
    f"not importable here: {', '.join(NN_MISSING)}"))
def test_nn_ensemble_trains_and_suggests(ensemble_env, sample_corpus):
    ensemble_env.run("train", "nn-en", str(sample_corpus["train"]), "--docs-limit", "60")
    assert any(p.suffix == ".keras" for p in ensemble_env.project_dir("nn-en").iterdir())
    metrics = parse_metrics(ensemble_env.run("eval", "nn-en", str(sample_corpus["test"])).stdout)
    assert metrics["Documents evaluated"] == 60
    assert metrics["F1@5"] > 0.15 and metrics["NDCG"] > 0.3
    assert_five_ranked_suggestions(ensemble_env, "nn-en")


def test_hyperopt_finds_weights_that_reproduce_its_score(ensemble_env, sample_corpus, tmp_path):
    test = str(sample_corpus["test"])
    trials = tmp_path / "trials.tsv"
    output = ensemble_env.run("hyperopt", "ensemble-en", test, "--docs-limit", "30",
                              "--trials", "4", "--jobs", "2", "--results-file", str(trials)).stdout
    best = float(re.search(r"Got best NDCG score ([0-9.]+) with:", output).group(1))
    sources = re.search(r"^sources=(\S+)$", output, re.MULTILINE).group(1)
    weights = {name: float(w) for name, w in (item.split(":") for item in sources.split(","))}
    assert set(weights) == {"ebm-en", "tfidf-en"}
    assert sum(weights.values()) == pytest.approx(1, abs=1e-3)
    assert 0.3 < best <= 1

    rows = [line.split("\t") for line in trials.read_text().strip().splitlines()]
    assert rows[0] == ["trial", "value", "ebm-en", "tfidf-en"]
    assert len(rows) == 1 + 4
    assert best == pytest.approx(max(float(row[1]) for row in rows[1:]), abs=1e-4)

    # the printed line, pasted into the project, gives the reported score
    # (hyperopt scores the ensemble at its limit, 100 suggestions)
    metrics = parse_metrics(ensemble_env.run(
        "eval", "ensemble-en", test, "--docs-limit", "30", "--limit", "100", "--metric", "NDCG",
        "-b", f"ensemble.sources={sources}").stdout)
    assert metrics["NDCG"] == pytest.approx(best, abs=2e-3)


def test_optimize_prints_limits_and_thresholds(trained_env, sample_corpus):
    output = trained_env.run("optimize", "ebm-en", str(sample_corpus["test"]),
                             "--docs-limit", "30").stdout
    lines = output.splitlines()
    assert lines[0].split("\t") == ["Limit", "Thresh.", "Prec.", "Rec.", "F1"]
    rows = [line.split("\t") for line in lines[1:301]]
    assert len(rows) == 300 and all(len(row) == 5 for row in rows)  # limits 1-15 x 20 thresholds
    assert {int(row[0]) for row in rows} == set(range(1, 16))
    assert all(0 <= float(value) <= 1 for row in rows for value in row[2:])
    # at threshold 0, recall grows with the limit
    recall = [float(row[3]) for row in rows if float(row[1]) == 0]
    assert recall == sorted(recall) and recall[-1] > recall[0]
    best = re.search(r"Best\s+F1 score \(doc avg\): ([0-9.]+)\tLimit: (\d+)\tThreshold: ([0-9.]+)",
                     output)
    assert float(best.group(1)) == max(float(row[4]) for row in rows)
    assert float(best.group(1)) > 0.2
    assert "Documents evaluated:\t30" in output


# ---------------------------------------------------------------- projects.toml

TOML_PROJECT = """
[ebm-en]
name = "EBM English"
language = "en"
backend = "ebm"
vocab = "gnd"
min_train_docs = 0
"""


def test_toml_project_suggests_as_the_cfg_project(trained_env, tmp_path):
    toml = ProjectsEnv(tmp_path / "toml", TOML_PROJECT, filename="projects.toml",
                       datadir=trained_env.path / "data")
    listed = toml.run("list-projects").stdout
    assert re.search(r"^ebm-en\s.*True", listed, re.MULTILINE), listed
    expected = trained_env.run("suggest", "ebm-en", "--limit", "8", stdin=TEXT).stdout
    assert toml.run("suggest", "ebm-en", "--limit", "8", stdin=TEXT).stdout == expected
    assert len(expected.strip().splitlines()) == 8


def test_toml_typed_values_reach_the_backend(trained_env, sample_corpus, tmp_path):
    path = tmp_path / "toml"
    shutil.copytree(trained_env.path / "data", path / "data")  # reuses its embedding cache
    toml = ProjectsEnv(path, TOML_PROJECT + """limit = 20
max_chunk_length = 80
max_chunks = 50
candidates_per_doc = 50
use_altlabels = true
max_train_docs = 40
knn_docs = 40
xgb_rounds = 30
xgb_eta = 0.1
""", filename="projects.toml")
    result = toml.run("train", "ebm-en", str(sample_corpus["train"]))
    assert "training the ranker on 40 of 250 documents" in result.stderr
    assert "stored 40 training documents for kNN" in result.stderr  # knn_docs = 40
    assert "labels: embedded 0 with" in result.stderr  # same labels as the cached ones
    assert "embedded 0 new chunks" not in result.stderr  # 80-character chunks are new
    metadata = json.loads((toml.project_dir("ebm-en") / "ebm-model.json").read_text())
    assert metadata["model"]["use_altlabels"] is True
    assert metadata["n_train_docs"] == 40
    train = metadata["train_params"]
    assert (train["max_train_docs"], train["knn_docs"], train["xgb_rounds"], train["xgb_eta"]) == (
        40, 40, 30, 0.1)
    rows = suggestions(toml.run("suggest", "ebm-en", "--limit", "100", stdin=TEXT).stdout)
    assert 1 <= len(rows) <= 20  # limit = 20 from the TOML file
    assert {"Deep learning", "Neural network", "Image recognition"} & {r[1] for r in rows[:5]}

    # a TOML boolean false is False: here it conflicts with the trained model
    toml.projects_file.write_text(TOML_PROJECT + "use_altlabels = false\n", encoding="utf-8")
    result = toml.run("suggest", "ebm-en", stdin=TEXT, check=False)
    assert result.returncode != 0
    assert "parameter 'use_altlabels' is False but the model was trained with True" in result.stderr


# ---------------------------------------------------------------- annif index


def test_index_with_more_threads_gives_the_same_files(trained_env, sample_corpus, tmp_path):
    """annif index has no --jobs (Annif 1.4); the thread settings are its knob."""
    texts = [line.split("\t")[0] for line in read_tsv_lines(sample_corpus["test"], 8)]
    outputs = {}
    for threads in (1, 2):
        docs = tmp_path / f"threads-{threads}"
        docs.mkdir()
        for i, text in enumerate(texts):
            (docs / f"doc{i}.txt").write_text(text, encoding="utf-8")
        (docs / "empty.txt").write_text("")
        trained_env.run("index", "ebm-en", str(docs), "--limit", "10", "-b", "ebm.device=cpu",
                        *(arg for name in ("torch_threads", "duckdb_threads", "xgb_jobs")
                          for arg in ("-b", f"ebm.{name}={threads}")))
        outputs[threads] = {p.name: p.read_text() for p in sorted(docs.glob("*.annif"))}
    assert len(outputs[1]) == len(texts) + 1
    assert outputs[1]["empty.annif"] == ""
    assert all(len(outputs[1][f"doc{i}.annif"].splitlines()) == 10 for i in range(len(texts)))
    assert outputs[2] == outputs[1]


def test_index_has_no_jobs_option_in_this_annif(trained_env, tmp_path):
    """docs/tuning.md tells users to set threads for annif index instead of
    --jobs; this fails when an Annif release adds the option."""
    result = trained_env.run("index", "ebm-en", str(tmp_path), "--jobs", "2", check=False)
    assert result.returncode == 2 and "No such option: --jobs" in result.stderr


# ---------------------------------------------------------------- examples/

EXAMPLES_DIR = ROOT / "examples"
EXAMPLE_PROJECT_FILES = sorted(
    p for p in EXAMPLES_DIR.iterdir()
    if p.name.startswith("projects") and p.suffix in (".cfg", ".toml")
)


def test_all_example_projects_files_are_checked():
    names = {p.name for p in EXAMPLE_PROJECT_FILES}
    assert {"projects.cfg", "projects.toml", "projects-ensemble.cfg", "projects-gpu.cfg",
            "projects-api.cfg"} <= names


@pytest.mark.parametrize("path", EXAMPLE_PROJECT_FILES, ids=lambda p: p.name)
def test_example_projects_file_uses_only_known_parameters(path):
    import annif.backend
    import annif.config
    import annif.util

    from annif_ebm.params import ANNIF_SETTINGS, EbmParams

    config = annif.config.parse_config(str(path))
    expected = annif.config.AnnifConfigTOML if path.suffix == ".toml" else annif.config.AnnifConfigCFG
    assert isinstance(config, expected)
    project_ids = list(config.project_ids)
    known = {spec.name for spec in EbmParams.specs()}
    backends = set()
    for project_id in project_ids:
        section = dict(config[project_id])
        assert {"name", "language", "backend", "vocab"} <= section.keys(), project_id
        backend = section["backend"]
        backends.add(backend)
        if backend == "ebm":
            unknown = set(section) - known - ANNIF_SETTINGS
            assert not unknown, f"{path.name} [{project_id}]: unknown ebm parameters {unknown}"
            EbmParams.parse(section)  # and every value is valid
        elif backend in ("ensemble", "pav", "nn_ensemble"):
            sources = [source for source, _ in annif.util.parse_sources(section["sources"])]
            assert sources and set(sources) <= set(project_ids), project_id
        else:
            try:
                annif.backend.get_backend(backend)
            except ValueError as err:  # a known type whose extra is not installed is fine
                assert "not available" in str(err), f"{path.name} [{project_id}]: {err}"
    assert "ebm" in backends


def test_example_toml_and_cfg_define_the_same_project():
    import annif.config

    from annif_ebm.params import ANNIF_SETTINGS, EbmParams

    cfg = dict(annif.config.parse_config(str(EXAMPLES_DIR / "projects.cfg"))["gnd-ebm-en"])
    toml = dict(annif.config.parse_config(str(EXAMPLES_DIR / "projects.toml"))["gnd-ebm-en"])
    assert {k: str(v) for k, v in toml.items() if k in ANNIF_SETTINGS} == {
        k: v for k, v in cfg.items() if k in ANNIF_SETTINGS}
    assert EbmParams.parse(toml) == EbmParams.parse(cfg)
