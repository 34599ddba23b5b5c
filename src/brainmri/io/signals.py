"""Input-level signals of a decoded image, measured before any preprocessing (the out-of-domain input checks).

Why they exist: the feature score (``brainmri.calibrate.ood``) sees the image only after preprocessing
(crop, skull strip, Nyúl, CLAHE), which makes a photograph or a texture look enough like a slice that the
model's features sit near the training classes: on the exported ``cpu-robust`` bundle it passed 3 of 3
photographs and 92% of generated noise/texture images (``bench/results/ood_check_features_only.json``).
And the reader converts colour to grayscale, so colour must be measured while it still exists. The reader
puts both numbers in ``LoadedImage.meta``; ``brainmri.calibrate.ood.InputChecks`` compares them with the
thresholds of ``PredictConfig`` (chosen on the real data: ``bench/input_checks.py``,
``bench/results/input_checks.json``).

- ``colourfulness``: Hasler & Süsstrunk (2003), "Measuring colourfulness in natural images", on 0..255
  RGB: ``sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)`` with ``rg = R - G`` and
  ``yb = (R + G) / 2 - B``. 0 for a gray image stored as RGB (JPEG chroma noise moves it by well under 1);
  on their perceptual scale 15 is "slightly", 33 "moderately", 59 "quite" colourful. A grayscale file
  has no colour channels and gets 0.
- ``border_brightness``: mean of the outer 5% frame of the (grayscale) image, as a fraction of the image's
  own min..max range. An MRI slice lies on a dark background (in-domain median 0.03); noise, textures and
  most photographs fill the frame (uniform noise: 0.5).
"""

from __future__ import annotations

import numpy as np

SAMPLE_PIXELS = 1 << 18
"""Colourfulness is measured on a regular subsample of at most about this many pixels (cheap on any size)."""
BORDER_FRAME = 0.05
"""Width of the frame :func:`border_brightness` averages, as a fraction of the shorter side."""


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler–Süsstrunk colourfulness of an (H, W, 3+) image in 0..255 (extra channels such as alpha ignored)."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    step = max(1, int(np.ceil(np.sqrt(a.shape[0] * a.shape[1] / SAMPLE_PIXELS))))
    a = a[::step, ::step, :3].astype(np.float32)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def border_brightness(gray: np.ndarray, frame: float = BORDER_FRAME) -> float:
    """Mean of the outer ``frame`` of a 2D image, scaled so the image's min is 0 and its max 1.

    Non-finite pixels count as the finite minimum; a blank (or all non-finite) image gives 0.
    """
    a = np.asarray(gray, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {a.shape}")
    finite = np.isfinite(a)
    if not finite.any():
        return 0.0
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi <= lo:
        return 0.0
    if not finite.all():
        a = np.where(finite, a, lo)
    h, w = a.shape
    k = max(1, round(frame * min(h, w)))
    if 2 * k >= min(h, w):
        return float((a.mean(dtype=np.float64) - lo) / (hi - lo))
    f64 = np.float64
    ring_sum = a[:k].sum(dtype=f64) + a[-k:].sum(dtype=f64) + a[k:-k, :k].sum(dtype=f64) + a[k:-k, -k:].sum(dtype=f64)
    ring_n = 2 * k * w + 2 * k * (h - 2 * k)
    return float((ring_sum / ring_n - lo) / (hi - lo))
