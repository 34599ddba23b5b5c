"""Shared pieces of the fitted objects (temperature, threshold, conformal quantiles, out-of-domain score).

They follow scikit-learn's conventions: ``fit(...)`` stores everything it learns in attributes whose
names end in ``_`` and returns ``self``; ``to_dict()/from_dict()`` round-trip through JSON; using an
object before it is fitted raises :class:`NotFittedError` naming the object and how to fit it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from brainmri.errors import NotFittedError


class FittedMixin:
    """``check_fitted()`` raises :class:`NotFittedError` unless every name in ``_fitted_attrs`` is set."""

    _fitted_attrs: tuple[str, ...] = ()

    @property
    def is_fitted(self) -> bool:
        return all(getattr(self, a, None) is not None for a in self._fitted_attrs)

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit(...) on validation data "
                f"or restore it with {type(self).__name__}.from_dict(...)"
            )


def as_probs(probs: Any, n_classes: int | None = None) -> np.ndarray:
    """Validate a (N, C) probability matrix (float64, finite, rows summing to 1 within 1e-3)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"expected probabilities of shape (N, C), got {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(f"expected {n_classes} classes, got {p.shape[1]} columns")
    if p.size and (not np.all(np.isfinite(p)) or np.any(p < -1e-9) or np.any(np.abs(p.sum(1) - 1) > 1e-3)):
        raise ValueError("probabilities must be finite, non-negative and sum to 1 per row (pass softmax output)")
    return p


def as_labels(labels: Any, n: int, n_classes: int) -> np.ndarray:
    """Validate integer labels in [0, C) of length N."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"expected {n} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}); drop unknown (-1) labels first")
    return y
