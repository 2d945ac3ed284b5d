import dataclasses

import numpy as np
import pytest
import torch
from annif.exception import OperationFailedException

from annif_ebm.embedding import (
    Encoder,
    SentenceTransformerEncoder,
    encoder_key,
    load_encoder,
    model_location,
    resolve_device,
)
from annif_ebm.params import DEFAULT_MODEL, EbmParams, EmbeddingSettings

FIELD_NAMES = {f.name for f in EbmParams.specs()}


def params(**raw):
    return EbmParams.parse({"device": "cpu", **raw})


def encoder_of(p: EbmParams, location: str | None = None) -> Encoder:
    return load_encoder(p.embedding, p.api, location)


def other_value(value):
    """A different value of a parameter's type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, dict):
        return {**value, "other": 1}
    if isinstance(value, tuple):
        return (*value, 1)
    return value + "-other"


def fields_in_key(p: EbmParams, location: str | None = None) -> set[str]:
    """The parameters (of all groups) a change of which changes the encoder key."""
    key = encoder_key(p.embedding, p.api, location)
    changed = set()
    for name in FIELD_NAMES:
        other = p.replace(**{name: other_value(p.value(name))})
        if encoder_key(other.embedding, other.api, location) != key:
            changed.add(name)
    return changed


def group_fields(group) -> set[str]:
    return {f.name for f in dataclasses.fields(group)}


def test_default_model_is_offline_normalised_384d(embedder):
    vectors = embedder.encode_queries(["Machine learning", "Labour market policy"])
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_similar_texts_are_closer(embedder):
    a, b, c = embedder.encode_queries(["neural networks", "deep learning", "medieval poetry"])
    assert a @ b > a @ c + 0.1


def test_duplicates_are_encoded_once_and_mapped_back(embedder):
    vectors = embedder.encode_queries(["x ray", "cats", "x ray"])
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])
    assert embedder.encode_queries([]).shape == (0, 384)


def test_the_local_encoder_satisfies_the_protocol(embedder):
    assert isinstance(embedder, SentenceTransformerEncoder)
    assert isinstance(embedder, Encoder)
    assert embedder.search_device == "cpu" and embedder.devices == ["cpu"]
    assert embedder.dimension == 384
    assert embedder.source == f"embedding model '{DEFAULT_MODEL}'"


def test_the_encoder_key_is_the_embedding_settings_for_the_local_encoder():
    # the encoder is built from the embedding settings (and api_url, which
    # picks the encoder) only, so nothing else can make it stale
    assert fields_in_key(params()) == group_fields(EmbeddingSettings) | {"api_url"}
    assert fields_in_key(params(), "/a/static/model") == fields_in_key(params())


def test_the_encoder_key_changes_with_what_the_encoder_reads_only():
    def key(p, location=None):
        return encoder_key(p.embedding, p.api, location)

    base = key(params())
    assert key(params(limit="7")) == base
    assert key(params(use_altlabels="false", knn_neighbors="3")) == base
    assert key(params(device="cpu,cpu")) != base
    assert key(params(query_prompt="query: ")) != base
    assert key(params(), "/a/static/model") != base
    assert key(params(api_url="http://127.0.0.1:1/v1")) != base


def test_a_saved_model_is_loaded_from_its_location(tmp_path):
    """How the project's distilled static model is loaded: here a static
    model on the bundled model's tokenizer, saved with sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers before 5.4
        from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer

    path, _ = model_location(DEFAULT_MODEL)
    tokenizer = Tokenizer.from_file(f"{path}/tokenizer.json")
    static = StaticEmbedding(tokenizer, embedding_dim=32)
    SentenceTransformer(modules=[static], device="cpu").save(str(tmp_path / "static"))
    emb = encoder_of(params(static_embedding="true"), str(tmp_path / "static"))
    assert isinstance(emb, SentenceTransformerEncoder) and emb.dimension == 32
    assert emb.source == f"static embedding model distilled from '{DEFAULT_MODEL}'"
    vectors = emb.encode_documents(["economics", "labour market", "economics"])
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_truncate_dim():
    emb = encoder_of(params(truncate_dim="128"))
    assert emb.dimension == 128
    vectors = emb.encode_documents(["economics"])
    assert vectors.shape == (1, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors), 1.0, rtol=1e-5)


def test_prompts_apply_to_their_side():
    emb = encoder_of(params(query_prompt="query: ", document_prompt="passage: "))
    plain = encoder_of(params())
    query = emb.encode_queries(["economics"])[0]
    document = emb.encode_documents(["economics"])[0]
    assert not np.allclose(query, document)
    np.testing.assert_allclose(query, plain.encode_queries(["query: economics"])[0], atol=1e-5)


def test_unloadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(OperationFailedException, match="cannot load embedding model"):
        encoder_of(params(model=str(tmp_path / "no-such-model")))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_requested_without_cuda_is_a_clear_error():
    with pytest.raises(OperationFailedException, match="CUDA is not available"):
        resolve_device("cuda:1")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_encoding_matches_cpu(embedder):
    gpu = encoder_of(params(device="cuda", dtype="float32"))
    texts = ["economics", "machine learning"]
    np.testing.assert_allclose(
        gpu.encode_queries(texts), embedder.encode_queries(texts), atol=1e-3
    )


class _OomOnBigBatches:
    """Stands in for the model's encode: fails like CUDA does above 8 texts."""

    def __init__(self, real):
        self.real, self.batch_sizes = real, []

    def encode(self, texts, batch_size, **kwargs):
        self.batch_sizes.append(batch_size)
        if batch_size > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return self.real.encode(texts, batch_size=batch_size, **kwargs)


def test_out_of_memory_halves_the_batch_and_retries(monkeypatch):
    emb = encoder_of(params(batch_size="64"))
    expected = emb.encode_queries(["a b c", "d e f"])
    fake = _OomOnBigBatches(emb.model)
    monkeypatch.setattr(emb, "model", fake)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    np.testing.assert_allclose(emb.encode_queries(["a b c", "d e f"]), expected, atol=1e-6)
    assert fake.batch_sizes == [64, 32, 16, 8]
    assert emb.batch_size == 8


def test_nan_output_is_a_clear_error(monkeypatch):
    emb = encoder_of(params())

    class NanModel:
        def encode(self, texts, **kwargs):
            return np.full((len(texts), 384), np.nan, dtype=np.float32)

    monkeypatch.setattr(emb, "model", NanModel())
    with pytest.raises(OperationFailedException, match="NaN"):
        emb.encode_queries(["text"])


def test_several_devices_encode_through_one_worker_pool(embedder):
    """device=cuda:0,cuda:1 spreads encoding over worker processes; the same
    plumbing runs here with two CPU workers."""
    multi = encoder_of(params(device="cpu,cpu"))
    texts = [f"text number {i} about economics" for i in range(40)]
    np.testing.assert_allclose(multi.encode_queries(texts), embedder.encode_queries(texts),
                               atol=1e-5)
    pool = multi._pool
    multi.encode_documents(["labour market"])
    assert multi._pool is pool and len(pool[1]["processes"]) == 2


def test_cuda_in_a_forked_worker_is_a_clear_error(monkeypatch):
    """The guard for annif --jobs N: a worker forked after CUDA started in
    its parent refuses clearly (torch's own flag, simulated here on CPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    with pytest.raises(OperationFailedException, match="--jobs 1"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    assert resolve_device("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
