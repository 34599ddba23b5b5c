"""Resampling steps: a working-resolution cap (after the crop) and the final resize + pad to ``size``."""

from __future__ import annotations

import cv2
import numpy as np

from brainmri.preprocess.base import Slice, Step


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize float32 (H, W) to ``shape`` = (h, w): INTER_AREA when shrinking, INTER_LINEAR when enlarging."""
    h, w = image.shape
    nh, nw = shape
    if (nh, nw) == (h, w):
        return image
    interp = cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (nw, nh), interpolation=interp)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    nh, nw = shape
    if mask.shape == (nh, nw):
        return mask
    if mask.dtype == bool:  # 0/1 bytes: uint8 views both ways, no copies
        return cv2.resize(mask.view(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).view(bool)
    return cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)


def fit_shape(h: int, w: int, side: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is ``side``, aspect ratio kept, each side >= 1."""
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


class LimitSize(Step):
    """Shrink (never enlarge) so the longer side is at most ``max_side`` (aspect kept, INTER_AREA).

    Why: the corrections below work on smooth, image-relative scales, and the model sees ``size`` px
    (224 by default), so processing a 1920 px scan at full resolution only costs time. Capping the
    working resolution also makes the per-pixel behaviour of CLAHE and the morphology the same for
    every source resolution above the cap (a harmonisation, not just a speed-up).

    Parameters: ``max_side`` (pixels; 0 disables the cap).
    """

    name = "limit_size"

    def __init__(self, max_side: int = 256) -> None:
        self.max_side = int(max_side)

    def __call__(self, s: Slice) -> Slice:
        h, w = s.image.shape
        if self.max_side <= 0 or max(h, w) <= self.max_side:
            s.info[self.name] = {"scaled": False, "shape": [h, w]}
            return s
        shape = fit_shape(h, w, self.max_side)
        s.image = resize_image(s.image, shape)
        s.map_masks(lambda m: resize_mask(m, shape))
        s.info[self.name] = {"scaled": True, "shape": list(shape), "from": [h, w]}
        return s


class ResizePad(Step):
    """Aspect-preserving resize so the longer side equals ``size``, then centred zero padding to a square.

    Shrinking uses ``cv2.INTER_AREA`` (anti-aliased), enlarging ``cv2.INTER_LINEAR``. Padding is 0
    (background). This is always the last step; the pipeline then rounds to uint8.

    Parameters: ``size`` (output side in pixels).
    """

    name = "resize"

    def __init__(self, size: int = 224) -> None:
        if size < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        self.size = int(size)

    def __call__(self, s: Slice) -> Slice:
        h, w = s.image.shape
        nh, nw = fit_shape(h, w, self.size)
        small = resize_image(s.image, (nh, nw))
        top, left = (self.size - nh) // 2, (self.size - nw) // 2
        out = np.zeros((self.size, self.size), np.float32)
        out[top : top + nh, left : left + nw] = small

        def place(m: np.ndarray) -> np.ndarray:
            canvas = np.zeros((self.size, self.size), bool)
            canvas[top : top + nh, left : left + nw] = resize_mask(m, (nh, nw))
            return canvas

        s.image = out
        s.map_masks(place)
        s.info[self.name] = {"from": [h, w], "content": [nh, nw], "offset": [top, left]}
        return s
