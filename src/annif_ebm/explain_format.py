"""Explanations (:mod:`annif_ebm.explain`) as text, JSON or one
self-contained HTML page (no network, no external assets)."""

from __future__ import annotations

import html
import importlib.resources
import json
import re

from .explain import FAMILIES, Explanation, SubjectExplanation

PASSAGES_SHOWN = 3  # per suggestion in the text format
FAMILY_COLOURS = {  # colour-blind safe (Okabe-Ito)
    "passages": "#0072b2",
    "document": "#56b4e9",
    "label": "#999999",
    "knn": "#e69f00",
    "prior": "#cc79a7",
    "hierarchy": "#009e73",
    "lexical": "#f0e442",
    "unseen": "#d55e00",
}
_SCORE_NOTE = {
    "own": "the project's own ranker",
    "general": "the general ranker shipped with annif-ebm",
    "scale-free": "the scale-free ranker shipped with annif-ebm",
}


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def _largest_first(contributions: dict[str, float]) -> list[tuple[str, float]]:
    """(family, contribution) pairs, the largest move first."""
    return sorted(contributions.items(), key=lambda item: -abs(item[1]))


def _chunk_texts(explanation: Explanation) -> dict[int, str]:
    return {chunk.position: chunk.text for chunk in explanation.chunks}


def _quoted(text: str, width: int = 90) -> str:
    return '"' + (text if len(text) <= width else text[: width - 1] + "…") + '"'


def as_json(explanations: list[Explanation], names: list[str]) -> str:
    return json.dumps([{"document": name, **explanation.to_dict()}
                       for name, explanation in zip(names, explanations)],
                      ensure_ascii=False, indent=2)


def as_text(explanations: list[Explanation], names: list[str]) -> str:
    out = []
    for name, explanation in zip(names, explanations):
        chunks = _chunk_texts(explanation)
        out.append(f"Explanations for {name} ({len(explanation.chunks)} passages; "
                   f"scored by {_SCORE_NOTE.get(explanation.ranker, explanation.ranker)})")
        if not explanation.subjects:
            out.append("  no suggestions")
        for number, subject in enumerate(explanation.subjects, 1):
            out.extend(_subject_lines(number, subject, chunks, explanation.baseline))
        out.append("")
    return "\n".join(out)


def _subject_lines(number: int, subject: SubjectExplanation, chunks: dict[int, str],
                   baseline: float) -> list[str]:
    label = "\t".join(filter(None, (subject.label, subject.notation)))
    moved = _largest_first(subject.contributions)
    lines = [
        f"{number:>2}. <{subject.uri}>\t{label}\t{subject.score:.4f}",
        "    moved by: " + ", ".join(f"{FAMILIES[family]} {_signed(value)}"
                                    for family, value in moved if value)
        + f" (baseline {baseline:+.2f}, margin {subject.margin:+.2f})",
    ]
    for i, passage in enumerate(subject.passages[:PASSAGES_SHOWN]):
        lead = "    passages:  " if i == 0 else "               "
        kind = "prefLabel" if passage.preferred else "altLabel"
        lines.append(f"{lead}[{passage.position}] {_quoted(chunks.get(passage.position, ''))}"
                     f" ~ {kind} \"{passage.label}\" {passage.similarity:.3f}")
    if len(subject.passages) > PASSAGES_SHOWN:
        lines.append(f"               ... {len(subject.passages) - PASSAGES_SHOWN} more passages")
    if not subject.passages:
        lines.append("    passages:  none (found through other evidence)")
    for i, neighbour in enumerate(subject.neighbours):
        lead = "    similar training documents with it: " if i == 0 else " " * 40
        opening = _quoted(neighbour.opening, 60) if neighbour.opening else "(text not stored)"
        lines.append(f"{lead}#{neighbour.document} {neighbour.similarity:.3f} {opening}")
    if subject.training_documents is not None:
        lines.append(f"    used in {subject.training_documents} training documents")
    return lines


def as_html(explanations: list[Explanation], names: list[str], title: str) -> str:
    """One page: per document the text (passages of the selected subject
    highlighted) beside the suggestions, each with a bar of what moved its
    score; everything inline."""
    template = importlib.resources.files("annif_ebm").joinpath("explain.html").read_text(
        encoding="utf-8")
    legend = "".join(f'<span class="key"><i style="background:{FAMILY_COLOURS[f]}"></i>'
                     f"{html.escape(text)}</span>" for f, text in FAMILIES.items())
    sections = "".join(_document_html(index, name, explanation)
                       for index, (name, explanation) in enumerate(zip(names, explanations)))
    values = {"title": html.escape(title), "legend": legend, "documents": sections}
    return re.sub(r"\{\{(\w+)\}\}", lambda slot: values[slot.group(1)], template)


