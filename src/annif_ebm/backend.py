"""The Annif backend: translates between Annif and the EBM pipeline."""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import functools
import gc
import itertools
import json
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from scipy.sparse import csr_array
from annif.backend.backend import AnnifBackend
from annif.exception import (NotInitializedException, NotSupportedException,
                             OperationFailedException)
from annif.suggestion import SuggestionBatch

from . import cache, model_files
from .chunking import Chunker
from .embedding import Embedder, distill_static_model
from .features import FEATURE_NAMES, feature_matrix
from .knn import VECTOR_DTYPE, TrainingDocuments, pool_documents
from .labels import vocabulary_labels, vocabulary_relations
from .params import EbmParams, Kind
from .pipeline import CandidateGenerator
from .progress import progress_bar
from .ranker import NothingToLearnError, Ranker
from .sampling import choose_documents
from .store import LabelStore, write_store
from .training_data import (TrainingRun, cached_training_data, candidate_batches,
                            stored_metadata)

if TYPE_CHECKING:
    from annif.corpus import Document, DocumentCorpus

TRAIN_BATCH_DOCS = 256


def _documents(corpus: DocumentCorpus):
    """The corpus' documents; a file that is not UTF-8 is a clear error (Annif
    reads corpora strictly as UTF-8)."""
    try:
        yield from corpus.documents
    except UnicodeDecodeError as err:
        raise OperationFailedException(
            f"the training corpus is not valid UTF-8 ({err}); clean it, e.g. with "
            "'iconv -f utf-8 -t utf-8 -c'"
        ) from None


