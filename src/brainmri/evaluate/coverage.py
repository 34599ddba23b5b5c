"""Coverage of conformal prediction sets on held-out data (the evaluation side of ``calibrate.conformal``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from brainmri.calibrate.base import as_labels


def set_metrics(
    sets: np.ndarray,
    labels: Any,
    classes: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    groups: Any = None,
) -> dict[str, Any]:
    """Empirical coverage (overall, per class), mean set size, empty-set rate, how informative the sets are
    (``ambiguous_rate``: sets of more than one class; ``full_rate``: sets of every class, which say nothing)
    and the size histogram, with 95% CIs: exact Clopper–Pearson for the proportions of counts (coverage
    overall and per class as ``coverage_ci``, empty, ambiguous and full rates), percentile bootstrap for
    the mean set size. With ``groups`` every interval comes from resampling whole groups (``"group bootstrap"``)."""
    from brainmri.evaluate.metrics import bootstrap_counts, ci_method, proportion_estimate

    s = np.asarray(sets, dtype=bool)
    y = as_labels(labels, len(s), len(classes))
    covered = s[np.arange(len(y)), y].astype(np.float64)
    size = s.sum(1).astype(np.float64)
    empty = (size == 0).astype(np.float64)
    w = bootstrap_counts(len(y), n_bootstrap, seed, groups) if n_bootstrap > 0 else None
    method = ci_method(groups)

    def est(v: np.ndarray, rows: np.ndarray | None = None) -> dict[str, float | None]:
        return _mean_estimate(v, np.ones(len(v), bool) if rows is None else rows, w, method)

    def share(v: np.ndarray, rows: np.ndarray | None = None) -> dict[str, float | None]:
        """A proportion: exact interval for independent rows, the group bootstrap otherwise."""
        keep = np.ones(len(v), bool) if rows is None else rows
        if groups is not None:
            return _mean_estimate(v, keep, w, method)
        return proportion_estimate(v[keep].sum(), keep.sum())

    per_class = {}
    for i, c in enumerate(classes):
        m = y == i
        ci = share(covered, m)
        per_class[c] = {
            "coverage": float(covered[m].mean()) if m.any() else None,
            "coverage_ci": [ci["ci_low"], ci["ci_high"]],
            "mean_set_size": float(size[m].mean()) if m.any() else None,
            "n": int(m.sum()),
        }
    hist = np.bincount(size.astype(int), minlength=len(classes) + 1)
    return {
        "coverage": share(covered),
        "mean_set_size": est(size),
        "empty_rate": share(empty),
        "ambiguous_rate": share((size > 1).astype(np.float64)),
        "full_rate": share((size == s.shape[1]).astype(np.float64)),
        "per_class": per_class,
        "set_size_counts": {str(k): int(v) for k, v in enumerate(hist)},
        "n": len(y),
    }


def _mean_estimate(v: np.ndarray, keep: np.ndarray, w: np.ndarray | None, method: str) -> dict[str, float | None]:
    """Mean of ``v`` over the rows ``keep`` with the percentile interval of its resampled means (``w``: (B, N))."""
    from brainmri.evaluate.metrics import estimate

    if not keep.any():
        return {"value": None, "ci_low": None, "ci_high": None, "ci_method": None}
    if w is None:
        return estimate(float(v[keep].mean()), None, method)
    tot = w[:, keep].sum(1)
    resampled = np.full(len(w), np.nan)
    np.divide(w[:, keep] @ v[keep], tot, out=resampled, where=tot > 0)
    return estimate(float(v[keep].mean()), resampled, method)
