"""The model on ONNX Runtime (encode_backend=onnx, encode_quantization=int8):
exported at train time into the project (after fine-tuning), loaded offline
from there, quantized for one CPU and correct on another, clear errors for
what cannot work. Real model, real ONNX Runtime, real annif CLI."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from annif.exception import ConfigurationException, OperationFailedException

from annif_ebm.embedding import load_encoder, model_location
from annif_ebm.onnx_export import (FLOAT_FILE, INFO_FILE, INT8_FILE, KERNELS_ENV,
                                   check_encode_backend, export_model, require_onnx_runtime,
                                   resolve_encode_backend, session_kwargs)
from annif_ebm.params import EbmParams

from .conftest import AnnifEnv, parse_metrics

TEXTS = ["Monetary policy of the European Central Bank", "Labour market flexibility",
         "Quantum computers factor large numbers with Shor's algorithm.",
         "Coastal protection against storm surges", "Medieval poetry in Old French"]

PROJECTS = """
[ebm-int8]
name=EBM int8
language=en
backend=ebm
vocab=gnd
min_train_docs=0
encode_backend=onnx
encode_quantization=int8

[ebm-tuned-onnx]
name=EBM fine-tuned, ONNX
language=en
backend=ebm
vocab=gnd
min_train_docs=0
finetune=true
finetune_epochs=1
encode_backend=onnx
encode_quantization=none

[ebm-torch]
name=EBM on torch
language=en
backend=ebm
vocab=gnd
min_train_docs=0
encode_backend=torch

