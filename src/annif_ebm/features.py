"""Stage 5: per (document, concept) features from the nearest-label hits.

Input is one row per hit: a label retrieved for a chunk. Output is one row per
candidate concept of a document with the columns of :data:`FEATURE_NAMES`,
keeping the ``candidates_per_doc`` concepts with the highest summed
similarity. Documents without hits simply have no rows.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .labels import BROADER, NARROWER, RELATED
from .lexical import LEXICAL_FEATURES
from .params import FeatureSettings

FEATURE_NAMES = (
    "n_chunks",  # chunks in the document
    "hit_ratio",  # chunks that hit the concept / n_chunks
    "scaled_score",  # sum over chunks of score / best score in chunk, / n_chunks
    "score_sum",  # sum of per-chunk best similarities
    "max_score",
    "mean_score",
    "min_score",
    "best_rank",  # best rank of the concept within a chunk's hit list (0 = top)
    "mean_rank",
    "first_pos",  # relative position of the first chunk hitting it (0..1)
    "last_pos",
    "spread",  # last_pos - first_pos
    "pref_ratio",  # share of chunk hits through a prefLabel
    "n_labels",  # distinct labels of the concept that matched
    "gap_to_best",  # max_score minus the document's best max_score
    "doc_rank",  # rank of the concept by score_sum within the document
    # label family: the matched labels
    "label_tokens",  # tokens in the best-matching label of the concept
    "concept_labels",  # labels the concept has in the store
    # knn family: subjects of the nearest training documents (see knn.py)
    "knn_score_sum",  # summed similarity of the neighbours with the subject
    "knn_count",  # neighbours with the subject
    "knn_best",  # best similarity of such a neighbour
    "knn_rank",  # rank of the nearest such neighbour (0 = nearest)
    "knn_share",  # knn_score_sum / summed similarity of all neighbours
    # prior family
    "prior",  # log(1 + training documents with the subject)
    # hierarchy family: other candidates related to the concept in the vocabulary
    "broader_best",  # best max_score among candidates broader than the concept
    "narrower_best",
    "related_best",
    "related_candidates",  # candidates linked to the concept by any relation
    # document family: the whole document (its mean chunk vector) as one more query
    "doc_query_score",  # similarity of the concept's best label to the document vector
    "doc_query_rank",  # rank of that label among the document vector's nearest labels
    # lexical family: the concept's labels found word for word in the chunks (see lexical.py)
    *LEXICAL_FEATURES,
)

# Features that a switch in the parameters turns off (they are then missing,
# which XGBoost handles natively).
FEATURE_FAMILIES = {
    "label": ("label_tokens", "concept_labels"),
    "knn": ("knn_score_sum", "knn_count", "knn_best", "knn_rank", "knn_share"),
    "prior": ("prior",),
    "hierarchy": ("broader_best", "narrower_best", "related_best", "related_candidates"),
    "document": ("doc_query_score", "doc_query_rank"),
    "lexical": LEXICAL_FEATURES,
}


def disabled_families(settings: FeatureSettings) -> tuple[str, ...]:
    """The feature families (:data:`FEATURE_FAMILIES`) the settings switch off."""
    switches = {
        "label": settings.use_label_features,
        "knn": settings.knn_neighbors > 0,
        "prior": settings.use_prior,
        "hierarchy": settings.use_hierarchy,
        "document": settings.use_document_query,
        "lexical": settings.use_lexical,
    }
    return tuple(family for family in FEATURE_FAMILIES if not switches[family])


def uses_training_documents(settings: FeatureSettings) -> bool:
    """Whether the features need the stored training documents (kNN or prior)."""
    return not {"knn", "prior"} <= set(disabled_families(settings))


LABEL_MATCH_FEATURES = tuple(
    name for name in FEATURE_NAMES
    if name not in {n for names in FEATURE_FAMILIES.values() for n in names}
) + FEATURE_FAMILIES["label"]


# One row per retrieved (chunk, label); the only schema of the hit table.
HITS_SCHEMA = {
    "doc": pl.UInt32,
    "chunk": pl.UInt32,
    "label_id": pl.Int32,
    "concept_id": pl.Int32,
    "is_pref": pl.Boolean,
    "score": pl.Float32,
    "rank": pl.UInt16,
    "label_tokens": pl.UInt16,
    "concept_labels": pl.UInt16,
}


def hits_frame(**columns: np.ndarray) -> pl.DataFrame:
    """Build the hit table from equally long numpy arrays (may be empty)."""
    return pl.DataFrame(
        {name: pl.Series(name, columns[name], dtype=dtype) for name, dtype in HITS_SCHEMA.items()}
    )


def _documents_frame(n_chunks: np.ndarray) -> pl.DataFrame:
    """One row per document of the batch: doc, n_chunks."""
    return pl.DataFrame({
        "doc": pl.Series(np.arange(len(n_chunks)), dtype=pl.UInt32),
        "n_chunks": pl.Series(n_chunks, dtype=pl.Float32),
    })


def candidate_features(
    hits: pl.DataFrame, n_chunks: np.ndarray, candidates_per_doc: int
) -> pl.DataFrame:
    """Aggregate hits into candidate rows: doc, concept_id and the features.

    ``n_chunks[d]`` is the number of chunks of document ``d``.
    """
    docs = _documents_frame(n_chunks)
    last_chunk = pl.max_horizontal(pl.col("n_chunks") - 1, pl.lit(1.0))
    # A fixed row order and order-keeping groups: float sums and ties come
    # out the same whatever the order of the hits or polars' thread schedule.
    hits = hits.lazy().sort("doc", "chunk", "rank", "label_id")
    per_chunk = (
        hits.with_columns(chunk_best=pl.col("score").max().over("doc", "chunk"))
        .group_by("doc", "chunk", "concept_id", maintain_order=True)
        .agg(
            score=pl.col("score").max(),
            scaled=(pl.col("score") / pl.col("chunk_best")).max(),
            rank=pl.col("rank").min(),
            via_pref=pl.col("is_pref").any(),
            label_tokens=pl.col("label_tokens").sort_by("score", maintain_order=True).last(),
            concept_labels=pl.col("concept_labels").first(),
        )
    )
    labels_matched = (
        hits.group_by("doc", "concept_id")
        .agg(n_labels=pl.col("label_id").n_unique())
    )
    features = (
        per_chunk.group_by("doc", "concept_id", maintain_order=True)
        .agg(
            hits=pl.len(),
            scaled_score=pl.col("scaled").sum(),
            score_sum=pl.col("score").sum(),
            max_score=pl.col("score").max(),
            mean_score=pl.col("score").mean(),
            min_score=pl.col("score").min(),
            best_rank=pl.col("rank").min().cast(pl.Float32),
            mean_rank=pl.col("rank").cast(pl.Float32).mean(),
            first=pl.col("chunk").min(),
            last=pl.col("chunk").max(),
            pref_ratio=pl.col("via_pref").cast(pl.Float32).mean(),
            label_tokens=pl.col("label_tokens").sort_by("score", maintain_order=True).last(),
            concept_labels=pl.col("concept_labels").first(),
        )
        .join(labels_matched, on=["doc", "concept_id"], how="left")
        .join(docs.lazy(), on="doc", how="left")
        .sort("doc", "concept_id")  # deterministic tie-breaking in the ranks below
        .with_columns(
            hit_ratio=pl.col("hits") / pl.col("n_chunks"),
            scaled_score=pl.col("scaled_score") / pl.col("n_chunks"),
            first_pos=pl.col("first") / last_chunk,
            last_pos=pl.col("last") / last_chunk,
            gap_to_best=pl.col("max_score") - pl.col("max_score").max().over("doc"),
            doc_rank=pl.col("score_sum")
            .rank("ordinal", descending=True)
            .over("doc")
            .cast(pl.Float32),
        )
        .with_columns(spread=pl.col("last_pos") - pl.col("first_pos"))
        .filter(pl.col("doc_rank") <= candidates_per_doc)
        .select(
            "doc",
            "concept_id",
            *[pl.col(name).cast(pl.Float32) for name in LABEL_MATCH_FEATURES],
        )
    )
    return features.collect()


def merge_candidates(label_matches: pl.DataFrame, knn: pl.DataFrame | None,
                     n_chunks: np.ndarray) -> pl.DataFrame:
    """One row per (document, concept) of either source: label-match
    features where the concept's labels matched, kNN features where
    neighbours had it, missing (null) otherwise."""
    if knn is None:
        return label_matches
    merged = label_matches.drop("n_chunks").join(
        knn, on=["doc", "concept_id"], how="full", coalesce=True)
    return merged.join(_documents_frame(n_chunks), on="doc", how="left").sort("doc", "concept_id")


def hierarchy_features(candidates: pl.DataFrame, relations: pl.DataFrame) -> pl.DataFrame:
    """For each candidate, the best ``max_score`` of the document's other
    candidates that are broader, narrower or related to it, and how many
    candidates are linked to it. ``relations``: concept_id, other_id, relation."""
    others = candidates.select(
        "doc", other_id="concept_id",
        other_score=pl.coalesce("max_score", "knn_best", pl.lit(0.0, pl.Float32)),
    )
    linked = (
        candidates.select("doc", "concept_id")
        .join(relations, on="concept_id")
        .join(others, on=["doc", "other_id"])
        .group_by("doc", "concept_id")
        .agg(
            broader_best=pl.col("other_score").filter(pl.col("relation") == BROADER).max(),
            narrower_best=pl.col("other_score").filter(pl.col("relation") == NARROWER).max(),
            related_best=pl.col("other_score").filter(pl.col("relation") == RELATED).max(),
            related_candidates=pl.col("other_id").n_unique().cast(pl.Float32),
        )
    )
    return candidates.drop(FEATURE_FAMILIES["hierarchy"], strict=False).join(
        linked, on=["doc", "concept_id"], how="left").with_columns(
        pl.col("related_candidates").fill_null(0.0))


def document_query_features(candidates: pl.DataFrame, doc: np.ndarray,
                            concept_id: np.ndarray, score: np.ndarray,
                            rank: np.ndarray) -> pl.DataFrame:
    """Join the hits of the document vectors (one query per document: hit
    ``i`` is label of concept ``concept_id[i]`` found for document ``doc[i]``
    at ``rank[i]``) onto the candidates as the document family's features;
    candidates the document query did not reach have them missing."""
    hits = pl.DataFrame({
        "doc": pl.Series(doc, dtype=pl.UInt32),
        "concept_id": pl.Series(concept_id, dtype=pl.Int32),
        "doc_query_score": pl.Series(score, dtype=pl.Float32),
        "doc_query_rank": pl.Series(rank, dtype=pl.Float32),
    }).group_by("doc", "concept_id").agg(pl.col("doc_query_score").max(),
                                        pl.col("doc_query_rank").min())
    return candidates.join(hits, on=["doc", "concept_id"], how="left")


def finish_features(candidates: pl.DataFrame, disabled: tuple[str, ...] = ()) -> pl.DataFrame:
    """All of :data:`FEATURE_NAMES` as Float32, in order; features missing
    from ``candidates`` or of a ``disabled`` family are null."""
    off = {name for family in disabled for name in FEATURE_FAMILIES[family]}
    return candidates.select(
        pl.col("doc").cast(pl.UInt32),
        pl.col("concept_id").cast(pl.Int32),
        *[
            (pl.col(name) if name in candidates.columns and name not in off
             else pl.lit(None)).cast(pl.Float32).alias(name)
            for name in FEATURE_NAMES
        ],
    )


def feature_matrix(candidates: pl.DataFrame) -> np.ndarray:
    return candidates.select(FEATURE_NAMES).to_numpy().astype(np.float32, copy=False)
