"""Step 5: Nyúl–Udupa piecewise-linear intensity standardisation (learnt on the training split)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from brainmri.errors import NotFittedError
from brainmri.preprocess.base import Slice, Step, percentile, sample_pixels

_MIN_PIXELS = 64  # fewer mask pixels than this: landmarks are taken over the whole image


def _strictly_increasing(values: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Monotone non-decreasing -> strictly increasing by the smallest nudge (ties in 8-bit data)."""
    v = np.maximum.accumulate(np.asarray(values, dtype=np.float64))
    for i in range(1, v.size):
        if v[i] <= v[i - 1]:
            v[i] = v[i - 1] + eps
    return v


class NyulStandardizer(Step):
    """Nyúl–Udupa intensity standardisation (Nyúl & Udupa, MRM 1999; Nyúl, Udupa & Zhang, IEEE TMI 2000).

    MR intensities have no fixed meaning: the same tissue gets different values on different
    scanners and protocols. The method learns a *standard histogram* from training images and maps
    every image onto it with a piecewise-linear function:

    - landmarks of an image: the intensity ``percentiles`` (default 1, 10, 20, ..., 90, 99) inside its
      brain mask (the skull-strip mask, else the foreground; a deterministic stride of at most 65,536
      of its pixels); the first and last are the "minimum and maximum percentiles" pc1 / pc2 of the
      papers;
    - ``fit``: each training image's landmarks are mapped linearly so that pc1 -> ``scale_min`` and
      pc2 -> ``scale_max``; the *standard landmarks* ``standard_landmarks_`` are their mean;
    - ``transform``: each image's own landmarks are sent to the standard landmarks, linearly between
      consecutive landmarks, extending the first / last segment beyond pc1 / pc2; the result is
      clipped to [0, 1] (so ``scale_min`` / ``scale_max`` inside (0, 1) leave head-room for
      intensities below pc1 and above pc2, e.g. bright enhancing tumour rims).

    The map is monotonic (strictly increasing between landmarks). scikit-learn style: learnt state
    ends in ``_`` (``standard_landmarks_``, ``n_images_``); ``to_dict`` / ``from_dict`` give JSON;
    ``transform`` before ``fit`` raises :class:`NotFittedError`. Learn on the training split only.

    Parameters: ``percentiles`` (increasing, in [0, 100], at least 2), ``scale_min``, ``scale_max``
    (standard scale for pc1 / pc2, 0 <= scale_min < scale_max <= 1).
    """

    name = "nyul"

    def __init__(
        self,
        percentiles: Sequence[float] = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99),
        scale_min: float = 0.05,
        scale_max: float = 0.95,
    ) -> None:
        p = [float(x) for x in percentiles]
        if len(p) < 2 or any(b <= a for a, b in itertools.pairwise(p)) or p[0] < 0 or p[-1] > 100:
            raise ValueError(f"percentiles must be >= 2 strictly increasing values in [0, 100], got {p}")
        if not 0.0 <= scale_min < scale_max <= 1.0:
            raise ValueError(f"need 0 <= scale_min < scale_max <= 1, got {scale_min}, {scale_max}")
        self.percentiles = p
        self.scale_min = float(scale_min)
        self.scale_max = float(scale_max)
        self.standard_landmarks_: np.ndarray | None = None
        self.n_images_: int = 0

    # ------------------------------------------------------------------ landmarks / fit / transform
    @property
    def is_fitted(self) -> bool:
        return self.standard_landmarks_ is not None

    def landmarks(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The image's intensity percentiles inside ``mask`` (whole image if the mask is tiny)."""
        values = image[mask] if mask is not None and np.count_nonzero(mask) >= _MIN_PIXELS else image.ravel()
        return percentile(sample_pixels(values, 65_536), self.percentiles).astype(np.float64)

    def fit_landmarks(self, landmarks: Iterable[Sequence[float]]) -> NyulStandardizer:
        """Learn the standard landmarks from per-image landmarks (as returned by :meth:`landmarks`)."""
        mapped = []
        for lm in landmarks:
            lm = np.asarray(lm, dtype=np.float64)
            if lm.shape != (len(self.percentiles),):
                raise ValueError(f"expected {len(self.percentiles)} landmarks per image, got shape {lm.shape}")
            lo, hi = lm[0], lm[-1]
            if not np.isfinite(lm).all() or hi <= lo:
                continue  # a flat image carries no histogram shape
            mapped.append(self.scale_min + (lm - lo) / (hi - lo) * (self.scale_max - self.scale_min))
        if not mapped:
            raise ValueError("Nyúl fit needs at least one image with a non-flat intensity histogram in its mask")
        self.standard_landmarks_ = _strictly_increasing(np.mean(mapped, axis=0))
        self.n_images_ = len(mapped)
        return self

    def fit(self, images: Iterable[np.ndarray | tuple[np.ndarray, np.ndarray | None]]) -> NyulStandardizer:
        """Fit on images in [0, 1], each an array or an ``(image, mask)`` pair."""

        def gen() -> Iterable[np.ndarray]:
            for item in images:
                image, mask = item if isinstance(item, tuple) else (item, None)
                yield self.landmarks(np.asarray(image, np.float32), mask)

        return self.fit_landmarks(gen())

    def _check_fitted(self) -> np.ndarray:
        if self.standard_landmarks_ is None:
            raise NotFittedError(
                "Nyúl standardisation is not fitted: call fit() on training images first "
                "(or load a fitted preprocessor, e.g. state.json of `brainmri preprocess`)"
            )
        return self.standard_landmarks_

    def mapping(self, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) knots of the piecewise-linear map for an image with these landmarks."""
        return _strictly_increasing(landmarks), self._check_fitted()

    def transform(
        self, image: np.ndarray, mask: np.ndarray | None = None, landmarks: np.ndarray | None = None
    ) -> np.ndarray:
        """Map ``image`` onto the standard scale (``landmarks``: the image's own, computed if not given)."""
        x, y = self.mapping(self.landmarks(image, mask) if landmarks is None else landmarks)
        out = np.interp(image, x, y).astype(np.float32)
        lo_slope = (y[1] - y[0]) / (x[1] - x[0])
        hi_slope = (y[-1] - y[-2]) / (x[-1] - x[-2])
        below, above = image < x[0], image > x[-1]
        if below.any():
            out[below] = (y[0] + (image[below] - x[0]) * lo_slope).astype(np.float32)
        if above.any():
            out[above] = (y[-1] + (image[above] - x[-1]) * hi_slope).astype(np.float32)
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def __call__(self, s: Slice) -> Slice:
        mask = s.region()
        lm = self.landmarks(s.image, mask)
        out = self.transform(s.image, landmarks=lm)
        if s.brain is not None:  # keep the stripped background at 0
            out[~s.brain & (s.image == 0)] = 0.0
        s.image = out
        s.info[self.name] = {"landmarks": [round(float(v), 6) for v in lm]}
        return s

    # ------------------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "percentiles": self.percentiles,
            "scale_min": self.scale_min,
            "scale_max": self.scale_max,
            "standard_landmarks_": None if self.standard_landmarks_ is None else self.standard_landmarks_.tolist(),
            "n_images_": self.n_images_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NyulStandardizer:
        obj = cls(d["percentiles"], d["scale_min"], d["scale_max"])
        if d.get("standard_landmarks_") is not None:
            std = np.asarray(d["standard_landmarks_"], dtype=np.float64)
            if std.shape != (len(obj.percentiles),) or np.any(np.diff(std) <= 0):
                raise ValueError("standard_landmarks_ must be strictly increasing, one per percentile")
            obj.standard_landmarks_ = std
            obj.n_images_ = int(d.get("n_images_", 0))
        return obj
