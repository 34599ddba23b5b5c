"""Out-of-domain scores: is this image like the images the model was trained on?

Two scores, higher = further from the training domain, each with a threshold fitted on in-domain
*validation* data so that a chosen fraction (default 95%) of in-domain images pass:

- :class:`MahalanobisOOD` (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
  samples and adversarial attacks"): class-conditional Gaussians on the model's pooled features with one
  shared covariance, here shrunk with Ledoit–Wolf (Ledoit & Wolf 2004) so that it is well conditioned
  with a few thousand training images; the score is the smallest Mahalanobis distance to a class mean.
  Wide features (1280-d for EfficientNet-Lite0) are first projected on their top ``n_components``
  principal components (fitted on the same training features) to keep the fitted state small. What the
  projection drops is not ignored: a shift often lives in low-variance directions (Kamoi & Kobayashi
  2020), so the squared distance also counts the residual off the principal subspace, scaled by its
  mean training variance per dimension (the isotropic noise term of probabilistic PCA, Tipping & Bishop
  1999).
- :class:`EnergyOOD` (Liu et al. 2020, "Energy-based out-of-distribution detection"): the free energy
  ``-T * logsumexp(logits / T)`` of the logits; needs no features and nothing fitted but the threshold.

- :class:`InputChecks`: not a score on the features but cheap, explainable checks of the decoded image
  before preprocessing (``brainmri.io.signals``: colourfulness, border brightness), with fixed thresholds
  chosen on the real data.

The deployed gate (``brainmri.infer.predictor``) is ``in_domain = every score passes and every input check
passes``, each flag with its reason in words. Its scores are two :class:`MahalanobisOOD`: one on the pooled
last-layer features, one on the per-channel mean/std of early feature stages (``block_stats``; Lee et al. 2018
score every layer: texture and noise statistics tell a photograph or CT from MRI whatever the class), with
thresholds raised together by :func:`fit_joint_thresholds` so the gate as a whole passes 95% of validation.

The two scores follow scikit-learn's conventions (``fit`` stores ``*_`` attributes, :class:`NotFittedError` when
used unfitted) and round-trip through JSON with ``to_dict()/from_dict()``; :func:`ood_from_dict` restores
either kind. Fitting uses numpy and scikit-learn; scoring uses numpy only (every fitted quantity is
a float32 array, stored in JSON as base64 bytes, see :func:`encode_array`), so a deployed bundle needs
neither torch nor scikit-learn to score.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from brainmri.calibrate.base import FittedMixin
from brainmri.errors import NotFittedError


def _as_matrix(x: Any, name: str, n_cols: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected {name} of shape (N, D), got {a.shape}")
    if n_cols is not None and a.shape[1] != n_cols:
        raise ValueError(f"expected {n_cols} {name} columns (as fitted), got {a.shape[1]}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return a


def _f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def encode_array(a: np.ndarray | None) -> dict[str, Any] | None:
    """A float32 array as JSON: ``{"dtype", "shape", "base64"}`` (little-endian bytes; exact and ~4x smaller
    than a list of decimal floats: 128 x 1280 principal axes take 0.9 MB instead of 3.9 MB)."""
    if a is None:
        return None
    data = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "float32", "shape": list(data.shape), "base64": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(v: Any) -> np.ndarray | None:
    """Inverse of :func:`encode_array`; also accepts a plain (nested) list of numbers."""
    if v is None:
        return None
    if isinstance(v, dict):
        raw = np.frombuffer(base64.b64decode(v["base64"]), dtype="<f4")
        return raw.reshape(v["shape"]).astype(np.float32)
    return _f32(v)


def _principal_axes(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and top-k principal axes (k, D) of x, by an eigen-decomposition of the D x D covariance."""
    mean = x.mean(0)
    xc = x - mean
    vals, vecs = np.linalg.eigh(xc.T @ xc)
    return _f32(mean), _f32(vecs[:, np.argsort(vals)[::-1][:k]].T)


