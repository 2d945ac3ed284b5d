"""Training: the phases of one run, each a function whose objects die when it
returns, so that no phase adds to the memory peak of the next.

sample (the ranker's documents) -> chunk (documents into the run's file) ->
embed (labels, then chunks, through the embedding cache; the encoder lives
only in this phase; writes the label store) -> match (pools the training
documents for kNN and priors into the store, then the sample's candidates
with their features, labelled with the gold subjects) -> fit (the ranker,
from the candidates on disk) -> commit. Every file is written under a new or
``tmp-`` name; :func:`model_files.commit` makes the new model the project's
in one rename, so a failed run leaves the previous model in use.

With no documents (zero-shot) or fewer than ``min_train_docs``, match and fit
give way to a copy of a shipped general ranker (:mod:`annif_ebm.general`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from annif.exception import (NotInitializedException, NotSupportedException,
                             OperationFailedException)

from . import cache, model_files
from .chunking import Chunker, chunk_texts
from .embedding import (check_no_own_model_with_api, distill_static_model, load_encoder,
                        model_location, resolve_device)
from .finetune import (MIN_TUNING_DOCS, preferred_labels, tune_model, tuning_documents,
                       tuning_pairs)
from .features import FEATURE_NAMES, disabled_families, uses_training_documents
from .general import GeneralRanker, general_ranker
from .knn import VECTOR_DTYPE, TrainingDocuments, pool_documents
from .labels import LabelSet, vocabulary_labels, vocabulary_relations
from .lexical import Lexicon
from .matcher import Matcher
from .memory import release_memory, return_free_heap
from .onnx_export import check_encode_backend, export_model, resolve_encode_backend
from .params import EbmParams, Kind
from .progress import progress_bar
from .fit import fit_and_commit
from .ranker import NothingToLearnError
from .sampling import Sample, choose_documents
from .search import label_search
from .store import LabelStore, write_store, write_training_documents
from .timing import StageTimer
from .training_data import ChunkVectors, TrainingRun, cached_training_data, stored_metadata

if TYPE_CHECKING:
    from annif.corpus import Document, DocumentCorpus
    from annif.project import AnnifProject

TRAIN_BATCH_DOCS = 256


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a run trains: the Annif project, the backend's data directory,
    and the backend's logging (messages start with its id)."""

    project: AnnifProject
    datadir: str
    backend_id: str
    info: Callable[[str], None]
    warning: Callable[[str], None]


def read_documents(corpus: DocumentCorpus) -> Iterator[Document]:
    """The corpus' documents; a file that is not UTF-8 is a clear error (Annif
    reads corpora strictly as UTF-8)."""
    try:
        yield from corpus.documents
    except UnicodeDecodeError as err:
        raise OperationFailedException(
            f"the training corpus is not valid UTF-8 ({err}); clean it, e.g. with "
            "'iconv -f utf-8 -t utf-8 -c'"
        ) from None


def batched(iterable: Iterable, size: int) -> Iterator[list]:
    """Lists of ``size`` items of ``iterable`` (the last may be shorter)."""
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def remove_leftovers(target: Target) -> None:
    """Remove what earlier runs left: temporary files, and model files that
    neither the model nor the training data (``--cached``) names."""
    named = None
    try:
        metadata = model_files.load_metadata(target.datadir, target.backend_id)
        named = {metadata.store_file, metadata.ranker_file, metadata.model_dir}
    except NotInitializedException:
        named = set()  # never trained
    except OperationFailedException:
        pass  # unreadable metadata: keep the files it may name
    pending = stored_metadata(cached_training_data(target.datadir))
    if named is not None and pending:
        named |= {pending.get("store_file"),
                  pending.get("model_dir", pending.get("static_model_dir"))}
    leftovers = model_files.remove_leftovers(target.datadir, named)
    if leftovers:
        target.warning(f"removed files of an interrupted training run: {', '.join(leftovers)}")


