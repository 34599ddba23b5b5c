"""Synthetic brain-like slices with class-dependent lesions.

Why: unit tests and quick demos need images with *known* ground truth (brain mask, lesion mask,
bias field) and no downloaded data. The lesions differ by class the way the real tumours differ in
location and appearance, so a tiny model can learn them and Grad-CAM can be checked against the
lesion mask:

- ``glioma``: irregular intra-axial mass inside the parenchyma, dark core with bright rim;
- ``meningioma``: bright round extra-axial mass touching the inner skull;
- ``pituitary``: small bright midline mass at the skull base (bottom centre);
- ``no_tumor``: no lesion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainmri.labels import CANONICAL_CLASSES

KAGGLE_FOLDER = {"glioma": "glioma", "meningioma": "meningioma", "pituitary": "pituitary", "no_tumor": "notumor"}


@dataclass
class Phantom:
    image: np.ndarray  # float32 (H, W) in [0, 1]
    brain_mask: np.ndarray  # bool (H, W): parenchyma inside the skull
    head_mask: np.ndarray  # bool (H, W): skull + brain
    lesion_mask: np.ndarray  # bool (H, W), empty for no_tumor
    bias_field: np.ndarray  # float32 (H, W), multiplicative, 1.0 when no bias was applied
    label: str


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def smooth_bias_field(shape: tuple[int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field (low-order polynomial), max/min ratio about (1+s)/(1-s)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    y = 2 * yy / max(h - 1, 1) - 1
    x = 2 * xx / max(w - 1, 1) - 1
    c = rng.uniform(-1, 1, size=5)
    field = c[0] * x + c[1] * y + c[2] * x * y + c[3] * (x**2 - 0.5) + c[4] * (y**2 - 0.5)
    field = field / (np.abs(field).max() + 1e-6)
    return (1.0 + strength * field).astype(np.float32)


@dataclass
class _Head:
    """Geometry of one phantom head: pixel grids, centre, radii, skull thickness and the masks."""

    yy: np.ndarray
    xx: np.ndarray
    cy: float
    cx: float
    ry: float
    rx: float
    skull_t: float
    head: np.ndarray
    brain: np.ndarray
    gap: np.ndarray

    @property
    def inner(self) -> tuple[float, float]:
        """Radii (y, x) of the brain inside the skull."""
        return self.ry * (1 - self.skull_t * 2.2), self.rx * (1 - self.skull_t * 2.2)


def make_phantom(
    label: str,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    bias_strength: float = 0.0,
    noise: float = 0.02,
) -> Phantom:
    """Render one phantom slice of class ``label``; deterministic for a given seed."""
    if label not in CANONICAL_CLASSES:
        raise ValueError(f"unknown class '{label}'; known: {list(CANONICAL_CLASSES)}")
    rng = np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    g = _head_geometry(h, w, rng)
    img = _anatomy(g, rng)
    lesion = _lesion(label, g, img, rng)
    img += rng.normal(0, noise, img.shape).astype(np.float32) * g.head
    field = np.ones((h, w), np.float32)
    if bias_strength > 0:
        field = smooth_bias_field((h, w), bias_strength, rng)
        img = img * field
    img = np.clip(img, 0, 1).astype(np.float32)
    return Phantom(img, g.brain, g.head, lesion, field, label)


def _head_geometry(h: int, w: int, rng: np.random.Generator) -> _Head:
    """An elliptic head, slightly off centre, with a skull band and the brain inside it."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = h / 2 + rng.uniform(-0.03, 0.03) * h
    cx = w / 2 + rng.uniform(-0.03, 0.03) * w
    ry = h * rng.uniform(0.38, 0.43)
    rx = w * rng.uniform(0.30, 0.36)
    skull_t = rng.uniform(0.035, 0.05)
    head = _ellipse(yy, xx, cy, cx, ry, rx)
    brain = _ellipse(yy, xx, cy, cx, ry * (1 - skull_t * 2.2), rx * (1 - skull_t * 2.2))
    gap = head & ~_ellipse(yy, xx, cy, cx, ry * (1 - skull_t), rx * (1 - skull_t))
    return _Head(yy, xx, cy, cx, ry, rx, skull_t, head, brain, gap)


