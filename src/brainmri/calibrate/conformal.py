"""Split-conformal prediction sets (Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction").

A prediction set is the list of classes the model cannot rule out at error rate alpha. Fitted on
validation (calibration) data that the model was not trained on; if that data and the new data are
exchangeable, P(true class in set) >= 1 - alpha, whatever the model.

Scores s(x, y), larger = less conforming:

- ``lac`` (least ambiguous set-valued classifier, Sadinle et al. 2019): s = 1 - p_y; set = classes with
  p_c >= 1 - qhat. Smallest sets on average. The default.
- ``aps`` (adaptive prediction sets, Romano et al. 2020), **deterministic (non-randomised) variant**:
  s = total probability of the classes ranked at or above y (p sorted descending, cumulative, inclusive);
  set = classes whose inclusive cumulative mass is <= qhat. Sets adapt to how spread the probabilities
  are. Without the randomised tie-break of the original, results are reproducible (the same image always
  gets the same set), but with a very confident model the true-class scores pile up just below 1, qhat
  lands there and the sets swell with classes of negligible probability. Prefer ``lac`` for such models.

Sets are never empty: the arg-max class is always added (``allow_empty=False``, as RAPS'
``disallow_zero_sets``). Adding a class can only raise coverage, so the guarantee holds; an empty set
would otherwise appear whenever the model is more accurate than 1 - alpha (the procedure "spends" the
allowed error on empty sets), which reads as nonsense to a clinician.

qhat is the ceil((n + 1)(1 - alpha))-th smallest of the n calibration scores (the finite-sample
quantile ceil((n+1)(1-alpha))/n). When that rank exceeds n (too few calibration samples for alpha),
qhat = +inf: every set holds every class (stored as ``null`` in JSON).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from brainmri.calibrate.base import FittedMixin, as_labels, as_probs

METHODS = ("lac", "aps")


def alpha_key(alpha: float) -> str:
    """The JSON key of a miscoverage level: ``repr(float(alpha))`` (``0.1`` -> ``"0.1"``), used by
    ``calibration.json`` and by every report that lists results per alpha."""
    return repr(float(alpha))


def _aps_cumulative(p: np.ndarray) -> np.ndarray:
    """For every (sample, class): total probability of the classes ranked at or above it (inclusive)."""
    order = np.argsort(-p, axis=1, kind="stable")
    cum_sorted = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
    out = np.empty_like(p)
    np.put_along_axis(out, order, cum_sorted, axis=1)
    return out


def class_scores(probs: Any, method: str) -> np.ndarray:
    """Non-conformity score of every class for every sample, (N, C)."""
    p = as_probs(probs)
    if method == "lac":
        return 1.0 - p
    if method == "aps":
        return _aps_cumulative(p)
    raise ValueError(f"unknown conformal method '{method}'; choose from {METHODS}")


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest score; +inf when that rank exceeds n."""
    n = len(scores)
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    if k > n:
        return math.inf
    return float(np.sort(scores)[max(k, 1) - 1])


class ConformalPredictor(FittedMixin):
    """Split-conformal sets for one alpha. Attributes after ``fit``: ``qhat_``, ``n_fit_``."""

    _fitted_attrs = ("qhat_",)

    def __init__(self, alpha: float = 0.1, method: str = "lac", allow_empty: bool = False) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if method not in METHODS:
            raise ValueError(f"unknown conformal method '{method}'; choose from {METHODS}")
        self.alpha = float(alpha)
        self.method = method
        self.allow_empty = bool(allow_empty)
        self.qhat_: float | None = None
        self.n_fit_: int | None = None

    def fit(self, probs: Any, labels: Any) -> ConformalPredictor:
        """Calibrate on (validation) probabilities (N, C) and true class indices (N,)."""
        p = as_probs(probs)
        y = as_labels(labels, len(p), p.shape[1])
        if len(p) == 0:
            raise ValueError("conformal calibration needs at least one labelled sample")
        true_scores = class_scores(p, self.method)[np.arange(len(y)), y]
        self.qhat_ = conformal_quantile(true_scores, self.alpha)
        self.n_fit_ = len(p)
        return self

    def predict_sets(self, probs: Any) -> np.ndarray:
        """Boolean (N, C): True where the class is in the prediction set."""
        self.check_fitted()
        p = as_probs(probs)
        if math.isinf(self.qhat_):
            return np.ones(p.shape, dtype=bool)
        sets = class_scores(p, self.method) <= self.qhat_ + 1e-12
        if not self.allow_empty and len(p):
            sets[np.arange(len(p)), p.argmax(1)] = True
        return sets

    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        return {
            "method": self.method,
            "alpha": self.alpha,
            "allow_empty": self.allow_empty,
            "qhat": None if math.isinf(self.qhat_) else self.qhat_,
            "n": self.n_fit_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalPredictor:
        obj = cls(float(d["alpha"]), str(d["method"]), bool(d.get("allow_empty", False)))
        obj.qhat_ = math.inf if d.get("qhat") is None else float(d["qhat"])
        obj.n_fit_ = d.get("n")
        return obj


def format_set(row: np.ndarray, classes: Sequence[str]) -> str:
    """``glioma|meningioma`` (``""`` for an empty set)."""
    return "|".join(c for c, m in zip(classes, row, strict=True) if m)
