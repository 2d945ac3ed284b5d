"""Fine-tuning the embedding model (finetune=true): the pairs, the split from
the ranker's documents, and real tuning runs of the bundled model and of a
static model with sentence-transformers' trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from annif.exception import OperationFailedException

from annif_ebm.embedding import model_location
from annif_ebm.finetune import (TuningPairs, learning_rate, preferred_labels, tune_model,
                               tuning_documents, tuning_pairs, with_random_negatives)
from annif_ebm.labels import LabelSet
from annif_ebm.params import DEFAULT_MODEL, EbmParams
from annif_ebm.sampling import choose_documents

# (a text a cataloguer would index with the subject, the subject's prefLabel)
PAIRS = [
    ("The altitude above which snow lies all year on mountain slopes", "Snow line"),
    ("Rail tracks that connect ships at the quay with the national rail network", "Harbor railway"),
    ("Localised corrosion that forms small holes in stainless steel surfaces", "Pitting"),
    ("Cars whose engines emit little carbon dioxide and nitrogen oxide", "Low-emission passenger car"),
    ("Depositing thin films on a substrate before coating", "Layer preparation"),
    ("Interest rates set by the central bank to steer inflation", "Monetary policy"),
    ("How easily firms can hire and dismiss workers", "Labour market flexibility"),
    ("Proteins that speed up chemical reactions in cells", "Enzyme"),
    ("Poems written in the Middle Ages in Occitan by troubadours", "Troubadour poetry"),
    ("The flow of groundwater through porous rock layers", "Aquifer"),
    ("Machines that learn patterns from examples without explicit rules", "Machine learning"),
    ("Ownership of apartments in a shared building", "Condominium"),
]


def labels_of(pairs=PAIRS, alt=()) -> LabelSet:
    texts = [p for _, p in pairs] + [a for a, _ in alt]
    ids = list(range(len(pairs))) + [c for _, c in alt]
    is_pref = [True] * len(pairs) + [False] * len(alt)
    return LabelSet(texts, np.array(ids, dtype=np.int32), np.array(is_pref))


def settings(**raw):
    return EbmParams.parse({"device": "cpu", "finetune": "true", **raw})


def margin(model, pairs: TuningPairs) -> float:
    """Mean of (similarity to the own positive - best similarity to another)."""
    a = model.encode(pairs.anchors, normalize_embeddings=True)
    p = model.encode(pairs.positives, normalize_embeddings=True)
    sims = a @ p.T
    own = np.diag(sims).copy()
    np.fill_diagonal(sims, -np.inf)
    return float(np.mean(own - sims.max(axis=1)))


def test_pairs_are_documents_with_gold_prefLabels_then_as_many_altLabels_at_most():
    alt = [("Snowline", 0), ("Permanent snow limit", 0), ("Harbour railway", 1), ("Pits", 2)]
    labels = labels_of(PAIRS[:3], alt)
    docs = [("  first   text\n", [0, 1]), ("second", [2, 99]), ("", [0])]  # 99: no prefLabel
    pairs = tuning_pairs(docs, labels)
    assert pairs.anchors[:3] == ["first text", "first text", "second"]
    assert pairs.positives[:3] == ["Snow line", "Harbor railway", "Pitting"]
    assert pairs.n_document_pairs == 3
    # 4 altLabel pairs, 3 kept (no more than document pairs), each to its own prefLabel
    alt_pairs = list(zip(pairs.anchors[3:], pairs.positives[3:]))
    assert len(alt_pairs) == 3
    own = {"Snowline": "Snow line", "Permanent snow limit": "Snow line",
           "Harbour railway": "Harbor railway", "Pits": "Pitting"}
    assert all(own[a] == p for a, p in alt_pairs)
    assert "3 document-subject, 3 altLabel-prefLabel" in pairs.describe()
    assert preferred_labels(labels) == {0: "Snow line", 1: "Harbor railway", 2: "Pitting"}


def test_tuning_documents_are_never_the_rankers():
    subjects = [[i % 7 + 1] for i in range(100)] + [[]] * 10
    sample = choose_documents(subjects, 30, tuning_docs=20)
    assert sample.n_tuning == 20 and sample.n_selected == 30
    assert not (sample.tuning & sample.selected).any()
    assert not sample.tuning[100:].any()  # only documents with subjects tune
    assert "fine-tuning the embedding model on 20 others" in sample.describe()
    # at most half of the documents with subjects tune; the ranker takes the rest
    small = choose_documents(subjects[:10], 0, tuning_docs=50)
    assert small.n_tuning == 5 and small.n_selected == 5
    assert not (small.tuning & small.selected).any()
    # a minimum of documents to tune on (what finetune left at its default asks)
    assert choose_documents(subjects, 30, tuning_docs=20, min_tuning_docs=50).n_tuning == 20
    none = choose_documents(subjects, 30, tuning_docs=20, min_tuning_docs=51)
    assert none.n_tuning == 0 and none.tuning is None and none.n_selected == 30
    # the same corpus gives the same split
    again = choose_documents(subjects, 30, tuning_docs=20)
    assert (again.tuning == sample.tuning).all() and (again.selected == sample.selected).all()


def test_pairs_that_mining_left_without_negatives_get_random_prefLabels():
    pairs = TuningPairs(["doc a", "doc a", "doc b", "doc c"],
                        ["Snow line", "Pitting", "Enzyme", "Aquifer"], 4)
    corpus = sorted(p for _, p in PAIRS)
    mined = {"anchor": ["doc a"], "positive": ["Pitting"], "negative_1": ["Enzyme"],
             "negative_2": ["Aquifer"]}
    rows = with_random_negatives(pairs, mined, corpus, 2)
    triples = list(zip(rows["anchor"], rows["positive"], rows["negative_1"], rows["negative_2"]))
    assert triples[0] == ("doc a", "Pitting", "Enzyme", "Aquifer")  # the mined row stays
    assert sorted((a, p) for a, p, _, _ in triples) == sorted(zip(pairs.anchors, pairs.positives))
    for _, positive, first, second in triples[1:]:
        assert positive not in (first, second) and first != second
        assert {first, second} <= set(corpus)
    # reproducible
    assert with_random_negatives(pairs, mined, corpus, 2) == rows


def test_tuning_documents_default_depends_on_the_model_kind():
    assert tuning_documents(settings().finetune, static=False) == 1000
    assert tuning_documents(settings().finetune, static=True) == 20_000
    assert tuning_documents(settings(finetune_docs="300").finetune, static=True) == 300


def test_learning_rate_default_depends_on_the_model_kind():
    assert learning_rate(settings().finetune, static=False) == 5e-5
    assert learning_rate(settings().finetune, static=True) == 0.01
    assert learning_rate(settings(finetune_learning_rate="0.001").finetune, static=True) == 0.001


def test_the_bundled_model_is_tuned_towards_its_pairs_and_saved(tmp_path):
    from sentence_transformers import SentenceTransformer

    pairs = TuningPairs([a for a, _ in PAIRS], [p for _, p in PAIRS], len(PAIRS))
    source, local = model_location(DEFAULT_MODEL)
    p = settings(finetune_epochs="4", finetune_batch_size="4", finetune_learning_rate="0.0002",
                 finetune_hard_negatives="1")
    done = tune_model(source, local, False, pairs, [pos for _, pos in PAIRS] + ["Economics"],
                      p.embedding, p.finetune, "cpu", str(tmp_path / "tuned"))
    assert done["pairs"] == len(PAIRS) and done["negatives"] == 1 and done["steps"] == 12
    assert not (tmp_path / "tuned-trainer").exists()  # the trainer's scratch folder is gone
    base = SentenceTransformer(source, device="cpu", local_files_only=True)
    tuned = SentenceTransformer(str(tmp_path / "tuned"), device="cpu", local_files_only=True)
    assert tuned.max_seq_length == base.max_seq_length  # tuned at 128 tokens, saved at full length
    assert margin(tuned, pairs) > margin(base, pairs) + 0.02


def test_a_static_model_is_trained_too(tmp_path):
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers before 5.4
        from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer

    path, _ = model_location(DEFAULT_MODEL)
    tokenizer = Tokenizer.from_file(f"{path}/tokenizer.json")
    torch.manual_seed(0)
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=32)],
                        device="cpu").save(str(tmp_path / "static"))
    pairs = TuningPairs([a for a, _ in PAIRS], [p for _, p in PAIRS], len(PAIRS))
    p = settings(finetune_epochs="20", finetune_batch_size="6", finetune_hard_negatives="0")
    base = SentenceTransformer(str(tmp_path / "static"), device="cpu")
    before = margin(base, pairs)
    tune_model(str(tmp_path / "static"), True, True, pairs, [], p.embedding, p.finetune, "cpu",
               str(tmp_path / "tuned"))
    tuned = SentenceTransformer(str(tmp_path / "tuned"), device="cpu")
    assert margin(tuned, pairs) > before + 0.1


def truncated_margin(model, pairs: TuningPairs, dimension: int) -> float:
    """:func:`margin` of the vectors cut to their first ``dimension`` values."""
    def encode(texts):
        vectors = model.encode(texts)[:, :dimension]
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    sims = encode(pairs.anchors) @ encode(pairs.positives).T
    own = np.diag(sims).copy()
    np.fill_diagonal(sims, -np.inf)
    return float(np.mean(own - sims.max(axis=1)))


def test_with_truncate_dim_matryoshka_trains_the_truncated_vectors(tmp_path):
    from sentence_transformers import SentenceTransformer

    pairs = TuningPairs([a for a, _ in PAIRS], [p for _, p in PAIRS], len(PAIRS))
    source, local = model_location(DEFAULT_MODEL)
    common = dict(truncate_dim="16", finetune_epochs="4", finetune_batch_size="4",
                  finetune_learning_rate="0.0002")
    margins = {}
    for name, extra in (("matryoshka", {}), ("full only", {"finetune_matryoshka_dims": "384"})):
        p = settings(**common, **extra)
        done = tune_model(source, local, False, pairs, [pos for _, pos in PAIRS] + ["Economics"],
                          p.embedding, p.finetune, "cpu", str(tmp_path / name))
        assert done["matryoshka_dims"] == ([384, 16] if name == "matryoshka" else [384])
        tuned = SentenceTransformer(str(tmp_path / name), device="cpu", local_files_only=True)
        margins[name] = truncated_margin(tuned, pairs, 16)
    assert margins["matryoshka"] > margins["full only"] + 0.02, margins
    p = settings(finetune_matryoshka_dims="512,64")
    with pytest.raises(OperationFailedException, match="names 512 dimensions, but the model has 384"):
        tune_model(source, local, False, pairs, [pos for _, pos in PAIRS], p.embedding,
                   p.finetune, "cpu", str(tmp_path / "too-many"))


def test_too_few_pairs_or_no_negative_below_the_ceiling_is_a_clear_error(tmp_path):
    source, local = model_location(DEFAULT_MODEL)
    p = settings()
    with pytest.raises(OperationFailedException, match="at least 2 training pairs"):
        tune_model(source, local, False, TuningPairs(["a text"], ["Snow line"], 1), ["Snow line"],
                   p.embedding, p.finetune, "cpu", str(tmp_path / "tuned"))
    # 20 hard negatives asked among 12 labels: no pair has them all
    p = settings(finetune_hard_negatives="20")
    pairs = TuningPairs([a for a, _ in PAIRS], [p for _, p in PAIRS], len(PAIRS))
    with pytest.raises(OperationFailedException, match="lower finetune_hard_negatives"):
        tune_model(source, local, False, pairs, [pos for _, pos in PAIRS],
                   p.embedding, p.finetune, "cpu", str(tmp_path / "tuned"))
    assert not (tmp_path / "tuned").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tuning_on_cuda_in_bfloat16(tmp_path):
    from sentence_transformers import SentenceTransformer

    pairs = TuningPairs([a for a, _ in PAIRS], [p for _, p in PAIRS], len(PAIRS))
    source, local = model_location(DEFAULT_MODEL)
    p = settings(device="cuda", finetune_epochs="4", finetune_batch_size="4",
                 finetune_learning_rate="0.0002")
    tune_model(source, local, False, pairs, [pos for _, pos in PAIRS], p.embedding, p.finetune,
               "cuda", str(tmp_path / "tuned"))
    base = SentenceTransformer(source, device="cpu", local_files_only=True)
    tuned = SentenceTransformer(str(tmp_path / "tuned"), device="cpu", local_files_only=True)
    assert margin(tuned, pairs) > margin(base, pairs) + 0.02