def _anatomy(g: _Head, rng: np.random.Generator) -> np.ndarray:
    """CSF layer, bright skull, grey and white matter, two ventricles and a mild texture."""
    h, w = g.head.shape
    yy, xx, cy, cx, ry, rx, brain = g.yy, g.xx, g.cy, g.cx, g.ry, g.rx, g.brain
    img = np.zeros((h, w), np.float32)
    img[g.head] = 0.15  # CSF / dark layer between skull and brain
    img[g.gap] = rng.uniform(0.8, 0.95)  # bright skull/scalp
    # parenchyma: white matter core brighter than grey matter cortex
    wm = _ellipse(yy, xx, cy, cx, ry * 0.7, rx * 0.68)
    img[brain] = 0.45
    img[brain & wm] = 0.6
    # lateral ventricles: two dark crescents near the centre
    for side in (-1, 1):
        v = _ellipse(yy, xx, cy - 0.05 * h, cx + side * 0.07 * w, 0.12 * h, 0.035 * w)
        img[v & brain] = 0.12
    # mild texture
    tex = rng.normal(0, 1, (h // 8 + 1, w // 8 + 1)).astype(np.float32)
    tex = np.kron(tex, np.ones((8, 8), np.float32))[:h, :w]
    img[brain] += 0.03 * tex[brain]
    return img


def _lesion(label: str, g: _Head, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint the class's lesion into ``img`` (in place); returns its mask (empty for ``no_tumor``)."""
    h, w = img.shape
    yy, xx, cy, cx, brain = g.yy, g.xx, g.cy, g.cx, g.brain
    inner_ry, inner_rx = g.inner
    lesion = np.zeros((h, w), bool)
    if label == "glioma":
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.25, 0.45)
        ly, lx = cy + dist * inner_ry * np.sin(ang), cx + dist * inner_rx * np.cos(ang)
        r = min(h, w) * rng.uniform(0.09, 0.13)
        theta = np.arctan2(yy - ly, xx - lx)
        wobble = 1 + 0.25 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.1 * np.sin(5 * theta)
        rr = np.hypot(yy - ly, xx - lx)
        lesion = (rr <= r * wobble) & brain
        core = (rr <= r * wobble * 0.6) & brain
        img[lesion] = 0.85
        img[core] = 0.25
    elif label == "meningioma":
        ang = rng.uniform(-np.pi * 0.9, -np.pi * 0.1)  # upper convexity
        r = min(h, w) * rng.uniform(0.07, 0.1)
        ly = cy + (inner_ry - r * 0.6) * np.sin(ang)
        lx = cx + (inner_rx - r * 0.6) * np.cos(ang)
        lesion = _ellipse(yy, xx, ly, lx, r, r * 1.15) & brain
        img[lesion] = 0.95
    elif label == "pituitary":
        r = min(h, w) * rng.uniform(0.045, 0.065)
        ly = cy + inner_ry * rng.uniform(0.55, 0.68)
        lx = cx + rng.uniform(-0.02, 0.02) * w
        lesion = _ellipse(yy, xx, ly, lx, r * 0.9, r * 1.2) & brain
        img[lesion] = 0.92
    return lesion


def write_phantom_dataset(
    root: str | Path,
    n_per_class: int = 10,
    size: int = 128,
    seed: int = 0,
    layout: str = "kaggle",
) -> Path:
    """Write PNG phantoms as ``root/Training/<class>/`` (Kaggle layout) or ``root/<class>/`` (plain)."""
    from PIL import Image

    root = Path(root)
    base = root / "Training" if layout == "kaggle" else root
    for ci, label in enumerate(CANONICAL_CLASSES):
        folder = base / KAGGLE_FOLDER[label]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            ph = make_phantom(label, size=size, seed=seed * 100_003 + ci * 10_007 + i, bias_strength=0.2)
            Image.fromarray((ph.image * 255).round().astype(np.uint8)).save(folder / f"{label}_{i:04d}.png")
    return root
