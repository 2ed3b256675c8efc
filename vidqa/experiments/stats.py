"""Is layer importance stable from one person to the next? Statistics on a (n_rois, n_layers)
matrix of importance scores (one row per ROI, layers in
:func:`vidqa.vlm.compression.layers.find_layers`
order, higher = more important). numpy only.

For each statistic a **null baseline** is computed the same way on the matrix with every row's
layer order shuffled independently (seeded, averaged over many shuffles): it is what the
statistic reads when importance has nothing in common across ROIs. ``p_null`` is the share of
shuffles that reach the observed value (with the +1 correction), so a reader sees at once
whether a value means anything.

- ``pearson``: mean pairwise Pearson correlation of the ROI vectors — the seed's statistic,
  judged by the seed's table (:data:`DECISION_TABLE`, :func:`verdict`). It is inflated by
  patterns every ROI shares (first/last layers, and here the vision/text towers' different
  scales), hence also:
- ``spearman``: mean pairwise Spearman rank correlation (Pearson of average ranks);
- ``jaccard_bottom_25`` / ``jaccard_bottom_50``: mean pairwise Jaccard overlap of the sets of
  the k least important layers, k = 25% / 50% of the layers — the sets a compression plan
  would actually touch;
- ``by_tower``: the same statistics on the vision and the text layers separately, so the
  towers' difference in scale cannot carry the correlation alone.

:func:`cross_question` asks whether importance is query-specific: the same ROIs asked several
questions, similarity within a query vs across questions, with a label-permutation null.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

DECISION_TABLE = "> 0.7 high → proceed; 0.4–0.7 moderate; < 0.4 low → pivot"
BOTTOM_FRACTIONS = (0.25, 0.5)
N_SHUFFLES = 100

Statistic = Callable[[np.ndarray], float]


def verdict(pearson: float | None) -> str:
    """The seed's decision for a mean pairwise Pearson correlation, worded as its table."""
    if pearson is None or math.isnan(pearson):
        return "undefined (needs at least 2 ROIs with varying importance)"
    if pearson > 0.7:
        return "> 0.7 high → proceed"
    if pearson >= 0.4:
        return "0.4–0.7 moderate"
    return "< 0.4 low → pivot"


# --------------------------------------------------------------------------------------------
# Pairwise statistics


def corr_matrix(x: np.ndarray) -> np.ndarray:
    """Pearson correlation between the rows of ``x``, (n, n); NaN where a row is constant."""
    x = np.asarray(x, np.float64)
    centered = x - x.mean(axis=1, keepdims=True)  # (n, L)
    norms = np.linalg.norm(centered, axis=1)  # (n,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (centered @ centered.T) / np.outer(norms, norms)


def rank_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks (0-based, ties share their mean rank) within each row of ``x``."""
    x = np.asarray(x, np.float64)
    ranks = np.empty_like(x)
    for row, values in enumerate(x):
        order = np.argsort(values, kind="stable")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values), dtype=np.float64)
        # Ties: every member of a group of equal values gets the group's mean rank.
        _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
        sums = np.bincount(group, weights=ranked)
        ranks[row] = sums[group] / counts[group]
    return ranks


def mean_upper(matrix: np.ndarray) -> float:
    """Mean of the strictly upper triangle (each unordered pair once), NaNs ignored."""
    values = matrix[np.triu_indices(len(matrix), k=1)]
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def mean_pairwise_pearson(x: np.ndarray) -> float:
    return mean_upper(corr_matrix(x))


def mean_pairwise_spearman(x: np.ndarray) -> float:
    return mean_upper(corr_matrix(rank_rows(x)))


def bottom_k(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` least important layers of each row, (n, k); ties by layer order."""
    return np.argsort(np.asarray(x), axis=1, kind="stable")[:, :k]


def mean_pairwise_jaccard(x: np.ndarray, k: int) -> float:
    """Mean pairwise Jaccard overlap |A ∩ B| / |A ∪ B| of the rows' bottom-k layer sets."""
    n_layers = x.shape[1]
    member = np.zeros((len(x), n_layers), bool)  # (n, L) True where a layer is in the bottom k
    np.put_along_axis(member, bottom_k(x, k), True, axis=1)
    member = member.astype(np.float64)
    inter = member @ member.T  # (n, n)
    union = 2 * k - inter
    return mean_upper(inter / union)


def bottom_count(n_layers: int, fraction: float) -> int:
    return max(1, round(fraction * n_layers))


# --------------------------------------------------------------------------------------------
# Null baselines


