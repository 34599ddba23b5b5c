"""Losses with per-sample class weights, label smoothing, soft (MixUp) targets and focal loss.

Class weights follow scikit-learn's "balanced" rule, w_c = N / (C · n_c), and are applied to each
sample's loss *before* the mean over the batch: loss = (1/B) Σ_i w_{y_i} ℓ_i. (PyTorch's
``CrossEntropyLoss(weight=...)`` instead divides by Σ w_{y_i}, a batch-level rescale that undoes the
weighting whenever a batch is dominated by one class.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def balanced_class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> torch.Tensor:
    """w_c = N / (C · n_c); a class absent from ``labels`` gets weight 0 (it cannot be seen anyway)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    n = counts.sum()
    weights = np.where(counts > 0, n / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def smooth_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot (or already soft) targets mixed with the uniform distribution."""
    if targets.dim() == 1:
        targets = F.one_hot(targets, num_classes).float()
    return targets * (1.0 - smoothing) + smoothing / num_classes


class WeightedSoftCrossEntropy(nn.Module):
    """Cross-entropy against soft targets, each sample weighted by its class weight.

    ``targets`` is a class index (B,) or a soft distribution (B, C) (MixUp). For soft targets the sample
    weight is the target-weighted mean of class weights, Σ_c t_c w_c, so MixUp of classes a and b with
    λ gives λ w_a + (1 − λ) w_b.
    """

    def __init__(self, num_classes: int, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(num_classes))

    def sample_weights(self, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 1:
            return self.class_weights[targets]
        return targets @ self.class_weights

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        soft = smooth_targets(targets, self.num_classes, self.label_smoothing)
        return -(soft * F.log_softmax(logits.float(), dim=-1)).sum(-1)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (self.sample_weights(targets) * self.per_sample(logits, targets)).mean()


class FocalLoss(WeightedSoftCrossEntropy):
    """Focal loss (Lin et al. 2017): Σ_c -α_c t_c (1 − p_c)^γ log p_c, per sample, then class-weighted mean.

    ``alpha`` is an optional per-class factor (default 1); γ = 0 and α = 1 reduce it to cross-entropy.
    """

    def __init__(
        self,
        num_classes: int,
        gamma: float = 2.0,
        alpha: Sequence[float] | None = None,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__(num_classes, class_weights, label_smoothing)
        self.gamma = gamma
        a = torch.ones(num_classes) if alpha is None else torch.tensor(list(alpha), dtype=torch.float32)
        if a.numel() != num_classes:
            raise ValueError(f"focal alpha needs {num_classes} values, got {a.numel()}")
        self.register_buffer("alpha", a)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        soft = smooth_targets(targets, self.num_classes, self.label_smoothing)
        logp = F.log_softmax(logits.float(), dim=-1)
        focal = (1.0 - logp.exp()).pow(self.gamma)
        return -(self.alpha * soft * focal * logp).sum(-1)


def mixup(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp (Zhang et al. 2018): λ ~ Beta(α, α); x' = λ x + (1 − λ) x[perm], y' = λ y + (1 − λ) y[perm].

    ``rng`` is seeded by the caller from (seed, step), so a resumed run mixes the same pairs.
    """
    y1 = y if y.is_floating_point() else F.one_hot(y, num_classes).float()  # soft targets pass through
    if alpha <= 0:
        return x, y1, 1.0
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * y1 + (1 - lam) * y1[perm], lam


def cutmix(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019): a box of about (1 − λ) of the area, λ ~ Beta(α, α), comes from x[perm].

        The targets mix by the box's actual area (λ is recomputed after clipping to the image), as in timm.
        Unlike MixUp the pasted region keeps its own contrast and texture, so a lesion pasted into another
        slice stays a lesion; the network has to find where the evidence is. ``rng`` is seeded by the caller
    (not timm's ``Mixup``, which draws from NumPy's global generator: a resumed run would mix other boxes).
    """
    y1 = y if y.is_floating_point() else F.one_hot(y, num_classes).float()
    if alpha <= 0:
        return x, y1, 1.0
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)
    h, w = x.shape[-2:]
    bh, bw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    left, right = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    out = x.clone()
    out[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    return out, lam * y1 + (1 - lam) * y1[perm], lam


def build_loss(cfg, num_classes: int, class_weights: torch.Tensor | None) -> WeightedSoftCrossEntropy:
    if cfg.loss == "focal":
        return FocalLoss(num_classes, cfg.focal_gamma, cfg.focal_alpha, class_weights, cfg.label_smoothing)
    return WeightedSoftCrossEntropy(num_classes, class_weights, cfg.label_smoothing)
