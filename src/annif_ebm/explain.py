"""Why a subject was suggested: the suggestions of :mod:`annif_ebm.suggest`
with their evidence.

The same pipeline as suggesting (chunk -> encode -> match -> rank, the same
functions), keeping what suggesting drops: which passage matched which label
how closely, which stored training documents nearest to the text carry the
subject, how many training documents have it, and how much each feature
family moved the ranker. The last are XGBoost's own per-feature contributions
(SHAP values, ``pred_contribs``): with the ranker's baseline they sum to its
margin, which the ranker's logistic curve turns into the score. A subject that
no training document has gets one more contribution, ``unseen_boost``
(the boost of :meth:`~annif_ebm.suggest.Pipeline.unseen_boosts` in margin
units), counted into its margin.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import polars as pl

from annif.exception import NotInitializedException, NotSupportedException

from .chunking import chunk_texts, clean_text
from .features import FEATURE_FAMILIES, FEATURE_NAMES, feature_matrix
from .knn import pool_documents
from .suggest import Pipeline
from .timing import StageTimer

# families of the ranker's features as explanations group them; the features
# of no family in features.FEATURE_FAMILIES are the passages' label matches
FAMILIES = {
    "passages": "passages matching its labels",
    "document": "the whole text matching its labels",
    "label": "shape of the matched label",
    "knn": "similar training documents",
    "prior": "how often it is used",
    "hierarchy": "related candidates",
    "lexical": "its labels written in the text",
    "unseen": "no training document has it (unseen_boost)",
}
UNSEEN_BOOST = "unseen_boost"  # the boost's entry among the feature contributions
NEIGHBOURS_SHOWN = 5  # nearest training documents with the subject, per suggestion


def family_of(feature: str) -> str:
    """The :data:`FAMILIES` key of a ranker feature."""
    if feature == UNSEEN_BOOST:
        return "unseen"
    return next((family for family, names in FEATURE_FAMILIES.items() if feature in names),
                "passages")


@dataclasses.dataclass
class Chunk:
    """A passage of the text as the model saw it; ``start``/``end``: where
    it is in the text (None if it could not be placed)."""

    position: int
    text: str
    start: int | None
    end: int | None


@dataclasses.dataclass
class Passage:
    """A chunk that found a label of the subject among its nearest labels."""

    position: int  # the chunk's
    label: str
    preferred: bool  # a prefLabel (else an altLabel)
    similarity: float
    rank: int  # among the chunk's nearest labels (0 = nearest)


@dataclasses.dataclass
class Neighbour:
    """A stored training document near the text that carries the subject."""

    document: int  # its number among the stored training documents
    similarity: float
    rank: int  # among the text's nearest training documents (0 = nearest)
    opening: str | None  # its first words (None: the store has none)


@dataclasses.dataclass
class SubjectExplanation:
    subject_id: int
    uri: str
    label: str
    notation: str | None
    score: float  # as annif suggest gives it
    margin: float  # the ranker's raw score + unseen boost (= baseline + the contributions)
    contributions: dict[str, float]  # per family of FAMILIES (the ranker's)
    feature_contributions: dict[str, float]  # per ranker feature
    features: dict[str, float | None]  # the candidate's feature values (None: missing)
    passages: list[Passage]  # best label per matching chunk, most similar first
    neighbours: list[Neighbour]
    training_documents: int | None  # stored training documents with it (None: unknown)


@dataclasses.dataclass
class Explanation:
    text: str  # after the project's transforms, as the backend saw it
    chunks: list[Chunk]
    ranker: str  # "own", or the shipped ranker it uses: "general", "scale-free"
    baseline: float  # the ranker's margin before any feature
    subjects: list[SubjectExplanation]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def explain_project(project, texts: Sequence[str], limit: int = 10,
                    backend_params: dict | None = None,
                    language: str | None = None) -> list[Explanation]:
    """Explain the best ``limit`` suggestions of an ebm ``project`` (Annif's
    project object) for each text; ``backend_params``: overrides, as
    ``-b ebm.name=value`` gives them. Unknown, non-ebm or untrained
    projects are clear errors."""
    from annif.corpus import Document

    from .backend import EbmBackend

    backend = project.backend
    if not isinstance(backend, EbmBackend):
        raise NotSupportedException(
            f"project {project.project_id} uses the {project.config.get('backend')} backend; "
            "explanations need a project with backend=ebm", project_id=project.project_id)
    if not project.is_trained:
        raise NotInitializedException(
            f"project {project.project_id} is not trained; run 'annif train "
            f"{project.project_id}' first", project_id=project.project_id)
    backend.initialize()
    documents = [project.transform.transform_doc(Document(text=text)) for text in texts]
    return backend.explain(documents, backend_params, limit, language)


def explain_texts(texts: list[str], pipeline: Pipeline, limit: int, subjects,
                  language: str) -> list[Explanation]:
    """The best ``limit`` suggestions for each text with their evidence;
    ``subjects``: Annif's subject index, for URIs and labels."""
    timer = StageTimer()
    chunked = chunk_texts(pipeline.chunker, texts)
    vectors = pipeline.encoder.encode_queries(chunked.chunks)
    matcher = pipeline.matcher(timer)
    found, hits = matcher.match_with_hits(chunked.doc, chunked.position, chunked.n_chunks,
                                          vectors, chunked.chunks)
    _, batch = pipeline.rank(found, len(texts))
    chosen = _chosen(batch.filter(limit), found)
    ranker = pipeline.model.ranker
    values = feature_matrix(found)[chosen["row"].to_numpy()]
    contributions, _ = ranker.contributions(values)
    margins = ranker.margins(values)  # the booster's own; the contributions sum to them
    boosts = pipeline.unseen_boosts(found)
    if boosts is not None:  # one more contribution, in margin units
        boosts = ranker.margin_boosts(boosts[chosen["row"].to_numpy()])
        margins = margins + boosts
    baseline = ranker.baseline
    evidence = _Evidence(pipeline, matcher, hits, chosen,
                         pool_documents(chunked.doc, vectors, len(texts)))
    names = ranker.feature_names
    firsts = np.r_[0, np.cumsum(chunked.n_chunks)]
    explanations = []
    chosen_doc, chosen_concept, chosen_score = (
        chosen[name].to_numpy() for name in ("doc", "concept_id", "score"))
    for doc, text in enumerate(texts):
        entries = []
        for row in np.flatnonzero(chosen_doc == doc):
            concept, score = int(chosen_concept[row]), float(chosen_score[row])
            by_feature = dict(zip(names, contributions[row].astype(float)))
            if boosts is not None:
                by_feature[UNSEEN_BOOST] = float(boosts[row])
            by_family = dict.fromkeys(FAMILIES, 0.0)
            for name, value in by_feature.items():
                by_family[family_of(name)] += value
            features = {name: None if np.isnan(value) else float(value)
                        for name, value in zip(FEATURE_NAMES, values[row])}
            subject = subjects[concept]
            entries.append(SubjectExplanation(
                subject_id=concept, uri=subject.uri,
                label=subject.labels.get(language) or next(iter(subject.labels.values()), ""),
                notation=subject.notation or None, score=score,
                margin=float(margins[row]),
                contributions=by_family, feature_contributions=by_feature,
                # each only where the ranker saw it: label-match candidates are
                # capped (candidates_per_doc), a concept cut there and brought back
                # by kNN has no label-match features; kNN candidates are capped too
                features=features,
                passages=(evidence.passages(doc, concept)
                          if features["max_score"] is not None else []),
                neighbours=(evidence.neighbours(doc, concept)
                            if features["knn_count"] is not None else []),
                training_documents=evidence.training_documents(concept)))
        own = chunked.chunks[firsts[doc]:firsts[doc + 1]]
        explanations.append(Explanation(
            text=text, chunks=[Chunk(i, chunk, *(span or (None, None)))
                               for i, (chunk, span) in enumerate(zip(own, locate(text, own)))],
            ranker=pipeline.model.metadata.ranker_source or "own",
            baseline=baseline, subjects=entries))
    return explanations