[ebm-bad]
name=int8 without onnx
language=en
backend=ebm
vocab=gnd
encode_backend=torch
encode_quantization=int8
"""


def params(**raw) -> EbmParams:
    return EbmParams.parse({"device": "cpu", **raw})


@pytest.mark.parametrize("kernels", ["avx512_vnni", "arm64", "avx2"])
def test_int8_model_made_for_any_cpu_runs_correctly_here(tmp_path, monkeypatch, embedder,
                                                         kernels):
    monkeypatch.setenv(KERNELS_ENV, kernels)
    p = params(encode_backend="onnx", encode_quantization="int8")
    source, local = model_location(p.embedding.model)
    export_model(source, local, p.embedding, str(tmp_path))
    info = json.loads((tmp_path / INFO_FILE).read_text())
    assert info == {"file": INT8_FILE, "quantization": "int8", "kernels": kernels}
    assert (tmp_path / INT8_FILE).exists() and not (tmp_path / FLOAT_FILE).exists()
    monkeypatch.delenv(KERNELS_ENV)  # loaded as on a machine of its own kind
    encoder = load_encoder(p.embedding, p.api, str(tmp_path))
    quantized, full = encoder.encode_queries(TEXTS), embedder.encode_queries(TEXTS)
    cosine = (quantized * full).sum(axis=1)
    assert quantized.shape == full.shape and cosine.min() > 0.95 and cosine.mean() > 0.98
    assert np.allclose(np.linalg.norm(quantized, axis=1), 1, atol=1e-4)


def test_an_int8_vector_does_not_depend_on_the_texts_beside_it(tmp_path):
    # dynamic quantization scales a whole batch's activations: in batches of
    # several texts a text's vector moved with its neighbours (REST batches
    # and single texts got different suggestions)
    p = params(encode_backend="onnx", encode_quantization="int8", batch_size="64")
    export_model(*model_location(p.embedding.model), p.embedding, str(tmp_path))
    encoder = load_encoder(p.embedding, p.api, str(tmp_path))
    alone = np.stack([encoder.encode_queries([text])[0] for text in TEXTS])
    np.testing.assert_array_equal(encoder.encode_queries(TEXTS), alone)
    np.testing.assert_array_equal(encoder.encode_queries(TEXTS[::-1])[::-1], alone)


def test_float32_export_gives_torchs_vectors(tmp_path, embedder):
    p = params(encode_backend="onnx")
    export_model(*model_location(p.embedding.model), p.embedding, str(tmp_path))
    vectors = load_encoder(p.embedding, p.api, str(tmp_path)).encode_documents(TEXTS)
    assert np.abs(vectors - embedder.encode_documents(TEXTS)).max() < 1e-4


def test_onnx_runtime_threads_stop_spinning_when_a_run_returns():
    """Spinning ONNX Runtime threads slowed the label search after encoding."""
    options = session_kwargs(2)["session_options"]
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.intra_op_num_threads == 2


def test_impossible_combinations_are_clear_errors(monkeypatch):
    cases = [({"encode_backend": "torch", "encode_quantization": "int8"},
              "set encode_backend=onnx as well"),
             ({"encode_backend": "onnx", "static_embedding": "true"}, "unset encode_backend"),
             ({"encode_backend": "onnx", "api_url": "http://localhost:1"}, "unset one of them")]
    for raw, message in cases:
        p = params(**raw)
        with pytest.raises(ConfigurationException, match=message):
            check_encode_backend(p.embedding, p.api)
    p = params(encode_backend="onnx")
    with pytest.raises(OperationFailedException, match="retrain the project"):
        load_encoder(p.embedding, p.api)  # nothing exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the extra is missing
    with pytest.raises(OperationFailedException, match=r"pip install 'annif-ebm\[onnx\]'"):
        require_onnx_runtime()


def test_auto_is_int8_on_onnx_runtime_on_the_cpu_and_torch_elsewhere(monkeypatch):
    def resolve(device, **raw):
        p = params(**raw)
        return tuple(resolve_encode_backend(p.embedding, p.api, device).values())

    assert resolve("cpu") == ("onnx", "int8")
    assert resolve("cuda:0") == ("torch", "none")
    assert resolve("mps") == ("torch", "none")
    assert resolve("cpu", static_embedding="true") == ("torch", "none")
    assert resolve("cpu", api_url="http://localhost:1") == ("torch", "none")
    # what is given is kept; a given engine gets its own quantization default
    assert resolve("cpu", encode_backend="torch") == ("torch", "none")
    assert resolve("cpu", encode_quantization="none") == ("onnx", "none")
    assert resolve("cuda:0", encode_backend="onnx") == ("onnx", "int8")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # left out of the install
    assert resolve("cpu") == ("torch", "none")


@pytest.fixture(scope="module")
def onnx_env(tmp_path_factory, sample_corpus) -> AnnifEnv:
    env = AnnifEnv(tmp_path_factory.mktemp("onnx") / "env", PROJECTS)
    env.run("load-vocab", "--language", "en", "gnd", str(sample_corpus["vocab"]))
    env.run("train", "ebm-int8", str(sample_corpus["train"]))
    return env


def own_model(env: AnnifEnv, project_id: str):
    project = env.project_dir(project_id)
    metadata = json.loads((project / "ebm-model.json").read_text())
    return metadata, project / metadata["model_dir"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_int8_project_trains_suggests_and_keeps_its_quality(onnx_env, sample_corpus, tmp_path):
    metadata, folder = own_model(onnx_env, "ebm-int8")
    assert metadata["model"]["encode_backend"] == "onnx"
    assert metadata["model"]["encode_quantization"] == "int8"
    assert (folder / INT8_FILE).exists() and not list(folder.glob("*.safetensors"))
    int8 = parse_metrics(onnx_env.run("eval", "ebm-int8", str(sample_corpus["test"])).stdout)
    onnx_env.run("train", "ebm-torch", str(sample_corpus["train"]))
    metadata, _ = own_model(onnx_env, "ebm-torch")
    assert metadata["model"]["encode_backend"] == "torch" and not metadata["model_dir"]
    torch = parse_metrics(onnx_env.run("eval", "ebm-torch", str(sample_corpus["test"])).stdout)
    assert int8["F1@5"] > torch["F1@5"] - 0.04, (int8, torch)
    jobs = parse_metrics(onnx_env.run("eval", "ebm-int8", str(sample_corpus["test"]),
                                      "--jobs", "2").stdout)
    assert jobs["F1@5"] == pytest.approx(int8["F1@5"], abs=1e-4)
    # a copy elsewhere loads its own export (the base model is not needed)
    copy = onnx_env.copy_to(tmp_path / "copy")
    text = "Quantum computers factor large numbers."
    assert copy.run("suggest", "ebm-int8", stdin=text).stdout == onnx_env.run(
        "suggest", "ebm-int8", stdin=text).stdout


@pytest.mark.slow
def test_onnx_settings_are_fixed_at_train_time_and_run_on_the_cpu(onnx_env, sample_corpus):
    fixed = onnx_env.run("suggest", "ebm-int8", "-b", "ebm.encode_quantization=none",
                         stdin="Economics", check=False)
    assert fixed.returncode != 0 and "retrain the project" in fixed.stderr
    gpu = onnx_env.run("suggest", "ebm-int8", "-b", "ebm.device=cuda", stdin="Economics",
                       check=False)
    assert gpu.returncode != 0 and "runs on ONNX Runtime on the CPU" in gpu.stderr
    bad = onnx_env.run("train", "ebm-bad", str(sample_corpus["train"]), check=False)
    assert bad.returncode != 0 and "set encode_backend=onnx as well" in bad.stderr
    assert "Traceback" not in fixed.stderr + gpu.stderr + bad.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_fine_tuned_model_is_exported_after_tuning(onnx_env, sample_corpus):
    onnx_env.run("train", "ebm-tuned-onnx", str(sample_corpus["train"]))
    metadata, folder = own_model(onnx_env, "ebm-tuned-onnx")
    assert metadata["model"]["finetune"] is True and "tuned" in folder.name
    assert (folder / FLOAT_FILE).exists() and not list(folder.glob("*.safetensors"))
    result = onnx_env.run("eval", "ebm-tuned-onnx", str(sample_corpus["test"]))
    assert parse_metrics(result.stdout)["F1@5"] > 0.2
    assert os.path.getsize(folder / FLOAT_FILE) > 50 << 20  # the transformer itself
