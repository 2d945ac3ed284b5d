"""Stage 1: the vocabulary labels to embed, read through Annif's vocabulary."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import numpy as np
from rdflib.namespace import RDFS, SKOS

if TYPE_CHECKING:
    from rdflib import Graph

    from annif.vocab import SubjectIndex

PREF_PROPERTIES = (SKOS.prefLabel, RDFS.label)
ALT_PROPERTIES = (SKOS.altLabel,)
MAX_LABEL_CHARS = 1000  # longer "labels" are data errors; the model truncates anyway

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
