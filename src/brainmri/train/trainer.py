"""``train_run``: two-stage transfer learning from the preprocessing cache to a run folder.

Stage 1 trains the head with the backbone frozen (optionally on cached pooled features: one forward
pass over the data instead of one per epoch, what makes the CPU recipe fit in minutes); stage 2
fine-tunes everything at a lower LR. The best weights over both stages (by ``train.monitor`` on the
validation split) become ``model.safetensors``. ``resume=True`` continues an interrupted run from the
last Lightning checkpoint and reaches the same weights as an uninterrupted run (see ``data.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn

from brainmri.config import Config, save_config
from brainmri.errors import ConfigError, DataError
from brainmri.labels import NO_TUMOR
from brainmri.models import BrainClassifier, create_model
from brainmri.runs import RUN_JSON, WEIGHTS_FILE, SplitImages, images_from_cache, write_run
from brainmri.train.augment import Augmenter
from brainmri.train.data import SliceDataModule
from brainmri.train.ema import WeightAverage
from brainmri.train.losses import balanced_class_weights, build_loss
from brainmri.train.module import ClassifierModule, training_size, warmup_cosine
from brainmri.train.style import style_modules
from brainmri.utils import atomic_path, atomic_write_json, machine_facts, progress, setup_torch


def _split_names(fold: int | None) -> tuple[str, str]:
    return ("train", "val") if fold is None else (f"fold{fold}:train", f"fold{fold}:val")


def load_training_data(cfg: Config, split_file: str | Path, fold: int | None):
    """(train SplitImages, val SplitImages, cache) for a split file and optional fold."""
    from brainmri.data.manifest import read_manifest
    from brainmri.data.split import read_split, split_frame
    from brainmri.layout import Layout
    from brainmri.preprocess.cache import PreprocessedCache, preprocess_dir_for

    split = read_split(split_file)
    manifest = read_manifest(split["manifest"])
    layout = Layout.from_config(cfg.paths)
    if fold is not None:
        _build_fold_cache(cfg, split_file, split["manifest"], fold, layout.fold_preprocess_root(fold))
    root = layout.preprocess_root if fold is None else layout.fold_preprocess_root(fold)
    cache_dir = preprocess_dir_for(cfg.preprocess, root)
    if not Path(cache_dir).is_dir():
        raise DataError(f"no preprocessing cache at {cache_dir}; run `brainmri preprocess` with the same config first")
    cache = PreprocessedCache(cache_dir)
    tr_name, va_name = _split_names(fold)
    train = images_from_cache(split_frame(manifest, split, tr_name), cache, cfg.data.classes)
    val = images_from_cache(split_frame(manifest, split, va_name), cache, cfg.data.classes)
    for name, s in ((tr_name, train), (va_name, val)):
        if len(s.ids) == 0:
            raise DataError(f"split '{name}' of {split_file} is empty")
        if (s.labels < 0).any():
            bad = sorted({n for n, lab in zip(s.label_names, s.labels, strict=True) if lab < 0})
            raise DataError(f"split '{name}' has labels outside data.classes: {bad}")
    return train, val, cache


def _build_fold_cache(cfg: Config, split_file: str | Path, manifest: str, fold: int, root: Path) -> None:
    """Fit the preprocessing on fold ``fold``'s training part only and cache that fold's images.

    Why per fold: Nyúl landmarks are learnt from images; fitted once on the main split's train part they
    would have seen every other fold's validation images. Idempotent: a finished fold cache is reused.
    """
    from brainmri.preprocess.cache import build_cache

    parts = (f"fold{fold}:train", f"fold{fold}:val")
    build_cache(cfg.preprocess, cfg.data, manifest, split_file, root, parts=parts)


class BestWeights(Callback):
    """Keeps the best weights seen (by ``monitor``) across both stages and writes them atomically."""

    def __init__(self, path: Path, monitor: str, mode: str, best: float | None = None) -> None:
        self.path = path
        self.monitor = monitor
        self.mode = mode
        self.best = best
        self.best_epoch: str | None = None

    def better(self, value: float) -> bool:
        if self.best is None or not np.isfinite(self.best):
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def offer(self, model: nn.Module, value: float, tag: str) -> None:
        if self.better(value):
            from safetensors.torch import save_file

            self.best, self.best_epoch = float(value), tag
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            with atomic_path(self.path) as tmp:
                save_file(state, str(tmp))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            self.offer(pl_module.model, float(value), f"stage{pl_module.stage}:{trainer.current_epoch}")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict.get("best"), state_dict.get("best_epoch")


class History(Callback):
    """Per-epoch metrics (train and validation) with wall time, appended to a list."""

    def __init__(self, rows: list[dict[str, Any]], n_train: int) -> None:
        self.rows = rows
        self.n_train = n_train
        self.t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0 = time.perf_counter()

    @staticmethod
    def _size(pl_module: L.LightningModule, epoch: int) -> dict[str, int]:
        size = training_size(pl_module.cfg.stage2_sizes, epoch) if pl_module.stage == 2 else None
        return {} if size is None else {"train_size": size}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train_", "val_"))}
        seconds = time.perf_counter() - self.t0
        seen = self.n_train * (trainer.limit_train_batches if isinstance(trainer.limit_train_batches, float) else 1)
        self.rows.append(
            {
                "stage": pl_module.stage,
                "epoch": trainer.current_epoch,
                "seconds": round(seconds, 2),
                "images_per_s": round(seen / max(seconds, 1e-9), 2),
                **self._size(pl_module, trainer.current_epoch),
                **m,
            }
        )


def _loggers(cfg: Config, run_dir: Path, stage: int) -> list:
    """The run's loggers for one stage: ``logs/csv/stage<k>/`` and ``logs/tensorboard/stage<k>/`` (one
    TensorBoard run per stage); W&B (one run per process) gets stage 2 only."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list = []
    wanted = cfg.train.loggers
    logs = str(run_dir / "logs")
    if "csv" in wanted:
        loggers.append(CSVLogger(logs, name="csv", version=f"stage{stage}"))
    if "tensorboard" in wanted:
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(logs, name="tensorboard", version=f"stage{stage}"))
        except ModuleNotFoundError:
            pass
    if "wandb" in wanted and stage == 2:
        try:
            import wandb  # noqa: F401
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(project="brainmri", name=run_dir.name, save_dir=str(run_dir)))
        except ModuleNotFoundError:
            print("warning: train.loggers has 'wandb' but wandb is not installed (pip install brainmri[wandb])")
    return loggers


