"""Exact top-k of similarity products in bounded blocks: shared by the label
search (:mod:`annif_ebm.search`) and the kNN search (:mod:`annif_ebm.knn`).

The rows of the searched matrix are taken a block at a time and each block's
top-k is merged into a running one, so the score buffer has a fixed size
whatever the vocabulary or the number of training documents.
"""

from __future__ import annotations

TOP_K_GROUP = 64  # columns per group in top_k's first pass


def top_k(scores, k: int):
    """Exact top ``k`` of each row, best first, as (values, column indices).

    The ``k`` groups of :data:`TOP_K_GROUP` columns with the highest maxima
    hold the ``k`` best columns, so only they (and a ragged tail) are
    searched: a plain top-k over all columns takes three times longer on CPU.
    """
    import torch

    rows, columns = scores.shape
    groups = columns // TOP_K_GROUP
    if groups <= 2 * k:
        return torch.topk(scores, k, dim=1)
    grouped = scores.as_strided((rows, groups, TOP_K_GROUP), (scores.stride(0), TOP_K_GROUP, 1))
    best_groups = torch.topk(grouped.amax(dim=2), k, dim=1, sorted=False).indices
    within = torch.arange(TOP_K_GROUP, device=scores.device)
    candidates = (best_groups.unsqueeze(2) * TOP_K_GROUP + within).reshape(rows, -1)
    tail = torch.arange(groups * TOP_K_GROUP, columns, device=scores.device)
    candidates = torch.cat([candidates, tail.expand(rows, -1)], dim=1)
    values, at = torch.topk(torch.gather(scores, 1, candidates), k, dim=1)
    return values, torch.gather(candidates, 1, at)


def blocked_top_k(queries, matrix, k: int, block_rows: int, buffer=None, exclude=None):
    """The ``k`` best rows of ``matrix`` for each query (by dot product), as
    (values, row indices), best first; ``block_rows`` rows of ``matrix`` per
    product, so the scores held at once are ``len(queries) * block_rows``
    (written into the flat ``buffer`` where given). ``exclude``: one row index
    per query that is never among its results (leave-one-out; ``k`` smaller
    than ``len(matrix)``). A block of ``matrix`` in another dtype than the
    queries is taken to theirs for its product."""
    import torch

    rows = torch.arange(len(queries), device=queries.device)
    best_values = best_rows = None
    for first in range(0, len(matrix), block_rows):
        part = matrix[first : first + block_rows].to(queries.dtype)
        out = None if buffer is None else buffer[: len(queries) * len(part)].view(
            len(queries), len(part))
        scores = torch.matmul(queries, part.T, out=out)
        if exclude is not None:
            inside = (exclude >= first) & (exclude < first + len(part))
            scores[rows[inside], exclude[inside] - first] = -float("inf")
        values, found = top_k(scores, min(k, len(part)))
        found += first
        if best_values is not None:
            values = torch.cat([best_values, values], dim=1)
            found = torch.cat([best_rows, found], dim=1)
            values, at = torch.topk(values, min(k, values.shape[1]), dim=1)
            found = torch.gather(found, 1, at)
        best_values, best_rows = values, found
    return best_values, best_rows
