"""Error gallery: the misclassified slices with their Grad-CAM overlay.

The most confidently wrong slices come first (those are the dangerous ones: a wrong answer the model
is sure of). Each tile shows the Grad-CAM of the *predicted* class (what the model looked at to reach
its wrong answer), with the true class, predicted class and calibrated confidence in the title.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.evaluate.plots import _plt, save_figure
from brainmri.models.cam import overlay


def select_errors(labels: Any, preds: Any, confidences: Any, max_items: int) -> np.ndarray:
    """Indices of misclassified samples (known label), most confident first, at most ``max_items``."""
    y, p, c = np.asarray(labels), np.asarray(preds), np.asarray(confidences)
    wrong = np.flatnonzero((y >= 0) & (y != p))
    order = wrong[np.argsort(-c[wrong], kind="stable")]
    return order[: max(max_items, 0)]


def error_gallery(
    images: np.ndarray,
    cams: np.ndarray,
    captions: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    cols: int = 6,
) -> Path:
    """Grid of Grad-CAM overlays with one caption each (already selected, e.g. by :func:`select_errors`);
    a short note instead of a grid when there are none."""
    plt = _plt()
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        return save_figure(fig, path)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.0 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(overlay(images[k], cams[k]))
            ax.set_title(captions[k], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