@torch.no_grad()  # not inference_mode: the parameters must stay trainable tensors for stage 2
def _features(
    model: BrainClassifier, images: np.ndarray, batch_size: int, channels_last: bool, desc: str = "features"
) -> torch.Tensor:
    model.eval()
    out = []
    n_batches = -(-len(images) // batch_size)
    for start in progress(range(0, len(images), batch_size), desc=desc, total=n_batches, leave=True):
        x = torch.from_numpy(images[start : start + batch_size]).float().div_(255).unsqueeze(1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model.forward_features(x))
    return torch.cat(out)


def train_head_on_features(
    model: BrainClassifier,
    cfg: Config,
    train: SplitImages,
    val: SplitImages,
    best: BestWeights,
    history: list[dict[str, Any]],
    loggers: list | None = None,
    f_train: torch.Tensor | None = None,
    weights: np.ndarray | None = None,
) -> None:
    """Stage 1 on cached pooled features: exact for a frozen backbone with BN in eval mode.

    ``f_train``: the training features when already computed; ``weights``: per-image draw weights.
    Appends one row per epoch to ``history``, offers the weights to ``best`` and logs the epoch to
    ``loggers`` (Lightning loggers, as a Lightning stage would).
    """
    t0 = time.perf_counter()
    if f_train is None:
        f_train = frozen_features(model, cfg, train.images, "stage 1: features (train)")
    f_val = frozen_features(model, cfg, val.images, "stage 1: features (val)")
    feats = HeadData(f_train, train.labels, f_val, val.labels, time.perf_counter() - t0, weights)
    fit_head(model, cfg, feats, best, history, loggers)


def frozen_features(model: BrainClassifier, cfg: Config, images: np.ndarray, desc: str) -> torch.Tensor:
    """Pooled features of the backbone as it is (frozen, BN in eval mode), in the recipe's memory format."""
    tc = cfg.train
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    return _features(model, images, tc.batch_size * 2, tc.channels_last, desc)


@dataclass
class HeadData:
    """Pooled backbone features of the training and validation images (what stage 1 trains the head on)."""

    f_train: torch.Tensor
    y_train: np.ndarray
    f_val: torch.Tensor
    y_val: np.ndarray
    feature_seconds: float = 0.0
    weights: np.ndarray | None = None
    """Per-image draw weights (appearance-group balancing); None: every image once per epoch."""


def fit_head(
    model: BrainClassifier,
    cfg: Config,
    data: HeadData,
    best: BestWeights,
    history: list[dict[str, Any]],
    loggers: list | None = None,
) -> None:
    """Train the classifier head on fixed features (stage 1's optimiser, schedule, loss and seed).

    Separate from the feature pass so that a study can train several seeds on one set of features
    (``bench/ablation.py``) with exactly the recipe ``brainmri train`` uses.
    """
    tc = cfg.train
    use_class_weights = tc.class_weights and data.weights is None  # balancing weights already balance classes
    weights = balanced_class_weights(data.y_train, model.num_classes) if use_class_weights else None
    loss_fn = build_loss(tc, model.num_classes, weights)
    opt = torch.optim.AdamW(model.backbone.get_classifier().parameters(), lr=tc.stage1.lr, weight_decay=tc.weight_decay)
    y_train = torch.from_numpy(data.y_train)
    steps_per_epoch = -(-len(data.f_train) // tc.batch_size)
    total = steps_per_epoch * max(1, tc.stage1.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 0, total))
    g = torch.Generator().manual_seed(tc.seed)
    _log_hyperparams(loggers or [], {"stage": 1, "lr": tc.stage1.lr, "cached_features": True, "train": tc})
    for epoch in progress(range(tc.stage1.epochs), desc="stage 1: head on cached features", leave=True):
        t_epoch = time.perf_counter()
        model.train()
        perm = _epoch_order(len(data.f_train), data.weights, g)
        train_loss = _head_epoch(model, data.f_train[perm], y_train[perm], loss_fn, opt, sched, tc.batch_size)
        metrics = _head_validation(model, data.f_val, data.y_val)
        seconds = time.perf_counter() - t_epoch + (data.feature_seconds if epoch == 0 else 0.0)
        row = {"stage": 1, "epoch": epoch, "seconds": round(seconds, 2)}
        row |= {"images_per_s": round(len(data.f_train) / max(seconds, 1e-9), 2), "train_loss": train_loss, **metrics}
        history.append(row)
        step = (epoch + 1) * steps_per_epoch - 1  # the epoch's last optimiser step, as Lightning logs it
        for lg in loggers or []:
            lg.log_metrics({"train_loss": train_loss, **metrics, "epoch": epoch}, step=step)
        best.offer(model, metrics[cfg.train.monitor], f"stage1:{epoch}")
    for lg in loggers or []:
        lg.finalize("success")


def _epoch_order(n: int, weights: np.ndarray | None, g: torch.Generator) -> torch.Tensor:
    """A shuffle, or with ``weights`` n draws with replacement (as ``EpochSampler`` does in stage 2)."""
    if weights is None:
        return torch.randperm(n, generator=g)
    return torch.multinomial(torch.as_tensor(weights, dtype=torch.double), n, replacement=True, generator=g)


def _head_epoch(model: BrainClassifier, features, labels, loss_fn, opt, sched, batch_size: int) -> float:
    """One pass of the head over (already shuffled) features; returns the mean training loss."""
    running = 0.0
    for start in range(0, len(features), batch_size):
        logits = model.forward_classifier(features[start : start + batch_size])
        loss = loss_fn(logits, labels[start : start + batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach()) * len(logits)
    return running / len(features)


def _head_validation(model: BrainClassifier, features: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """``val_loss``, ``val_acc`` and ``val_macro_f1`` of the head on the validation features."""
    from sklearn.metrics import f1_score

    model.eval()
    with torch.inference_mode():
        logits = model.forward_classifier(features)
        val_loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(labels)))
        pred = logits.argmax(1).numpy()
    classes = list(range(model.num_classes))
    f1 = float(f1_score(labels, pred, average="macro", labels=classes, zero_division=0))
    return {"val_loss": val_loss, "val_acc": float((pred == labels).mean()), "val_macro_f1": f1}


def _log_hyperparams(loggers: list, params: dict[str, Any]) -> None:
    params = {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in params.items()}
    for lg in loggers:
        lg.log_hyperparams(params)


def _trainer(cfg: Config, run_dir: Path, stage: int, epochs: int, callbacks: list) -> L.Trainer:
    tc = cfg.train
    if _progress_enabled():  # one bar per epoch, kept on screen (Lightning's default overwrites it)
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks = [*callbacks, TQDMProgressBar(leave=True)]
    precision = tc.precision
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return L.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=epochs,
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        precision=precision,
        deterministic=tc.deterministic and not torch.cuda.is_available(),
        gradient_clip_val=tc.grad_clip or None,
        callbacks=callbacks,
        logger=_loggers(cfg, run_dir, stage),
        enable_progress_bar=_progress_enabled(),
        enable_model_summary=False,
        limit_train_batches=tc.limit_train_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )


