"""How much do lexical matches help the ranker? (issue 19)

On one trained ebm project: the ranker refitted on its stored training
candidates (``ebm-train.duckdb``) without the lexical family, with one binary
feature instead (1 where a label of the candidate occurs in the document's
text: lowercased, whole words, a final "s" of a word longer than 3 ignored;
the experiment that preceded the family), and with the family the backend
computes (annif_ebm.lexical, from the texts chunked as the backend chunks
them); each scored on the validate candidates (collected and cached as
bench/ranker_variants.py does). The ranker is the default's (pairwise, unseen
gold subjects at relevance 2), without the unseen boost. Training texts are
the corpus lines whose first characters are the stored openings. For a
project trained before the family (its candidates lack it) or with it.

  python bench/lexical_feature.py yso-finna-en --workdir bench/work/yso-s18 --project ebm-finetune-10k

Writes bench/results/lexical-feature-DATASET-DATE[-TAG].md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np
import polars as pl

import metrics
import ranker_variants
from common import BENCH, DATA_ROOT, DATASETS, write_report

# the backend's ranker: pairwise, unseen gold subjects at relevance 2
DEFAULT_RANKER = ranker_variants.parse_variant("rank:pairwise,unseen_label=2")


def words(text: str) -> tuple[str, ...]:
    return tuple(w[:-1] if len(w) > 3 and w.endswith("s") else w
                 for w in re.findall(r"\w+", text.lower()))


def phrases(text: str, longest: int = 6) -> set[str]:
    """Every run of up to ``longest`` words of the text."""
    w = words(text)
    return {" ".join(w[i:i + n]) for n in range(1, longest + 1) for i in range(len(w) - n + 1)}


def lexical_match(frame: pl.DataFrame, text_of, labels_of: dict[int, set[str]]) -> np.ndarray:
    seen: dict[int, set[str]] = {}
    out = np.zeros(frame.height, dtype=np.float32)
    for i, (doc, concept) in enumerate(frame.select("doc", "concept_id").iter_rows()):
        if doc not in seen:
            seen[doc] = phrases(text_of(doc))
        out[i] = bool(labels_of.get(concept, set()) & seen[doc])
    return out


def with_family(frame: pl.DataFrame, lexicon, chunker, text_of) -> pl.DataFrame:
    """The frame with annif_ebm.lexical's features, the texts chunked as the backend does."""
    from annif_ebm.chunking import chunk_texts
    from annif_ebm.lexical import lexical_features

    docs = frame["doc"].unique().sort().to_list()
    parts = []
    for first in range(0, len(docs), 1000):
        batch = docs[first:first + 1000]
        chunked = chunk_texts(chunker, [text_of(doc) for doc in batch])
        rows = frame.filter(pl.col("doc").is_in(batch)).with_columns(
            doc=pl.col("doc").replace_strict(batch, list(range(len(batch))),
                                             return_dtype=pl.UInt32),
            original=pl.col("doc"))
        parts.append(lexical_features(rows, lexicon, chunked.chunks, chunked.doc,
                                      chunked.n_chunks).with_columns(doc=pl.col("original"))
                     .drop("original"))
    return pl.concat(parts).sort("doc", "concept_id")


def main() -> None:
    import duckdb

    from annif_ebm.chunking import Chunker
    from annif_ebm.features import FEATURE_NAMES
    from annif_ebm.lexical import LEXICAL_FEATURES, Lexicon
    from annif_ebm.model_files import TRAIN_FILE
    from annif_ebm.params import EbmParams
    from annif_ebm.store import OPENING_CHARS, LabelStore

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--project", default="ebm")
    parser.add_argument("--tag", default="")
    parser.add_argument("--language", default="en")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    language = args.language
    params = EbmParams.parse({})
    os.environ.update(ANNIF_PROJECTS=str(workdir / "projects.cfg"),
                      ANNIF_DATADIR=str(workdir / "data"),
                      NLTK_DATA=str(workdir / "nltk_data"), HF_HUB_OFFLINE="1")
    _, train_name, validate_name = DATASETS[args.dataset]
    validate_tsv = DATA_ROOT / args.dataset / validate_name
    with open(validate_tsv, encoding="utf-8") as file:
        texts = [line.split("\t", 1)[0] for line in file if "\t" in line]
    gold = metrics.read_gold(str(validate_tsv))
    seen = set().union(*metrics.read_gold(str(DATA_ROOT / args.dataset / train_name)))
    found = ranker_variants.validate_candidates(
        args.project, texts, workdir / f"validate-candidates-{args.project}.parquet")
    train = ranker_variants.training_candidates(workdir / "data", args.project)

    project_dir = workdir / "data" / "projects" / args.project
    store = LabelStore(str(next(project_dir.glob("ebm-labels-*.duckdb"))))
    with duckdb.connect(str(project_dir / TRAIN_FILE), read_only=True) as con:
        openings = dict(con.execute("SELECT doc, text FROM openings").fetchall())
    labels_of: dict[int, set[str]] = {}
    for concept, label in zip(store.concept_ids.tolist(), store.all_label_texts()):
        labels_of.setdefault(concept, set()).add(" ".join(words(label)))
    full: dict[str, str] = {}
    with open(DATA_ROOT / args.dataset / train_name, encoding="utf-8") as file:
        for line in file:
            text = line.split("\t", 1)[0]
            full.setdefault(text[:OPENING_CHARS], text)

    def training_text(doc: int) -> str:
        opening = openings.get(doc, "")
        return full.get(opening, opening)

    train = train.with_columns(lexical=pl.Series(lexical_match(train, training_text, labels_of)))
    found = found.with_columns(lexical=pl.Series(lexical_match(found, texts.__getitem__, labels_of)))
    lexicon = Lexicon.of_store(store, language)
    chunker = Chunker(language, params.texts.max_chunk_length, params.texts.max_chunks)
    train = with_family(train, lexicon, chunker, training_text)
    found = with_family(found, lexicon, chunker, texts.__getitem__)
    rows = []
    base = [name for name in FEATURE_NAMES if name not in LEXICAL_FEATURES]
    for name, features in (("without", base), ("with lexical", [*base, "lexical"]),
                           ("with the lexical family", [*base, *LEXICAL_FEATURES])):
        booster = ranker_variants.fit(train, DEFAULT_RANKER, os.cpu_count(), features)
        scores = booster.inplace_predict(found.select(features).to_numpy().astype(np.float32))
        ranked = ranker_variants.ranked_uris(found, scores, len(gold))
        row = {"ranker": name, **metrics.evaluate(ranked, gold),
               "Seen-R@5": metrics.seen_recall(ranked, gold, seen),
               "Unseen-R@5": metrics.unseen_recall(ranked, gold, seen)}
        rows.append(row)
        print(row, flush=True)
    matched = train.filter(pl.col("lexical") > 0)
    write_report(f"lexical-feature-{args.dataset}", args.tag,
                 f"Lexical-match feature: {args.dataset}", [
                     f"- project `{args.project}`: {train.height} training candidates, "
                     f"{found.height} validate candidates ({len(gold)} documents)",
                     f"- training candidates with a lexical match: {matched.height} "
                     f"({matched['gold'].mean():.3f} of them gold, against "
                     f"{train['gold'].mean():.3f} of all)"],
                 rows, ["ranker", "F1@5", "NDCG", "Precision@1", "Recall@5", "Seen-R@5",
                        "Unseen-R@5"])


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    main()
