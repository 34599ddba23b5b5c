"""Step 2: crop to the head (largest foreground contour plus a margin)."""

from __future__ import annotations

import cv2
import numpy as np

from brainmri.preprocess.base import Slice, Step, foreground_mask


class BrainCrop(Step):
    """Crop the image to the bounding box of the largest foreground blob, plus a margin.

    The foreground is ``image > threshold`` after a small morphological opening (removes burnt-in
    text, scale bars and speckle), reduced to its largest 8-connected component and hole-filled
    (the classic "largest contour" crop used for this data, e.g. Rosebrock's extreme-points crop,
    made robust to annotations). The filled blob is kept as ``Slice.foreground`` for later steps
    (N4 weights, skull-strip fallback). Nothing is cut from the blob itself: the box contains it
    entirely and ``margin`` adds context around it. If no blob is found the image is left as is and
    ``info["fallback"]`` is true.

    Parameters: ``threshold`` (intensity in [0, 1] separating background from tissue, default 0.05),
    ``margin`` (fraction of the box side added on each side, default 0.02).
    """

    name = "crop"

    def __init__(self, threshold: float = 0.05, margin: float = 0.02) -> None:
        self.threshold = float(threshold)
        self.margin = float(margin)

    def __call__(self, s: Slice) -> Slice:
        h, w = s.image.shape
        fg = foreground_mask(s.image, self.threshold)
        info: dict = {"input_shape": [h, w]}
        if fg.all():
            s.foreground = fg
            info.update(box=[0, 0, h, w], fallback=True)
            s.info[self.name] = info
            return s
        bx, by, bw, bh = cv2.boundingRect(fg.view(np.uint8))  # box of the non-zero pixels, one pass
        y0, y1, x0, x1 = by, by + bh, bx, bx + bw
        my = round(self.margin * (y1 - y0))
        mx = round(self.margin * (x1 - x0))
        y0, y1 = max(0, y0 - my), min(h, y1 + my)
        x0, x1 = max(0, x0 - mx), min(w, x1 + mx)
        s.image = np.ascontiguousarray(s.image[y0:y1, x0:x1])
        s.foreground = np.ascontiguousarray(fg[y0:y1, x0:x1])
        if s.brain is not None:
            s.brain = np.ascontiguousarray(s.brain[y0:y1, x0:x1])
        info.update(box=[y0, x0, y1, x1], fallback=False, foreground_fraction=np.count_nonzero(fg) / fg.size)
        if s.trace:
            info["foreground"] = s.foreground.copy()
        s.info[self.name] = info
        return s