def _progress_enabled() -> bool:
    import os

    return os.environ.get("BRAINMRI_NO_PROGRESS") != "1"


def run_dir_for(cfg: Config, fold: int | None = None) -> Path:
    name = cfg.train.run_name + ("" if fold is None else f"-fold{fold}")
    return Path(cfg.paths.runs_dir) / name


def train_run(
    cfg: Config,
    split_file: str | Path,
    run_dir: str | Path | None = None,
    fold: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """Train on the split (or fold ``fold``) and write a complete run folder; returns its path."""
    setup_torch()
    if cfg.model.ensemble > 1:
        raise ConfigError(
            f"model.ensemble={cfg.model.ensemble}: train each member as its own run (e.g. --seed 1, --seed 2), "
            "then combine them with `brainmri ensemble RUN RUN ... --name NAME`"
        )
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg, fold)
    if (run_dir / RUN_JSON).is_file() and not (resume or overwrite):
        raise DataError(f"{run_dir} already holds a finished run; pass --resume, --overwrite or another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    train, val, cache = load_training_data(cfg, split_file, fold)
    classes = cfg.data.classes
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    model = create_model(cfg.model, len(classes))
    if cfg.train.style.kind != "none":
        style_modules(model.backbone, cfg.train.style.kind, cfg.train.style.layers)
    result = fit_stages(cfg, model, train, val, run_dir, resume=resume)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(run_dir / WEIGHTS_FILE)))
    _write_history(run_dir, result["history"])
    write_run(
        run_dir,
        cfg,
        model,
        cache.preprocessor(),
        classes=classes,
        split_file=split_file,
        preprocess_dir=cache.dir,
        extra={
            "fold": fold,
            "monitor": cfg.train.monitor,
            "best_score": result["best"],
            "best_epoch": result["best_epoch"],
            "n_train": len(train.ids),
            "n_val": len(val.ids),
            "wall_seconds": result["wall_seconds"],
            "stage1_seconds": result["stage1_seconds"],
            "completed": True,
            "machine": machine_facts(),
        },
    )
    return run_dir


