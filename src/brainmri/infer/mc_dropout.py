"""Monte-Carlo dropout (Gal & Ghahramani 2016): N stochastic passes with dropout on, everything else in eval.

Only dropout is switched on: ``nn.Dropout*``, timm ``DropPath``/``DropBlock2d`` modules, and the
backbone's classifier dropout, which timm applies functionally with the backbone's own ``training``
flag (``F.dropout(x, p=drop_rate, training=self.training)`` in ``forward_head``); that flag is set on
the backbone module alone, not its children. BatchNorm stays in eval: it normalises with its running
statistics and never updates them. The previous train/eval flags are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from torch import nn

from brainmri.errors import ConfigError


def _dropout_types() -> tuple[type, ...]:
    from timm.layers import DropBlock2d, DropPath

    return (nn.modules.dropout._DropoutNd, DropPath, DropBlock2d)


@contextmanager
def mc_dropout_mode(model: nn.Module) -> Iterator[list[str]]:
    """Put ``model`` in eval mode with dropout active; yields the names of what was switched on."""
    saved = {m: m.training for m in model.modules()}
    model.eval()
    enabled = []
    for name, module in model.named_modules():
        if isinstance(module, _dropout_types()) and (getattr(module, "p", None) or getattr(module, "drop_prob", 0)):
            module.training = True
            enabled.append(name)
    backbone = getattr(model, "backbone", model)
    if float(getattr(backbone, "drop_rate", 0.0) or 0.0) > 0:
        backbone.training = True  # the functional head dropout only; children stay in eval
        enabled.append("backbone.drop_rate")
    try:
        if not enabled:
            raise ConfigError(
                "--mc-dropout needs dropout in the model; this bundle's model has none (model.drop_rate=0)"
            )
        yield enabled
    finally:
        for module, flag in saved.items():
            module.training = flag


def mc_dropout_probs(
    model: nn.Module, x: np.ndarray, passes: int, to_probs: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``to_probs(logits)`` (the bundle's calibration) of ``passes`` stochastic forward passes: (passes, B, C)."""
    import torch

    if passes < 2:
        raise ConfigError(f"--mc-dropout needs at least 2 passes, got {passes}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    out = []
    with mc_dropout_mode(model), torch.inference_mode():
        for _ in range(passes):
            out.append(to_probs(model(xt).float().numpy()))
    return np.stack(out)
