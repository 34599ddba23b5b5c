"""``ThresholdSelector``: the tumour-vs-no-tumour operating point. Clinical reasoning: a missed tumour
(false negative) delays treatment, while a false alarm costs a radiologist's second look, so we fix
the sensitivity first. Among all thresholds whose validation sensitivity reaches the target
(``cfg.evaluate.threshold_target_sensitivity``, default 0.95) we take the *largest*, because a larger
threshold calls fewer slices 'tumour' and so has the highest specificity compatible with the target.
That threshold is then capped at ``max_threshold`` (default 0.5, ``cfg.evaluate.threshold_max``): on a
confident in-distribution validation set the largest such threshold can sit near 1, which *trades away*
sensitivity the model has (a tumour with p_tumour = 0.9 would be called 'no tumour') and collapses on
other scanners, where probabilities are less extreme. With the cap, the threshold can only make the
tumour call more sensitive than the plain majority rule p_tumour >= 0.5, never less.
The target is met on validation by construction; its test sensitivity is an estimate and is reported
with a confidence interval. It applies to the *calibrated* p_tumour = 1 - p(no_tumor) (temperature
scaling changes that number, and not monotonically across samples, so the two must not be mixed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from brainmri.calibrate.base import FittedMixin
from brainmri.calibrate.probabilities import tumour_call


class ThresholdSelector(FittedMixin):
    """Tumour-vs-no-tumour threshold: the largest t with validation sensitivity(p_tumour >= t) >= target.

    Attributes after ``fit``: ``threshold_``, ``sensitivity_``, ``specificity_`` (on the fit data),
    ``n_tumour_``, ``n_no_tumour_``.
    """

    _fitted_attrs = ("threshold_",)

    def __init__(self, target_sensitivity: float = 0.95, max_threshold: float = 0.5) -> None:
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
        if not 0.0 < max_threshold <= 1.0:
            raise ValueError(f"max_threshold must be in (0, 1], got {max_threshold}")
        self.target_sensitivity = float(target_sensitivity)
        self.max_threshold = float(max_threshold)
        self.capped_: bool | None = None
        self.threshold_: float | None = None
        self.sensitivity_: float | None = None
        self.specificity_: float | None = None
        self.n_tumour_: int | None = None
        self.n_no_tumour_: int | None = None

    def fit(self, p_tumour: Any, y_tumour: Any) -> ThresholdSelector:
        s = np.asarray(p_tumour, dtype=np.float64)
        y = np.asarray(y_tumour).astype(np.int64)
        if s.ndim != 1 or s.shape != y.shape:
            raise ValueError("p_tumour and y_tumour must be 1-D of the same length")
        if np.any((y != 0) & (y != 1)):
            raise ValueError("y_tumour must be 0/1; drop unknown rows first")
        pos = np.sort(s[y == 1])[::-1]
        if len(pos) == 0:
            raise ValueError("cannot choose a threshold: no tumour slices in the fit data")
        # need k positives at or above t: t = the k-th largest positive score
        k = max(1, math.ceil(self.target_sensitivity * len(pos) - 1e-9))
        t = float(pos[k - 1])
        self.capped_ = t > self.max_threshold
        t = min(t, self.max_threshold)
        called = s >= t
        neg = y == 0
        self.threshold_ = t
        self.sensitivity_ = float(called[y == 1].mean())
        self.specificity_ = float((~called[neg]).mean()) if neg.any() else None
        self.n_tumour_, self.n_no_tumour_ = len(pos), int(neg.sum())
        return self

    def predict(self, p_tumour: Any) -> np.ndarray:
        """True where the slice is called 'tumour' (``p_tumour >= threshold_``)."""
        self.check_fitted()
        return tumour_call(p_tumour, self.threshold_)

    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        return {
            "threshold": self.threshold_,
            "target_sensitivity": self.target_sensitivity,
            "max_threshold": self.max_threshold,
            "capped": self.capped_,
            "sensitivity": self.sensitivity_,
            "specificity": self.specificity_,
            "n_tumour": self.n_tumour_,
            "n_no_tumour": self.n_no_tumour_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ThresholdSelector:
        obj = cls(float(d.get("target_sensitivity", 0.95)), float(d.get("max_threshold", 1.0)))
        obj.capped_ = d.get("capped")
        t = float(d["threshold"])
        if not (math.isfinite(t) and 0.0 <= t <= 1.0):
            raise ValueError(f"threshold must be in [0, 1], got {d['threshold']!r}")
        obj.threshold_ = t
        obj.sensitivity_, obj.specificity_ = d.get("sensitivity"), d.get("specificity")
        obj.n_tumour_, obj.n_no_tumour_ = d.get("n_tumour"), d.get("n_no_tumour")
        return obj
