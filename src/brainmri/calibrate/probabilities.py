"""From logits to the probabilities every decision uses: softmax, tumour probability, entropy.

One home for these, below bundle and infer, so the deployed path computes exactly what evaluation
reported (the tumour probability is 1 - p(no_tumor) of the *calibrated* softmax everywhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from brainmri.calibrate.base import as_probs
from brainmri.labels import NO_TUMOR, TUMOR


def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax in float64 (stable)."""
    from scipy.special import softmax as _softmax

    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected logits of shape (N, C), got {z.shape}")
    return _softmax(z, axis=1)


def tumour_probability(probs: Any, classes: Sequence[str]) -> np.ndarray:
    """p_tumour = 1 - p(no_tumor)."""
    if NO_TUMOR not in classes:
        raise ValueError(f"class '{NO_TUMOR}' is needed for the tumour-vs-no-tumour view; classes: {list(classes)}")
    p = as_probs(probs, len(classes))
    return 1.0 - p[:, list(classes).index(NO_TUMOR)]


def tumour_labels(label_names: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """1 for a tumour class or the binary label ``tumor``, 0 for ``no_tumor``, -1 when unknown."""
    known = set(classes) | {TUMOR}
    return np.array([-1 if n not in known else (0 if n == NO_TUMOR else 1) for n in label_names], dtype=np.int64)


def tumour_call(p_tumour: Any, threshold: float) -> np.ndarray:
    """Bool (N,): the slice is called 'tumour' when calibrated p_tumour >= threshold (one rule everywhere)."""
    return np.asarray(p_tumour, dtype=np.float64) >= float(threshold)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy / log(C): 0 for a one-hot distribution, 1 for the uniform one."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=-1) / np.log(p.shape[-1])
