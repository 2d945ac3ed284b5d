"""Which training documents the ranker learns from (``max_train_docs``).

The ranker learns from the candidates of a sample of the training documents
(20,000 by default), not of the whole corpus. A first pass over the corpus
reads just the subject sets (a few integers per document). Half of the sample
covers as many distinct gold subjects as possible: rarest subjects first, each
uncovered one brings in a document that has it; the other half (and any slots
coverage leaves) is drawn at random (seeded, so reproducible). The random half
keeps the ranker's data like real documents: a sample made only of
rare-subject documents teaches the ranker that frequent subjects (high prior, many
kNN votes) are rarely right.

With ``finetune``, documents for tuning the embedding model are drawn first
(at random) and the ranker's sample comes from the others: the ranker must not
learn from similarities the tuned model memorised for its own training pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

SEED = 42
COVERAGE_SHARE = 0.5  # of max_docs, for rare-subject coverage; the rest at random


@dataclasses.dataclass(frozen=True)
class Sample:
    selected: np.ndarray  # bool per corpus document, in corpus order
    n_documents: int  # documents in the corpus
    n_with_subjects: int
    n_subjects: int  # distinct gold subjects in the corpus
    n_covered: int  # of these, in the sample
    has_subjects: np.ndarray  # bool per corpus document
    n_without_text: int = 0  # documents with subjects but no text (skipped)
    tuning: np.ndarray | None = None  # bool per document: tunes the embedding model

    @property
    def n_tuning(self) -> int:
        return 0 if self.tuning is None else int(self.tuning.sum())

    @property
    def n_selected(self) -> int:
        return int(self.selected.sum())

    @property
    def n_without_subjects(self) -> int:
        return self.n_documents - self.n_with_subjects - self.n_without_text

    def describe(self) -> str:
        skipped = [f"{self.n_without_subjects} have no subject of the vocabulary (none "
                   "given, or only URIs it does not know)"]
        if self.n_without_text:
            skipped.append(f"{self.n_without_text} have no text")
        tuning = (f", fine-tuning the embedding model on {self.n_tuning} others"
                  if self.n_tuning else "")
        return (
            f"training the ranker on {self.n_selected} of {self.n_documents} documents{tuning} "
            f"({'; '.join(skipped)}), covering "
            f"{self.n_covered} of {self.n_subjects} distinct gold subjects"
        )

    def others(self, max_docs: int) -> np.ndarray:
        """Documents with subjects outside the sample, as many as make at most
        ``max_docs`` with the sample (0 = all), chosen at random (seeded)."""
        spare = np.flatnonzero(self.has_subjects & ~self.selected)
        if max_docs:
            room = max(0, min(len(spare), max_docs - self.n_selected))
            spare = np.random.default_rng(SEED).choice(spare, size=room, replace=False)
        chosen = np.zeros(self.n_documents, dtype=bool)
        chosen[spare] = True
        return chosen


def choose_documents(subject_sets: Iterable[Iterable[int]], max_docs: int,
                     tuning_docs: int = 0, min_tuning_docs: int = 1) -> Sample:
    """Choose at most ``max_docs`` documents with subjects (0 = all of them)
    for the ranker, after ``tuning_docs`` at random (at most half of those with
    subjects) for fine-tuning; none when half of those with subjects are
    fewer than ``min_tuning_docs``."""
    lengths, flat = [], []
    for subjects in subject_sets:
        ids = list(subjects)
        lengths.append(len(ids))
        flat.extend(ids)
    lengths = np.array(lengths, dtype=np.int64)
    subject_of = np.array(flat, dtype=np.int64)
    doc_of = np.repeat(np.arange(len(lengths)), lengths)
    has_subjects = lengths > 0
    n_with = int(has_subjects.sum())
    distinct = np.unique(subject_of)
    tuning = None
    eligible = has_subjects
    if tuning_docs and n_with // 2 >= min_tuning_docs:
        tuning = np.zeros(len(lengths), dtype=bool)
        size = min(tuning_docs, n_with // 2)
        tuning[np.random.default_rng(SEED).choice(
            np.flatnonzero(has_subjects), size=size, replace=False)] = True
        eligible = has_subjects & ~tuning
    n_eligible = int(eligible.sum())
    if max_docs == 0 or max_docs >= n_eligible:
        selected = eligible.copy()
    else:
        keep = eligible[doc_of]
        selected = _cover(subject_of[keep], doc_of[keep], len(lengths),
                          max(1, int(max_docs * COVERAGE_SHARE)))
        spare = np.flatnonzero(eligible & ~selected)
        room = max_docs - int(selected.sum())
        if room > 0:
            rng = np.random.default_rng(SEED)
            selected[rng.choice(spare, size=room, replace=False)] = True
    covered = np.unique(subject_of[selected[doc_of]])
    return Sample(selected, len(lengths), n_with, len(distinct), len(covered), has_subjects,
                  tuning=tuning)


def _cover(subject_of: np.ndarray, doc_of: np.ndarray, n_docs: int, max_docs: int) -> np.ndarray:
    """Greedy coverage, rarest subject first: linear in the corpus size."""
    selected = np.zeros(n_docs, dtype=bool)
    if len(subject_of) == 0:
        return selected
    subjects, inverse, counts = np.unique(subject_of, return_inverse=True, return_counts=True)
    covered = np.zeros(len(subjects), dtype=bool)
    # one document per subject: the first (in corpus order) that has it
    order = np.lexsort((doc_of, inverse))
    first_doc = doc_of[order][np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]]
    # subjects of each document, for marking them covered
    by_doc = np.argsort(doc_of, kind="stable")
    starts = np.searchsorted(doc_of[by_doc], np.arange(n_docs + 1))
    taken = 0
    for subject in np.argsort(counts, kind="stable"):
        if covered[subject]:
            continue
        doc = first_doc[subject]
        selected[doc] = True
        covered[inverse[by_doc[starts[doc]:starts[doc + 1]]]] = True
        taken += 1
        if taken == max_docs:
            break
    return selected
