"""``brainmri preprocess show``: every step's output side by side, plus the bias field and the brain mask."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.preprocess.preprocessor import Preprocessor
from brainmri.utils import atomic_path

_TITLES = {
    "grayscale": "grayscale [0,1]",
    "crop": "crop",
    "limit_size": "working size",
    "bias": "bias corrected",
    "skull": "skull strip",
    "nyul": "Nyúl standardised",
    "clahe": "CLAHE",
    "resize": "resize + pad (output)",
}


def trace_panels(pre: Preprocessor, array: np.ndarray) -> tuple[list[tuple[str, np.ndarray, dict[str, Any]]], Any]:
    """[(title, image, imshow kwargs)] for the figure, and the final Slice (per-step info)."""
    _, s, stages = pre.run(array, trace=True)
    panels: list[tuple[str, np.ndarray, dict[str, Any]]] = [("input", np.asarray(array, np.float32), {"cmap": "gray"})]
    for name, image in stages:
        if name == "limit_size" and not s.info[name].get("scaled"):
            continue
        title = _TITLES.get(name, name)
        if name == "bias":
            title = f"{title} ({s.info[name]['method']})"
        if name == "skull" and s.info[name]["fallback"]:
            title += "\nFALLBACK: foreground"
        panels.append((title, image, {"cmap": "gray", "vmin": 0, "vmax": 1}))
    bias = s.info.get("bias", {})
    if "bias_field" in bias:
        f = bias["bias_field"]
        panels.append((f"bias field [{f.min():.2f}, {f.max():.2f}]", f, {"cmap": "coolwarm"}))
    skull = s.info.get("skull", {})
    if "mask" in skull:
        reference = next((img for name, img in stages if name == "skull"), None)
        panels.append((f"brain mask ({skull['fraction']:.0%} of head)", skull["mask"], {"overlay": reference}))
    return panels, s


def save_steps_figure(
    pre: Preprocessor, array: np.ndarray, out: str | os.PathLike[str], title: str = "", dpi: int = 80
) -> Path:
    """Write the figure (PNG, atomic) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels, _ = trace_panels(pre, array)
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 2.8))
    for ax, (name, image, kw) in zip(np.atleast_1d(axes), panels, strict=True):
        overlay = kw.pop("overlay", None)
        if overlay is not None:
            ax.imshow(overlay, cmap="gray", vmin=0, vmax=1)
            ax.imshow(np.ma.masked_where(~image, image), cmap="autumn", alpha=0.35)
            ax.contour(image, levels=[0.5], colors="yellow", linewidths=0.8)
        else:
            ax.imshow(image, **kw)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    target = Path(out)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return target
