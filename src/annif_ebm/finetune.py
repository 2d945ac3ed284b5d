"""Fine-tuning the embedding model on the project's own data (``finetune``).

Before the labels are embedded, the model learns the library's language from
pairs: (document text, prefLabel of one of its gold subjects) from the
documents set aside for tuning (never the ranker's: see sampling.py), and
(altLabel, prefLabel) from the vocabulary, which teach what a label means
where no document has the subject. Hard negatives are mined with the model
before tuning (sentence-transformers' ``mine_hard_negatives``: its nearest
prefLabels that are not gold, skipping those that score above
``finetune_negative_ceiling`` of the positive's score, likely correct subjects
that the cataloguer did not list; a pair left without one gets random
prefLabels rather than being dropped). The loss is MultipleNegativesRankingLoss
(its cached variant for large batches): each pair's positive against the
batch's other positives and the mined negatives; no batch holds the same text
twice. With ``truncate_dim`` (or ``finetune_matryoshka_dims``) MatryoshkaLoss
around it trains the truncated vectors too. sentence-transformers' trainer
runs it; the tuned model is saved for the project, which then needs neither
the base model nor the network.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterable

import numpy as np
from annif import logger
from annif.exception import OperationFailedException

from .labels import LabelSet
from .model_files import remove
from .params import EmbeddingSettings, FinetuneSettings
from .progress import progress_bar

SEED = 42
MAX_TEXT_CHARS = 4000  # of a document: more than finetune_max_tokens ever reads
# documents to tune on by default. A static model tunes at a small share of a
# transformer's cost and gains from more: yso-finna-en F1@5 0.1340 from 1,000,
# 0.1546 from 20,000 (frozen static 0.1273, frozen transformer 0.1741)
TRANSFORMER_TUNING_DOCS = 1000
STATIC_TUNING_DOCS = 20_000
TRANSFORMER_LEARNING_RATE = 5e-5
STATIC_LEARNING_RATE = 0.01
# nearest prefLabels searched for a pair's hard negatives: where the model ranks
# the gold label low, every label near the top scores above the ceiling
MINING_RANGE = 1000
# left at its default (on), fine-tuning needs at least this many documents to
# set aside (half of those with subjects). Measured: with 1,000 (tibcore-en,
# yso-finna-en) it wins; with 300 of the 600 of the bundled GND sample F1@5 was
# even (0.3108 against 0.3114 frozen) at 1.8x the train time
MIN_TUNING_DOCS = 500
CACHED_LOSS_FROM = 128  # batch sizes from which the loss runs in mini-batches
MINI_BATCH = 32


@dataclasses.dataclass(frozen=True)
class TuningPairs:
    """Anchor texts (documents, altLabels) and the prefLabels they should find."""

    anchors: list[str]
    positives: list[str]
    n_document_pairs: int

    def __len__(self) -> int:
        return len(self.anchors)

    def describe(self) -> str:
        return (f"{len(self)} pairs ({self.n_document_pairs} document-subject, "
                f"{len(self) - self.n_document_pairs} altLabel-prefLabel)")


def preferred_labels(labels: LabelSet) -> dict[int, str]:
    """Concept id -> its prefLabel (the first, where it has several)."""
    preferred: dict[int, str] = {}
    for text, concept, is_pref in zip(labels.texts, labels.concept_ids.tolist(),
                                      labels.is_pref.tolist()):
        if is_pref:
            preferred.setdefault(concept, text)
    return preferred


def tuning_pairs(documents: Iterable[tuple[str, Iterable[int]]], labels: LabelSet) -> TuningPairs:
    """Pairs of each document with each gold subject that has a prefLabel,
    then of altLabels with their prefLabel: at most as many as document pairs
    (a random choice, seeded), so that the documents' language dominates."""
    preferred = preferred_labels(labels)
    anchors, positives = [], []
    for text, subjects in documents:
        text = " ".join(text.split())[:MAX_TEXT_CHARS]
        for subject in subjects:
            if text and subject in preferred:
                anchors.append(text)
                positives.append(preferred[subject])
    n_document_pairs = len(anchors)
    alt = [(text, preferred[concept]) for text, concept, is_pref
           in zip(labels.texts, labels.concept_ids.tolist(), labels.is_pref.tolist())
           if not is_pref and concept in preferred]
    if len(alt) > n_document_pairs:
        chosen = np.random.default_rng(SEED).choice(len(alt), n_document_pairs, replace=False)
        alt = [alt[i] for i in sorted(chosen)]
    anchors += [a for a, _ in alt]
    positives += [p for _, p in alt]
    return TuningPairs(anchors, positives, n_document_pairs)


