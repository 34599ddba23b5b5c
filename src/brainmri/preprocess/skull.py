"""Step 4: skull stripping on a 2D slice (median-based threshold + morphology + largest component + holes filled)."""

from __future__ import annotations

import cv2
import numpy as np

from brainmri.preprocess.base import Slice, Step, disk, fill_holes, largest_component, sample_pixels


def dark_threshold(values: np.ndarray, ratio: float = 0.5) -> float:
    """Threshold between the dark class (air, cortical bone, CSF on T1) and tissue inside the head.

    ``ratio`` x the median head intensity. Why not Otsu: inside the head a 2-class (or the lower
    3-class) Otsu threshold falls between grey and white matter on T1 or between white matter and
    CSF on T2, which fragments the brain; the median of the head is a tissue value on every
    sequence, and bone / air are far below half of it.
    """
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.5
    return float(ratio * np.median(v))


class SkullStrip(Step):
    """Brain mask by thresholding and morphology, with a guaranteed non-empty fallback.

    The classic 2D morphological brain extraction (e.g. Brummer et al., IEEE TMI 1993; Shattuck et
    al., NeuroImage 2001 for the erode / largest-component / dilate idea):

    1. Gaussian smoothing (sigma ``smooth`` x the shorter side, at least 0.5 px), then the tissue
       threshold ``tissue_ratio`` x the median smoothed intensity inside the foreground (head) mask
       (:func:`dark_threshold`; why not Otsu is said there) -> tissue;
    2. binary erosion with a disk of radius ``erode`` x the shorter side (at least 1 px), which cuts the
       thin bridges between brain and scalp / skull marrow / orbits (skipped if it would erase everything);
    3. largest 8-connected component;
    4. dilation with a disk of radius ``erode + margin`` x the shorter side (undoes the erosion and adds
       a safety band, so cortex, dura and extra-axial lesions such as meningiomas stay inside);
    5. hole filling (ventricles, dark tumour cores), intersection with the foreground.

    The mask is accepted only if it covers at least ``min_fraction`` of the foreground; otherwise,
    or if any stage comes out empty, the foreground mask is used instead and ``info["fallback"]`` is
    true with the reason. The step therefore never returns an empty mask. ``info["fraction"]`` is
    the mask area over the foreground area.

    With ``zero_outside=True`` pixels outside the mask are set to 0 (skull stripped image); with
    False the mask is only passed on (Nyúl landmarks are learnt inside it) and the image is kept.

    Parameters (defaults as in ``SkullConfig``; ``smooth`` and ``tissue_ratio`` are not in the config):
    ``min_fraction`` (smallest accepted mask / foreground area, default 0.25), ``erode`` (fraction of
    the shorter side, default 0.03), ``margin`` (extra dilation, fraction of the shorter side, default
    0.01), ``zero_outside`` (default False), ``threshold`` (foreground threshold when no earlier step
    found the foreground, default 0.05; the preprocessor passes ``crop.threshold``), ``smooth``
    (Gaussian sigma as a fraction of the shorter side, default 0.005), ``tissue_ratio`` (tissue
    threshold as a fraction of the median head intensity, default 0.5).
    """

    name = "skull"

    def __init__(
        self,
        min_fraction: float = 0.25,
        erode: float = 0.03,
        margin: float = 0.01,
        zero_outside: bool = False,
        threshold: float = 0.05,
        smooth: float = 0.005,
        tissue_ratio: float = 0.5,
    ) -> None:
        self.smooth = float(smooth)
        self.tissue_ratio = float(tissue_ratio)
        self.min_fraction = float(min_fraction)
        self.erode = float(erode)
        self.margin = float(margin)
        self.zero_outside = bool(zero_outside)
        self.threshold = float(threshold)

    def brain_mask(self, image: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, str | None]:
        """(mask, fallback reason or None)."""
        if np.count_nonzero(foreground) < 16:
            return foreground, "foreground too small"
        side = min(image.shape)
        smooth = cv2.GaussianBlur(image, (0, 0), max(0.5, self.smooth * side))
        t = dark_threshold(sample_pixels(smooth[foreground], 16_384), self.tissue_ratio)
        tissue = smooth > t
        tissue &= foreground
        if not tissue.any():
            return foreground, "no tissue above the threshold"
        r_erode = max(1, round(self.erode * side))
        r_dilate = max(1, round((self.erode + self.margin) * side))
        core = cv2.erode(tissue.view(np.uint8), disk(r_erode))  # uint8 0/1; bool views avoid copies
        if not core.any():
            core = tissue.view(np.uint8)
        brain = largest_component(core)
        if not brain.any():
            return foreground, "no connected component"
        brain = cv2.dilate(brain.view(np.uint8), disk(r_dilate))
        brain = fill_holes(brain)
        brain &= foreground
        fraction = np.count_nonzero(brain) / max(1, np.count_nonzero(foreground))
        if fraction < self.min_fraction:
            return foreground, f"mask covers {fraction:.1%} of the foreground (< {self.min_fraction:.0%})"
        return brain, None

    def __call__(self, s: Slice) -> Slice:
        fg = s.ensure_foreground(self.threshold)
        mask, reason = self.brain_mask(s.image, fg)
        if not mask.any():  # an all-background image: keep everything rather than nothing
            mask, reason = np.ones_like(mask), reason or "empty foreground"
        s.brain = mask
        if self.zero_outside:
            s.image = np.where(mask, s.image, np.float32(0)).astype(np.float32)
        info = {
            "fallback": reason is not None,
            "reason": reason or "",
            "fraction": float(np.count_nonzero(mask) / max(1, np.count_nonzero(fg))),
        }
        if s.trace:
            info["mask"] = mask.copy()
        s.info[self.name] = info
        return s
