"""Split-conformal prediction sets (Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction").

A prediction set is the list of classes the model cannot rule out at error rate alpha. Fitted on
validation (calibration) data that the model was not trained on; if that data and the new data are
exchangeable, P(true class in set) >= 1 - alpha, whatever the model.

Scores s(x, y), larger = less conforming:

- ``lac`` (least ambiguous set-valued classifier, Sadinle et al. 2019): s = 1 - p_y; set = classes with
  p_c >= 1 - qhat. Smallest sets on average.
- ``aps`` (adaptive prediction sets, Romano et al. 2020), **deterministic (non-randomised) variant**:
  s = total probability of the classes ranked at or above y (p sorted descending, cumulative, inclusive);
  set = classes whose inclusive cumulative mass is <= qhat. Sets adapt to how spread the probabilities
  are. Without the randomised tie-break of the original, results are reproducible (the same image always
  gets the same set), but with a very confident model the true-class scores pile up just below 1, qhat
  lands there and the sets swell with classes of negligible probability.
- ``raps`` (regularised APS, Angelopoulos et al. 2021, "Uncertainty Sets for Image Classifiers using
  Conformal Prediction"), deterministic like ``aps``: s = APS score + lam * max(0, rank_y - k_reg), rank
  1-based. The penalty makes classes beyond the k_reg most likely ones expensive, which removes exactly
  the swelling of deterministic APS with a peaked model (RAPS sets are never larger than APS sets at the
  same qhat, and qhat adapts). Fixed, documented defaults: ``lam = 0.1`` (10% probability mass per extra
  rank; from the paper's grid {0.001, 0.01, 0.1, 0.2, 0.5}) and ``k_reg = 1`` (every class after the
  arg-max pays). ``k_reg=None`` fits it as the paper's heuristic does: the smallest k whose top-k accuracy
  on the calibration data reaches 1 - alpha (the (1 - alpha) quantile of the true class's rank; this
  reuses the calibration data for one integer in 1..C, where the paper tunes it on a separate split).
  With 4 classes and a ~90%-accurate model that heuristic gives k_reg = 2-3 at alpha <= 0.05, where the
  penalty hardly touches the top classes and RAPS sets swell like APS ones (bench/conformal.py), hence
  the fixed k_reg = 1.

Calibration is **marginal** by default (one qhat: coverage holds on average over classes, so an easy class
can be over-covered while a hard one is under-covered). ``mondrian=True`` is class-conditional (Mondrian,
Vovk 2005; "class-conditional conformal" in Angelopoulos & Bates section 4.1): one qhat per true class,
each the finite-sample quantile of the scores of that class's calibration samples, and class c is in the
set of x when s(x, c) <= qhat_c. Then P(c in set | Y = c) >= 1 - alpha for every class c, at the price of
larger sets for the hard classes and of needing enough calibration samples per class (a class with
fewer than ceil(1/alpha) - 1 samples gets qhat = +inf: always in the set).

Sets are never empty by default: the arg-max class is always added (``allow_empty=False``, as RAPS'
``disallow_zero_sets``). Adding a class can only raise coverage, so the guarantee holds. With
``allow_empty=True`` an empty set appears whenever the model is more accurate than 1 - alpha (the
procedure "spends" the allowed error on empty sets), which reads as nonsense to a clinician. The price
of non-empty sets: when alpha exceeds the model's error rate, qhat falls below the top-class score of
almost every image and the sets are just the arg-max (coverage = accuracy >= 1 - alpha, size 1, nothing
learned). Sets only say something ("the model cannot tell glioma from meningioma here") at an alpha
below the error rate; ``bench/conformal.py`` measures which alpha that is (docs/evaluation.md).

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

METHODS = ("lac", "aps", "raps")
RAPS_LAMBDA = 0.1
"""Default RAPS penalty per rank beyond k_reg (probability mass)."""
RAPS_K_REG = 1
"""Default RAPS k_reg: ranks beyond it are penalised (None: fitted on the calibration data)."""


def alpha_key(alpha: float) -> str:
    """The JSON key of a miscoverage level: ``repr(float(alpha))`` (``0.1`` -> ``"0.1"``), used by
    ``calibration.json`` and by every report that lists results per alpha."""
    return repr(float(alpha))


def variant_key(method: str, mondrian: bool = False) -> str:
    """The report key of a conformal variant: ``lac``, ``aps``, ``raps`` (marginal) or ``lac_mondrian`` ..."""
    return f"{method}_mondrian" if mondrian else method


def variants() -> list[tuple[str, bool]]:
    """Every (method, mondrian) pair, marginal first: what evaluation reports."""
    return [(m, mondrian) for mondrian in (False, True) for m in METHODS]


def _ranks(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The descending order of every row and the 1-based rank of every (sample, class)."""
    order = np.argsort(-p, axis=1, kind="stable")
    ranks = np.empty(p.shape, dtype=np.int64)
    np.put_along_axis(ranks, order, np.arange(1, p.shape[1] + 1)[None, :].repeat(len(p), 0), axis=1)
    return order, ranks


