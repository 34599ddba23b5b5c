"""Post-hoc calibration fitted on validation data: temperature scaling and the tumour threshold.

``TemperatureScaler`` (Guo et al. 2017): one scalar T > 0 divides the logits, ``softmax(z / T)``.
T is fitted per model on that model's validation logits by minimising the negative log-likelihood
over ``log T`` (L-BFGS-B with the analytic gradient; log T keeps T positive and makes the problem
well scaled). Dividing all logits by one positive number never changes the arg-max, so accuracy,
the confusion matrix and every ranking *within a sample* stay the same; only the confidence changes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from brainmri.calibrate.base import FittedMixin, as_labels
from brainmri.calibrate.probabilities import softmax

T_BOUNDS = (0.05, 20.0)


def _nll_and_grad(log_t: float, z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean NLL of softmax(z / T) and its derivative in log T."""
    from scipy.special import logsumexp

    t = math.exp(float(np.ravel(log_t)[0]))
    s = z / t
    lse = logsumexp(s, axis=1)
    zy = s[np.arange(len(y)), y]
    nll = float(np.mean(lse - zy))
    p = np.exp(s - lse[:, None])
    # d/d(log T) of (lse(z/T) - z_y/T) = (z_y - E_p[z]) / T
    grad = float(np.mean(zy - (p * s).sum(1)))
    return nll, grad


class TemperatureScaler(FittedMixin):
    """Fit ``temperature_`` on validation logits; ``predict_proba(logits) = softmax(logits / T)``.

    Attributes after ``fit``: ``temperature_``, ``nll_before_``, ``nll_after_``, ``n_fit_``.
    """

    _fitted_attrs = ("temperature_",)

    def __init__(self) -> None:
        self.temperature_: float | None = None
        self.nll_before_: float | None = None
        self.nll_after_: float | None = None
        self.n_fit_: int | None = None

    def fit(self, logits: Any, labels: Any) -> TemperatureScaler:
        from scipy.optimize import minimize

        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or len(z) == 0:
            raise ValueError(f"expected non-empty logits of shape (N, C), got {z.shape}")
        if not np.all(np.isfinite(z)):
            raise ValueError("logits contain NaN or infinity")
        y = as_labels(labels, len(z), z.shape[1])
        bounds = [(math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1]))]
        res = minimize(_nll_and_grad, x0=np.zeros(1), args=(z, y), jac=True, method="L-BFGS-B", bounds=bounds)
        log_t = float(np.ravel(res.x)[0])
        self.temperature_ = math.exp(log_t)
        self.nll_before_ = _nll_and_grad(0.0, z, y)[0]
        self.nll_after_ = _nll_and_grad(log_t, z, y)[0]
        if self.nll_after_ > self.nll_before_:  # never worse than T = 1 on the data it was fitted on
            self.temperature_, self.nll_after_ = 1.0, self.nll_before_
        self.n_fit_ = len(z)
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Scaled logits ``logits / T``."""
        self.check_fitted()
        return np.asarray(logits, dtype=np.float64) / self.temperature_

    def predict_proba(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / T)`` (float64, (N, C))."""
        return softmax(self.transform(logits))

    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        return {
            "temperature": self.temperature_,
            "nll_before": self.nll_before_,
            "nll_after": self.nll_after_,
            "n": self.n_fit_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemperatureScaler:
        obj = cls()
        t = float(d["temperature"])
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be a positive number, got {d['temperature']!r}")
        obj.temperature_ = t
        obj.nll_before_, obj.nll_after_, obj.n_fit_ = d.get("nll_before"), d.get("nll_after"), d.get("n")
        return obj
