import numpy as np
import pytest
import torch
from annif.exception import OperationFailedException

from annif_ebm.embedding import Embedder, resolve_device
from annif_ebm.params import EbmParams


def params(**raw):
    return EbmParams.parse({"device": "cpu", **raw})[0]


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


def test_truncate_dim():
    emb = Embedder(params(truncate_dim="128"))
    assert emb.dimension == 128
    vectors = emb.encode_documents(["economics"])
    assert vectors.shape == (1, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors), 1.0, rtol=1e-5)


def test_prompts_apply_to_their_side():
    emb = Embedder(params(query_prompt="query: ", document_prompt="passage: "))
    plain = Embedder(params())
    query = emb.encode_queries(["economics"])[0]
    document = emb.encode_documents(["economics"])[0]
    assert not np.allclose(query, document)
    np.testing.assert_allclose(query, plain.encode_queries(["query: economics"])[0], atol=1e-5)


def test_unloadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(OperationFailedException, match="cannot load embedding model"):
        Embedder(params(model=str(tmp_path / "no-such-model")))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_requested_without_cuda_is_a_clear_error():
    with pytest.raises(OperationFailedException, match="CUDA is not available"):
        resolve_device("cuda:1")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_encoding_matches_cpu(embedder):
    gpu = Embedder(params(device="cuda", dtype="float32"))
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
    emb = Embedder(params(batch_size="64"))
    expected = emb.encode_queries(["a b c", "d e f"])
    fake = _OomOnBigBatches(emb.model)
    monkeypatch.setattr(emb, "model", fake)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    np.testing.assert_allclose(emb.encode_queries(["a b c", "d e f"]), expected, atol=1e-6)
    assert fake.batch_sizes == [64, 32, 16, 8]
    assert emb.batch_size == 8


def test_nan_output_is_a_clear_error(monkeypatch):
    emb = Embedder(params())

    class NanModel:
        def encode(self, texts, **kwargs):
            return np.full((len(texts), 384), np.nan, dtype=np.float32)

    monkeypatch.setattr(emb, "model", NanModel())
    with pytest.raises(OperationFailedException, match="NaN"):
        emb.encode_queries(["text"])


def test_several_devices_encode_through_one_worker_pool(embedder):
    """device=cuda:0,cuda:1 spreads encoding over worker processes; the same
    plumbing runs here with two CPU workers."""
    multi = Embedder(params(device="cpu,cpu"))
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
