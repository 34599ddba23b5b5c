"""Evaluation figures (matplotlib, Agg backend; every file written atomically).

- ``confusion_matrices``: counts and row-normalised (rows = true class: the diagonal is each class's
  sensitivity);
- ``roc_pr_curves``: one-vs-rest ROC and precision-recall curves per class (AUC / average precision in
  the legend; the PR baseline is the class prevalence);
- ``reliability_diagram``: accuracy against confidence per equal-width bin, before and after
  temperature scaling; bars below the diagonal = over-confident; bin counts underneath;
- ``confidence_histogram``: distribution of the max probability, correct and wrong predictions apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.utils import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(path)


def confusion_matrices(labels: Any, preds: Any, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    cm = confusion_matrix(labels, preds, labels=list(range(len(classes))))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / cm.sum(1, keepdims=True)
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5), layout="constrained")
    for ax, mat, name, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "row-normalised (recall)", ".2f")):
        im = ax.imshow(np.nan_to_num(mat), cmap="Blues", vmin=0, vmax=None if fmt == "d" else 1)
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
        hi = np.nanmax(mat) if mat.size else 0
        for i in range(len(classes)):
            for j in range(len(classes)):
                v = mat[i, j]
                txt = "-" if not np.isfinite(v) else format(v, fmt)
                ax.text(j, i, txt, ha="center", va="center", color="white" if hi and v > 0.6 * hi else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def roc_pr_curves(probs: Any, labels: Any, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    plt = _plt()
    p = np.asarray(probs)
    y = np.asarray(labels)
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    for c, name in enumerate(classes):
        pos = y == c
        if not (0 < pos.sum() < len(y)):
            continue
        fpr, tpr, _ = roc_curve(pos, p[:, c])
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        prec, rec, _ = precision_recall_curve(pos, p[:, c])
        line = ax_pr.plot(rec, prec, label=f"{name} (AP {average_precision_score(pos, p[:, c]):.3f})")
        ax_pr.axhline(pos.mean(), color=line[0].get_color(), ls=":", lw=0.8)
    ax_roc.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax_roc.set(
        xlabel="false positive rate (1 - specificity)",
        ylabel="true positive rate (sensitivity)",
        title="ROC, one vs rest",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax_pr.set(
        xlabel="recall",
        ylabel="precision",
        title="precision-recall, one vs rest (dotted: prevalence)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax_roc.legend(loc="lower right", fontsize=8)
    ax_pr.legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def reliability_diagram(
    curves: dict[str, tuple[Any, Any]], path: str | Path, n_bins: int = 15, title: str = ""
) -> Path:
    """``curves``: name -> (probs, labels), e.g. {"before (T=1)": ..., "after (T=1.4)": ...}."""
    from brainmri.evaluate.metrics import expected_calibration_error, reliability_bins

    plt = _plt()
    fig, axes = plt.subplots(
        2, len(curves), figsize=(5 * len(curves), 6), squeeze=False, gridspec_kw={"height_ratios": [3, 1]}
    )
    for k, (name, (p, y)) in enumerate(curves.items()):
        b = reliability_bins(p, y, n_bins)
        ece = expected_calibration_error(p, y, n_bins)
        centres = (b["edges"][:-1] + b["edges"][1:]) / 2
        width = 1.0 / n_bins
        ax, axc = axes[0, k], axes[1, k]
        ok = b["count"] > 0
        ax.bar(centres[ok], b["accuracy"][ok], width=width, edgecolor="k", color="tab:blue", label="accuracy")
        ax.bar(
            centres[ok],
            (b["confidence"] - b["accuracy"])[ok],
            bottom=b["accuracy"][ok],
            width=width,
            color="tab:red",
            alpha=0.35,
            edgecolor="tab:red",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{name}: ECE {ece:.3f}")
        ax.legend(loc="upper left", fontsize=8)
        axc.bar(centres, b["count"], width=width, color="grey", edgecolor="k")
        axc.set(xlim=(0, 1), xlabel="confidence (max probability)", ylabel="count")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def confidence_histogram(curves: dict[str, tuple[Any, Any]], path: str | Path, title: str = "") -> Path:
    """Max-probability histograms of correct and wrong predictions, one panel per curve."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, (name, (p, y)) in zip(axes[0], curves.items(), strict=True):
        p = np.asarray(p)
        conf = p.max(1)
        hit = p.argmax(1) == np.asarray(y)
        ax.hist(conf[hit], bins=bins, alpha=0.7, label=f"correct ({hit.sum()})", color="tab:green")
        ax.hist(conf[~hit], bins=bins, alpha=0.7, label=f"wrong ({(~hit).sum()})", color="tab:red")
        ax.set(xlabel="confidence (max probability)", ylabel="slices", title=name, xlim=(0, 1))
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def binary_roc(p_tumour: Any, y_tumour: Any, threshold: float | None, path: str | Path, title: str = "") -> Path:
    """Tumour-vs-no-tumour ROC with the validation-chosen operating point marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    s, y = np.asarray(p_tumour), np.asarray(y_tumour)
    fig, ax = plt.subplots(figsize=(5, 4.6))
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, s):.3f}")
        if threshold is not None:
            called = s >= threshold
            sens, spec = called[y == 1].mean(), (~called[y == 0]).mean()
            ax.plot([1 - spec], [sens], "o", color="tab:red", label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title=title or "tumour vs no tumour",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)
