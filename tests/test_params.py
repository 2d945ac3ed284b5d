import dataclasses

import pytest
from annif.exception import ConfigurationException

from annif_ebm.params import DEFAULT_MODEL, EbmParams, Kind


@pytest.mark.parametrize("text", ["False", "false", "0", "no", "off", "NO"])
def test_false_strings_are_false(text):
    params = EbmParams.parse({"use_altlabels": text})
    assert params.texts.use_altlabels is False


@pytest.mark.parametrize("text", ["True", "1", "yes", "on"])
def test_true_strings_are_true(text):
    params = EbmParams.parse({"use_altlabels": text})
    assert params.texts.use_altlabels is True


@pytest.mark.parametrize(
    "raw",
    [
        {"use_altlabels": "maybe"},
        {"batch_size": "zero"},
        {"batch_size": "-1"},
        {"max_train_docs": "-5"},
        {"xgb_eta": "2"},
        {"device": "gpu"},
        {"dtype": "float8"},
        {"model_kwargs": "[1, 2]"},
    ],
)
def test_bad_value_names_the_parameter(raw):
    name = next(iter(raw))
    with pytest.raises(ConfigurationException, match=f"'{name}'"):
        EbmParams.parse(raw)


def test_unknown_parameter_is_an_error():
    with pytest.raises(ConfigurationException, match="max_chunk_lenght"):
        EbmParams.parse({"max_chunk_lenght": "50"})


def test_annif_project_settings_are_ignored():
    params = EbmParams.parse(
        {"name": "x", "language": "en", "backend": "ebm", "vocab": "v", "limit": "7"}
    )
    assert params.general.limit == 7
    assert params.explicit == {"limit"}


def test_typed_values_and_defaults():
    params = EbmParams.parse(
        {"device": "CUDA:1", "batch_size": "16", "model_kwargs": '{"a": 1}'}
    )
    assert params.embedding.device == "cuda:1"
    assert params.embedding.batch_size == 16
    assert params.embedding.model_kwargs == {"a": 1}
    assert params.embedding.model == DEFAULT_MODEL
    assert params.embedding.truncate_dim == 0


def test_jobs_fill_thread_counts_not_given():
    params = EbmParams.parse({"xgb_jobs": "3"}, jobs=2)
    assert (params.embedding.torch_threads, params.general.duckdb_threads,
            params.ranker.xgb_jobs) == (2, 2, 3)


def test_every_parameter_has_kind_and_doc():
    for spec in EbmParams.specs():
        assert isinstance(spec.metadata["kind"], Kind)
        assert spec.metadata["doc"]
    runtime = {s.name for s in EbmParams.specs(Kind.RUNTIME)}
    assert {"device", "batch_size", "dtype", "duckdb_threads", "torch_threads",
            "xgb_jobs", "candidates_per_chunk", "candidates_per_doc", "ef_search",
            "limit"} <= runtime
    model = {s.name for s in EbmParams.specs(Kind.MODEL)}
    assert {"model", "truncate_dim", "query_prompt", "document_prompt",
            "use_altlabels"} <= model


def test_stored_model_settings_fill_unset_values():
    stored = dict(EbmParams().model_settings(), truncate_dim=128)
    params = EbmParams.parse({"device": "cpu"})
    assert params.with_stored_model(stored).embedding.truncate_dim == 128


def test_conflicting_model_setting_names_both_values():
    stored = dict(EbmParams().model_settings(), model="model-a")
    params = EbmParams.parse({"model": "model-b"})
    with pytest.raises(ConfigurationException) as info:
        params.with_stored_model(stored)
    assert "model-a" in str(info.value) and "model-b" in str(info.value)


def test_same_explicit_model_setting_is_fine():
    stored = EbmParams().model_settings()
    params = EbmParams.parse({"use_altlabels": "yes"})
    assert params.with_stored_model(stored).texts.use_altlabels is True