def shuffle_rows(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` with each row's layer order permuted independently."""
    return rng.permuted(np.asarray(x), axis=1)


def with_null(statistic: Statistic, x: np.ndarray, seed: int = 0,
              n_shuffles: int = N_SHUFFLES) -> dict[str, float | None]:
    """The statistic on ``x`` and on ``n_shuffles`` row-shuffled copies of it."""
    value = statistic(x)
    rng = np.random.default_rng(seed)
    null = np.array([statistic(shuffle_rows(x, rng)) for _ in range(n_shuffles)])
    null = null[~np.isnan(null)]
    if math.isnan(value) or not len(null):
        return {"value": _num(value), "null_mean": None, "null_std": None, "p_null": None}
    return {"value": _num(value), "null_mean": _num(null.mean()), "null_std": _num(null.std()),
            "p_null": _num((1 + np.sum(null >= value - 1e-12)) / (1 + len(null)))}


def stability(x: np.ndarray, seed: int = 0, n_shuffles: int = N_SHUFFLES) -> dict[str, Any]:
    """Every statistic of the module docstring with its null baseline, and the seed's verdict."""
    x = np.asarray(x, np.float64)
    n_crops, n_layers = x.shape
    out: dict[str, Any] = {"n_rois": n_crops, "n_layers": n_layers}
    # Spearman = Pearson of the ranks, and shuffling a row shuffles its ranks the same way:
    # its null is Pearson's null on the rank matrix (no re-ranking per shuffle).
    statistics: dict[str, tuple[Statistic, np.ndarray]] = {
        "pearson": (mean_pairwise_pearson, x), "spearman": (mean_pairwise_pearson, rank_rows(x))}
    for fraction in BOTTOM_FRACTIONS:
        k = bottom_count(n_layers, fraction)
        statistics[f"jaccard_bottom_{round(100 * fraction)}"] = \
            (lambda m, k=k: mean_pairwise_jaccard(m, k), x)
        out[f"k_bottom_{round(100 * fraction)}"] = k
    for name, (statistic, matrix) in statistics.items():
        out[name] = with_null(statistic, matrix, seed, n_shuffles) if n_crops >= 2 else \
            {"value": None, "null_mean": None, "null_std": None, "p_null": None}
    out["verdict"] = verdict(out["pearson"]["value"])
    out["decision_table"] = DECISION_TABLE
    return out


def summarize(x: np.ndarray, towers: Sequence[str] | None = None, seed: int = 0,
              n_shuffles: int = N_SHUFFLES) -> dict[str, Any]:
    """:func:`stability` of all layers, plus ``by_tower`` for each tower named in ``towers``
    (one name per column, e.g. "vision"/"text") that has at least 2 layers."""
    out = stability(x, seed, n_shuffles)
    if towers is not None:
        names = np.asarray(towers)
        out["by_tower"] = {tower: stability(np.asarray(x)[:, names == tower], seed, n_shuffles)
                           for tower in dict.fromkeys(towers) if np.sum(names == tower) >= 2}
    return out


# --------------------------------------------------------------------------------------------
# Across questions


def cross_question(profiles: Sequence[Any] | Mapping[str, np.ndarray], metric: str | None = None,
                seed: int = 0, n_permutations: int = 200) -> dict[str, Any]:
    """Within-query vs across-query similarity of importance on the same ROIs.

    ``profiles``: Profiles (with ``question``, ``roi_ids``, ``scores``; give ``metric``) or a
    mapping question -> (n_rois, n_layers) matrix with the same ROIs in the same row order.

    For Pearson and Spearman: ``within_query`` (different ROIs, same question),
    ``across_query_other_roi`` (different ROIs, different questions — the fair comparison
    with ``within_query``) and ``across_query_same_roi`` (one ROI, two questions). ``gap`` =
    within − across_other: > 0 means a question's ROIs resemble each other more than they
    resemble another question's. ``p_null`` comes from shuffling each ROI's question labels
    (what would be seen if the question did not matter).
    """
    by_query = _matrices(profiles, metric)
    questions = list(by_query)
    if len(questions) < 2:
        return {"questions": questions, "note": "needs at least 2 questions"}
    stack = np.stack([np.asarray(by_query[q], np.float64) for q in questions])  # (Q, n, L)
    n_queries, n_crops, n_layers = stack.shape
    if n_crops < 2:
        return {"questions": questions, "note": "needs at least 2 ROIs"}
    vectors = stack.reshape(n_queries * n_crops, n_layers)  # (Q*n, L), question-major
    query = np.repeat(np.arange(n_queries), n_crops)  # (Q*n,) question of each row
    crop = np.tile(np.arange(n_crops), n_queries)  # (Q*n,) ROI of each row
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"questions": questions, "n_rois": n_crops, "n_layers": n_layers}
    for name, rows in (("pearson", vectors), ("spearman", rank_rows(vectors))):
        corr = corr_matrix(rows)
        observed = _similarities(corr, query, crop)
        null = np.array([_similarities(corr, _permute_labels(query, crop, rng), crop)["gap"]
                         for _ in range(n_permutations)])
        null = null[~np.isnan(null)]
        observed["null_gap_mean"] = _num(null.mean()) if len(null) else None
        observed["p_null"] = _num((1 + np.sum(null >= observed["gap"] - 1e-12))
                                  / (1 + len(null))) if len(null) else None
        out[name] = {key: _num(value) for key, value in observed.items()}
    out["query_means"] = _question_means(stack, questions)
    out["query_specific"] = _is_specific(out["spearman"])
    out["interpretation"] = _interpret(out)
    return out


def _matrices(profiles: Sequence[Any] | Mapping[str, np.ndarray],
              metric: str | None) -> dict[str, np.ndarray]:
    if isinstance(profiles, Mapping):
        return {q: np.asarray(m) for q, m in profiles.items()}
    if metric is None:
        raise ValueError("cross_question(profiles) needs the metric to compare, e.g. "
                         "metric='block_influence'")
    first = profiles[0].crop_ids if profiles else []
    for profile in profiles:
        if list(profile.crop_ids) != list(first):
            raise ValueError(f"cross_question needs the same ROIs in every profile: "
                             f"{list(first)} vs {list(profile.crop_ids)} for {profile.question!r}")
    return {profile.question: profile.scores[metric] for profile in profiles}


def _similarities(corr: np.ndarray, query: np.ndarray, crop: np.ndarray) -> dict[str, float]:
    same_query = query[:, None] == query[None, :]
    same_crop = crop[:, None] == crop[None, :]
    within = _masked_mean(corr, same_query & ~same_crop)
    across_other = _masked_mean(corr, ~same_query & ~same_crop)
    return {"within_query": within, "across_query_other_roi": across_other,
            "across_query_same_roi": _masked_mean(corr, ~same_query & same_crop),
            "gap": within - across_other}


def _masked_mean(matrix: np.ndarray, mask: np.ndarray) -> float:
    values = matrix[mask]
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def _permute_labels(query: np.ndarray, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each ROI's question labels shuffled among its own rows."""
    permuted = query.copy()
    for r in np.unique(crop):
        rows = np.flatnonzero(crop == r)
        permuted[rows] = rng.permutation(query[rows])
    return permuted


def _question_means(stack: np.ndarray, questions: list[str]) -> dict[str, Any]:
    """How the questions' mean importance vectors (each ROI's row scaled to sum 1) compare."""
    sums = stack.sum(axis=2, keepdims=True)  # (Q, n, 1)
    scaled = np.divide(stack, sums, out=np.zeros_like(stack), where=sums != 0)
    means = scaled.mean(axis=1)  # (Q, L)
    k = bottom_count(stack.shape[2], 0.5)
    return {"pearson": _num(mean_pairwise_pearson(means)),
            "spearman": _num(mean_pairwise_spearman(means)),
            "jaccard_bottom_50": _num(mean_pairwise_jaccard(means, k)),
            "bottom_50": {q: sorted(bottom_k(means, k)[i].tolist())
                          for i, q in enumerate(questions)}}


def _is_specific(spearman: dict[str, float | None]) -> bool | None:
    gap, p = spearman.get("gap"), spearman.get("p_null")
    if gap is None or p is None:
        return None
    return bool(gap > 0 and p < 0.05)


def _interpret(out: dict[str, Any]) -> str:
    spearman = out["spearman"]
    if out["query_specific"] is None:
        return "undefined: too few ROIs or constant importance vectors"
    gap = f"within-query {spearman['within_query']:.2f} vs across-query " \
          f"{spearman['across_query_other_roi']:.2f} (Spearman, p_null {spearman['p_null']:.3f})"
    if out["query_specific"]:
        return f"query-specific: {gap}"
    return f"not detectably query-specific: {gap}; one profile per model may serve all questions"


def _num(value: Any) -> float | None:
    """A JSON-safe float: NaN and inf become None."""
    value = float(value)
    return value if math.isfinite(value) else None