def tuning_documents(settings: FinetuneSettings, static: bool) -> int:
    """How many documents to tune on: ``finetune_docs``, else by model kind."""
    if settings.finetune_docs:
        return settings.finetune_docs
    return STATIC_TUNING_DOCS if static else TRANSFORMER_TUNING_DOCS


def learning_rate(settings: FinetuneSettings, static: bool) -> float:
    if settings.finetune_learning_rate:
        return settings.finetune_learning_rate
    return STATIC_LEARNING_RATE if static else TRANSFORMER_LEARNING_RATE


def matryoshka_dims(settings: FinetuneSettings, embedding: EmbeddingSettings,
                    full: int) -> tuple[int, ...]:
    """The dimensions MatryoshkaLoss trains, largest first; () = none: the
    ones given, else the model's and ``truncate_dim`` where that is set."""
    dims = settings.finetune_matryoshka_dims
    if not dims and embedding.truncate_dim and embedding.truncate_dim < full:
        dims = (full, embedding.truncate_dim)
    if dims and dims[0] > full:
        raise OperationFailedException(
            f"finetune_matryoshka_dims names {dims[0]} dimensions, but the model has {full}")
    return dims


def _prompts(model, embedding: EmbeddingSettings) -> tuple[str | None, str | None]:
    """The (query, document) prompt strings of the embedding settings."""
    def resolve(prompt: str, name: str) -> str | None:
        if prompt:
            return prompt
        if name:
            return model.prompts.get(name) or None
        return None

    return (resolve(embedding.query_prompt, embedding.query_prompt_name),
            resolve(embedding.document_prompt, embedding.document_prompt_name))


def with_random_negatives(pairs: TuningPairs, mined: dict[str, list[str]], corpus: list[str],
                          negatives: int) -> dict[str, list[str]]:
    """The mined rows (columns anchor, positive, negative_1..n) and every pair
    that mining left without ``negatives`` negatives below the ceiling, with
    prefLabels drawn at random (seeded, never its own) instead: those are the
    pairs whose gold label the model ranks lowest, the ones to learn from."""
    rows = {column: list(values) for column, values in mined.items()}
    rows.setdefault("anchor", [])
    rows.setdefault("positive", [])
    columns = [f"negative_{i + 1}" for i in range(negatives)]
    for column in columns:
        rows.setdefault(column, [])
    left = collections.Counter(zip(pairs.anchors, pairs.positives))
    left.subtract(zip(rows["anchor"], rows["positive"]))
    rng = np.random.default_rng(SEED)
    n_random = 0
    for (anchor, positive), count in left.items():
        for _ in range(max(0, count)):
            drawn = []
            while len(drawn) < negatives:
                label = corpus[int(rng.integers(len(corpus)))]
                if label != positive and label not in drawn:
                    drawn.append(label)
            rows["anchor"].append(anchor)
            rows["positive"].append(positive)
            for column, label in zip(columns, drawn):
                rows[column].append(label)
            n_random += 1
    logger.info("hard negatives mined for %d of %d pairs; the other %d have random prefLabels",
                len(pairs) - n_random, len(pairs), n_random)
    return rows


