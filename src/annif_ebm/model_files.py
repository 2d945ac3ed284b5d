"""Every file of a project's data directory, and the atomic replacement of
a trained model.

A model is a label store (``ebm-labels-<id>.duckdb``), a ranker
(``ebm-ranker-<id>.ubj``), with ``static_embedding`` or ``finetune`` the
project's own embedding model (folder ``ebm-static-<id>`` distilled, perhaps
then tuned, or ``ebm-tuned-<id>`` fine-tuned), and the metadata file ``ebm-model.json``
that names them. New files get new names and are written completely before the metadata
is replaced in one atomic rename: until that moment the previous model is
untouched and usable, and a half-written file is never named by it. Names in
the metadata are bare file names inside the project's datadir, so a copied or
renamed project directory keeps working.

Beside the model: the embedding cache (:data:`CACHE_FILE`) and the training
candidates of the last run (:data:`TRAIN_FILE`, for ``annif train --cached``),
both ``*-train*`` names that Annif ignores when it decides whether a project
is trained; while a run works, ``tmp-`` names: its training data, DuckDB's
spill folders (:data:`SPILL_PREFIX`) and XGBoost's page cache
(:data:`XGB_CACHE_PREFIX`).
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import shutil
import uuid

import annif.util
from annif.exception import NotInitializedException, OperationFailedException

from . import __version__

METADATA_FILE = "ebm-model.json"
CACHE_FILE = "ebm-train-embeddings.duckdb"
TRAIN_FILE = "ebm-train.duckdb"
SPILL_PREFIX = "tmp-ebm-spill-"
XGB_CACHE_PREFIX = "tmp-xgb-"
FORMAT_VERSION = 1
_MANAGED_PATTERNS = ("ebm-labels-*.duckdb", "ebm-labels-*.duckdb.wal", "ebm-ranker-*.ubj",
                     "ebm-static-*", "ebm-tuned-*")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def new_file_name(kind: str, suffix: str) -> str:
    stamp = _now().strftime("%Y%m%dT%H%M%S")
    return f"ebm-{kind}-{stamp}-{uuid.uuid4().hex[:8]}.{suffix}"


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The names of the new model files of one training run."""

    store_file: str
    ranker_file: str
    model_dir: str = ""  # the project's own embedding model, if any

    @classmethod
    def new(cls, static_embedding: bool = False, finetune: bool = False,
            onnx: bool = False) -> RunFiles:
        own = ("static" if static_embedding else "tuned" if finetune
               else "onnx" if onnx else "")
        return cls(new_file_name("labels", "duckdb"), new_file_name("ranker", "ubj"),
                   new_file_name(own, "model") if own else "")

    def discard(self, datadir: str) -> None:
        """Remove whatever of them the run wrote (it did not commit)."""
        discard(datadir, self.store_file, self.ranker_file, self.model_dir)


def tmp_name(name: str) -> str:
    """Name to write ``name`` under until it is complete (ignored by Annif)."""
    return f"tmp-{name}"


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    store_file: str
    ranker_file: str
    model: dict  # the model-defining parameters
    dimension: int
    feature_names: list
    train_params: dict
    n_labels: int
    n_train_docs: int
    # with static_embedding, finetune or encode_backend=onnx: the folder of the
    # project's own embedding model (distilled, tuned and/or exported), loaded
    # instead of `model`
    model_dir: str = ""
    # "" for a ranker trained on the project's documents, else the shipped
    # general ranker it copies ("general" or "scale-free", see general.py)
    ranker_source: str = ""
    package_version: str = __version__
    format_version: int = FORMAT_VERSION
    created: str = dataclasses.field(default_factory=lambda: _now().isoformat())

    def replace(self, **changes) -> ModelMetadata:
        """A copy for a retrained model, stamped with this version and time."""
        return dataclasses.replace(
            self, package_version=__version__, created=_now().isoformat(), **changes
        )


def _check_file_name(name: object, path: str) -> str:
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise OperationFailedException(f"model metadata {path} names an invalid file {name!r}")
    return name


