import numpy as np

from annif_ebm.chunking import Chunker
from annif_ebm.labels import LabelSet
from annif_ebm.matcher import Matcher
from annif_ebm.params import EbmParams
from annif_ebm.search import label_search
from annif_ebm.store import LabelStore, write_store
from annif_ebm.suggest import candidates as suggest_candidates
from annif_ebm.timing import StageTimer

TEXTS = ["Economics", "Labour market", "Neural networks", "Medieval poetry"]


def test_candidates_stay_with_their_documents(tmp_path, embedder):
    labels = LabelSet(TEXTS, np.arange(4, dtype=np.int32) + 100, np.ones(4, dtype=bool))
    path = tmp_path / "labels.duckdb"
    write_store(str(path), labels, embedder.encode_documents(TEXTS), "m")
    params = EbmParams.parse({"candidates_per_chunk": "2", "max_chunk_length": "40"})
    store = LabelStore(str(path))
    timer = StageTimer()
    matcher = Matcher(store, label_search(store, "exact"), params.retrieval.candidates_per_chunk,
                      params.features, None, timer)
    chunker = Chunker("en", params.texts.max_chunk_length, params.texts.max_chunks)
    docs = ["", "Training deep neural networks. Backpropagation in networks.", "  ",
            "Unemployment and the labour market. Wages and jobs."]
    candidates = suggest_candidates(docs, chunker, embedder, matcher, timer)
    assert set(candidates["doc"].to_list()) == {1, 3}
    best = candidates.sort("max_score", descending=True).group_by("doc", maintain_order=True).first()
    assert dict(best.select("doc", "concept_id").rows()) == {1: 102, 3: 101}
    assert candidates.filter(candidates["doc"] == 1)["n_chunks"].to_list()[0] == 2
    assert set(timer.seconds) == {"chunk", "embed", "search", "features"}
    assert suggest_candidates([], chunker, embedder, matcher, timer).height == 0


def test_the_document_vector_is_one_more_query(tmp_path, embedder):
    """doc_query_score is the similarity of the concept's label to the mean
    of the document's chunk vectors (normalised); doc_query_rank its rank
    among that query's labels; the family switched off leaves both missing."""
    labels = LabelSet(TEXTS, np.arange(4, dtype=np.int32) + 100, np.ones(4, dtype=bool))
    path = tmp_path / "labels.duckdb"
    label_vectors = embedder.encode_documents(TEXTS)
    write_store(str(path), labels, label_vectors, "m")
    store = LabelStore(str(path))
    text = "Training deep neural networks. Unemployment and the labour market."
    chunker = Chunker("en", 40, 100)
    chunks = chunker.chunk(text)
    assert len(chunks) == 2
    pooled = embedder.encode_queries(chunks).mean(axis=0)
    pooled /= np.linalg.norm(pooled)
    expected = label_vectors @ pooled
    for switch in ("true", "false"):
        params = EbmParams.parse({"candidates_per_chunk": "4", "use_document_query": switch})
        timer = StageTimer()
        matcher = Matcher(store, label_search(store, "exact"), 4, params.features, None, timer)
        found = suggest_candidates([text], chunker, embedder, matcher, timer).sort("concept_id")
        assert found["concept_id"].to_list() == [100, 101, 102, 103]
        if switch == "false":
            assert found["doc_query_score"].null_count() == 4
            continue
        np.testing.assert_allclose(found["doc_query_score"].to_numpy(), expected, atol=1e-5)
        order = np.argsort(-expected, kind="stable")
        assert found["doc_query_rank"].to_numpy()[order].tolist() == [0.0, 1.0, 2.0, 3.0]
