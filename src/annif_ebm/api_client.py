"""Embedding through an OpenAI-compatible server (vLLM, TEI, Infinity, Ollama).

``POST {api_url}/embeddings`` with ``{"model": ..., "input": [texts]}``; the
answer's ``data[i].embedding`` are the vectors, placed by ``data[i].index``.
Texts go in batches of ``api_batch_size``, ``api_concurrency`` requests at a
time. 429, 5xx, connection errors and timeouts are retried with exponential
backoff; any other failure, a server that stays down or an answer that is not
a full set of finite vectors is an :class:`OperationFailedException`, never
zero or made-up vectors. :class:`ApiEncoder` is the
:class:`~.embedding.Encoder` built on :class:`ApiClient`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import tenacity

from annif import logger
from annif.exception import ConfigurationException, OperationFailedException

from .encoders import EncoderBase
from .params import ApiSettings, EmbeddingSettings

BACKOFF_SECONDS = 1.0  # wait before the first retry; doubles for each further one
MAX_BACKOFF_SECONDS = 30.0
_BODY_SNIPPET = 300  # characters of an error answer quoted in messages


def check_no_static_with_api(embedding: EmbeddingSettings, api: ApiSettings) -> None:
    """A static model runs in this process: refuse it together with ``api_url``."""
    if api.api_url and embedding.static_embedding:
        raise ConfigurationException(
            "static_embedding=true cannot be used with api_url: the static model "
            "runs in this process; use one or the other"
        )


class _Transient(Exception):
    """An answer worth retrying: 429 or 5xx."""


class ApiClient:
    """Embeds texts through the server at ``api.api_url``."""

    def __init__(self, embedding: EmbeddingSettings, api: ApiSettings,
                 backoff: float = BACKOFF_SECONDS) -> None:
        """``backoff``: seconds before the first retry (doubling after)."""
        if embedding.query_prompt_name or embedding.document_prompt_name:
            raise ConfigurationException(
                "query_prompt_name/document_prompt_name cannot be used with api_url "
                "(the server does not know the model's stored prompts); give the "
                "prompt text in query_prompt/document_prompt instead"
            )
        self.api = api
        self.truncate_dim = embedding.truncate_dim
        self.url = api.api_url.rstrip("/") + "/embeddings"
        self.model = api.api_model or embedding.model
        self.backoff = backoff

    def encode(self, texts: list[str], prompt: str = "") -> np.ndarray:
        """L2-normalised float32 vectors of ``prompt + text``, in order."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        inputs = [prompt + text for text in texts]
        size = self.api.api_batch_size
        batches = [inputs[i:i + size] for i in range(0, len(inputs), size)]
        headers = self._headers()
        with httpx.Client(timeout=self.api.api_timeout, headers=headers) as client:
            workers = min(self.api.api_concurrency, len(batches))
            if workers == 1:
                parts = [self._embed_batch(client, batch) for batch in batches]
            else:
                pool = ThreadPoolExecutor(workers, thread_name_prefix="ebm-api")
                try:
                    parts = list(pool.map(lambda b: self._embed_batch(client, b), batches))
                finally:  # on an error, start no further batches
                    pool.shutdown(wait=True, cancel_futures=True)
        dimensions = sorted({part.shape[1] for part in parts})
        if len(dimensions) > 1:
            raise self._error(f"answered vectors of different dimensions {dimensions}")
        return self._normalise(np.concatenate(parts))

    def _headers(self) -> dict:
        """The bearer key, read from the environment now (never stored)."""
        name = self.api.api_key_env
        if not name:
            return {}
        key = os.environ.get(name)
        if not key:
            raise OperationFailedException(
                f"the environment variable {name} (api_key_env) that should hold the "
                f"API key for {self.url} is not set"
            )
        return {"Authorization": f"Bearer {key}"}

    def _error(self, cause: str) -> OperationFailedException:
        return OperationFailedException(f"embeddings server {self.url}: {cause}")

    def _embed_batch(self, client: httpx.Client, batch: list[str]) -> np.ndarray:
        """One request, retried on transient failures."""
        p = self.api
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((_Transient, httpx.TransportError)),
            stop=tenacity.stop_after_attempt(p.api_retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.backoff, max=MAX_BACKOFF_SECONDS),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            response = retrying(self._post, client, batch)
        except (_Transient, httpx.TransportError) as err:
            attempts = retrying.statistics.get("attempt_number", 1)
            if isinstance(err, httpx.TimeoutException):
                cause = f"no answer within api_timeout={p.api_timeout:g} s"
            elif isinstance(err, httpx.ConnectError):
                cause = f"cannot connect ({err})"
            elif isinstance(err, httpx.TransportError):
                cause = f"connection failed ({type(err).__name__}: {err})"
            else:
                cause = str(err)
            raise self._error(
                f"{cause}; gave up after {attempts} attempt(s) (api_retries={p.api_retries})"
            ) from None
        return self._vectors(response, len(batch))

    def _post(self, client: httpx.Client, batch: list[str]) -> httpx.Response:
        response = client.post(self.url, json={"model": self.model, "input": batch})
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code} {_snippet(response)}")
        if not response.is_success:
            raise self._error(
                f"HTTP {response.status_code} {_snippet(response)} (not retried; check "
                f"api_url, api_model '{self.model}' and the API key)"
            )
        return response

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception()
        cause = "timeout" if isinstance(err, httpx.TimeoutException) else str(err)
        cause = cause or type(err).__name__
        logger.warning(
            "embeddings server %s: %s; retry %d of %d in %.1f s", self.url, cause,
            state.attempt_number, self.api.api_retries, state.next_action.sleep,
        )

    def _vectors(self, response: httpx.Response, n: int) -> np.ndarray:
        """The answer's vectors as a float32 matrix, in input order."""
        try:
            data = response.json()["data"]
            by_index = {item["index"]: item["embedding"] for item in data}
        except (ValueError, KeyError, TypeError) as err:
            raise self._error(
                f"the answer is not an embeddings response ({type(err).__name__}: {err}): "
                f"{_snippet(response)}"
            ) from None
        if len(data) != n:
            raise self._error(f"answered {len(data)} vectors for {n} texts")
        if set(by_index) != set(range(n)):
            raise self._error(f"answered indexes other than 0..{n - 1}")
        try:
            matrix = np.array([by_index[i] for i in range(n)], dtype=np.float32)
        except (ValueError, TypeError) as err:
            raise self._error(
                f"the vectors are not lists of numbers of one length ({err})"
            ) from None
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise self._error(f"the vectors are not lists of numbers (shape {matrix.shape})")
        return matrix

    def _normalise(self, vectors: np.ndarray) -> np.ndarray:
        """Cut to ``truncate_dim`` (as sentence-transformers does), then L2-normalise."""
        if self.truncate_dim:
            vectors = vectors[:, :self.truncate_dim]
        if not np.isfinite(vectors).all():
            raise self._error("answered NaN or infinite values")
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
        if not (norms > 0).all():
            raise self._error("answered an all-zero vector")
        return (vectors / norms).astype(np.float32)


class ApiEncoder(EncoderBase):
    """Embeds through the server at ``api_url``; the label search runs on
    this machine's CPU."""

    search_device = "cpu"

    def __init__(self, embedding: EmbeddingSettings, api: ApiSettings,
                 backoff: float = BACKOFF_SECONDS) -> None:
        """Asks the server once, for the dimension; ``backoff`` as in ApiClient."""
        check_no_static_with_api(embedding, api)
        self.client = ApiClient(embedding, api, backoff)
        self._prompts = {"query": embedding.query_prompt, "document": embedding.document_prompt}
        self.source = f"embeddings server {self.client.url} (model '{self.client.model}')"
        logger.info("embedding through %s", self.source)
        self.dimension = self._probe_dimension()

    def _embed(self, texts: list[str], role: str) -> np.ndarray:
        return self.client.encode(texts, self._prompts[role])


def _snippet(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    return repr(text[:_BODY_SNIPPET] + ("..." if len(text) > _BODY_SNIPPET else ""))
