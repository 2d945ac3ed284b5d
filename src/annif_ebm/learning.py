"""``annif learn``: new documents with their gold subjects join the kNN memory
and the subject priors at once, without embedding the vocabulary again or
retraining the ranker; the next suggest sees them.

A learn run is atomic like a training run: it works on a copy of the label
store (``tmp-ebm-labels-*``), adds the documents a batch at a time (each
embedded as training documents are: its chunk vectors pooled), and only then
makes the copy the model's store (rename, then the metadata written
atomically). A failed or killed run leaves the project as it was; the next
train or learn removes what it left. ``knn_docs`` still caps the memory: the
oldest documents (the training run's first, then the earliest learnt) go.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

import numpy as np
from annif.exception import NotSupportedException

from . import model_files
from .chunking import Chunker, chunk_texts
from .embedding import Encoder
from .features import uses_training_documents
from .knn import TrainingDocuments, pool_documents
from .params import EbmParams
from .progress import progress_bar
from .store import training_documents_writer
from .training import batched, read_documents

if TYPE_CHECKING:
    from annif.corpus import DocumentCorpus

    from .training import Target

LEARN_BATCH = 256  # documents embedded and added at a time


def learn(target: Target, corpus: DocumentCorpus, p: EbmParams,
          metadata: model_files.ModelMetadata, encoder: Encoder, chunker: Chunker) -> int:
    """Add the corpus' documents that have text and subjects to the model's
    kNN memory and priors; return how many were added."""
    if not uses_training_documents(p.features):
        raise NotSupportedException(
            f"learning in {target.backend_id} adds documents to the kNN memory and the "
            "subject priors, and this project uses neither (knn_neighbors=0, "
            "use_prior=false): retrain it with 'annif train' instead",
            backend_id=target.backend_id)
    name = model_files.new_file_name("labels", "duckdb")
    path = os.path.join(target.datadir, model_files.tmp_name(name))
    shutil.copyfile(os.path.join(target.datadir, metadata.store_file), path)
    try:
        added, skipped, dropped = _add_documents(path, corpus, encoder, chunker,
                                                 metadata.dimension, p)
        if not added:
            raise NotSupportedException(
                f"learning in {target.backend_id}: no document has both text and subjects "
                f"of the vocabulary ({skipped} skipped); the project is unchanged",
                backend_id=target.backend_id)
        model_files.publish(target.datadir, name)
    except BaseException:
        model_files.discard(target.datadir, name)
        raise
    # until this replaces the metadata the old store is the model's; if it
    # fails, the next train or learn removes the new one
    model_files.commit(target.datadir, metadata.replace(store_file=name))
    kept = f"; the {dropped} oldest dropped (knn_docs={p.features.knn_docs})" if dropped else ""
    shipped = (f"; it ranks with the shipped {metadata.ranker_source} ranker until 'annif "
               "train' on its documents trains one of its own" if metadata.ranker_source else "")
    target.info(f"learnt {added} documents into the kNN memory and priors ({skipped} without "
                f"text or subjects skipped){kept}{shipped}")
    return added


def _add_documents(path: str, corpus: DocumentCorpus, encoder: Encoder, chunker: Chunker,
                   dimension: int, p: EbmParams) -> tuple[int, int, int]:
    """Append the documents to the store copy at ``path``, then apply
    ``knn_docs``; return (added, skipped, dropped)."""
    added = skipped = 0
    total = sum(1 for _ in read_documents(corpus))  # a first pass reads texts only, for ETA
    with training_documents_writer(path, dimension, p.general.duckdb_threads) as writer, \
            progress_bar(total, "learn documents", "doc") as bar:
        for batch in batched(read_documents(corpus), LEARN_BATCH):
            usable = [doc for doc in batch if doc.subject_set and chunker.has_content(doc.text)]
            skipped += len(batch) - len(usable)
            bar.update(len(batch))
            if not usable:
                continue
            chunked = chunk_texts(chunker, [doc.text for doc in usable])
            vectors = pool_documents(chunked.doc, encoder.encode_queries(chunked.chunks),
                                     len(usable))
            owner = np.concatenate([np.full(len(doc.subject_set), i, dtype=np.int64)
                                    for i, doc in enumerate(usable)])
            subjects = np.concatenate([np.fromiter(doc.subject_set, dtype=np.int64)
                                       for doc in usable])
            writer.add(TrainingDocuments.from_pairs(vectors, owner, subjects),
                       chunked.first_chunks())
            added += len(usable)
        dropped = writer.keep_newest(p.features.knn_docs) if p.features.knn_docs else 0
    return added, skipped, dropped
