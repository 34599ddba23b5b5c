"""Feature-statistics perturbation during fine-tuning (``train.style``): style randomisation inside the network.

Why: every image-level appearance randomisation measured here (intensity curves, inversion, Fourier mixing,
GIN) bought robustness to synthetic corruptions and cost real external AUC (docs/robustness.md). The channel
means and standard deviations of early convolutional features carry a slice's "style" (contrast, texture,
scanner), while the normalised features carry its content; perturbing the statistics alone changes the style
the later blocks see without drawing any particular image transform. Two published forms:

- ``dsu`` (Li et al. 2022, "Uncertainty modeling for out-of-distribution generalization"): each image's
  statistics are resampled from a Gaussian around them whose spread is the batch's spread of those statistics
  (works from a single source domain);
- ``mixstyle`` (Zhou et al. 2021): each image's statistics are mixed with another image's of the batch,
  lambda ~ Beta(alpha, alpha).

Applied with probability ``p`` per batch after each module named in ``layers``, in training only (validation,
evaluation and every deployed runtime see the plain network: nothing here is saved with the weights). Random
draws use torch's global generator, which training seeds per (seed, stage, step), so a resumed run draws the
same perturbations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from brainmri.errors import ConfigError

EPS = 1e-6


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: mean and standard deviation over the spatial positions, shape (N, C, 1, 1)."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    sig = (x.var(dim=(2, 3), keepdim=True) + EPS).sqrt()
    return mu, sig


def dsu(x: torch.Tensor) -> torch.Tensor:
    """Resample each image's channel statistics from N(stat, batch variance of stat)."""
    mu, sig = _stats(x)
    spread_mu = (mu.var(dim=0, keepdim=True) + EPS).sqrt()
    spread_sig = (sig.var(dim=0, keepdim=True) + EPS).sqrt()
    beta = mu + torch.randn_like(mu) * spread_mu
    gamma = sig + torch.randn_like(sig) * spread_sig
    return (x - mu) / sig * gamma + beta


def mixstyle(x: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Mix each image's channel statistics with a random partner's from the batch (gradients stop at the stats,
    as in the paper)."""
    mu, sig = _stats(x)
    mu, sig = mu.detach(), sig.detach()
    lam = torch.distributions.Beta(alpha, alpha).sample((x.shape[0], 1, 1, 1)).to(x.dtype)
    perm = torch.randperm(x.shape[0])
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix


PERTURBATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"dsu": dsu, "mixstyle": mixstyle}


def style_modules(backbone: nn.Module, kind: str, layers: list[str]) -> list[nn.Module]:
    """The modules ``layers`` names in ``backbone``; a ConfigError for an unknown kind or name (checked before
    stage 1 too, so a typo does not surface only after it)."""
    if kind not in PERTURBATIONS:
        raise ConfigError(f"train.style.kind: unknown '{kind}'; known: none, {', '.join(sorted(PERTURBATIONS))}")
    modules = dict(backbone.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ConfigError(f"train.style.layers: no module named {missing} in the backbone")
    return [modules[name] for name in layers]


def attach_style_perturbation(
    backbone: nn.Module, kind: str, layers: list[str], p: float, active: Callable[[], bool]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks that perturb the outputs of ``layers`` (module names in ``backbone``) while ``active()``;
    returns the handles (``handle.remove()`` detaches them). Unknown layer names are an error, not a no-op."""
    targets = style_modules(backbone, kind, layers)
    perturb = PERTURBATIONS[kind]

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
        if not active() or output.ndim != 4 or output.shape[0] < 2 or torch.rand(()) >= p:
            return None
        return perturb(output)

    return [module.register_forward_hook(hook) for module in targets]