def fit_stages(
    cfg: Config,
    model: BrainClassifier,
    train: SplitImages,
    val: SplitImages,
    run_dir: Path,
    resume: bool = False,
    extra_callbacks: list | None = None,
) -> dict[str, Any]:
    """Both stages on in-memory images; best weights to ``run_dir/model.safetensors``.

    Progress (stage 1 done, history, best score) is kept in ``checkpoints/progress.json`` so that
    ``resume=True`` skips a finished stage 1 and continues stage 2 from ``checkpoints/stage2/last.ckpt``.
    """
    tc = cfg.train
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state_file = ckpt_dir / "progress.json"
    done: dict[str, Any] = json.loads(state_file.read_text()) if (resume and state_file.is_file()) else {}
    best = BestWeights(run_dir / WEIGHTS_FILE, tc.monitor, tc.monitor_mode, done.get("best"))
    best.best_epoch = done.get("best_epoch")
    draws = balance_weights(cfg, model, train, run_dir, resume)
    use_class_weights = tc.class_weights and draws.weights is None  # balancing weights already balance classes
    class_weights = balanced_class_weights(train.labels, model.num_classes) if use_class_weights else None
    stages = _Stages(cfg, model, train, val, run_dir, best, class_weights, list(extra_callbacks or []), draws)
    history: list[dict[str, Any]] = list(done.get("history", []))
    t_start = time.perf_counter()
    if tc.stage1.epochs > 0:
        _stage1(stages, history, done, state_file)
    stage1_seconds = time.perf_counter() - t_start
    if tc.stage2.epochs > 0:
        history.extend(_stage2(stages, done, state_file, resume))
    return {
        "history": history,
        "best": best.best,
        "best_epoch": best.best_epoch,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "stage1_seconds": round(stage1_seconds, 1),
    }