def _batched(iterable, size: int):
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@functools.cache
def _libc_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _return_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc only). Batches of
    differently sized arrays leave the heap fragmented: without this the
    candidate phase held about 200 MB more at 100k training documents."""
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


def _embedder_key(params: EbmParams) -> str:
    """What an Embedder depends on: model settings and where/how it runs."""
    names = [f.name for f in params.specs(Kind.MODEL)] + [
        "device", "dtype", "batch_size", "torch_threads", "trust_remote_code",
        "model_kwargs", "api_url", "api_model", "api_key_env", "api_batch_size",
        "api_concurrency", "api_timeout", "api_retries",
    ]
    return json.dumps({name: getattr(params, name) for name in names}, sort_keys=True)


def _embedding_space(params: EbmParams, role: str, static_dir: str = "") -> dict:
    """What a text's vector depends on: the model (each distilled static model
    is its own), its dimensions and the prompt of the role, ``query``
    (chunks) or ``document`` (labels)."""
    return {
        "role": role,
        "model": params.model,
        "static_model": static_dir,
        "truncate_dim": params.truncate_dim,
        "prompt": getattr(params, f"{role}_prompt"),
        "prompt_name": getattr(params, f"{role}_prompt_name"),
    }


@dataclasses.dataclass
class _LoadedModel:
    metadata: model_files.ModelMetadata
    store: LabelStore
    ranker_path: str
    _ranker: tuple[int, Ranker] | None = None

    @property
    def ranker(self) -> Ranker:
        """The ranker, loaded once per process on first use: XGBoost's OpenMP
        pool, once started, hangs in processes forked later (annif eval --jobs),
        so nothing touches XGBoost before the first suggest."""
        if self._ranker is None or self._ranker[0] != os.getpid():
            self._ranker = (os.getpid(), Ranker.load(self.ranker_path))
        return self._ranker[1]


class EbmBackend(AnnifBackend):
    """Embedding-Based Matching: nearest vocabulary labels of text chunks,
    ranked by a gradient-boosted model."""

    name = "ebm"

    def __init__(self, backend_id, config_params, project) -> None:
        super().__init__(backend_id, config_params, project)
        self._lock = threading.RLock()
        self._model: _LoadedModel | None = None
        self._embedder: Embedder | None = None
        self._embedder_key: str | None = None
        self._active: np.ndarray | None = None
        # seconds spent per pipeline stage by suggest calls, for benchmarks
        self.stage_seconds: collections.Counter = collections.Counter()

    # ---- parameters ----

    def _parse(self, params: dict[str, Any], jobs: int = 0) -> tuple[EbmParams, set]:
        return EbmParams.parse(params, jobs)

    def _embedder_for(self, params: EbmParams, location: str | None = None) -> Embedder:
        """The embedder for these settings (kept while they stay the same);
        ``location``: the project's distilled static model, if any."""
        key = _embedder_key(params) + str(location)
        with self._lock:
            if self._embedder is None or self._embedder_key != key:
                self._embedder = Embedder(params, location)
                self._embedder_key = key
            return self._embedder

    def _forget_embedder(self) -> None:
        """Drop the loaded embedding model (loaded again on next use)."""
        with self._lock:
            self._embedder = self._embedder_key = None
        gc.collect()

    # ---- loading ----

    def _load_model(self) -> _LoadedModel:
        with self._lock:
            if self._model is None:
                metadata = model_files.load_metadata(self.datadir, self.backend_id)
                store_path = os.path.join(self.datadir, metadata.store_file)
                ranker_path = os.path.join(self.datadir, metadata.ranker_file)
                paths = [store_path, ranker_path]
                if metadata.static_model_dir:
                    paths.append(os.path.join(self.datadir, metadata.static_model_dir))
                for path in paths:
                    if not os.path.exists(path):
                        raise OperationFailedException(
                            f"model file {path} is missing; retrain the project"
                        )
                params, _ = self._parse(self.params)
                store = LabelStore(store_path, params.duckdb_threads)
                if store.dimension != metadata.dimension:
                    raise OperationFailedException(
                        f"label store {store_path} has {store.dimension} dimensions, the "
                        f"model metadata says {metadata.dimension}; retrain the project"
                    )
                self._warn_about_language(params.with_stored_model(metadata.model, set()))
                self._model = _LoadedModel(metadata, store, ranker_path)
            return self._model

    def _warn_about_language(self, params: EbmParams) -> None:
        """Warn when the project's language is not one the model was made for."""
        language = self.project.language.lower().split("-")[0]
        languages = params.languages()
        if languages and language not in languages:
            self.warning(
                f"the project's language '{self.project.language}' is not one the embedding "
                f"model {params.model} was made for ({', '.join(languages)}): expect poor "
                "suggestions; use a model for this language (docs/models.md), or set "
                "model_languages if the model does cover it"
            )

    def initialize(self, parallel: bool = False) -> None:
        """Load the model files; with exact search also the label matrix, and
        the training documents, which forked ``--jobs`` workers then share.
        The embedding model loads on first use, with that call's device."""
        model = self._load_model()
        params, _ = self._parse(self.params)
        if params.search == "exact":
            # float32 only, read without torch's thread pool: a bfloat16 copy
            # made here would start OpenMP threads, and forked --jobs workers
            # then hang in their first torch operation (each makes its own)
            model.store.label_matrix()
        model.store.training_documents()

    # ---- training ----

    def _train(self, corpus: DocumentCorpus, params: dict[str, Any], jobs: int = 0) -> None:
        p, explicit = self._parse(params, jobs)
        try:
            self._remove_leftovers()
            if corpus == "cached":
                self._train_cached(p, explicit)
            else:
                self._train_full(corpus, p)
        except OSError as err:  # a read-only or full disk, a permission
            where = f" {err.filename}" if err.filename else ""
            raise OperationFailedException(
                f"training {self.backend_id} failed writing{where}: "
                f"{err.strerror or err}; the project's data directory must be writable "
                "with room for the model"
            ) from err

    def _remove_leftovers(self) -> None:
        """Remove what earlier runs left: temporary files, and model files that
        neither the model nor the training data (``--cached``) names."""
        named = None
        try:
            metadata = model_files.load_metadata(self.datadir, self.backend_id)
            named = {metadata.store_file, metadata.ranker_file, metadata.static_model_dir}
        except NotInitializedException:
            named = set()  # never trained
        except OperationFailedException:
            pass  # unreadable metadata: keep the files it may name
        pending = stored_metadata(cached_training_data(self.datadir))
        if named is not None and pending:
            named |= {pending.get("store_file"), pending.get("static_model_dir")}
        leftovers = model_files.remove_leftovers(self.datadir, named)
        if leftovers:
            self.warning(f"removed files of an interrupted training run: {', '.join(leftovers)}")

    def _train_full(self, corpus: DocumentCorpus, p: EbmParams) -> None:
        if next(_documents(corpus), None) is None:
            raise NotSupportedException(
                f"training backend {self.backend_id} with no documents"
            )
        self._warn_about_language(p)
        labels = vocabulary_labels(
            self.project.vocab.skos.graph,
            self.project.subjects,
            self.project.vocab_lang,
            p.use_altlabels,
        )
        if len(labels) == 0:
            raise NotSupportedException(
                f"vocabulary '{self.project.vocab.vocab_id}' has no usable labels in "
                f"language '{self.project.vocab_lang}'"
            )
        sample = self._choose_documents(corpus, p)
        store_file = model_files.new_file_name("labels", "duckdb")
        ranker_file = model_files.new_file_name("ranker", "ubj")
        static_dir = model_files.new_file_name("static", "model") if p.static_embedding else ""
        run = None
        try:
            embedder = self._train_embedder(p, static_dir)
            run = TrainingRun(self.datadir, p.duckdb_threads)
            store = self._build_store(labels, embedder, run, p, store_file, static_dir)
            generator = CandidateGenerator(self.project.language, embedder, store, p)
            del embedder  # the generator's until the chunks are embedded
            self._collect_training_data(corpus, sample, generator, run, p, static_dir)
            metadata = model_files.ModelMetadata(
                store_file=store_file,
                ranker_file="",  # named when the ranker is saved
                model=p.model_settings(),
                dimension=store.dimension,
                feature_names=list(FEATURE_NAMES),
                train_params=p.of_kind(Kind.TRAIN),
                n_labels=len(labels),
                n_train_docs=sample.n_selected,
                static_model_dir=static_dir,
            )
            train_path = run.finish(dataclasses.asdict(metadata))
            # the ranker trains from disk: let the label matrix and the kNN
            # vectors go first (they would add to its peak)
            del generator, store
        except BaseException:
            if run is not None:
                run.abort()
            model_files.discard(self.datadir, store_file, ranker_file, static_dir)
            raise
        try:
            self._fit_and_commit(metadata.replace(ranker_file=ranker_file), p, train_path,
                                 run.publish)
        except NothingToLearnError:  # the candidates are of no use: as any failure
            run.abort()
            model_files.discard(self.datadir, store_file, ranker_file, static_dir)
            raise
        except Exception as err:
            # the expensive part is done: keep the candidates and the label
            # store they were collected with, for train --cached
            model_files.discard(self.datadir, ranker_file)
            run.publish()
            raise OperationFailedException(
                f"training the ranker failed: {err}. The {run.n_rows} candidates collected "
                f"from {sample.n_selected} documents are kept: once the cause is fixed, "
                f"'annif train {self.project.project_id} --cached' trains the ranker from "
                "them without embedding anything again; the previous model, if any, is "
                "still in use"
            ) from err
        except BaseException:
            run.abort()
            model_files.discard(self.datadir, store_file, ranker_file, static_dir)
            raise

    def _choose_documents(self, corpus: DocumentCorpus, p: EbmParams):
        """The ranker's sample; documents without text are skipped (counted)."""
        chunker = Chunker(self.project.language, p.max_chunk_length, p.max_chunks)
        without_text = 0

        def subject_sets():
            nonlocal without_text
            for doc in _documents(corpus):
                if chunker.has_content(doc.text):
                    yield doc.subject_set
                else:
                    without_text += bool(doc.subject_set)
                    yield ()

        sample = choose_documents(subject_sets(), p.max_train_docs)
        sample = dataclasses.replace(sample, n_without_text=without_text)
        self.info(sample.describe())
        if sample.n_selected == 0:
            if without_text:
                raise NotSupportedException(
                    f"training backend {self.backend_id}: no document has both text and "
                    f"subjects ({without_text} have subjects but an empty text)"
                )
            raise NotSupportedException(
                f"training backend {self.backend_id}: no document has subjects of "
                f"vocabulary '{self.project.vocab.vocab_id}' (of {sample.n_documents} "
                "documents, none names a subject URI that the vocabulary has)"
            )
        return sample

    def _train_embedder(self, p: EbmParams, static_dir: str) -> Embedder:
        """The embedder for training; with static_embedding, first distil the
        model into the project's ``static_dir``."""
        if not static_dir:
            return self._embedder_for(p)
        distill_static_model(p, os.path.join(self.datadir, model_files.tmp_name(static_dir)))
        return self._embedder_for(p, model_files.publish(self.datadir, static_dir))

    def _build_store(self, labels, embedder: Embedder, run: TrainingRun, p: EbmParams,
                     store_file: str, static_dir: str) -> LabelStore:
        """Embed the labels (through the cache) and write the label store."""
        vectors, embedded = run.embed_labels(
            labels.texts, cache.space_table(_embedding_space(p, "document", static_dir)),
            embedder.dimension, embedder.encode_documents, True,
        )
        self.info(f"{len(labels)} labels: embedded {embedded} with {p.model}, "
                  f"{len(labels) - embedded} from the embedding cache")
        write_store(
            os.path.join(self.datadir, model_files.tmp_name(store_file)),
            labels, vectors, p.model,
            relations=vocabulary_relations(self.project.vocab.skos.graph, self.project.subjects),
            hnsw=p.hnsw, hnsw_m=p.hnsw_m,
            hnsw_ef_construction=p.hnsw_ef_construction,
            threads=p.duckdb_threads,
        )
        return LabelStore(model_files.publish(self.datadir, store_file), p.duckdb_threads)

    def _collect_training_data(self, corpus, sample, generator: CandidateGenerator,
                               run: TrainingRun, p: EbmParams, static_dir: str) -> None:
        """Chunk the sampled documents (then, for kNN, further ones), embed new
        chunks, store the training documents and the sample's candidates."""
        disabled = p.disabled_feature_families()
        passes = [("chunk train documents", sample.selected)]
        if "knn" not in disabled:
            passes.append(("chunk kNN documents", sample.others(p.knn_docs)))
        for description, chosen in passes:
            documents = (doc for doc, keep in zip(_documents(corpus), chosen) if keep)
            with progress_bar(int(chosen.sum()), description, "doc") as bar:
                for batch in _batched(documents, TRAIN_BATCH_DOCS):
                    chunked = generator.chunk([doc.text for doc in batch])
                    run.add_documents(chunked.doc, chunked.position, chunked.chunks,
                                      [list(doc.subject_set) for doc in batch])
                    bar.update(len(batch))
        embedder = generator.embedder
        with generator.stage("embed"):
            embedded = run.embed_chunks(
                cache.space_table(_embedding_space(p, "query", static_dir)), embedder.dimension,
                embedder.encode_queries, True,
            )
        self.info(f"embedded {embedded} new chunks (the rest from the embedding cache)")
        # the rest needs only the stored vectors: the embedding model would
        # add to the peak of the candidate phase
        del embedder
        generator.drop_embedder()
        self._forget_embedder()
        _return_free_heap()
        if "knn" not in disabled or "prior" not in disabled:
            generator.store.add_training_documents(
                self._training_documents(run, generator.store.dimension))
            self.info(f"stored {run.n_docs} training documents for kNN and priors")
        # the sample's documents come first in the run: 0 .. n_selected - 1
        with progress_bar(sample.n_selected, "train candidates", "doc") as bar:
            for first, doc, position, n_chunks, vectors in run.chunk_batches(
                    TRAIN_BATCH_DOCS, sample.n_selected):
                own_docs = np.arange(first, first + len(n_chunks))
                candidates = generator.candidates_from_vectors(
                    doc, position, n_chunks, vectors, own_docs)
                run.add_candidates(first, first + len(n_chunks), candidates)
                del candidates, vectors
                _return_free_heap()
                bar.update(len(n_chunks))
        self.info(
            f"collected {run.n_rows} candidates from {sample.n_selected} documents; "
            f"stage seconds: { {k: round(v, 2) for k, v in generator.stage_seconds.items()} }"
        )

    @staticmethod
    def _training_documents(run: TrainingRun, dimension: int) -> TrainingDocuments:
        """The run's documents as pooled chunk vectors with their gold subjects."""
        vectors = np.zeros((run.n_docs, dimension), dtype=VECTOR_DTYPE)
        for first, doc, _, n_chunks, chunk_vectors in run.chunk_batches(TRAIN_BATCH_DOCS, run.n_docs):
            vectors[first : first + len(n_chunks)] = pool_documents(doc, chunk_vectors, len(n_chunks))
        return TrainingDocuments.from_pairs(vectors, *run.gold_pairs())

    def _train_cached(self, p: EbmParams, explicit: set) -> None:
        self.info("reusing cached training candidates from previous run")
        path = cached_training_data(self.datadir)
        pending = stored_metadata(path)
        if pending is None:  # data of an older version: the model's own
            metadata = model_files.load_metadata(self.datadir, self.backend_id)
        else:  # the model the candidates were collected for
            metadata = model_files.metadata_from_dict(pending, path, pending=True)
            for name in filter(None, (metadata.store_file, metadata.static_model_dir)):
                if not os.path.exists(os.path.join(self.datadir, name)):
                    raise OperationFailedException(
                        f"{name}, which the cached training data {path} was collected "
                        "with, is missing; train without --cached"
                    )
        p = p.with_stored_model(metadata.model, explicit)
        ranker_file = model_files.new_file_name("ranker", "ubj")
        try:
            self._fit_and_commit(
                metadata.replace(ranker_file=ranker_file, train_params=p.of_kind(Kind.TRAIN)),
                p, path, cached=True,
            )
        except BaseException:
            model_files.discard(self.datadir, ranker_file)
            raise

    def _fit_and_commit(self, metadata: model_files.ModelMetadata, p: EbmParams,
                        train_path: str, publish_training_data=None,
                        cached: bool = False) -> None:
        """Train the ranker on the candidates in ``train_path``, then make the
        new model (and its training data) the project's."""
        self.info("training the ranker")
        ranker = Ranker.train(
            lambda: candidate_batches(train_path, self.backend_id, self.datadir, cached),
            p, self.datadir,
        )
        ranker.save(os.path.join(self.datadir, model_files.tmp_name(metadata.ranker_file)))
        model_files.publish(self.datadir, metadata.ranker_file)
        if publish_training_data is not None:
            publish_training_data()
        model_files.commit(self.datadir, metadata)
        with self._lock:
            self._model = None
        self.info("model saved")

    # ---- suggesting ----

    def _active_subjects(self) -> np.ndarray:
        if self._active is None:
            active = np.zeros(len(self.project.subjects), dtype=bool)
            active[[subject_id for subject_id, _ in self.project.subjects.active]] = True
            self._active = active
        return self._active

    def _suggest_batch(self, documents: list[Document], params: dict[str, Any]) -> SuggestionBatch:
        model = self._load_model()
        p, explicit = self._parse(params)
        p = p.with_stored_model(model.metadata.model, explicit)
        static_dir = model.metadata.static_model_dir
        embedder = self._embedder_for(
            p, os.path.join(self.datadir, static_dir) if static_dir else None
        )
        if embedder.dimension != model.store.dimension:
            raise OperationFailedException(
                f"{embedder.source} gives {embedder.dimension} dimensions, the label store "
                f"has {model.store.dimension}"
                + ("; the server must serve the model the project was trained with"
                   if p.api_url else "")
            )
        generator = CandidateGenerator(self.project.language, embedder, model.store, p)
        candidates = generator.candidates([doc.text for doc in documents])
        with generator.stage("rank"):
            with self._lock:
                ranker = model.ranker
            scores = ranker.predict(feature_matrix(candidates), p.xgb_jobs)
            batch = self._to_suggestion_batch(candidates, scores, len(documents), p.limit)
        with self._lock:
            self.stage_seconds.update(generator.stage_seconds)
        return batch

    def _to_suggestion_batch(self, candidates: pl.DataFrame, scores: np.ndarray,
                             n_docs: int, limit: int) -> SuggestionBatch:
        """Top ``limit`` scored concepts per document; rows follow ``doc``."""
        n_subjects = len(self.project.subjects)
        concept = candidates["concept_id"].to_numpy()
        keep = concept < n_subjects  # vocabulary may have changed since training
        keep[keep] = self._active_subjects()[concept[keep]]
        top = (
            candidates.select("doc", "concept_id")
            .with_columns(score=pl.Series(scores, dtype=pl.Float32))
            .filter(pl.Series(keep) & (pl.col("score") > 0))
            .filter(pl.col("score").rank("ordinal", descending=True).over("doc") <= limit)
        )
        array = csr_array(
            (
                np.minimum(top["score"].to_numpy(), 1.0),
                (top["doc"].to_numpy(), top["concept_id"].to_numpy()),
            ),
            shape=(n_docs, n_subjects),
            dtype=np.float32,
        )
        return SuggestionBatch(array)