def _aps_cumulative(p: np.ndarray) -> np.ndarray:
    """For every (sample, class): total probability of the classes ranked at or above it (inclusive)."""
    order, _ = _ranks(p)
    cum_sorted = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
    out = np.empty_like(p)
    np.put_along_axis(out, order, cum_sorted, axis=1)
    return out


def true_class_ranks(probs: Any, labels: Any) -> np.ndarray:
    """1-based rank of the true class in every row of ``probs`` (1 = the arg-max)."""
    p = as_probs(probs)
    y = as_labels(labels, len(p), p.shape[1])
    return _ranks(p)[1][np.arange(len(y)), y]


def fit_k_reg(probs: Any, labels: Any, alpha: float) -> int:
    """RAPS' k_reg: the smallest k whose top-k accuracy reaches 1 - alpha (at least 1)."""
    r = true_class_ranks(probs, labels)
    for k in range(1, as_probs(probs).shape[1] + 1):
        if (r <= k).mean() >= 1 - alpha - 1e-12:
            return k
    return as_probs(probs).shape[1]


def class_scores(probs: Any, method: str, *, lam: float = RAPS_LAMBDA, k_reg: int = 1) -> np.ndarray:
    """Non-conformity score of every class for every sample, (N, C). ``lam``/``k_reg``: RAPS only."""
    p = as_probs(probs)
    if method == "lac":
        return 1.0 - p
    if method == "aps":
        return _aps_cumulative(p)
    if method == "raps":
        return _aps_cumulative(p) + lam * np.maximum(0, _ranks(p)[1] - k_reg)
    raise ValueError(f"unknown conformal method '{method}'; choose from {METHODS}")


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest score; +inf when that rank exceeds n."""
    n = len(scores)
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    if k > n:
        return math.inf
    return float(np.sort(scores)[max(k, 1) - 1])


def _json_q(q: float) -> float | None:
    return None if math.isinf(q) else float(q)


def _from_json_q(q: Any) -> float:
    return math.inf if q is None else float(q)


class ConformalPredictor(FittedMixin):
    """Split-conformal sets for one alpha.

    Attributes after ``fit``: ``qhat_`` (the marginal quantile), ``qhat_per_class_`` (Mondrian only: one
    per class index, else None), ``k_reg_`` (RAPS), ``n_fit_``.
    """

    _fitted_attrs = ("qhat_",)

    def __init__(
        self,
        alpha: float = 0.1,
        method: str = "lac",
        allow_empty: bool = False,
        *,
        mondrian: bool = False,
        lam: float = RAPS_LAMBDA,
        k_reg: int | None = RAPS_K_REG,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if method not in METHODS:
            raise ValueError(f"unknown conformal method '{method}'; choose from {METHODS}")
        if lam < 0 or (k_reg is not None and k_reg < 0):
            raise ValueError(f"RAPS needs lam >= 0 and k_reg >= 0, got lam={lam}, k_reg={k_reg}")
        self.alpha = float(alpha)
        self.method = method
        self.allow_empty = bool(allow_empty)
        self.mondrian = bool(mondrian)
        self.lam = float(lam)
        self.k_reg = None if k_reg is None else int(k_reg)
        self.qhat_: float | None = None
        self.qhat_per_class_: list[float] | None = None
        self.k_reg_: int | None = self.k_reg
        self.n_fit_: int | None = None

    @property
    def variant(self) -> str:
        return variant_key(self.method, self.mondrian)

    def scores(self, probs: Any) -> np.ndarray:
        """Non-conformity scores (N, C) with this predictor's method and (fitted) RAPS parameters."""
        return class_scores(probs, self.method, lam=self.lam, k_reg=self.k_reg_ or 0)

    def fit(self, probs: Any, labels: Any) -> ConformalPredictor:
        """Calibrate on (validation) probabilities (N, C) and true class indices (N,)."""
        p = as_probs(probs)
        y = as_labels(labels, len(p), p.shape[1])
        if len(p) == 0:
            raise ValueError("conformal calibration needs at least one labelled sample")
        if self.method == "raps":
            self.k_reg_ = fit_k_reg(p, y, self.alpha) if self.k_reg is None else self.k_reg
        true_scores = self.scores(p)[np.arange(len(y)), y]
        self.qhat_ = conformal_quantile(true_scores, self.alpha)
        self.qhat_per_class_ = None
        if self.mondrian:
            self.qhat_per_class_ = [conformal_quantile(true_scores[y == c], self.alpha) for c in range(p.shape[1])]
        self.n_fit_ = len(p)
        return self

    def predict_sets(self, probs: Any) -> np.ndarray:
        """Boolean (N, C): True where the class is in the prediction set."""
        self.check_fitted()
        p = as_probs(probs)
        q = np.asarray(self.qhat_per_class_ if self.mondrian else [self.qhat_] * p.shape[1], dtype=np.float64)
        if len(q) != p.shape[1]:
            raise ValueError(f"fitted on {len(q)} classes, got probabilities of {p.shape[1]}")
        if np.isinf(q).all():
            return np.ones(p.shape, dtype=bool)
        sets = self.scores(p) <= q[None, :] + 1e-12
        if not self.allow_empty and len(p):
            sets[np.arange(len(p)), p.argmax(1)] = True
        return sets

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the RAPS keys only for ``raps``, ``qhat_per_class`` only when Mondrian."""
        self.check_fitted()
        d: dict[str, Any] = {
            "method": self.method,
            "alpha": self.alpha,
            "allow_empty": self.allow_empty,
            "mondrian": self.mondrian,
            "qhat": _json_q(self.qhat_),
            "n": self.n_fit_,
        }
        if self.method == "raps":
            d |= {"lam": self.lam, "k_reg": self.k_reg_, "k_reg_fitted": self.k_reg is None}
        if self.mondrian:
            d["qhat_per_class"] = [_json_q(q) for q in self.qhat_per_class_]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalPredictor:
        """Inverse of ``to_dict``; entries written before RAPS / Mondrian existed (no such keys) load as marginal."""
        method = str(d["method"])
        raps = method == "raps"
        fitted_k = bool(d.get("k_reg_fitted", False))
        obj = cls(
            float(d["alpha"]),
            method,
            bool(d.get("allow_empty", False)),
            mondrian=bool(d.get("mondrian", False)),
            lam=float(d.get("lam", RAPS_LAMBDA)) if raps else RAPS_LAMBDA,
            k_reg=None if fitted_k else int(d.get("k_reg", RAPS_K_REG)) if raps else RAPS_K_REG,
        )
        obj.qhat_ = _from_json_q(d.get("qhat"))
        obj.k_reg_ = int(d.get("k_reg", RAPS_K_REG)) if raps else obj.k_reg
        if obj.mondrian:
            obj.qhat_per_class_ = [_from_json_q(q) for q in d["qhat_per_class"]]
        obj.n_fit_ = d.get("n")
        return obj


def format_set(row: np.ndarray, classes: Sequence[str]) -> str:
    """``glioma|meningioma`` (``""`` for an empty set)."""
    return "|".join(c for c, m in zip(classes, row, strict=True) if m)
