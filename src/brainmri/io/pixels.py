"""Pixel conversions shared by every stage: float image -> uint8.

Why one function: the import hashes (pHash of every file), the audit montage and the preprocessing
output all quantise float images to 8 bits. Two copies with different rounding would let the cache and
the perceptual hashes drift apart silently.
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def to_uint8(
    image: np.ndarray,
    value_range: tuple[float, float] | None = None,
    rounding: Literal["half_even", "half_up"] = "half_even",
) -> np.ndarray:
    """Map ``value_range`` linearly onto 0..255 (clip, scale, round) as uint8.

    ``value_range`` defaults to the image's own finite min and max (min-max scaling). NaN and -inf
    pixels become the low end, +inf the high end; an image with no dynamic range (max == min) becomes
    all zeros. ``rounding``: ``half_even`` (``np.round``) is what the import's pHash has always used, so
    the hashes of existing manifests stay valid; the preprocessor passes ``(0, 1)`` and ``half_up``
    (``floor(x + 0.5)``), the quantiser its ``PIPELINE_VERSION`` fixes. Switching either rule would
    move pixels that sit on a .5 tie (about one real image in ten for min-max scaling) and with them
    pHashes or cached model inputs.
    """
    a = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(a)
    if value_range is None:
        if not finite.any():
            return np.zeros(a.shape, np.uint8)
        lo, hi = float(a[finite].min()), float(a[finite].max())
    else:
        lo, hi = float(value_range[0]), float(value_range[1])
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    if not finite.all():
        a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    scaled = (np.clip(a, np.float32(lo), np.float32(hi)) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    if rounding == "half_even":
        rounded = np.round(scaled)
    elif rounding == "half_up":
        rounded = np.floor(scaled + np.float32(0.5))
    else:
        raise ValueError(f"rounding must be 'half_even' or 'half_up', not {rounding!r}")
    return np.clip(rounded, 0, 255).astype(np.uint8)
