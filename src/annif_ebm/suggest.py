"""Suggesting: a trained model loaded once, and a batch of texts -> Annif's
suggestions (chunk -> encode -> match -> rank -> best ``limit`` per text)."""

from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np
import polars as pl
from annif.exception import OperationFailedException
from annif.suggestion import SuggestionBatch
from scipy.sparse import csr_array

from . import model_files
from .chunking import Chunker, chunk_texts
from .embedding import Encoder
from .features import disabled_families, feature_matrix, uses_training_documents
from .knn import TrainingDocuments
from .lexical import Lexicon
from .matcher import Matcher
from .params import EbmParams, FeatureSettings, SearchSettings
from .ranker import Ranker
from .search import LabelSearch, label_search
from .store import LabelStore
from .timing import StageTimer


@dataclasses.dataclass
class LoadedModel:
    """The files of a trained model, each read once; shared by the threads
    of a process and inherited by forked ``--jobs`` workers."""

    metadata: model_files.ModelMetadata
    store: LabelStore
    ranker_path: str
    _ranker: tuple[int, Ranker] | None = None
    _searches: dict = dataclasses.field(default_factory=dict)
    _lexicons: dict = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def ranker(self) -> Ranker:
        """The ranker, loaded once per process on first use: XGBoost's OpenMP
        pool, once started, hangs in processes forked later (annif eval --jobs),
        so nothing touches XGBoost before the first suggest."""
        with self._lock:
            if self._ranker is None or self._ranker[0] != os.getpid():
                self._ranker = (os.getpid(), Ranker.load(self.ranker_path))
            return self._ranker[1]

    def search(self, settings: SearchSettings, device: str) -> LabelSearch:
        """The label search for these settings on ``device`` (built once)."""
        key = (settings.search, device, settings.search_precision, settings.ef_search)
        with self._lock:
            if key not in self._searches:
                self._searches[key] = label_search(
                    self.store, settings.search, device, settings.search_precision,
                    settings.ef_search)
            return self._searches[key]

    def lexicon(self, features: FeatureSettings, language: str) -> Lexicon | None:
        """The labels as words in ``language`` (built once), if the features use them."""
        if "lexical" in disabled_families(features):
            return None
        with self._lock:
            if language not in self._lexicons:
                self._lexicons[language] = Lexicon.of_store(self.store, language)
            return self._lexicons[language]

    def training_documents(self, features: FeatureSettings) -> TrainingDocuments | None:
        """The stored training documents, if the features use them."""
        return self.store.training_documents() if uses_training_documents(features) else None


def load_model(datadir: str, backend_id: str, threads: int = 0) -> LoadedModel:
    """The project's model; a missing or inconsistent file is a clear error."""
    metadata = model_files.load_metadata(datadir, backend_id)
    store_path = os.path.join(datadir, metadata.store_file)
    ranker_path = os.path.join(datadir, metadata.ranker_file)
    paths = [store_path, ranker_path]
    if metadata.model_dir:
        paths.append(os.path.join(datadir, metadata.model_dir))
    for path in paths:
        if not os.path.exists(path):
            raise OperationFailedException(f"model file {path} is missing; retrain the project")
    store = LabelStore(store_path, threads)
    if store.dimension != metadata.dimension:
        raise OperationFailedException(
            f"label store {store_path} has {store.dimension} dimensions, the "
            f"model metadata says {metadata.dimension}; retrain the project"
        )
    return LoadedModel(metadata, store, ranker_path)


def check_dimension(encoder: Encoder, store: LabelStore, api: bool) -> None:
    if encoder.dimension != store.dimension:
        raise OperationFailedException(
            f"{encoder.source} gives {encoder.dimension} dimensions, the label store "
            f"has {store.dimension}"
            + ("; the server must serve the model the project was trained with" if api else "")
        )


def candidates(texts: list[str], chunker: Chunker, encoder: Encoder, matcher: Matcher,
               timer: StageTimer) -> pl.DataFrame:
    """Chunk, encode and match ``texts``; ``doc`` is the index into them."""
    with timer.stage("chunk"):
        chunked = chunk_texts(chunker, texts)
    with timer.stage("embed"):
        vectors = encoder.encode_queries(chunked.chunks)
    return matcher.match(chunked.doc, chunked.position, chunked.n_chunks, vectors,
                         chunked.chunks)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """What a suggest call runs with: ``active`` says which subjects of the
    vocabulary may be suggested (by subject id)."""

    chunker: Chunker
    model: LoadedModel
    encoder: Encoder
    params: EbmParams
    active: np.ndarray

    def matcher(self, timer: StageTimer) -> Matcher:
        p, model, encoder = self.params, self.model, self.encoder
        check_dimension(encoder, model.store, bool(p.api.api_url))
        return Matcher(model.store, model.search(p.retrieval, encoder.search_device),
                       p.retrieval.candidates_per_chunk, p.features,
                       model.training_documents(p.features), timer,
                       model.lexicon(p.features, self.chunker.language))

    def rank(self, found: pl.DataFrame, n_texts: int) -> tuple[np.ndarray, SuggestionBatch]:
        """The ranker's score of every candidate and the best ``limit`` per text."""
        p = self.params
        scores = self.model.ranker.predict(feature_matrix(found), p.ranker.xgb_jobs,
                                           self.unseen_boosts(found))
        return scores, best_suggestions(found, scores, n_texts, self.active, p.general.limit)

    def unseen_boosts(self, found: pl.DataFrame) -> np.ndarray | None:
        """The log-odds added to each candidate: ``unseen_boost`` x the
        training documents' unseen share for a subject that no training
        document has, else 0; None without a boost or stored training
        documents (kNN and priors off, or none given)."""
        boost = self.params.ranker.unseen_boost
        training = self.model.training_documents(self.params.features)
        if not boost or training is None or not training.unseen_share:
            return None
        unseen = training.unseen(found["concept_id"].to_numpy())
        return np.where(unseen, boost * training.unseen_share, 0.0)


def suggest(texts: list[str], pipeline: Pipeline, timer: StageTimer) -> SuggestionBatch:
    """Suggestions for a batch of texts."""
    found = candidates(texts, pipeline.chunker, pipeline.encoder, pipeline.matcher(timer), timer)
    with timer.stage("rank"):
        return pipeline.rank(found, len(texts))[1]


def active_subjects(subjects) -> np.ndarray:
    """Which subject ids of Annif's subject index are not deprecated."""
    active = np.zeros(len(subjects), dtype=bool)
    active[[subject_id for subject_id, _ in subjects.active]] = True
    return active


def best_suggestions(candidates: pl.DataFrame, scores: np.ndarray, n_docs: int,
                     active: np.ndarray, limit: int) -> SuggestionBatch:
    """Top ``limit`` scored active concepts per document; rows follow ``doc``."""
    n_subjects = len(active)
    concept = candidates["concept_id"].to_numpy()
    keep = concept < n_subjects  # vocabulary may have changed since training
    keep[keep] = active[concept[keep]]
    top = (
        candidates.select("doc", "concept_id")
        .with_columns(score=pl.Series(scores, dtype=pl.Float32))
        .filter(pl.Series(keep) & (pl.col("score") > 0))
        .filter(pl.col("score").rank("ordinal", descending=True).over("doc") <= limit)
    )
    array = csr_array(
        (np.minimum(top["score"].to_numpy(), 1.0),
         (top["doc"].to_numpy(), top["concept_id"].to_numpy())),
        shape=(n_docs, n_subjects),
        dtype=np.float32,
    )
    return SuggestionBatch(array)