def test_auto_written_out_agrees_with_what_training_decided():
    # encode_backend=auto is decided at train time (onnx/int8 on the CPU);
    # the same projects.cfg line must not contradict the stored decision
    stored = dict(EbmParams().model_settings(), encode_backend="onnx", encode_quantization="int8")
    params = EbmParams.parse({"encode_backend": "auto", "encode_quantization": "auto"})
    decided = params.with_stored_model(stored).embedding
    assert (decided.encode_backend, decided.encode_quantization) == ("onnx", "int8")
    with pytest.raises(ConfigurationException, match="'encode_backend' is 'torch'"):
        EbmParams.parse({"encode_backend": "torch"}).with_stored_model(stored)


def test_finetune_is_on_by_default_off_with_a_server_and_off_for_older_models():
    assert EbmParams.parse({}).finetune.finetune is True
    from annif_ebm.finetune import MIN_TUNING_DOCS  # the documented threshold is the code's

    doc = next(f for f in EbmParams.specs() if f.name == "finetune").metadata["doc"]
    assert f"fewer than {2 * MIN_TUNING_DOCS} training documents with subjects" in doc
    # a server's model cannot be tuned here: off, unless asked for (then training says why not)
    served = EbmParams.parse({"api_url": "http://localhost:1/v1"})
    assert served.finetune.finetune is False and "finetune" not in served.explicit
    assert EbmParams.parse({"api_url": "http://x/v1", "finetune": "1"}).finetune.finetune is True
    # a model stored before the setting existed was not tuned
    older = {k: v for k, v in EbmParams().model_settings().items() if k != "finetune"}
    assert EbmParams.parse({}).with_stored_model(older).finetune.finetune is False
    with pytest.raises(ConfigurationException, match="'finetune' is True but the model was "
                                                    "trained with False"):
        EbmParams.parse({"finetune": "true"}).with_stored_model(older)


def test_matryoshka_dimensions_are_parsed_largest_first():
    assert EbmParams.parse({}).finetune.finetune_matryoshka_dims == ()
    parsed = EbmParams.parse({"finetune_matryoshka_dims": "64, 384,128,64"})
    assert parsed.finetune.finetune_matryoshka_dims == (384, 128, 64)
    for bad, message in (("384,x", "comma-separated dimensions"), ("128,0", "at least 1")):
        with pytest.raises(ConfigurationException, match=message):
            EbmParams.parse({"finetune_matryoshka_dims": bad})


def test_configuration_reference_is_up_to_date():
    from annif_ebm.params import reference_markdown

    from .conftest import ROOT

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert text == reference_markdown(), "run: python -m annif_ebm.params > docs/configuration.md"
    for spec in EbmParams.specs():
        assert f"`{spec.name}`" in text


def test_the_bundled_model_is_known_to_be_english():
    from annif_ebm.params import EbmParams

    assert EbmParams.parse({}).embedding.languages() == ("en",)
    assert EbmParams.parse({"model": "/some/other/model"}).embedding.languages() == ()
    assert EbmParams.parse({"model_languages": "DE, fi"}).embedding.languages() == ("de", "fi")


def test_every_parameter_is_in_exactly_one_group():
    from annif_ebm.params import GROUPS

    names = [f.name for group in GROUPS.values() for f in dataclasses.fields(group)]
    assert len(names) == len(set(names))
    params = EbmParams.parse({"limit": "7", "hnsw_m": "8", "api_retries": "1"})
    assert (params.general.limit, params.retrieval.hnsw_m, params.api.api_retries) == (7, 8, 1)
    assert {n: params.value(n) for n in names} == {
        **EbmParams().of_kind(Kind.MODEL), **EbmParams().of_kind(Kind.TRAIN),
        **EbmParams().of_kind(Kind.RUNTIME), "limit": 7, "hnsw_m": 8, "api_retries": 1}
    with pytest.raises(TypeError, match="not parameters: nope"):
        params.replace(nope=1)


def test_the_groups_are_frozen():
    params = EbmParams.parse({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.embedding.model = "other"  # type: ignore[misc]
