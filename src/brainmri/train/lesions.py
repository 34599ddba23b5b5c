"""Synthetic lesions: a focal abnormality drawn into lesion-free training slices, labelled 'a tumour'.

Why: on other hospitals' FLAIR slices the model misses FLAIR-bright lesions in the middle of the brain
(docs/robustness.md, by-level table): its tumours are mostly contrast-enhanced T1 masses, so "tumour"
became "this contrast, this look" rather than "something focal that does not belong". Drawing blobs of
random polarity, size, shape, edge and texture into ``no_tumor`` slices during fine-tuning (the idea of
synthetic-anomaly training: CutPaste, Li et al. 2021; foreign-patch interpolation, Tan et al. 2020) asks the
network to call any focal abnormality a tumour, whatever the sequence. The target of a slice with a drawn
lesion is ``train.augment.synthetic_lesion_target`` (default: half glioma, half meningioma — a lesion of
unknown type), so the tumour probability ``1 - p(no_tumor)`` is what it teaches, not a tumour type.

Applied per batch in the training step (stage 2; stage 1 trains on cached features and sees no images).
Off by default (``train.augment.synthetic_lesion = 0``); measured in docs/robustness.md.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt, gaussian_filter


def head_mask(img: np.ndarray, level: float = 0.1) -> np.ndarray:
    """Pixels inside the head: a blurred copy above ``level`` of the slice's maximum."""
    smooth = gaussian_filter(img, sigma=img.shape[0] / 64)
    return smooth > level * max(float(smooth.max()), 1e-6)


def lesion_mask(size: int, centre: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """A soft ellipse in [0, 1] with a random size (4-14% of the slice per radius), angle, edge and texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    r1, r2 = rng.uniform(0.04, 0.14, 2) * size
    a = rng.uniform(0, np.pi)
    dy, dx = yy - centre[0], xx - centre[1]
    u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    d = np.sqrt((u / r1) ** 2 + (v / r2) ** 2)
    wobble = gaussian_filter(rng.normal(0, 1, (size, size)), size / 24)
    d = d + 0.25 * wobble / max(float(np.abs(wobble).max()), 1e-6)  # an irregular outline
    soft = rng.uniform(0.03, 0.2)
    return 1.0 / (1.0 + np.exp(-(1.0 - d) / soft))


def draw_lesion(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``img`` (S, S) in [0, 1] with one lesion inside the head: bright (55%), dark (25%) or a bright rim
    around a dark core (20%), blended towards a random level with a little texture."""
    size = img.shape[0]
    head = head_mask(img)
    inside = np.argwhere(distance_transform_edt(head) > 0.15 * size)  # away from the skull and the edge
    if len(inside) == 0:
        return img
    centre = tuple(inside[rng.integers(len(inside))].astype(float))
    mask = lesion_mask(size, centre, rng) * head
    texture = 1.0 + 0.15 * gaussian_filter(rng.normal(0, 1, img.shape), 1.5)
    kind = rng.random()
    if kind < 0.55:
        level = rng.uniform(0.65, 1.0)
    elif kind < 0.80:
        level = rng.uniform(0.0, 0.2)
    else:
        core = gaussian_filter(mask, size / 64) ** 3
        level = np.clip(rng.uniform(0.7, 1.0) * (1 - core) + 0.1 * core, 0, 1)
    strength = rng.uniform(0.5, 1.0)
    out = img + strength * mask * (level * texture - img)
    return np.clip(out, 0.0, 1.0).astype(img.dtype)


def insert_lesions(
    x: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    *,
    p: float,
    source: int,
    target: torch.Tensor,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a lesion into each image of class ``source`` with probability ``p``; its target becomes ``target``.

    ``x``: (B, 1, S, S) in [0, 1]; ``targets``: (B, C) soft targets; ``labels``: (B,) class indices.
    Returns new tensors (the inputs are not modified).
    """
    chosen = [i for i in np.flatnonzero(labels.cpu().numpy() == source) if rng.random() < p]
    if not chosen:
        return x, targets
    x, targets = x.clone(), targets.clone()
    for i in chosen:
        img = x[i, 0].detach().cpu().numpy()
        x[i, 0] = torch.from_numpy(draw_lesion(img, rng)).to(x.device, x.dtype)
        targets[i] = target.to(targets.device, targets.dtype)
    return x, targets