def train(target: Target, corpus: DocumentCorpus, p: EbmParams) -> None:
    """A full run: embed, collect candidates, fit the ranker, commit. With no
    training documents (zero-shot), or fewer than ``min_train_docs``, the run
    embeds the labels (and stores the documents for kNN and priors) and ranks
    with a shipped general ranker instead of fitting its own."""
    if warning := p.language_warning(target.project.language):
        target.warning(warning)
    labels = _labels(target, p)
    sample = None if next(read_documents(corpus), None) is None else _sample(target, corpus, p)
    p = _decide_finetuning(target, sample, p)
    p = p.replace(**resolve_encode_backend(p.embedding, p.api,
                                           resolve_device(p.embedding.device)[0]))
    shipped = _shipped_ranker(target, sample, p)
    files = model_files.RunFiles.new(p.embedding.static_embedding, p.finetune.finetune,
                                     p.embedding.encode_backend == "onnx")
    timer = StageTimer()
    run, kept = None, False
    try:
        location = _own_model(target, corpus, labels, sample, p, files, timer)
        run = TrainingRun(target.datadir, p.general.duckdb_threads)
        if sample is not None:
            _chunk(corpus, sample, run, target.project.language, p, timer)
        chunk_vectors, search_device = _embed(target, labels, run, p, files, location, timer)
        release_memory()  # the encoder
        metadata = model_files.ModelMetadata(
            store_file=files.store_file,
            ranker_file=files.ranker_file,
            model=p.model_settings(),
            dimension=chunk_vectors.dimension,
            feature_names=list(FEATURE_NAMES),
            train_params=p.of_kind(Kind.TRAIN),
            n_labels=len(labels),
            n_train_docs=0 if sample is None else sample.n_selected,
            model_dir=files.model_dir,
            ranker_source=shipped.name if shipped else "",
        )
        if shipped is not None:
            _store_training_documents(target, run, chunk_vectors, p, files)
            run.abort()  # no candidates: nothing for train --cached
            _commit_shipped(target, shipped, metadata)
            return
        _match(target, run, chunk_vectors, sample, labels, p, files, search_device, timer)
        # the candidates' model, without a ranker yet (for train --cached)
        train_path = run.finish(dataclasses.asdict(metadata.replace(ranker_file="")))
        try:
            fit_and_commit(target, metadata, p, train_path, run.publish)
        except NothingToLearnError:  # the candidates are of no use: as any failure
            raise
        except Exception as err:
            # the expensive part is done: keep the candidates and the label
            # store they were collected with, for train --cached
            model_files.discard(target.datadir, files.ranker_file)
            run.publish()
            kept = True
            raise OperationFailedException(
                f"training the ranker failed: {err}. The {run.n_rows} candidates collected "
                f"from {sample.n_selected} documents are kept: once the cause is fixed, "
                f"'annif train {target.project.project_id} --cached' trains the ranker "
                "from them without embedding anything again; the previous model, if any, "
                "is still in use"
            ) from err
    except BaseException:
        if not kept:
            if run is not None:
                run.abort()
            files.discard(target.datadir)
        raise


def _decide_finetuning(target: Target, sample: Sample | None, p: EbmParams) -> EbmParams:
    """The settings with fine-tuning off where, left at its default, it
    cannot pay: too few documents to set half aside, or fewer than
    ``min_train_docs`` (the general ranker then ranks, and it belongs to the
    frozen model). ``finetune=true`` without 2 documents is an error."""
    if not p.finetune.finetune:
        return p
    n_docs = 0 if sample is None else sample.n_with_subjects
    if "finetune" in p.explicit:
        if sample is None or not sample.n_tuning:
            given = "the training corpus is empty" if sample is None else f"{n_docs} given"
            raise NotSupportedException(
                f"training backend {target.backend_id}: finetune=true needs at least 2 "
                f"documents with subjects ({given})")
        return p
    if sample is not None and sample.n_tuning and n_docs >= p.ranker.min_train_docs:
        return p
    if sample is not None:
        target.info(f"the embedding model is not fine-tuned: {n_docs} documents with "
                    f"subjects are too few (fine-tuning sets half of them, at least "
                    f"{MIN_TUNING_DOCS}, aside, and needs at least min_train_docs="
                    f"{p.ranker.min_train_docs}); finetune=true tunes it anyway")
    return p.replace(finetune=False)