def _document_html(index: int, name: str, explanation: Explanation) -> str:
    scale = max((sum(abs(v) for v in s.contributions.values()) for s in explanation.subjects),
                default=1.0) or 1.0
    chunks = _chunk_texts(explanation)
    subjects = "".join(_subject_html(index, number, subject, scale, chunks, explanation.baseline)
                       for number, subject in enumerate(explanation.subjects))
    note = _SCORE_NOTE.get(explanation.ranker, explanation.ranker)
    return (f'<section class="document" id="doc{index}"><h2>{html.escape(name)}</h2>'
            f'<p class="note">{len(explanation.subjects)} suggestions, scored by {note}; '
            "select one to see the passages that found it.</p>"
            f'<div class="columns"><div class="text">{_text_html(explanation)}</div>'
            f'<ol class="subjects">{subjects or "<li>no suggestions</li>"}</ol></div></section>')


def _text_html(explanation: Explanation) -> str:
    """The text with each placed chunk in a span; chunks that could not be
    placed follow it as a list."""
    text, parts, at = explanation.text, [], 0
    placed = sorted((c for c in explanation.chunks if c.start is not None),
                    key=lambda c: c.start)
    for chunk in placed:
        parts.append(html.escape(text[at:chunk.start]))
        parts.append(f'<span class="chunk" data-pos="{chunk.position}">'
                     f"{html.escape(text[chunk.start:chunk.end])}</span>")
        at = chunk.end
    last = max((c.end for c in placed), default=0)
    parts.append(html.escape(text[at:last + 2000]) + ("…" if len(text) > last + 2000 else ""))
    loose = [c for c in explanation.chunks if c.start is None]
    if loose:
        parts.append('<ul class="loose">' + "".join(
            f'<li><span class="chunk" data-pos="{c.position}">{html.escape(c.text)}</span></li>'
            for c in loose) + "</ul>")
    return "".join(parts)


def _bar_html(subject: SubjectExplanation, scale: float) -> str:
    """A diverging bar: what raised the margin right of the middle, what
    lowered it left."""
    sides = {"up": [], "down": []}
    for family, value in _largest_first(subject.contributions):
        width = 50 * abs(value) / scale
        if width >= 0.05:
            sides["up" if value > 0 else "down"].append(
                f'<i style="width:{width:.2f}%;background:{FAMILY_COLOURS[family]}" '
                f'title="{html.escape(FAMILIES[family])} {_signed(value)}"></i>')
    return (f'<span class="bar" role="img" aria-label="what moved the score">'
            f'<span class="down">{"".join(reversed(sides["down"]))}</span>'
            f'<span class="up">{"".join(sides["up"])}</span></span>')


def _subject_html(doc: int, number: int, subject: SubjectExplanation, scale: float,
                  chunks: dict[int, str], baseline: float) -> str:
    hits = " ".join(f"{p.position}:{p.similarity:.3f}" for p in subject.passages)
    rows = "".join(
        f"<tr><td>{html.escape(FAMILIES[f])}</td><td class=num>{_signed(v)}</td></tr>"
        for f, v in _largest_first(subject.contributions))
    passages = "".join(
        f'<li><b>{p.similarity:.3f}</b> {"prefLabel" if p.preferred else "altLabel"} '
        f"“{html.escape(p.label)}” in passage {p.position}: "
        f"<q>{html.escape(chunks.get(p.position, ''))}</q></li>" for p in subject.passages)
    neighbours = "".join(
        f"<li><b>{n.similarity:.3f}</b> training document #{n.document}"
        + (f": <q>{html.escape(n.opening)}</q>" if n.opening else "") + "</li>"
        for n in subject.neighbours)
    used = ("" if subject.training_documents is None
            else f"<p>Used in {subject.training_documents} training documents.</p>")
    label = html.escape(subject.label) + (
        f' <span class="notation">{html.escape(subject.notation)}</span>'
        if subject.notation else "")
    return (
        f'<li class="subject"><button type="button" class="pick" data-doc="{doc}" '
        f'data-hits="{hits}" aria-pressed="false" aria-controls="d{doc}-{number}">'
        f'<span class="label">{label}</span><span class="score">{subject.score:.3f}</span>'
        f"{_bar_html(subject, scale)}</button>"
        f'<div class="detail" id="d{doc}-{number}">'
        f'<p class="uri">{html.escape(subject.uri)}</p>'
        f"<table><caption>What moved the score (margin {subject.margin:+.2f} = baseline "
        f"{baseline:+.2f} + these)</caption>{rows}</table>"
        + (f"<h4>Passages</h4><ul>{passages}</ul>" if passages
           else "<p>No passage matched its labels.</p>")
        + (f"<h4>Similar training documents with it</h4><ul>{neighbours}</ul>"
           if neighbours else "")
        + used + "</div></li>")

