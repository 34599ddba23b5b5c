"""LightningModule: one class for both stages of transfer learning.

Stage 1 (``frozen=True``): only the classifier head trains; the backbone's parameters are frozen *and*
its BatchNorm layers stay in eval mode, so running statistics learnt on ImageNet are not dragged
toward a few batches of MRI. Stage 2: everything trains at a lower learning rate, or only the modules
named in ``train.stage2_trainable`` (e.g. the last blocks: a CPU budget; backward through the early,
high-resolution layers is most of the cost).
Optimiser: AdamW with decoupled weight decay (not on biases/norms); schedule: linear warm-up then
cosine decay, stepped per batch.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from brainmri.config import TrainConfig
from brainmri.models import BrainClassifier
from brainmri.train.lesions import insert_lesions
from brainmri.train.losses import WeightedSoftCrossEntropy, cutmix, mixup
from brainmri.train.style import attach_style_perturbation


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, floor: float = 0.01) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``floor``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def trainable_prefixes(frozen: bool, trainable: list[str] | None) -> list[str] | None:
    """Backbone module-name prefixes that train: none but the head when frozen, all when ``trainable`` is empty."""
    if frozen:
        return []
    return list(trainable) if trainable else None


def _selected(name: str, prefixes: list[str] | None) -> bool:
    return prefixes is None or any(name == p or name.startswith(p + ".") for p in prefixes)


def set_trainable(model: BrainClassifier, prefixes: list[str] | None) -> None:
    """Only the head and the backbone modules under ``prefixes`` (None = everything) get gradients."""
    head = set(map(id, model.classifier_parameters()))
    for name, p in model.backbone.named_parameters():
        p.requires_grad = id(p) in head or _selected(name, prefixes)


def freeze_batchnorm(model: BrainClassifier, prefixes: list[str] | None = None) -> None:
    """BatchNorm layers outside the trainable modules keep their running statistics (eval mode)."""
    for name, m in model.backbone.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not (prefixes and _selected(name, prefixes)):
            m.eval()


def training_size(sizes: dict[int, int], epoch: int) -> int | None:
    """The input size ``train.stage2_sizes`` sets for ``epoch`` (the last entry at or before it), or None."""
    started = [size for first, size in sorted(sizes.items()) if first <= epoch]
    return started[-1] if started else None


def resize_batch(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """``x`` (N, C, H, W) with its longer side at ``size``, antialiased (a cheaper scan of the same slice)."""
    if size is None or size == max(x.shape[-2:]):
        return x
    scale = size / max(x.shape[-2:])
    shape = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
    return F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False)


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        model: BrainClassifier,
        loss: WeightedSoftCrossEntropy,
        cfg: TrainConfig,
        *,
        lr: float,
        frozen: bool,
        steps_per_epoch: int,
        epochs: int,
        stage: int,
        lesions: tuple[int, torch.Tensor] | None = None,
    ) -> None:
        """``lesions``: (index of the lesion-free class, soft target of a drawn lesion), or None (train/lesions.py)."""
        super().__init__()
        # plain JSON values only (no model, loss or pydantic objects): checkpoints stay loadable with weights_only
        self.save_hyperparameters(
            {
                "stage": stage,
                "lr": lr,
                "frozen": frozen,
                "steps_per_epoch": steps_per_epoch,
                "epochs": epochs,
                "num_classes": model.num_classes,
                "train": cfg.model_dump(mode="json"),
            }
        )
        self.model = model
        self.loss_fn = loss
        self.cfg = cfg
        self.lr = lr
        self.frozen = frozen
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.epochs = max(1, epochs)
        self.stage = stage
        self.lesions = lesions
        n = model.num_classes
        self.val_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=n, average="macro")
        self.trainable = trainable_prefixes(frozen, cfg.stage2_trainable)
        set_trainable(model, self.trainable)
        self._style_hooks = []
        if stage == 2 and cfg.style.kind != "none":
            self._style_hooks = attach_style_perturbation(
                model.backbone, cfg.style.kind, cfg.style.layers, cfg.style.p, active=lambda: self.training
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def on_fit_start(self) -> None:
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def on_fit_end(self) -> None:
        for handle in self._style_hooks:  # the model outlives this module (evaluation, export): leave it plain
            handle.remove()
        self._style_hooks = []

    def on_train_epoch_start(self) -> None:
        # Lightning keeps whatever mode modules were left in (e.g. BN in eval after a frozen stage): set it.
        self.model.train()
        if self.trainable is not None:
            freeze_batchnorm(self.model, self.trainable)

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        # Dropout randomness as a function of (seed, stage, step) only: a resumed run draws exactly what an
        # uninterrupted one would, whatever else consumed the global generator in between.
        torch.manual_seed(self.cfg.seed * 1_000_003 + self.stage * 100_003 + self.global_step)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        targets = y
        if self.lesions is not None and self.cfg.augment.synthetic_lesion > 0:
            rng = np.random.default_rng((self.cfg.seed, self.stage, self.global_step, 1))
            source, target = self.lesions
            targets = F.one_hot(y, self.model.num_classes).float()
            x, targets = insert_lesions(x, targets, y, p=self.cfg.augment.synthetic_lesion, source=source,
                                        target=target, rng=rng)  # fmt: skip
        if self.stage == 2:
            x = resize_batch(x, training_size(self.cfg.stage2_sizes, self.current_epoch))
        x = self._layout(x)
        if self.cfg.mixup_alpha > 0:
            rng = np.random.default_rng((self.cfg.seed, self.stage, self.global_step))
            x, targets, _ = mixup(x, targets, self.model.num_classes, self.cfg.mixup_alpha, rng)
        if self.cfg.cutmix_alpha > 0:
            rng = np.random.default_rng((self.cfg.seed, self.stage, self.global_step, 2))
            if rng.random() < self.cfg.cutmix_prob:
                x, targets, _ = cutmix(x, targets, self.model.num_classes, self.cfg.cutmix_alpha, rng)
        logits = self.model(x)
        loss = self.loss_fn(logits, targets)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(self._layout(x))
        loss = nn.functional.cross_entropy(logits.float(), y)
        self.val_acc.update(logits, y)
        self.val_f1.update(logits, y)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(x))
        self.log("val_macro_f1", self.val_f1, on_epoch=True, prog_bar=True, batch_size=len(x))

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        total = self.steps_per_epoch * self.epochs
        warmup = round(self.cfg.warmup_epochs * self.steps_per_epoch) if self.stage == 2 else 0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