def _commit_shipped(target: Target, shipped: GeneralRanker,
                    metadata: model_files.ModelMetadata) -> None:
    """Make the model, with a copy of the shipped ranker, the project's."""
    shutil.copyfile(shipped.path, os.path.join(
        target.datadir, model_files.tmp_name(metadata.ranker_file)))
    model_files.publish(target.datadir, metadata.ranker_file)
    model_files.commit(target.datadir, metadata)
    target.info("model saved")


def _shipped_ranker(target: Target, sample: Sample | None,
                    p: EbmParams) -> GeneralRanker | None:
    """The shipped general ranker where the project has too few training
    documents for its own (logged); None where it trains its own."""
    if sample is None:
        why = ("the training corpus is empty: a zero-shot model, the vocabulary's labels "
               "matched by meaning")
    elif sample.n_with_subjects < p.ranker.min_train_docs:
        why = (f"{sample.n_with_subjects} training documents are fewer than min_train_docs="
               f"{p.ranker.min_train_docs}: they join the kNN memory and priors")
    else:
        return None
    shipped = general_ranker(p.model_settings())
    target.info(f"{why}; ranking with {shipped.describe}; 'annif learn' adds documents "
                "(allow_learn=true), 'annif train' with more documents trains its own ranker")
    return shipped


def _labels(target: Target, p: EbmParams) -> LabelSet:
    project = target.project
    labels = vocabulary_labels(project.vocab.skos.graph, project.subjects,
                               project.vocab_lang, p.texts.use_altlabels)
    if len(labels) == 0:
        raise NotSupportedException(
            f"vocabulary '{project.vocab.vocab_id}' has no usable labels in "
            f"language '{project.vocab_lang}'"
        )
    return labels


def _sample(target: Target, corpus: DocumentCorpus, p: EbmParams) -> Sample:
    """The ranker's sample; documents without text are skipped (counted)."""
    chunker = Chunker(target.project.language, p.texts.max_chunk_length, p.texts.max_chunks)
    without_text = 0

    def subject_sets():
        nonlocal without_text
        for doc in read_documents(corpus):
            if chunker.has_content(doc.text):
                yield doc.subject_set
            else:
                without_text += bool(doc.subject_set)
                yield ()

    tuning_docs = (tuning_documents(p.finetune, p.embedding.static_embedding)
                   if p.finetune.finetune else 0)
    # left at its default, fine-tuning needs enough documents to be worth them
    least = 1 if "finetune" in p.explicit else MIN_TUNING_DOCS
    sample = choose_documents(subject_sets(), p.ranker.max_train_docs, tuning_docs, least)
    sample = dataclasses.replace(sample, n_without_text=without_text)
    target.info(sample.describe())
    if sample.n_selected == 0:
        if without_text:
            raise NotSupportedException(
                f"training backend {target.backend_id}: no document has both text and "
                f"subjects ({without_text} have subjects but an empty text)"
            )
        raise NotSupportedException(
            f"training backend {target.backend_id}: no document has subjects of "
            f"vocabulary '{target.project.vocab.vocab_id}' (of {sample.n_documents} "
            "documents, none names a subject URI that the vocabulary has)"
        )
    return sample


