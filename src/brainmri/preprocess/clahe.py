"""Step 6: contrast-limited adaptive histogram equalisation (OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np

from brainmri.preprocess.base import Slice, Step


class Clahe(Step):
    """CLAHE (Zuiderveld, "Contrast Limited Adaptive Histogram Equalization", Graphics Gems IV, 1994).

    OpenCV's ``createCLAHE`` on the image quantised to 8 bits: the image is split into
    ``tiles`` x ``tiles`` tiles, each tile's histogram is clipped at ``clip_limit`` times the mean bin
    count (the excess redistributed; this limits noise amplification in flat regions) and
    equalised, and the per-tile maps are blended bilinearly. Pixels that are exactly 0 (background
    outside the head or the skull-strip mask) stay 0, so CLAHE does not lift the background into
    visible noise.

    Parameters: ``clip_limit`` (default 2.5), ``tiles`` (grid per side, default 8).
    """

    name = "clahe"

    def __init__(self, clip_limit: float = 2.5, tiles: int = 8) -> None:
        if clip_limit <= 0 or tiles < 1:
            raise ValueError(f"need clip_limit > 0 and tiles >= 1, got {clip_limit}, {tiles}")
        self.clip_limit = float(clip_limit)
        self.tiles = int(tiles)

    def __call__(self, s: Slice) -> Slice:
        scaled = np.clip(s.image, 0.0, 1.0)
        scaled *= 255.0
        u8 = np.round(scaled, out=scaled).astype(np.uint8)
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tiles, self.tiles))
        out = clahe.apply(u8)
        out[u8 == 0] = 0
        s.image = out.astype(np.float32) * np.float32(1.0 / 255.0)
        s.info[self.name] = {"clip_limit": self.clip_limit, "tiles": self.tiles}
        return s
