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
