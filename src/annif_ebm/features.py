"""Stage 5: per (document, concept) features from the nearest-label hits.

Input is one row per hit: a label retrieved for a chunk. Output is one row per
candidate concept of a document with the columns of :data:`FEATURE_NAMES`,
keeping the ``candidates_per_doc`` concepts with the highest summed
similarity. Documents without hits simply have no rows.
"""

from __future__ import annotations

import numpy as np
import polars as pl

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
)

# One row per retrieved (chunk, label); the only schema of the hit table.
HITS_SCHEMA = {
    "doc": pl.UInt32,
    "chunk": pl.UInt32,
    "label_id": pl.Int32,
    "concept_id": pl.Int32,
    "is_pref": pl.Boolean,
    "score": pl.Float32,
    "rank": pl.UInt16,
}


def hits_frame(**columns: np.ndarray) -> pl.DataFrame:
    """Build the hit table from equally long numpy arrays (may be empty)."""
    return pl.DataFrame(
        {name: pl.Series(name, columns[name], dtype=dtype) for name, dtype in HITS_SCHEMA.items()}
    )


def candidate_features(
    hits: pl.DataFrame, n_chunks: np.ndarray, candidates_per_doc: int
) -> pl.DataFrame:
    """Aggregate hits into candidate rows: doc, concept_id and the features.

    ``n_chunks[d]`` is the number of chunks of document ``d``.
    """
    docs = pl.DataFrame(
        {
            "doc": pl.Series(np.arange(len(n_chunks)), dtype=pl.UInt32),
            "n_chunks": pl.Series(n_chunks, dtype=pl.Float32),
        }
    )
    last_chunk = pl.max_horizontal(pl.col("n_chunks") - 1, pl.lit(1.0))
    per_chunk = (
        hits.lazy()
        .with_columns(chunk_best=pl.col("score").max().over("doc", "chunk"))
        .group_by("doc", "chunk", "concept_id")
        .agg(
            score=pl.col("score").max(),
            scaled=(pl.col("score") / pl.col("chunk_best")).max(),
            rank=pl.col("rank").min(),
            via_pref=pl.col("is_pref").any(),
        )
    )
    labels_matched = (
        hits.lazy()
        .group_by("doc", "concept_id")
        .agg(n_labels=pl.col("label_id").n_unique())
    )
    features = (
        per_chunk.group_by("doc", "concept_id")
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
            *[pl.col(name).cast(pl.Float32) for name in FEATURE_NAMES],
        )
    )
    return features.collect()


def feature_matrix(candidates: pl.DataFrame) -> np.ndarray:
    return candidates.select(FEATURE_NAMES).to_numpy().astype(np.float32, copy=False)