def _own_model(target: Target, corpus: DocumentCorpus, labels: LabelSet, sample: Sample,
               p: EbmParams, files: model_files.RunFiles, timer: StageTimer) -> str | None:
    """With static_embedding, finetune and/or encode_backend=onnx: the
    project's own embedding model, distilled, fine-tuned and/or exported into
    the run's folder; its path."""
    if not files.model_dir:
        return None
    check_no_own_model_with_api(p.embedding, p.finetune, p.api)
    check_encode_backend(p.embedding, p.api)
    name = files.model_dir
    path = os.path.join(target.datadir, model_files.tmp_name(name))
    if p.finetune.finetune:
        _tune(target, corpus, labels, sample, p, path, timer)
    elif p.embedding.static_embedding:
        distill_static_model(p.embedding, p.api, path)
    if p.embedding.encode_backend == "onnx":  # the tuned model, or the base one
        source, local = (path, True) if p.finetune.finetune else model_location(p.embedding.model)
        with timer.stage("export"):
            target.info(export_model(source, local, p.embedding, path))
    return model_files.publish(target.datadir, name)


def _tune(target: Target, corpus: DocumentCorpus, labels: LabelSet, sample: Sample,
          p: EbmParams, path: str, timer: StageTimer) -> None:
    """Fine-tune the model (distilled first, with static_embedding) into ``path``."""
    if p.embedding.static_embedding:  # distil, then tune the static model
        source, local = path + "-distilled", True
        distill_static_model(p.embedding, p.api, source)
    else:
        source, local = model_location(p.embedding.model)
    documents = ((doc.text, doc.subject_set)
                 for doc, keep in zip(read_documents(corpus), sample.tuning) if keep)
    pairs = tuning_pairs(documents, labels)
    target.info(f"fine-tuning {p.embedding.model} on {pairs.describe()} of "
                f"{sample.n_tuning} documents")
    corpus_labels = sorted(set(preferred_labels(labels).values()))
    with timer.stage("finetune"):
        done = tune_model(source, local, p.embedding.static_embedding, pairs, corpus_labels,
                          p.embedding, p.finetune, resolve_device(p.embedding.device)[0], path)
    if p.embedding.static_embedding:
        model_files.remove(source)
    target.info(f"fine-tuned the embedding model: {done}")


def _chunk(corpus: DocumentCorpus, sample: Sample, run: TrainingRun, language: str,
           p: EbmParams, timer: StageTimer) -> None:
    """Chunk the sampled documents (then, for kNN, further ones) into the run."""
    chunker = Chunker(language, p.texts.max_chunk_length, p.texts.max_chunks)
    passes = [("chunk train documents", sample.selected)]
    if "knn" not in disabled_families(p.features):
        passes.append(("chunk kNN documents", sample.others(p.features.knn_docs)))
    for description, chosen in passes:
        documents = (doc for doc, keep in zip(read_documents(corpus), chosen) if keep)
        with progress_bar(int(chosen.sum()), description, "doc") as bar:
            for batch in batched(documents, TRAIN_BATCH_DOCS):
                with timer.stage("chunk"):
                    chunked = chunk_texts(chunker, [doc.text for doc in batch])
                run.add_documents(chunked.doc, chunked.position, chunked.chunks,
                                  [list(doc.subject_set) for doc in batch])
                bar.update(len(batch))


