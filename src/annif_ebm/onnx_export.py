"""The embedding model on ONNX Runtime (``encode_backend=onnx``): exported
at train time into the project's own model folder, optionally with its
weights quantized to int8 (``encode_quantization=int8``), by
sentence-transformers' own export functions (through Optimum), offline.

Dynamic int8 quantization is made for a CPU's instruction set, as
sentence-transformers names them (``avx512_vnni``, ``avx512``, ``avx2``,
``arm64``); the choice is logged and stored beside the model. The quantized
operators are standard ONNX ones, so ONNX Runtime runs the file on any CPU;
``EBM_ONNX_KERNELS`` forces a choice (for tests, or to build for another
machine).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import warnings

from annif import logger
from annif.exception import ConfigurationException, OperationFailedException

from .params import ApiSettings, EmbeddingSettings

FLOAT_FILE = "onnx/model.onnx"
INT8_FILE = "onnx/model_int8.onnx"
INFO_FILE = "ebm-onnx.json"  # how the model was exported: quantization, kernels
KERNELS_ENV = "EBM_ONNX_KERNELS"
KERNEL_SETS = ("avx512_vnni", "avx512", "avx2", "arm64")


def resolve_encode_backend(embedding: EmbeddingSettings, api: ApiSettings,
                           device: str) -> dict[str, str]:
    """``encode_backend``/``encode_quantization`` with ``auto`` decided for a
    training run on ``device``: ONNX Runtime with int8 weights for a model run
    in this process on the CPU (1.86x torch's suggest speed, F1@5 within 0.002 on
    tibcore-en and yso-finna-en), torch on a GPU, for static and API models,
    and where ONNX Runtime is not installed."""
    backend, quantization = embedding.encode_backend, embedding.encode_quantization
    if backend == "auto":
        in_process_on_cpu = (not embedding.static_embedding and not api.api_url
                             and device == "cpu")
        backend = "onnx" if in_process_on_cpu and onnx_runtime_installed() else "torch"
    if quantization == "auto":
        quantization = "int8" if backend == "onnx" else "none"
    return {"encode_backend": backend, "encode_quantization": quantization}


def check_encode_backend(embedding: EmbeddingSettings, api: ApiSettings) -> None:
    """Combinations that cannot work are a clear error."""
    if embedding.encode_backend != "onnx":
        if embedding.encode_quantization == "int8":
            raise ConfigurationException(
                "encode_quantization=int8 quantizes the model exported for "
                "encode_backend=onnx; set encode_backend=onnx as well")
        return
    if embedding.static_embedding:
        raise ConfigurationException(
            "static_embedding=true has no transformer for ONNX Runtime to run (it is "
            "already a table of token vectors); unset encode_backend or static_embedding")
    if api.api_url:
        raise ConfigurationException(
            "encode_backend=onnx (the model exported into the project, the default on the "
            "CPU) runs in this process, api_url on a server; unset one of them (a project "
            "that is to embed through a server trains with encode_backend=torch)")


def onnx_runtime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import optimum.onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def require_onnx_runtime() -> None:
    if not onnx_runtime_installed():
        raise OperationFailedException(
            "encode_backend=onnx needs ONNX Runtime and Optimum (installed with annif-ebm "
            "unless left out): pip install 'annif-ebm[onnx]'")


def kernel_set() -> str:
    """The instruction set to quantize for: ``EBM_ONNX_KERNELS`` if set, else
    the best this CPU has."""
    forced = os.environ.get(KERNELS_ENV, "").strip().lower()
    if forced:
        if forced not in KERNEL_SETS:
            raise ConfigurationException(
                f"{KERNELS_ENV}={forced!r}: expected one of {', '.join(KERNEL_SETS)}")
        return forced
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def export_model(source: str, local: bool, embedding: EmbeddingSettings, path: str) -> str:
    """Export the sentence-transformers model at ``source`` to ONNX into the
    folder ``path`` (which may be ``source`` itself: a tuned model), int8
    quantized where the settings say; return what was done, for the log."""
    require_onnx_runtime()
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    # sentence-transformers warns that it exports (which is the point) and
    # recommends saving the export (done next); torch's tracer warns about
    # constants in the attention mask code that it may ignore, and it does
    export_logger = logging.getLogger("sentence_transformers.backend.utils")
    level = export_logger.level
    export_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*registered as constants in the trace")
            model = SentenceTransformer(source, backend="onnx", device="cpu",
                                        local_files_only=local,
                                        trust_remote_code=embedding.trust_remote_code)
        model.save(path)
    except (OSError, ValueError) as err:
        raise OperationFailedException(
            f"cannot export embedding model '{embedding.model}' to ONNX: {err}") from err
    finally:
        export_logger.setLevel(level)
    info = {"file": FLOAT_FILE, "quantization": "none", "kernels": ""}
    if embedding.encode_quantization == "int8":
        kernels = kernel_set()
        logger.info("quantizing the ONNX model to int8 for %s", kernels)
        export_dynamic_quantized_onnx_model(model, kernels, path)
        onnx_dir = os.path.join(path, os.path.dirname(FLOAT_FILE))
        (quantized,) = [name for name in os.listdir(onnx_dir) if "int8" in name]
        os.replace(os.path.join(onnx_dir, quantized), os.path.join(path, INT8_FILE))
        os.remove(os.path.join(path, FLOAT_FILE))  # only the quantized one is used
        info = {"file": INT8_FILE, "quantization": "int8", "kernels": kernels}
    for leftover in ("model.safetensors", "pytorch_model.bin"):  # a tuned model's torch weights
        if os.path.exists(os.path.join(path, leftover)):
            os.remove(os.path.join(path, leftover))
    with open(os.path.join(path, INFO_FILE), "w", encoding="utf-8") as file:
        json.dump(info, file)
    size = os.path.getsize(os.path.join(path, info["file"])) >> 20
    return (f"exported the embedding model to ONNX ({info['file']}, {size} MB"
            + (f", int8 for {info['kernels']})" if info["kernels"] else ")"))


def export_info(location: str) -> dict:
    """How the model in ``location`` was exported (see :func:`export_model`)."""
    try:
        with open(os.path.join(location, INFO_FILE), encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError) as err:
        raise OperationFailedException(
            f"the project's ONNX model in {location} is incomplete ({err}); retrain the "
            "project") from err


def session_kwargs(threads: int) -> dict:
    """model_kwargs for sentence-transformers' ONNX backend: the CPU provider,
    and ``threads`` intra-op threads where set (0: ONNX Runtime's default).

    ONNX Runtime's idle threads spin after each run; ``force_spinning_stop``
    stops them when a run returns, so they no longer take cores from the label
    search that follows the encoding (tibcore-en, 200 documents, three
    speed.py runs each: search stage 0.80-0.85 s instead of 1.01-1.11 s,
    encoding no slower)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return {"provider": "CPUExecutionProvider", "session_options": options}