def _progress_callback(bar):
    """A trainer callback that moves the package's progress ``bar`` (ETA on
    a terminal, log lines elsewhere) one step per training step."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            bar.update(1)

    return Progress()


def tune_model(source: str, local: bool, static: bool, pairs: TuningPairs, corpus: list[str],
               embedding: EmbeddingSettings, settings: FinetuneSettings, device: str,
               path: str) -> dict:
    """Fine-tune the model at ``source`` (a name or folder; ``local``: no
    download) on ``pairs`` with hard negatives mined from ``corpus`` (the
    prefLabels) and save it at ``path``; return what it did, for the log."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    try:  # where sentence-transformers 5.4+ keeps them (the old paths warn)
        from sentence_transformers.sentence_transformer import losses
        from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    except ImportError:
        from sentence_transformers import losses
        from sentence_transformers.training_args import BatchSamplers
    from sentence_transformers.util import mine_hard_negatives

    if len(pairs) < 2:
        raise OperationFailedException(
            f"fine-tuning needs at least 2 training pairs, the data gives {len(pairs)}: "
            "set finetune=false, or give documents whose subjects have prefLabels")
    negatives = settings.finetune_hard_negatives
    if negatives and negatives >= len(corpus):
        raise OperationFailedException(
            f"finetune_hard_negatives={negatives} needs more prefLabels than the "
            f"vocabulary's {len(corpus)}: lower finetune_hard_negatives")
    if embedding.torch_threads:
        torch.set_num_threads(embedding.torch_threads)
    started = time.monotonic()
    try:
        model = SentenceTransformer(source, device=device, local_files_only=local,
                                    trust_remote_code=embedding.trust_remote_code)
    except (OSError, ValueError) as err:
        raise OperationFailedException(f"cannot load embedding model '{source}' to fine-tune: "
                                       f"{err}") from err
    dimension = getattr(model, "get_embedding_dimension",  # sentence-transformers 5.4+
                        model.get_sentence_embedding_dimension)()
    dims = matryoshka_dims(settings, embedding, dimension)
    full_length = None if static else model.max_seq_length  # a static model reads every token
    if full_length:
        model.max_seq_length = min(full_length, settings.finetune_max_tokens)
    query_prompt, document_prompt = _prompts(model, embedding)
    dataset = Dataset.from_dict({"anchor": pairs.anchors, "positive": pairs.positives})
    if negatives:
        logger.info("mining %d hard negatives per pair among %d prefLabels", negatives,
                    len(corpus))
        mined = mine_hard_negatives(
            dataset, model, corpus=corpus, num_negatives=negatives,
            range_max=min(len(corpus), MINING_RANGE + negatives), sampling_strategy="top",
            relative_margin=1.0 - settings.finetune_negative_ceiling,
            query_prompt=query_prompt, corpus_prompt=document_prompt,
            output_format="n-tuple", batch_size=64, verbose=False)
        dataset = Dataset.from_dict(with_random_negatives(pairs, mined.to_dict(), corpus,
                                                          negatives))
    mined_seconds = time.monotonic() - started
    prompts = None
    if query_prompt or document_prompt:
        prompts = {column: (query_prompt if column == "anchor" else document_prompt) or ""
                   for column in dataset.column_names}
    batch_size = min(settings.finetune_batch_size, len(dataset))
    steps = settings.finetune_epochs * (len(dataset) // batch_size)
    cuda = device.startswith("cuda")
    workdir = path + "-trainer"
    args = SentenceTransformerTrainingArguments(
        output_dir=workdir, num_train_epochs=settings.finetune_epochs,
        per_device_train_batch_size=batch_size, learning_rate=learning_rate(settings, static),
        warmup_steps=max(1, steps // 10), batch_sampler=BatchSamplers.NO_DUPLICATES,
        prompts=prompts, seed=SEED, data_seed=SEED, use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(), dataloader_drop_last=True,
        save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0)
    if batch_size >= CACHED_LOSS_FROM:
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=MINI_BATCH)
    else:
        loss = losses.MultipleNegativesRankingLoss(model)
    if dims:
        loss = losses.MatryoshkaLoss(model, loss, list(dims))
    try:
        with progress_bar(steps, "fine-tune embedding model", "step") as bar:
            trainer = SentenceTransformerTrainer(
                model=model, args=args, train_dataset=dataset, loss=loss,
                callbacks=[_progress_callback(bar)])
            trainer.train()
    finally:
        remove(workdir)
    if full_length:
        model.max_seq_length = full_length
    model.save(path)
    return {"pairs": len(pairs), "trained_rows": len(dataset), "negatives": negatives,
            "steps": steps, **({"matryoshka_dims": list(dims)} if dims else {}), "mine_s": round(mined_seconds, 1),
            "tune_s": round(time.monotonic() - started - mined_seconds, 1)}