def _embed(target: Target, labels: LabelSet, run: TrainingRun, p: EbmParams,
           files: model_files.RunFiles, location: str | None,
           timer: StageTimer) -> tuple[ChunkVectors, str]:
    """Embed the labels (written to the label store) and the run's chunks,
    through the cache; return the chunk vectors and where the label search runs."""
    encoder = load_encoder(p.embedding, p.api, location)
    # a model of the project's own (distilled, tuned) has vectors of its own;
    # a bare export of the base model has the engine's (embedding_space)
    own_dir = files.model_dir if p.embedding.static_embedding or p.finetune.finetune else ""
    run.cache.forget_own_models(own_dir)
    vectors, embedded = run.cache.vectors(
        labels.texts, cache.embedding_space(p.embedding, "document", own_dir),
        encoder.dimension, encoder.encode_documents, "labels", True)
    target.info(f"{len(labels)} labels: embedded {embedded} with {encoder.source}, "
                f"{len(labels) - embedded} from the embedding cache")
    project = target.project
    write_store(
        os.path.join(target.datadir, model_files.tmp_name(files.store_file)),
        labels, vectors, p.embedding.model,
        relations=vocabulary_relations(project.vocab.skos.graph, project.subjects),
        hnsw=p.retrieval.hnsw, hnsw_m=p.retrieval.hnsw_m,
        hnsw_ef_construction=p.retrieval.hnsw_ef_construction,
        threads=p.general.duckdb_threads,
    )
    model_files.publish(target.datadir, files.store_file)
    del vectors
    with timer.stage("embed"):
        chunk_vectors = run.embed_chunks(
            cache.embedding_space(p.embedding, "query", own_dir),
            encoder.dimension, encoder.encode_queries, True)
    if run.n_docs:
        target.info(f"embedded {chunk_vectors.embedded} new chunks (the rest from the "
                    "embedding cache)")
    return chunk_vectors, encoder.search_device


def _match(target: Target, run: TrainingRun, chunk_vectors: ChunkVectors, sample: Sample,
           labels: LabelSet, p: EbmParams, files: model_files.RunFiles, search_device: str,
           timer: StageTimer) -> None:
    """Store the training documents for kNN and priors, then the sample's
    candidates (the sample's documents come first in the run)."""
    language = target.project.language
    store_path = os.path.join(target.datadir, files.store_file)
    training = _store_training_documents(target, run, chunk_vectors, p, files)
    store = LabelStore(store_path, p.general.duckdb_threads)
    r = p.retrieval
    search = label_search(store, r.search, search_device, r.search_precision, r.ef_search)
    lexicon = (Lexicon(labels.texts, labels.concept_ids, labels.is_pref, language)
               if "lexical" not in disabled_families(p.features) else None)
    matcher = Matcher(store, search, r.candidates_per_chunk, p.features, training, timer,
                      lexicon)
    with progress_bar(sample.n_selected, "train candidates", "doc") as bar:
        for first, doc, position, n_chunks, vectors in chunk_vectors.batches(
                TRAIN_BATCH_DOCS, sample.n_selected):
            own_docs = np.arange(first, first + len(n_chunks))
            chunks = chunk_vectors.texts(first, first + len(n_chunks))
            candidates = matcher.match(doc, position, n_chunks, vectors, chunks, own_docs)
            run.add_candidates(first, first + len(n_chunks), candidates)
            del candidates, vectors
            return_free_heap()
            bar.update(len(n_chunks))
    target.info(f"collected {run.n_rows} candidates from {sample.n_selected} documents; "
                f"stage seconds: {timer.rounded()}")


def _store_training_documents(target: Target, run: TrainingRun, chunk_vectors: ChunkVectors,
                              p: EbmParams, files: model_files.RunFiles
                              ) -> TrainingDocuments | None:
    """Write the run's documents into the label store for kNN and priors
    (where the features use them and there are any); return them."""
    if not run.n_docs or not uses_training_documents(p.features):
        return None
    training = _training_documents(run, chunk_vectors)
    write_training_documents(os.path.join(target.datadir, files.store_file), training,
                             p.general.duckdb_threads, run.openings())
    target.info(f"stored {run.n_docs} training documents for kNN and priors")
    return training


def _training_documents(run: TrainingRun, chunk_vectors: ChunkVectors) -> TrainingDocuments:
    """The run's documents as pooled chunk vectors with their gold subjects."""
    vectors = np.zeros((run.n_docs, chunk_vectors.dimension), dtype=VECTOR_DTYPE)
    for first, doc, _, n_chunks, batch in chunk_vectors.batches(TRAIN_BATCH_DOCS, run.n_docs):
        vectors[first : first + len(n_chunks)] = pool_documents(doc, batch, len(n_chunks))
    return TrainingDocuments.from_pairs(vectors, *run.gold_pairs())
