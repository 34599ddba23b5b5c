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
    """Empirical coverage (overall, per class), mean set size, empty-set rate and size histogram, with 95%
    CIs on the overall numbers: exact Clopper–Pearson for coverage and empty-set rate (proportions of
    counts), percentile bootstrap for the mean set size."""
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
        per_class[c] = {
            "coverage": float(covered[m].mean()) if m.any() else None,
            "mean_set_size": float(size[m].mean()) if m.any() else None,
            "n": int(m.sum()),
        }
    hist = np.bincount(size.astype(int), minlength=len(classes) + 1)
    return {
        "coverage": proportion_estimate(covered.sum(), len(y)),
        "mean_set_size": est(size),
        "empty_rate": proportion_estimate(empty.sum(), len(y)),
        "per_class": per_class,
        "set_size_counts": {str(k): int(v) for k, v in enumerate(hist)},
        "n": len(y),
    }
