"""Everything fitted after training, in one object saved as ``runs/<name>/calibration.json``.

This is what prediction, export and serving load (``PostHocCalibration.load(run.calibration_path)``):

    cal = PostHocCalibration.load(path)
    probs = cal.probabilities(logits)          # softmax(logits / T)
    tumour = cal.tumour_call(probs)            # bool: p_tumour >= threshold
    sets = cal.prediction_sets(probs)          # bool (N, C) at cal.default_alpha (or alpha=...)

``calibration.json``::

    {"version": 1, "classes": [...], "fitted_on": "val", "n": 612,
     "temperature": 1.37,
     "threshold": 0.21,                      # on calibrated p_tumour = 1 - p(no_tumor)
     "conformal": {"0.1": {"method": "lac", "qhat": 0.62, "allow_empty": false, "mondrian": false}, ...},
     "default_alpha": 0.1,
     "details": {"temperature": {...}, "threshold": {...}, "conformal": {...}, "source": {...}}}

``qhat`` null means +inf (every class in every set: too few calibration samples for that alpha). A conformal
entry may also hold ``qhat_per_class`` (Mondrian: the sets use these, ``qhat`` is the marginal one, for
reference) and ``lam``, ``k_reg``, ``k_reg_fitted`` (RAPS); files written before those existed load as
marginal (``ConformalPredictor.from_dict``).
All three are fitted on the validation split only: the temperature first on the logits, then the
threshold and conformal quantiles on the *calibrated* validation probabilities.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.calibrate.base import FittedMixin
from brainmri.calibrate.conformal import RAPS_K_REG, RAPS_LAMBDA, ConformalPredictor, alpha_key
from brainmri.calibrate.probabilities import tumour_labels, tumour_probability
from brainmri.calibrate.temperature import TemperatureScaler
from brainmri.calibrate.threshold import ThresholdSelector
from brainmri.errors import DataError
from brainmri.labels import NO_TUMOR

VERSION = 1


class PostHocCalibration(FittedMixin):
    """Temperature + tumour threshold + conformal quantiles, fitted together on validation data."""

    _fitted_attrs = ("temperature_",)

    def __init__(
        self,
        classes: Sequence[str],
        *,
        alphas: Sequence[float] = (0.1, 0.05),
        conformal_method: str = "lac",
        conformal_mondrian: bool = False,
        raps_lambda: float = RAPS_LAMBDA,
        raps_k_reg: int | None = RAPS_K_REG,
        target_sensitivity: float = 0.95,
        max_threshold: float = 0.5,
    ) -> None:
        self.classes = list(classes)
        self.alphas = [float(a) for a in alphas]
        self.conformal_method = conformal_method
        self.conformal_options: dict[str, Any] = {
            "mondrian": conformal_mondrian,
            "lam": raps_lambda,
            "k_reg": raps_k_reg,
        }
        self.target_sensitivity = float(target_sensitivity)
        self.max_threshold = float(max_threshold)
        self.temperature_: TemperatureScaler | None = None
        self.threshold_: ThresholdSelector | None = None
        self.conformal_: dict[float, ConformalPredictor] | None = None
        self.fitted_on_: str | None = None
        self.n_fit_: int | None = None
        self.source_: dict[str, Any] = {}

    @classmethod
    def from_config(cls, classes: Sequence[str], ecfg: Any) -> PostHocCalibration:
        """From ``cfg.evaluate`` (conformal_alphas, conformal_method, threshold_target_sensitivity)."""
        return cls(
            classes,
            alphas=ecfg.conformal_alphas,
            conformal_method=ecfg.conformal_method,
            conformal_mondrian=ecfg.conformal_mondrian,
            raps_lambda=ecfg.conformal_raps_lambda,
            raps_k_reg=ecfg.conformal_raps_k_reg,
            target_sensitivity=ecfg.threshold_target_sensitivity,
            max_threshold=ecfg.threshold_max,
        )

    def fit(self, logits: Any, labels: Any, *, fitted_on: str = "val", source: dict[str, Any] | None = None):
        """Fit on validation logits (N, C) and class indices (N,); rows with label -1 must be dropped."""
        z = np.asarray(logits, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        self.temperature_ = TemperatureScaler().fit(z, y)
        probs = self.temperature_.predict_proba(z)
        self.threshold_ = None
        if NO_TUMOR in self.classes:
            yt = tumour_labels([self.classes[i] for i in y], self.classes)
            if yt.any():  # no tumour slice in validation: no threshold can be chosen (stays None)
                pt = tumour_probability(probs, self.classes)
                self.threshold_ = ThresholdSelector(self.target_sensitivity, self.max_threshold).fit(pt, yt)
        self.conformal_ = {
            a: ConformalPredictor(a, self.conformal_method, **self.conformal_options).fit(probs, y) for a in self.alphas
        }
        self.fitted_on_, self.n_fit_, self.source_ = fitted_on, len(z), dict(source or {})
        return self

    # ------------------------------------------------------------------ use
    @property
    def temperature(self) -> float:
        self.check_fitted()
        return float(self.temperature_.temperature_)

    @property
    def threshold(self) -> float | None:
        self.check_fitted()
        return None if self.threshold_ is None else float(self.threshold_.threshold_)

    @property
    def default_alpha(self) -> float | None:
        """The first alpha; None without conformal sets (e.g. a site-adapted bundle, which cannot refit them)."""
        self.check_fitted()
        return self.alphas[0] if self.alphas else None

    def probabilities(self, logits: Any) -> np.ndarray:
        """Calibrated class probabilities softmax(logits / T), (N, C) float64."""
        self.check_fitted()
        return self.temperature_.predict_proba(logits)

    def tumour_probability(self, probs: Any) -> np.ndarray:
        return tumour_probability(probs, self.classes)

    def tumour_call(self, probs: Any) -> np.ndarray:
        """Bool (N,): calibrated p_tumour >= threshold (the validation-chosen operating point)."""
        self.check_fitted()
        if self.threshold_ is None:
            raise DataError(f"no tumour threshold: classes {self.classes} have no '{NO_TUMOR}'")
        return self.threshold_.predict(self.tumour_probability(probs))

    def predictor(self, alpha: float | None = None) -> ConformalPredictor:
        self.check_fitted()
        a = self.default_alpha if alpha is None else float(alpha)
        for key, pred in self.conformal_.items():
            if math.isclose(key, a):
                return pred
        raise DataError(f"no conformal quantile for alpha={a}; fitted alphas: {sorted(self.conformal_)}")

    def prediction_sets(self, probs: Any, alpha: float | None = None) -> np.ndarray:
        """Bool (N, C) prediction sets of calibrated probabilities at ``alpha`` (default: the first)."""
        return self.predictor(alpha).predict_sets(probs)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        conformal = {alpha_key(a): p.to_dict() for a, p in self.conformal_.items()}
        return {
            "version": VERSION,
            "classes": self.classes,
            "fitted_on": self.fitted_on_,
            "n": self.n_fit_,
            "temperature": self.temperature,
            "threshold": self.threshold,
            "conformal": {k: {f: x for f, x in v.items() if f not in ("alpha", "n")} for k, v in conformal.items()},
            "default_alpha": self.default_alpha,
            "details": {
                "temperature": self.temperature_.to_dict(),
                "threshold": None
                if self.threshold_ is None
                else self.threshold_.to_dict()
                | {"applies_to": "calibrated p_tumour = 1 - p(no_tumor); tumour if p_tumour >= threshold"},
                "conformal": conformal,
                "source": self.source_,
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostHocCalibration:
        try:
            if int(d.get("version", 0)) != VERSION:
                raise DataError(f"calibration version {d.get('version')!r} is not supported (expected {VERSION})")
            details = d.get("details") or {}
            conformal = {
                float(k): ConformalPredictor.from_dict({"alpha": float(k), **v}) for k, v in d["conformal"].items()
            }
            alphas = list(conformal)
            raw_default = d.get("default_alpha")
            default = float(raw_default) if raw_default is not None else (alphas[0] if alphas else 0.1)
            alphas.sort(key=lambda a: (not math.isclose(a, default), a))
            first = next(iter(conformal.values()), ConformalPredictor())
            tdet = details.get("threshold") or {}
            obj = cls(
                d["classes"],
                alphas=alphas,
                conformal_method=first.method,
                conformal_mondrian=first.mondrian,
                raps_lambda=first.lam,
                raps_k_reg=first.k_reg,
                target_sensitivity=float(tdet.get("target_sensitivity", 0.95)),
                max_threshold=float(tdet.get("max_threshold", 1.0)),
            )
            obj.temperature_ = TemperatureScaler.from_dict(
                details.get("temperature") or {"temperature": d["temperature"]}
            )
            thr = d.get("threshold")
            obj.threshold_ = None if thr is None else ThresholdSelector.from_dict({**tdet, "threshold": thr})
            obj.conformal_ = {a: conformal[a] for a in alphas}
            obj.fitted_on_, obj.n_fit_ = d.get("fitted_on"), d.get("n")
            obj.source_ = details.get("source") or {}
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"calibration is malformed ({type(exc).__name__}: {exc})") from None
        return obj

    def save(self, path: str | Path) -> Path:
        from brainmri.utils import atomic_write_json

        return atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PostHocCalibration:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: no calibration; run `brainmri evaluate {p.parent}` first")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(d)
        except DataError as exc:
            raise DataError(f"{p}: {exc}") from None