class OODScore(FittedMixin):
    """Shared threshold logic: ``fit_threshold(scores_val, quantile)``, ``predict(x) -> (in_domain, score)``."""

    kind: ClassVar[str] = ""

    def __init__(self) -> None:
        self.threshold_: float | None = None
        self.quantile_: float | None = None
        self.n_threshold_: int | None = None

    def score(self, x: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit_threshold(self, scores_val: Any, quantile: float = 0.95) -> OODScore:
        """Threshold = the ``quantile`` of in-domain validation scores: that fraction of them passes."""
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        s = np.asarray(scores_val, dtype=np.float64).ravel()
        if s.size == 0 or not np.all(np.isfinite(s)):
            raise ValueError("fit_threshold needs at least one finite validation score")
        t = np.quantile(s, quantile)
        t32 = np.float32(t)  # stored as float32; rounded up so that every score at or below the quantile passes
        self.threshold_ = float(t32 if t32 >= t else np.nextafter(t32, np.float32(np.inf)))
        self.quantile_ = float(quantile)
        self.n_threshold_ = int(s.size)
        return self

    def predict(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(in_domain, score)``: boolean (N,) (``score <= threshold_``) and float64 (N,) scores."""
        s = self.score(x)
        if self.threshold_ is None:
            raise NotFittedError(
                f"{type(self).__name__} has no threshold: call fit_threshold(scores of in-domain validation data)"
            )
        return s <= self.threshold_, s

    def _threshold_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold_, "quantile": self.quantile_, "n_threshold": self.n_threshold_}

    def _restore_threshold(self, d: dict[str, Any]) -> None:
        self.threshold_, self.quantile_, self.n_threshold_ = d.get("threshold"), d.get("quantile"), d.get("n_threshold")


class MahalanobisOOD(OODScore):
    """Smallest class-conditional Mahalanobis distance with a shared Ledoit–Wolf covariance (Lee et al. 2018).

    Args:
        n_components: project features on this many principal components first when they have more
            dimensions (``None``: never). 128 keeps the JSON of a 1280-d backbone near 1 MB.
        normalize: L2-normalise each feature vector before everything else.
        residual: with a projection, add |residual|^2 / residual_var_ to the squared distance.

    Attributes after ``fit``: ``n_features_in_``, ``pca_mean_`` (D,) and ``components_`` (k, D) or
    ``None`` without projection, ``class_means_`` (C, k), ``precision_`` (k, k) (inverse shrunk
    covariance), ``shrinkage_``, ``residual_var_`` (mean squared residual per dropped dimension, or
    ``None``), ``classes_`` (the label values, in row order of ``class_means_``).
    """

    kind = "mahalanobis"
    _fitted_attrs = ("class_means_", "precision_")

    def __init__(self, n_components: int | None = 128, normalize: bool = False, residual: bool = True) -> None:
        super().__init__()
        if n_components is not None and n_components < 1:
            raise ValueError(f"n_components must be >= 1 or None, got {n_components}")
        self.n_components = n_components
        self.normalize = bool(normalize)
        self.residual = bool(residual)
        self.residual_var_: float | None = None
        self.n_features_in_: int | None = None
        self.pca_mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.class_means_: np.ndarray | None = None
        self.precision_: np.ndarray | None = None
        self.shrinkage_: float | None = None
        self.classes_: list[int] | None = None
        self._whiten: np.ndarray | None = None

    def fit(self, features: Any, labels: Any) -> MahalanobisOOD:
        """Fit on training features (N, D) and their class labels (N,) (every class needs >= 2 rows)."""
        from sklearn.covariance import LedoitWolf

        x = self._normalise(_as_matrix(features, "features"))
        y = np.asarray(labels).ravel()
        if y.shape != (len(x),):
            raise ValueError(f"expected {len(x)} labels, got shape {np.asarray(labels).shape}")
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) == 0 or counts.min() < 2:
            raise ValueError("every class needs at least 2 training feature vectors")
        self.n_features_in_ = x.shape[1]
        self.pca_mean_ = self.components_ = None
        if self.n_components is not None and x.shape[1] > self.n_components:
            self.pca_mean_, self.components_ = _principal_axes(x, min(self.n_components, len(x) - 1))
        z = self._project(x)
        means = np.stack([z[y == c].mean(0) for c in classes])
        centred = z - means[np.searchsorted(classes, y)]
        lw = LedoitWolf(assume_centered=True).fit(centred)
        self.class_means_, self.precision_ = _f32(means), _f32(lw.precision_)
        self.shrinkage_ = float(lw.shrinkage_)
        self.residual_var_ = None
        if self.components_ is not None and self.residual and x.shape[1] > z.shape[1]:
            r2 = self._residual2(x, z)
            self.residual_var_ = float(max(r2.mean() / (x.shape[1] - z.shape[1]), 1e-12))
        self.classes_ = [c.item() if isinstance(c, np.generic) else c for c in classes]
        self._whiten = None
        return self

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        if not self.normalize:
            return x
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def _project(self, x: np.ndarray) -> np.ndarray:
        if self.components_ is None:
            return x
        return (x - self.pca_mean_.astype(np.float64)) @ self.components_.astype(np.float64).T

    def _residual2(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Squared distance of each row of x to the principal subspace (z: its projection)."""
        xc = x - self.pca_mean_.astype(np.float64)
        return np.maximum((xc**2).sum(1) - (z**2).sum(1), 0.0)

    def score(self, features: Any) -> np.ndarray:
        """min over classes of sqrt((z - mu_c)^T P (z - mu_c)), z the (projected) features; float64 (N,)."""
        self.check_fitted()
        x = self._normalise(_as_matrix(features, "features", self.n_features_in_))
        z = self._project(x)
        if self._whiten is None:  # P = L L^T, so d^T P d = |L^T d|^2
            self._whiten = np.linalg.cholesky(self.precision_.astype(np.float64))
        zw = z @ self._whiten
        mw = self.class_means_.astype(np.float64) @ self._whiten
        d2 = (zw**2).sum(1)[:, None] - 2 * zw @ mw.T + (mw**2).sum(1)[None, :]
        d2 = d2.min(1)
        if self.residual_var_ is not None:
            d2 = d2 + self._residual2(x, z) / self.residual_var_
        return np.sqrt(np.maximum(d2, 0.0))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """(n, D) feature vectors drawn from the fitted model: a class (uniform), its mean plus shared-covariance
        noise in the principal subspace, and isotropic ``residual_var_`` noise orthogonal to it.

        Why: a bundle carries this state but not its training images; ``brainmri adapt BUNDLE`` uses the draws as
        stand-ins for the source features, to keep a site head from changing the source model's answers
        (``brainmri.train.site_head``). Not defined with ``normalize`` (the draws would not lie on the sphere).
        """
        self.check_fitted()
        if self.normalize:
            raise ValueError("sampling is not defined for a score fitted on L2-normalised features")
        rng = np.random.default_rng(seed)
        chol = np.linalg.cholesky(np.linalg.inv(self.precision_.astype(np.float64)))
        means = self.class_means_.astype(np.float64)
        z = means[rng.integers(0, len(means), n)] + rng.normal(size=(n, chol.shape[0])) @ chol.T
        if self.components_ is None:
            return z
        comps = self.components_.astype(np.float64)
        x = self.pca_mean_.astype(np.float64) + z @ comps
        if self.residual_var_ is not None:
            noise = rng.normal(size=x.shape) * np.sqrt(self.residual_var_)
            x += noise - (noise @ comps.T) @ comps
        return x

    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        return {
            "kind": self.kind,
            "n_components": self.n_components,
            "normalize": self.normalize,
            "n_features_in": self.n_features_in_,
            "classes": self.classes_,
            "shrinkage": self.shrinkage_,
            "residual": self.residual,
            "residual_var": self.residual_var_,
            "pca_mean": encode_array(self.pca_mean_),
            "components": encode_array(self.components_),
            "class_means": encode_array(self.class_means_),
            "precision": encode_array(self.precision_),
            **self._threshold_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MahalanobisOOD:
        obj = cls(d.get("n_components"), d.get("normalize", False), d.get("residual", True))
        obj.residual_var_ = d.get("residual_var")
        obj.n_features_in_, obj.classes_, obj.shrinkage_ = d["n_features_in"], d.get("classes"), d.get("shrinkage")
        obj.pca_mean_, obj.components_ = decode_array(d.get("pca_mean")), decode_array(d.get("components"))
        obj.class_means_, obj.precision_ = decode_array(d["class_means"]), decode_array(d["precision"])
        obj._restore_threshold(d)
        return obj


class EnergyOOD(OODScore):
    """Free energy ``-T * logsumexp(logits / T)`` of the logits (Liu et al. 2020); in-domain images score low.

    Nothing is learnt but the threshold: ``fit()`` only marks the object ready.
    """

    kind = "energy"
    _fitted_attrs = ("temperature_",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.temperature_: float | None = None

    def fit(self, logits: Any = None, labels: Any = None) -> EnergyOOD:
        """Nothing to learn from the data (the signature matches :class:`MahalanobisOOD`)."""
        self.temperature_ = self.temperature
        return self

    def score(self, logits: Any) -> np.ndarray:
        self.check_fitted()
        x = _as_matrix(logits, "logits") / self.temperature_
        m = x.max(1)
        return -self.temperature_ * (m + np.log(np.exp(x - m[:, None]).sum(1)))

    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        return {"kind": self.kind, "temperature": self.temperature_, **self._threshold_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnergyOOD:
        obj = cls(d["temperature"]).fit()
        obj._restore_threshold(d)
        return obj


def fit_joint_thresholds(scores: list[OODScore], val_scores: list[Any], target: float = 0.95) -> float:
    """Set every score's threshold at one common validation quantile q, the smallest q (step 0.001) at which a
    ``target`` fraction of validation images passes all of them; returns q.

    Why: a gate of several scores, each at the ``target`` quantile, would pass fewer in-domain images than
    ``target``; raising all thresholds together keeps the gate's in-domain pass rate where one score's would be.
    """
    arrays = [np.asarray(v, dtype=np.float64).ravel() for v in val_scores]
    if len(scores) != len(arrays) or not scores:
        raise ValueError("fit_joint_thresholds needs one validation score array per score")
    for q in np.arange(target, 1.0, 0.001):
        for score, values in zip(scores, arrays, strict=True):
            score.fit_threshold(values, quantile=float(q))
        passed = np.logical_and.reduce([v <= s.threshold_ for s, v in zip(scores, arrays, strict=True)])
        if passed.mean() >= target:
            return float(q)
    for score, values in zip(scores, arrays, strict=True):
        score.fit_threshold(values, quantile=1.0)
    return 1.0


OOD_KINDS: dict[str, type[OODScore]] = {MahalanobisOOD.kind: MahalanobisOOD, EnergyOOD.kind: EnergyOOD}


def ood_from_dict(d: dict[str, Any]) -> OODScore:
    """Restore a fitted score of either kind from its ``to_dict()``."""
    kind = d.get("kind")
    if kind not in OOD_KINDS:
        raise ValueError(f"unknown out-of-domain score kind {kind!r}; known: {sorted(OOD_KINDS)}")
    return OOD_KINDS[kind].from_dict(d)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class InputChecks:
    """Input-level out-of-domain checks on what the reader measured (``LoadedImage.meta``, ``brainmri.io.signals``).

    Complements the feature score, which only sees the preprocessed image: a photograph keeps its colour and a
    texture its bright frame only until preprocessing. A threshold of None switches its check off; a signal
    missing from ``meta`` (an array input has no colour channels) is not checked.
    """

    max_colourfulness: float | None = None
    max_border_brightness: float | None = None

    def reasons(self, meta: Mapping[str, Any] | None) -> list[str]:
        """Why the image is out of domain, in words; empty when every check passes."""
        meta = meta or {}
        out = []
        colour = meta.get("colourfulness")
        if self.max_colourfulness is not None and colour is not None and colour > self.max_colourfulness:
            out.append(f"colour image (colourfulness {colour:.1f} > {self.max_colourfulness:g}; MRI is grayscale)")
        border = meta.get("border_brightness")
        if self.max_border_brightness is not None and border is not None and border > self.max_border_brightness:
            out.append(f"no dark background (border brightness {border:.2f} > {self.max_border_brightness:g})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"max_colourfulness": self.max_colourfulness, "max_border_brightness": self.max_border_brightness}