def _chosen(top, found: pl.DataFrame) -> pl.DataFrame:
    """doc, concept_id, score and the candidate's row in ``found`` of each
    suggestion in ``top`` (in Annif's order: best first)."""
    rows = [(doc, suggestion.subject_id, suggestion.score)
            for doc in range(len(top)) for suggestion in top[doc]]
    chosen = pl.DataFrame(rows, schema={"doc": pl.UInt32, "concept_id": pl.Int32,
                                        "score": pl.Float64}, orient="row")
    return chosen.join(found.select("doc", "concept_id").with_row_index("row"),
                       on=["doc", "concept_id"], how="left", maintain_order="left")


class _Evidence:
    """Looks up what supports each chosen suggestion."""

    def __init__(self, pipeline: Pipeline, matcher, hits: pl.DataFrame,
                 chosen: pl.DataFrame, pooled: np.ndarray) -> None:
        self.store = pipeline.model.store
        self.training = matcher.training
        self.disabled = matcher.disabled
        best = (hits.join(chosen.select("doc", "concept_id"), on=["doc", "concept_id"])
                .sort("score", descending=True)
                .unique(["doc", "concept_id", "chunk"], keep="first", maintain_order=True))
        texts = self.store.label_texts(best["label_id"].to_list())
        self._passages = {}
        for row in best.iter_rows(named=True):
            self._passages.setdefault((row["doc"], row["concept_id"]), []).append(Passage(
                row["chunk"], texts[row["label_id"]], row["is_pref"], row["score"], row["rank"]))
        self._neighbours = {}
        if self.training is not None and "knn" not in self.disabled:
            self._find_neighbours(pipeline.params.features.knn_neighbors, chosen, pooled)

    def _find_neighbours(self, k: int, chosen: pl.DataFrame, pooled: np.ndarray) -> None:
        has_text = np.flatnonzero(np.abs(pooled).sum(axis=1) > 0)
        query, document, similarity, rank = self.training.neighbours(pooled[has_text], k)
        keep = similarity > 0  # as the kNN candidates count them
        query, document, similarity, rank = (a[keep] for a in (query, document, similarity, rank))
        query = has_text[query]
        found = []
        for doc, concept in chosen.select("doc", "concept_id").iter_rows():
            mine = np.flatnonzero(query == doc)
            carry = mine[self.training.has_subject(document[mine], np.full(len(mine), concept))]
            found.append(((doc, concept), carry[:NEIGHBOURS_SHOWN]))
        openings = self.store.document_openings(
            document[np.concatenate([c for _, c in found])] if found else [])
        for key, carry in found:
            self._neighbours[key] = [
                Neighbour(int(document[i]), float(similarity[i]), int(rank[i]),
                          openings.get(int(document[i]))) for i in carry]

    def passages(self, doc: int, concept: int) -> list[Passage]:
        return self._passages.get((doc, concept), [])

    def neighbours(self, doc: int, concept: int) -> list[Neighbour]:
        return self._neighbours.get((doc, concept), [])

    def training_documents(self, concept: int) -> int | None:
        if self.training is None or "prior" in self.disabled:
            return None
        return int(self.training.subject_count(np.array([concept]))[0])


def locate(text: str, chunks: list[str]) -> list[tuple[int, int] | None]:
    """Where each chunk (whitespace-normalised sentences, in order) is in
    ``text``: (start, end), or None where it cannot be placed."""
    cleaned = clean_text(text)  # the same length, as the chunker saw it
    spans, at = [], 0
    for chunk in chunks:
        pattern = r"\s*".join(re.escape(word) for word in chunk.split(" "))
        found = re.compile(pattern).search(cleaned, at)
        spans.append((found.start(), found.end()) if found else None)
        if found:
            at = found.end()
    return spans
