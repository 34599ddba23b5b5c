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
) -> dict[str, Any]:
    """Empirical coverage (overall, per class), mean set size, empty-set rate, how informative the sets are
    (``ambiguous_rate``: sets of more than one class; ``full_rate``: sets of every class, which say nothing)
    and the size histogram, with 95% CIs: exact Clopper–Pearson for the proportions of counts (coverage
    overall and per class as ``coverage_ci``, empty, ambiguous and full rates), percentile bootstrap for
    the mean set size."""
    from brainmri.evaluate.metrics import bootstrap_counts, estimate, proportion_estimate

    s = np.asarray(sets, dtype=bool)
    y = as_labels(labels, len(s), len(classes))
    covered = s[np.arange(len(y)), y].astype(np.float64)
    size = s.sum(1).astype(np.float64)
    empty = (size == 0).astype(np.float64)
    w = bootstrap_counts(len(y), n_bootstrap, seed) if n_bootstrap > 0 else None
    tot = w.sum(1) if w is not None else None

    def est(v: np.ndarray) -> dict[str, float | None]:
        return estimate(float(v.mean()), (w @ v) / tot if w is not None else None)

    per_class = {}
    for i, c in enumerate(classes):
        m = y == i
        ci = proportion_estimate(covered[m].sum(), m.sum())
        per_class[c] = {
            "coverage": float(covered[m].mean()) if m.any() else None,
            "coverage_ci": [ci["ci_low"], ci["ci_high"]],
            "mean_set_size": float(size[m].mean()) if m.any() else None,
            "n": int(m.sum()),
        }
    hist = np.bincount(size.astype(int), minlength=len(classes) + 1)
    return {
        "coverage": proportion_estimate(covered.sum(), len(y)),
        "mean_set_size": est(size),
        "empty_rate": proportion_estimate(empty.sum(), len(y)),
        "ambiguous_rate": proportion_estimate((size > 1).sum(), len(y)),
        "full_rate": proportion_estimate((size == s.shape[1]).sum(), len(y)),
        "per_class": per_class,
        "set_size_counts": {str(k): int(v) for k, v in enumerate(hist)},
        "n": len(y),
    }
