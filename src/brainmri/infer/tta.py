"""Test-time augmentation over a flip-symmetric group of views.

Views: each of the shifts ``(0, 0), (+d, 0), (-d, 0), (0, +d), (0, -d)`` (zero-filled integer
translation, ``d = round(shift * S)`` pixels), with and without a horizontal flip: 10 views.
The shift set is closed under mirroring and every view appears with its flipped twin, so the set of
views of ``flip(x)`` equals the set of views of ``x``: TTA logits are invariant to a horizontal flip of
the input (up to float summation order). Logits (not probabilities) are averaged, then calibrated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def translate(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift the last two axes by (dy, dx) pixels, filling with zeros (the background of a slice)."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def tta_views(x: np.ndarray, shift: float = 0.03) -> np.ndarray:
    """(B, 1, S, S) -> (V, B, 1, S, S) views (V = 10)."""
    d = max(1, round(shift * x.shape[-1])) if shift > 0 else 0
    shifts = [(0, 0)] + ([(d, 0), (-d, 0), (0, d), (0, -d)] if d else [])
    views = []
    for dy, dx in shifts:
        moved = translate(x, dy, dx) if (dy or dx) else x
        views += [moved, moved[..., ::-1]]
    return np.ascontiguousarray(np.stack(views))


def tta_logits(logits_fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, shift: float = 0.03) -> np.ndarray:
    """Mean logits over :func:`tta_views`, computed in one batched call of ``logits_fn``."""
    views = tta_views(x, shift)
    v, b = views.shape[:2]
    logits = logits_fn(views.reshape(v * b, *x.shape[1:]))
    return logits.reshape(v, b, -1).mean(axis=0)
