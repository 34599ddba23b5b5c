"""Exponential moving average of the weights during stage 2 (``train.ema_decay``).

Why: weight averaging along the training trajectory (SWA, Izmailov et al. 2018; SWAD, Cha et al. 2021)
lands in flatter minima, which hold up better on domains the training never saw; an ensemble of seeds
helps the same way at twice the inference cost (``bench/results/paired_mirror.json``), an average of
weights at none. On this project's CPU recipe it did not help (``bench/results/paired_ema.json``:
lgg-flair AUC -0.027, test accuracy -1.0 points over two seeds), so it is off by default.

timm's ``ModelEmaV3`` keeps the average, without its warm-up schedule: that schedule is made for runs
of tens of thousands of steps and would keep the decay near 0.99 through a CPU run of ~700 steps. The
first update copies the weights, so stage 2's starting point fades out as decay^steps (0.995^700 = 3%).

How it meets the rest of training: for every validation pass the averaged weights are swapped into the
model, so the monitored metrics, early stopping and the best-weights file (``BestWeights``, which must
come *before* this callback in the list) all see the average; afterwards the raw weights go back, so the
optimiser and Lightning's checkpoints (run after all other callbacks) continue from them. The average
itself is this callback's state in the checkpoint, so ``resume`` continues it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class WeightAverage(Callback):
    """Keeps ``ModelEmaV3(model, decay)`` and validates with it (see the module docstring)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.ema = None
        self._pending: dict[str, torch.Tensor] | None = None  # from a checkpoint, before fit starts
        self._raw: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(pl_module.model, decay=self.decay)
        if self._pending is not None:
            self.ema.module.load_state_dict(self._pending)
            self._pending = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.ema.update(pl_module.model, step=trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ema is None or trainer.global_step == 0:  # sanity check: nothing averaged yet
            return
        model = pl_module.model
        self._raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.ema.module.state_dict())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._raw is not None:
            pl_module.model.load_state_dict(self._raw)
            self._raw = None

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.module.state_dict()} if self.ema is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("ema")