@dataclass
class Draws:
    """How training images are drawn: per-image weights (None: each once per epoch) and, when computing them
    needed it, the frozen training features (stage 1 on cached features reuses them)."""

    weights: np.ndarray | None = None
    features: torch.Tensor | None = None


BALANCE_FILE = "balance.json"


def balance_weights(cfg: Config, model: BrainClassifier, train: SplitImages, run_dir: Path, resume: bool) -> Draws:
    """Appearance-group balancing (``train.balance``), fitted on the pretrained backbone's features.

    Written to ``run_dir/balance.json`` (group x class table, weights); a resumed run reads them back, since its
    backbone is no longer the pretrained one.
    """
    from brainmri.train.balance import GroupBalancer

    bc = cfg.train.balance
    if bc.groups == 0:
        return Draws()
    path = run_dir / BALANCE_FILE
    if resume and path.is_file():
        weights = np.asarray(json.loads(path.read_text())["weights"], dtype=np.float64)
        if len(weights) != len(train.ids):
            raise DataError(f"{path}: {len(weights)} weights for {len(train.ids)} training images; train afresh")
        return Draws(weights)
    feats = frozen_features(model, cfg, train.images, "balance: features (train)")
    balancer = GroupBalancer(bc.groups, bc.max_weight, seed=cfg.train.seed).fit(
        feats.numpy(), train.labels, model.num_classes
    )
    atomic_write_json(path, balancer.summary(cfg.data.classes))
    return Draws(balancer.weights_, feats)


@dataclass
class _Stages:
    """What both training stages share: config, model, data, run folder and the best-weights keeper."""

    cfg: Config
    model: BrainClassifier
    train: SplitImages
    val: SplitImages
    run_dir: Path
    best: BestWeights
    class_weights: torch.Tensor | None
    extra_callbacks: list
    draws: Draws

    def lightning(self, stage: int, epochs: int, lr: float, frozen: bool, callbacks: list, ckpt: str | None):
        """One Lightning stage (``ckpt``: the checkpoint to resume from)."""
        tc = self.cfg.train
        n_classes = self.model.num_classes
        dm = SliceDataModule(
            self.train.images,
            self.train.labels,
            self.val.images,
            self.val.labels,
            n_classes,
            tc.batch_size,
            tc.num_workers,
            Augmenter(tc.augment, bank=self.train.images),  # Fourier mix partners: other training slices
            tc.oversample,
            tc.seed,
            self.draws.weights,
        )
        self.model.train()  # a cached-feature stage 1 leaves it in eval mode; BN freezing is set per epoch
        module = ClassifierModule(
            self.model,
            build_loss(tc, n_classes, self.class_weights),
            tc,
            lr=lr,
            frozen=frozen,
            steps_per_epoch=len(dm.train_dataloader()),
            epochs=epochs,
            stage=stage,
            lesions=lesion_settings(self.cfg),
        )
        trainer = _trainer(self.cfg, self.run_dir, stage, epochs, callbacks + self.extra_callbacks)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True if ckpt else None)
        return trainer


def lesion_settings(cfg: Config) -> tuple[int, torch.Tensor] | None:
    """(lesion-free class index, soft target) for ``train.augment.synthetic_lesion``, or None when it is off."""
    aug, classes = cfg.train.augment, list(cfg.data.classes)
    if aug.synthetic_lesion <= 0:
        return None
    if NO_TUMOR not in classes:
        raise ConfigError(f"train.augment.synthetic_lesion needs a '{NO_TUMOR}' class to draw lesions into")
    unknown = sorted(set(aug.synthetic_lesion_target) - set(classes) | ({NO_TUMOR} & set(aug.synthetic_lesion_target)))
    total = sum(aug.synthetic_lesion_target.values())
    if unknown or total <= 0 or min(aug.synthetic_lesion_target.values()) < 0:
        raise ConfigError(
            f"train.augment.synthetic_lesion_target {aug.synthetic_lesion_target}: needs non-negative weights of "
            f"tumour classes among {classes} (not {NO_TUMOR}) summing above 0"
        )
    target = torch.zeros(len(classes))
    for name, w in aug.synthetic_lesion_target.items():
        target[classes.index(name)] = w / total
    return classes.index(NO_TUMOR), target


