"""Stage 1: the vocabulary labels to embed, read through Annif's vocabulary."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from rdflib.namespace import RDFS, SKOS

if TYPE_CHECKING:
    from rdflib import Graph

    from annif.vocab import SubjectIndex

PREF_PROPERTIES = (SKOS.prefLabel, RDFS.label)
ALT_PROPERTIES = (SKOS.altLabel,)
MAX_LABEL_CHARS = 1000  # longer "labels" are data errors; the model truncates anyway

# Vocabulary relations: concept A has concept B as its broader, narrower or
# related concept.
BROADER, NARROWER, RELATED = 0, 1, 2

_WHITESPACE = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """Labels in one language: text, the concept (Annif subject id) each
    belongs to, and whether it is a prefLabel."""

    texts: list[str]
    concept_ids: np.ndarray  # int32
    is_pref: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.texts)


def _same_language(tag: str | None, language: str) -> bool:
    return tag is not None and tag.lower().split("-")[0] == language.lower()


def vocabulary_labels(
    graph: Graph, subjects: SubjectIndex, language: str, use_altlabels: bool
) -> LabelSet:
    """prefLabels (and altLabels) in ``language`` of the active concepts.

    Concepts unknown to the project's subject index, deprecated or excluded
    are skipped; a (concept, text) pair appears once, as prefLabel if it is one.
    """
    properties = [(p, True) for p in PREF_PROPERTIES]
    if use_altlabels:
        properties += [(p, False) for p in ALT_PROPERTIES]
    seen: dict[tuple[int, str], bool] = {}
    concept_of_uri: dict[str, int | None] = {}
    for prop, is_pref in properties:
        for concept, literal in graph.subject_objects(prop):
            if not _same_language(getattr(literal, "language", None), language):
                continue
            uri = str(concept)
            if uri not in concept_of_uri:
                concept_of_uri[uri] = subjects.by_uri(uri, warnings=False)
            concept_id = concept_of_uri[uri]
            text = _WHITESPACE.sub(" ", str(literal)).strip()[:MAX_LABEL_CHARS]
            if concept_id is None or not text:
                continue
            seen.setdefault((concept_id, text), is_pref)
    ordered = sorted(seen.items())
    return LabelSet(
        texts=[text for (_, text), _ in ordered],
        concept_ids=np.array([cid for (cid, _), _ in ordered], dtype=np.int32),
        is_pref=np.array([pref for _, pref in ordered], dtype=bool),
    )


@dataclasses.dataclass(frozen=True)
class Relations:
    """Links between concepts (Annif subject ids): ``other_id[i]`` is the
    ``relation[i]`` (BROADER, NARROWER, RELATED) concept of ``concept_id[i]``."""

    concept_id: np.ndarray  # int32
    other_id: np.ndarray  # int32
    relation: np.ndarray  # int8

    @classmethod
    def empty(cls) -> Relations:
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8))

    def __len__(self) -> int:
        return len(self.concept_id)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame({
            "concept_id": pl.Series(self.concept_id, dtype=pl.Int32),
            "other_id": pl.Series(self.other_id, dtype=pl.Int32),
            "relation": pl.Series(self.relation, dtype=pl.Int8),
        })


# property -> (relation of subject to object, relation of object to subject)
_RELATION_PROPERTIES = {
    SKOS.broader: (BROADER, NARROWER),
    SKOS.narrower: (NARROWER, BROADER),
    SKOS.related: (RELATED, RELATED),
}


def vocabulary_relations(graph: Graph, subjects: SubjectIndex) -> Relations:
    """skos:broader/narrower/related between concepts of the subject index,
    each stated in both directions (a broader link implies the narrower one)."""
    links: set[tuple[int, int, int]] = set()
    for prop, (forward, backward) in _RELATION_PROPERTIES.items():
        for subject, obj in graph.subject_objects(prop):
            a = subjects.by_uri(str(subject), warnings=False)
            b = subjects.by_uri(str(obj), warnings=False)
            if a is None or b is None or a == b:
                continue
            links.add((a, b, forward))
            links.add((b, a, backward))
    if not links:
        return Relations.empty()
    array = np.array(sorted(links), dtype=np.int64)
    return Relations(array[:, 0].astype(np.int32), array[:, 1].astype(np.int32),
                     array[:, 2].astype(np.int8))
