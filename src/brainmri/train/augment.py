"""Training-time augmentation on preprocessed grayscale slices (float32 in [0, 1]).

Two groups:
- geometric/photometric (flip, rotation, scale, translation, brightness, contrast);
- scanner and protocol variation, after TorchIO (Pérez-García et al. 2021) and MONAI: random bias
  field (``RandomBiasField``: exp of a random low-order polynomial), gamma (``RandomGamma``, log-gamma
  ±0.3), Gaussian noise, Gaussian blur, and down-then-up sampling (``RandomAnisotropy``: a
  lower-resolution acquisition). These are what makes a model survive another hospital's scanner.

Every random draw comes from the ``numpy.random.Generator`` passed in, which the dataset seeds from
(seed, epoch, index): augmentation is reproducible and independent of worker count, so a resumed run
sees the same images as an uninterrupted one. Off at evaluation (the dataset simply does not call it).
"""

from __future__ import annotations

import cv2
import numpy as np

from brainmri.config import AugmentConfig


def random_bias_field(shape: tuple[int, int], rng: np.random.Generator, coefficient: float = 0.4) -> np.ndarray:
    """Multiplicative field exp(sum c_ij x^i y^j), i + j <= 3, c ~ U(-coefficient, coefficient)."""
    h, w = shape
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    log_field = np.zeros((h, w), np.float32)
    for i in range(4):
        for j in range(4 - i):
            if i == j == 0:
                continue
            log_field += rng.uniform(-coefficient, coefficient) * (x**i) * (y**j)
    return np.exp(log_field)


class Augmenter:
    """Applies the configured augmentations; each scanner-variation value is a probability."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg
        if not c.enabled:
            return img
        out = img.astype(np.float32, copy=True)
        h, w = out.shape
        if rng.random() < c.hflip:
            out = out[:, ::-1]
        angle = rng.uniform(-c.rotation_deg, c.rotation_deg) if c.rotation_deg else 0.0
        scale = rng.uniform(*c.scale)
        tx, ty = (rng.uniform(-c.translate, c.translate, size=2) * (w, h)) if c.translate else (0.0, 0.0)
        if angle or scale != 1.0 or tx or ty:
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
            m[:, 2] += (tx, ty)
            out = cv2.warpAffine(
                np.ascontiguousarray(out), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
            )
        if c.bias_field and rng.random() < c.bias_field:
            out = out * random_bias_field((h, w), rng)
        if c.gamma and rng.random() < c.gamma:
            out = np.clip(out, 0, None) ** np.exp(rng.uniform(-0.3, 0.3))
        if c.contrast:
            mean = float(out.mean())
            out = (out - mean) * rng.uniform(1 - c.contrast, 1 + c.contrast) + mean
        if c.brightness:
            out = out + rng.uniform(-c.brightness, c.brightness)
        if c.blur and rng.random() < c.blur:
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.3, 1.2))
        if c.downsample and rng.random() < c.downsample:
            factor = rng.uniform(1.5, 3.0)
            small = cv2.resize(out, (max(8, int(w / factor)), max(8, int(h / factor))), interpolation=cv2.INTER_AREA)
            out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        if c.noise and rng.random() < c.noise:
            out = out + rng.normal(0, rng.uniform(0.005, 0.03), out.shape).astype(np.float32)
        return np.clip(out, 0.0, 1.0).astype(np.float32)