def _stage1(s: _Stages, history: list[dict[str, Any]], done: dict[str, Any], state_file: Path) -> None:
    """Stage 1, frozen backbone (skipped when a resumed run finished it); its weights to ``stage1.safetensors``."""
    from safetensors.torch import load_file, save_file

    tc = s.cfg.train
    stage1_file = state_file.parent / "stage1.safetensors"
    if done.get("stage1_done") and stage1_file.is_file():
        s.model.load_state_dict(load_file(str(stage1_file)))
        return
    if tc.cache_frozen_features:
        loggers = _loggers(s.cfg, s.run_dir, 1)
        draws = s.draws
        train_head_on_features(s.model, s.cfg, s.train, s.val, s.best, history, loggers, draws.features, draws.weights)
    else:
        s.lightning(1, tc.stage1.epochs, tc.stage1.lr, True, [s.best, History(history, len(s.train.ids))], None)
    with atomic_path(stage1_file) as tmp:
        save_file({k: v.contiguous() for k, v in s.model.state_dict().items()}, str(tmp))
    done.update(stage1_done=True, history=history, best=s.best.best, best_epoch=s.best.best_epoch)
    atomic_write_json(state_file, done)


def _stage2(s: _Stages, done: dict[str, Any], state_file: Path, resume: bool) -> list[dict[str, Any]]:
    """Stage 2, everything (or ``train.stage2_trainable``) trains; resumes from ``stage2/last.ckpt``.
    Returns the stage's history rows."""
    tc = s.cfg.train
    ckpt_dir = state_file.parent
    last = ckpt_dir / "stage2" / "last.ckpt"
    ckpt = str(last) if resume and last.is_file() else None
    rows: list[dict[str, Any]] = list(done.get("stage2_history", [])) if ckpt else []
    persist = _PersistProgress(state_file, done, s.best, rows)
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir / "stage2"),
        filename="best",
        monitor=tc.monitor,
        mode=tc.monitor_mode,
        save_last=True,
        save_top_k=1,
    )
    stop = EarlyStopping(monitor=tc.monitor, mode=tc.monitor_mode, patience=tc.early_stopping_patience)
    callbacks = [s.best, checkpoint, History(rows, len(s.train.ids)), stop, persist]
    if tc.ema_decay > 0:  # after s.best: the best-weights file must see the averaged weights (train/ema.py)
        callbacks.append(WeightAverage(tc.ema_decay))
    s.lightning(2, tc.stage2.epochs, tc.stage2.lr, False, callbacks, ckpt)
    return rows


class _PersistProgress(Callback):
    """Writes stage-2 history and the best score after every epoch, for ``resume``."""

    def __init__(self, path: Path, done: dict[str, Any], best: BestWeights, rows: list[dict[str, Any]]) -> None:
        self.path, self.done, self.best, self.rows = path, done, best, rows

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.done.update(stage2_history=self.rows, best=self.best.best, best_epoch=self.best.best_epoch)
            atomic_write_json(self.path, self.done)


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    import pandas as pd

    from brainmri.utils import atomic_write_text

    atomic_write_json(run_dir / "history.json", history)
    atomic_write_text(run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
    if history:
        plot_curves(history, run_dir / "curves.png")


def plot_curves(history: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, ax, title in (("loss", axes[0], "loss"), ("acc", axes[1], "accuracy / macro-F1")):
        if key == "loss":
            ax.plot(x, [h.get("train_loss", np.nan) for h in history], "o-", label="train loss")
            ax.plot(x, [h.get("val_loss", np.nan) for h in history], "o-", label="val loss")
        else:
            ax.plot(x, [h.get("val_acc", np.nan) for h in history], "o-", label="val accuracy")
            ax.plot(x, [h.get("val_macro_f1", np.nan) for h in history], "o-", label="val macro-F1")
        boundary = sum(1 for h in history if h["stage"] == 1)
        if 0 < boundary < len(history):
            ax.axvline(boundary + 0.5, color="grey", ls="--", lw=1)
        ax.set_xlabel("epoch (stage 1 | stage 2)")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