def metadata_stamp(datadir: str) -> tuple[int, int, int] | None:
    """Changes whenever a new model is committed (the metadata file is
    replaced); None when there is none."""
    try:
        status = os.stat(os.path.join(datadir, METADATA_FILE))
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def load_metadata(datadir: str, backend_id: str) -> ModelMetadata:
    path = os.path.join(datadir, METADATA_FILE)
    if not os.path.exists(path):
        raise NotInitializedException(
            f"model metadata {path} not found; train the project first",
            backend_id=backend_id,
        )
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError) as err:
        raise OperationFailedException(
            f"cannot read model metadata {path}: {err}; retrain the project"
        ) from err
    return metadata_from_dict(data, path)


def metadata_from_dict(data: object, path: str, pending: bool = False) -> ModelMetadata:
    """Checked metadata from its JSON form, read from ``path``; ``pending``: of
    a model whose ranker is not trained yet (no ranker file)."""
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        found = data.get("format_version") if isinstance(data, dict) else None
        raise OperationFailedException(
            f"model {path} has format version {found!r}, this annif-ebm "
            f"({__version__}) reads version {FORMAT_VERSION}; retrain the project"
        )
    fields = {f.name for f in dataclasses.fields(ModelMetadata)}
    if "static_model_dir" in data:  # written by versions before fine-tuning
        data = {**data, "model_dir": data["static_model_dir"]}
    try:
        metadata = ModelMetadata(**{k: v for k, v in data.items() if k in fields})
    except TypeError as err:
        raise OperationFailedException(
            f"model metadata {path} is incomplete: {err}; retrain the project"
        ) from err
    _check_file_name(metadata.store_file, path)
    if not (pending and metadata.ranker_file == ""):
        _check_file_name(metadata.ranker_file, path)
    if metadata.model_dir:
        _check_file_name(metadata.model_dir, path)
    return metadata


def commit(datadir: str, metadata: ModelMetadata) -> None:
    """Make ``metadata`` (and the files it names) the project's model, then
    delete the files of earlier models."""
    annif.util.atomic_save(
        metadata,
        datadir,
        METADATA_FILE,
        method=lambda obj, path: _write_json(dataclasses.asdict(obj), path),
    )
    keep = {metadata.store_file, metadata.ranker_file, metadata.model_dir}
    for pattern in _MANAGED_PATTERNS:
        for path in glob.glob(os.path.join(datadir, pattern)):
            name = os.path.basename(path)
            if name not in keep and name.removesuffix(".wal") not in keep:
                remove(path)


def remove(*paths: str) -> None:
    """Remove files or folders; a missing one is no error."""
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)


def _write_json(data: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())


def publish(datadir: str, name: str) -> str:
    """Rename the completed ``tmp-<name>`` to ``name``; return the new path."""
    final = os.path.join(datadir, name)
    os.replace(os.path.join(datadir, tmp_name(name)), final)
    return final


def remove_leftovers(datadir: str, named: set[str] | None) -> list[str]:
    """Remove what a killed training run left behind: ``tmp-*`` files and
    folders of this backend, and, unless ``named`` is None (not known), model
    files that are not in ``named`` (those of the model and of the cached
    training data); return their names."""
    patterns = ["tmp-ebm-*", f"{XGB_CACHE_PREFIX}*"] + (list(_MANAGED_PATTERNS) if named is not None else [])
    names = set()
    for pattern in patterns:
        for path in glob.glob(os.path.join(datadir, pattern)):
            name = os.path.basename(path)
            if pattern.startswith("tmp-") or name.removesuffix(".wal") not in named:
                remove(path)
                names.add(name)
    return sorted(names)


def discard(datadir: str, *names: str) -> None:
    """Remove files of a training run that did not commit."""
    for name in filter(None, names):  # "" names no file
        for candidate in (name, tmp_name(name)):
            path = os.path.join(datadir, candidate)
            remove(path, path + ".wal")
