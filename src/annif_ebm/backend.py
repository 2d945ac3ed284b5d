"""The Annif backend: translates between Annif and the EBM modules.

It validates, calls and commits; training runs in :mod:`annif_ebm.training`
(and :mod:`annif_ebm.fit`), ``annif learn`` in :mod:`annif_ebm.learning`,
suggesting in :mod:`annif_ebm.suggest`.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import TYPE_CHECKING, Any

from annif.backend.backend import AnnifLearningBackend
from annif.exception import OperationFailedException
from annif.suggestion import SuggestionBatch

from . import explain, fit, learning, model_files, suggest, training
from .chunking import Chunker
from .embedding import Encoder, encoder_key, load_encoder
from .params import EbmParams
from .timing import StageTimer

if TYPE_CHECKING:
    from annif.corpus import Document, DocumentCorpus

    from .explain import Explanation


class EbmBackend(AnnifLearningBackend):
    """Embedding-Based Matching: nearest vocabulary labels of text chunks,
    ranked by a gradient-boosted model."""

    name = "ebm"

    def __init__(self, backend_id, config_params, project) -> None:
        super().__init__(backend_id, config_params, project)
        self._lock = threading.RLock()
        self._model: suggest.LoadedModel | None = None
        self._model_stamp = None  # of the metadata file the model was loaded from
        self._encoder: tuple[str, Encoder] | None = None  # (key, encoder)
        self._chunker: Chunker | None = None
        self._active = None
        # seconds spent per pipeline stage by suggest calls, for benchmarks
        self.stage_seconds: collections.Counter = collections.Counter()

    def _parse(self, params: dict[str, Any], jobs: int = 0) -> EbmParams:
        return EbmParams.parse(params, jobs)

    def _encoder_for(self, params: EbmParams, location: str | None = None) -> Encoder:
        """The encoder for these settings (kept while they stay the same);
        ``location``: the project's own model (distilled/tuned), if any."""
        key = encoder_key(params.embedding, params.api, location)
        with self._lock:
            if self._encoder is None or self._encoder[0] != key:
                self._encoder = None  # the old model goes before the new one loads
                self._encoder = (key, load_encoder(params.embedding, params.api, location))
            return self._encoder[1]

    def _chunker_for(self, params: EbmParams) -> Chunker:
        texts = params.texts
        with self._lock:
            chunker = self._chunker
            if (chunker is None or chunker.max_chunk_length != texts.max_chunk_length
                    or chunker.max_chunks != texts.max_chunks):
                chunker = self._chunker = Chunker(self.project.language,
                                                  texts.max_chunk_length, texts.max_chunks)
            return chunker

    # ---- loading ----

    def _load_model(self) -> suggest.LoadedModel:
        """The model, loaded again when another process (train, learn) has
        committed a new one since."""
        stamp = model_files.metadata_stamp(self.datadir)
        with self._lock:
            if self._model is None or self._model_stamp != stamp:
                self._model = None
                params = self._parse(self.params)
                model = suggest.load_model(self.datadir, self.backend_id,
                                           params.general.duckdb_threads)
                # a conflicting setting is an error of the suggest call, not of loading
                stored = params.with_stored_model(model.metadata.model, check=False)
                if warning := stored.language_warning(self.project.language):
                    self.warning(warning)
                self._model, self._model_stamp = model, stamp
            return self._model

    def initialize(self, parallel: bool = False) -> None:
        """Load the model files, with the label vectors, the training
        documents and the labels as words, which forked ``--jobs`` workers
        then share. The embedding model loads on first use, with that call's
        device."""
        model = self._load_model()
        params = self._parse(self.params).with_stored_model(model.metadata.model, check=False)
        if params.retrieval.search == "exact":
            model.store.label_vectors()
        model.store.training_documents()
        model.lexicon(params.features, self.project.language)

    # ---- training ----

    def _target(self) -> training.Target:
        return training.Target(self.project, self.datadir, self.backend_id,
                               self.info, self.warning)

    def _train(self, corpus: DocumentCorpus, params: dict[str, Any], jobs: int = 0) -> None:
        p = self._parse(params, jobs)
        target = self._target()
        try:
            training.remove_leftovers(target)
            if corpus == "cached":
                fit.train_cached(target, p)
            else:
                training.train(target, corpus, p)
        except OSError as err:  # a read-only or full disk, a permission
            where = f" {err.filename}" if err.filename else ""
            raise OperationFailedException(
                f"training {self.backend_id} failed writing{where}: "
                f"{err.strerror or err}; the project's data directory must be writable "
                "with room for the model"
            ) from err
        with self._lock:
            self._model = None

    # ---- learning (annif learn; the project needs allow_learn=true) ----

    def _learn(self, corpus: DocumentCorpus, params: dict[str, Any]) -> None:
        model = self._load_model()
        p = self._parse(params).with_stored_model(model.metadata.model)
        target = self._target()
        training.remove_leftovers(target)
        own_dir = model.metadata.model_dir
        encoder = self._encoder_for(p, os.path.join(self.datadir, own_dir) if own_dir else None)
        suggest.check_dimension(encoder, model.store, bool(p.api.api_url))
        learning.learn(target, corpus, p, model.metadata, encoder, self._chunker_for(p))
        with self._lock:
            self._model = None  # the next suggest reads the new store

    # ---- suggesting ----

    def _pipeline(self, params: dict[str, Any]) -> suggest.Pipeline:
        model = self._load_model()
        p = self._parse(params).with_stored_model(model.metadata.model)
        own_dir = model.metadata.model_dir
        encoder = self._encoder_for(p, os.path.join(self.datadir, own_dir) if own_dir else None)
        if self._active is None:
            self._active = suggest.active_subjects(self.project.subjects)
        return suggest.Pipeline(self._chunker_for(p), model, encoder, p, self._active)

    def _suggest_batch(self, documents: list[Document], params: dict[str, Any]) -> SuggestionBatch:
        timer = StageTimer()
        batch = suggest.suggest([doc.text for doc in documents], self._pipeline(params), timer)
        with self._lock:
            self.stage_seconds.update(timer.seconds)
        return batch

    def explain(self, documents: list[Document], params: dict[str, Any] | None = None,
                limit: int = 10, language: str | None = None) -> list[Explanation]:
        """What :meth:`suggest` gives for ``documents`` (best ``limit``),
        each suggestion with its evidence (:mod:`annif_ebm.explain`)."""
        pipeline = self._pipeline(self._get_backend_params(params))
        return explain.explain_texts(
            [doc.text for doc in documents], pipeline, limit, self.project.subjects,
            language or self.project.vocab_lang)
