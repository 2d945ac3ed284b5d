"""The last phase of a training run and all of ``annif train --cached``: the
ranker fitted on the candidates on disk, then the new model committed."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from annif.exception import NotInitializedException, OperationFailedException

from . import model_files
from .params import EbmParams, Kind
from .ranker import Ranker
from .training_data import cached_training_data, candidate_batches, stored_metadata

if TYPE_CHECKING:
    from .training import Target


def train_cached(target: Target, p: EbmParams) -> None:
    """Train the ranker again from the previous run's candidates."""
    target.info("reusing cached training candidates from previous run")
    path = cached_training_data(target.datadir)
    if not os.path.exists(path):
        raise NotInitializedException(
            f"cached training data {path} not found; train without --cached first",
            backend_id=target.backend_id)
    pending = stored_metadata(path)
    if pending is None:  # data of an older version: the model's own
        metadata = model_files.load_metadata(target.datadir, target.backend_id)
    else:  # the model the candidates were collected for
        metadata = model_files.metadata_from_dict(pending, path, pending=True)
        for name in filter(None, (metadata.store_file, metadata.model_dir)):
            if not os.path.exists(os.path.join(target.datadir, name)):
                raise OperationFailedException(
                    f"{name}, which the cached training data {path} was collected "
                    "with, is missing; train without --cached"
                )
    p = p.with_stored_model(metadata.model)
    ranker_file = model_files.new_file_name("ranker", "ubj")
    try:
        fit_and_commit(
            target, metadata.replace(ranker_file=ranker_file, train_params=p.of_kind(Kind.TRAIN)),
            p, path, cached=True)
    except BaseException:
        model_files.discard(target.datadir, ranker_file)
        raise


def fit_and_commit(target: Target, metadata: model_files.ModelMetadata, p: EbmParams,
                   train_path: str, publish_training_data: Callable[[], Any] | None = None,
                   cached: bool = False) -> None:
    """Train the ranker on the candidates in ``train_path``, then make the
    new model (and its training data) the project's."""
    target.info("training the ranker")
    ranker = Ranker.train(lambda: candidate_batches(train_path, target.datadir, cached),
                          p.ranker, target.datadir)
    ranker.save(os.path.join(target.datadir, model_files.tmp_name(metadata.ranker_file)))
    model_files.publish(target.datadir, metadata.ranker_file)
    if publish_training_data is not None:
        publish_training_data()
    model_files.commit(target.datadir, metadata)
    target.info("model saved")
