"""Domain adaptation: fine-tune a run on the calibration part of an external set, keeping the source skill.

Two methods (``adapt.method``): ``finetune`` (below; needs a run, whose training images it replays) and ``head``
(``brainmri.train.site_head``: refit the ``no_tumor`` row of the linear head on frozen features; the only one a
bundle allows, and ``auto`` picks it for a bundle). A run gives a new run folder, a bundle a new bundle.

Fine-tuning, the loss of one step (``adapt.batch_size`` = external images + replayed source training images)::

    w_ext * BCE(p_tumour, y_tumour)                       external images, p_tumour = 1 - softmax(z)[no_tumor]
  + w_src * CE(z, y_class)                               replayed source images (4 classes)
  + w_kd  * T^2 KL(softmax(z0 / T) || softmax(z / T))    replayed source images, z0 = the original model

p_tumour is the probability the deployed model reports (one softmax, no separate sigmoid head), so the
adapted model stays a 4-class classifier whose tumour probability was trained directly. ``log p_tumour`` is
``logsumexp`` over the tumour logits minus ``logsumexp`` over all (exact and stable). The BCE term is
class-balanced (``adapt.balance``). Only the head and the backbone modules in ``adapt.trainable`` learn;
BatchNorm statistics are frozen (``adapt.batchnorm: freeze``) or re-estimated in the trainable modules
(``update``). Early stopping watches the BCE on a held-out, patient-disjoint slice of the calibration part;
the best epoch's weights are kept. The result is a new run folder (``runs.write_run``) with its lineage in
``run.json`` (``adapted_from``, ``external``, ``adapt``) that evaluates and exports like any other run.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from brainmri.bundle.source import BundleSource, load_source
from brainmri.config import AdaptConfig, Config
from brainmri.data.external import ExternalSet, grouped_split, prepare_external, tumour_of, write_split_file
from brainmri.errors import ConfigError, DataError
from brainmri.labels import NO_TUMOR
from brainmri.layout import Layout
from brainmri.runs import Run, images_from_files, write_run
from brainmri.train.module import set_trainable, warmup_cosine
from brainmri.utils import replace_dir

SPLIT_FILE = "external_split.json"


@dataclass
class AdaptData:
    ext_images: np.ndarray  # uint8 (N, S, S), calibration part minus the held-out slice
    ext_y: np.ndarray  # 0/1 tumour
    hold_images: np.ndarray
    hold_y: np.ndarray
    src_images: np.ndarray  # uint8 source training images (the replay pool)
    src_y: np.ndarray  # class index


@dataclass
class Cached:
    """Inputs of the trainable part of the network, computed once: (N, 2, ...) = (plain, flipped)."""

    ext: torch.Tensor
    ext_y: np.ndarray
    ext_w: np.ndarray
    hold: torch.Tensor
    hold_y: np.ndarray
    src: torch.Tensor
    src_y: np.ndarray
    src_t: torch.Tensor  # the original model's logits on the replay pool, (P, 2, C)


# ------------------------------------------------------------------------------------------------ frozen prefix


def frozen_depth(model: nn.Module, trainable: list[str]) -> int:
    """Leading backbone blocks that do not train (their output can be cached); -1 when nothing can be cached.

    Works for timm EfficientNet-style backbones (conv_stem, bn1, blocks, conv_head, bn2, forward_head).
    """
    bb = model.backbone
    if not trainable or not all(hasattr(bb, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return -1
    depth = len(bb.blocks)
    for p in trainable:
        parts = p.split(".")
        if parts[0] in ("conv_stem", "bn1") or (parts[0] == "blocks" and len(parts) == 1):
            return -1
        if parts[0] == "blocks" and parts[1].isdigit():
            depth = min(depth, int(parts[1]))
    return depth


def prefix(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """Output of the frozen stem and first ``k`` blocks (the input itself when ``k < 0``)."""
    if k < 0:
        return x
    bb = model.backbone
    h = bb.bn1(bb.conv_stem(model.normalise(x)))
    for block in bb.blocks[:k]:
        h = block(h)
    return h


def suffix(model: nn.Module, h: torch.Tensor, k: int) -> torch.Tensor:
    """Logits from ``prefix`` output: the remaining blocks, head conv, pooling, dropout and classifier."""
    if k < 0:
        return model(h)
    bb = model.backbone
    for block in bb.blocks[k:]:
        h = block(h)
    return bb.forward_head(bb.bn2(bb.conv_head(h)))


def encode(model: nn.Module, images: np.ndarray, k: int, batch: int, flips: bool = True) -> torch.Tensor:
    """Cached prefix output of uint8 images, (N, 2, ...) with the horizontally flipped copy (or (N, ...))."""
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            x = _to_x(images[s : s + batch])
            h = [prefix(model, x, k)] + ([prefix(model, x.flip(-1), k)] if flips else [])
            out.append(torch.stack(h, 1) if flips else h[0])
    return torch.cat(out).contiguous() if out else torch.zeros(0)


def cache_inputs(model: nn.Module, data: AdaptData, acfg: AdaptConfig, k: int) -> Cached:
    pos = float(data.ext_y.mean())
    w = np.where(data.ext_y == 1, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6))
    src, teacher = torch.zeros(0), torch.zeros(0)
    if len(data.src_images):
        src = encode(model, data.src_images, k, acfg.batch_size)
        with torch.inference_mode():  # the teacher: the original model, before any step
            teacher = torch.stack([_logits_in_chunks(model, src[:, f], k, acfg.batch_size) for f in (0, 1)], 1)
    return Cached(
        encode(model, data.ext_images, k, acfg.batch_size),
        data.ext_y,
        w if acfg.balance else np.ones(len(w)),
        encode(model, data.hold_images, k, acfg.batch_size, flips=False),
        data.hold_y,
        src,
        data.src_y,
        teacher,
    )


def _logits_in_chunks(model: nn.Module, h: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    if len(h) == 0:
        return torch.zeros(0, model.num_classes)
    return torch.cat([suffix(model, h[s : s + batch], k).float() for s in range(0, len(h), batch)])


# ------------------------------------------------------------------------------------------------ loss


def tumour_log_probs(logits: torch.Tensor, no_tumor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_tumour, log p_no_tumour) of softmax(logits), p_tumour = 1 - p(no_tumor), computed stably."""
    lse = torch.logsumexp(logits, dim=1)
    others = [i for i in range(logits.shape[1]) if i != no_tumor]
    return torch.logsumexp(logits[:, others], dim=1) - lse, logits[:, no_tumor] - lse


def tumour_bce(logits: torch.Tensor, y: torch.Tensor, no_tumor: int, weights: torch.Tensor | None = None):
    """Binary cross-entropy of p_tumour = 1 - softmax(logits)[no_tumor] against y (0/1), (weighted) mean."""
    lp_t, lp_n = tumour_log_probs(logits.float(), no_tumor)
    yf = y.float()
    per = -(yf * lp_t + (1 - yf) * lp_n)
    if weights is None:
        return per.mean()
    return (per * weights).sum() / weights.sum()


def hybrid_loss(
    model: nn.Module, k: int, batch: dict[str, torch.Tensor], acfg: AdaptConfig, no_tumor: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The adaptation loss of one batch (see the module docstring) and its parts.

    ``batch``: ``ext_h``, ``ext_y``, ``ext_w`` (external inputs of the trainable part, labels, weights),
    ``src_h``, ``src_y``, ``src_t`` (replayed source inputs, classes, the original model's logits).
    """
    n_ext = len(batch["ext_h"])
    h = torch.cat([batch["ext_h"], batch["src_h"]]) if len(batch["src_h"]) else batch["ext_h"]
    logits = suffix(model, h, k)
    parts = {"bce": tumour_bce(logits[:n_ext], batch["ext_y"], no_tumor, batch["ext_w"])}
    total = acfg.w_ext * parts["bce"]
    if len(batch["src_h"]):
        z = logits[n_ext:].float()
        parts["ce"] = nn.functional.cross_entropy(z, batch["src_y"])
        total = total + acfg.w_src * parts["ce"]
        if acfg.w_kd > 0:
            t = acfg.kd_temperature
            log_p, log_q = nn.functional.log_softmax(z / t, 1), nn.functional.log_softmax(batch["src_t"] / t, 1)
            parts["kd"] = nn.functional.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t
            total = total + acfg.w_kd * parts["kd"]
    return total, {key: float(v.detach()) for key, v in parts.items()}


# ------------------------------------------------------------------------------------------------ model modes


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.backbone.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_modes(model: nn.Module, acfg: AdaptConfig) -> None:
    """Train mode (dropout on); BatchNorm in eval mode unless ``update`` and inside a trainable module."""
    model.train()
    prefixes = list(acfg.trainable)
    for name, m in batchnorm_layers(model):
        trainable = not prefixes or any(name == p or name.startswith(p + ".") for p in prefixes)
        if acfg.batchnorm == "freeze" or not trainable:
            m.eval()


def _to_x(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    return x.contiguous(memory_format=torch.channels_last)


def heldout_scores(model: nn.Module, cached: Cached, k: int, no_tumor: int, batch: int) -> dict[str, float]:
    """BCE and AUC of p_tumour on the held-out slice (model in eval mode)."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    with torch.inference_mode():
        z = _logits_in_chunks(model, cached.hold, k, batch)
    y = cached.hold_y
    bce = float(tumour_bce(z, torch.from_numpy(y), no_tumor))
    p = 1.0 - torch.softmax(z, 1)[:, no_tumor].numpy()
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    return {"holdout_bce": bce, "holdout_auc": auc}


# ------------------------------------------------------------------------------------------------ loop


def _batches(n_ext: int, n_src: int, acfg: AdaptConfig, epoch: int) -> list[dict[str, np.ndarray]]:
    """The batches of one epoch: every external training image once + replayed source images; seeded."""
    rng = np.random.default_rng((acfg.seed, epoch))
    n_src_per = round(acfg.batch_size * acfg.replay_fraction) if n_src else 0
    n_ext_per = max(1, acfg.batch_size - n_src_per)
    order = rng.permutation(n_ext)
    out = []
    for s in range(0, len(order), n_ext_per):
        idx = order[s : s + n_ext_per]
        src = rng.integers(0, n_src, n_src_per) if n_src_per else np.zeros(0, np.int64)
        flip_e = (rng.random(len(idx)) < 0.5) & acfg.hflip
        flip_s = (rng.random(len(src)) < 0.5) & acfg.hflip
        out.append({"ext": idx, "src": src, "ext_flip": flip_e.astype(np.int64), "src_flip": flip_s.astype(np.int64)})
    return out


def _tensors(c: Cached, b: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    e, s = torch.from_numpy(b["ext"]), torch.from_numpy(b["src"])
    fe, fs = torch.from_numpy(b["ext_flip"]), torch.from_numpy(b["src_flip"])
    return {
        "ext_h": c.ext[e, fe],
        "ext_y": torch.from_numpy(c.ext_y[b["ext"]]),
        "ext_w": torch.from_numpy(c.ext_w[b["ext"]]).float(),
        "src_h": c.src[s, fs] if len(s) else torch.zeros(0),
        "src_y": torch.from_numpy(c.src_y[b["src"]]).long(),
        "src_t": c.src_t[s, fs] if len(s) else torch.zeros(0),
    }


def _optimizer(model: nn.Module, acfg: AdaptConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": acfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=acfg.lr)


def run_epoch(model, c: Cached, k: int, acfg: AdaptConfig, epoch: int, opt, sched, no_tumor: int) -> dict:
    set_modes(model, acfg)
    torch.manual_seed(acfg.seed * 1_000_003 + epoch)
    sums: dict[str, float] = {}
    batches = _batches(len(c.ext), len(c.src), acfg, epoch)
    for b in batches:
        loss, parts = hybrid_loss(model, k, _tensors(c, b), acfg, no_tumor)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        for key, v in {"loss": float(loss.detach()), **parts}.items():
            sums[key] = sums.get(key, 0.0) + v
    return {key: v / max(1, len(batches)) for key, v in sums.items()}


def adapt_model(
    model: nn.Module, data: AdaptData, acfg: AdaptConfig, classes: list[str], log: Callable[[str], None] = print
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Fine-tune ``model`` in place with the hybrid loss; returns it with the best held-out epoch's weights."""
    no_tumor = classes.index(NO_TUMOR)
    k = frozen_depth(model, list(acfg.trainable))
    model.to(memory_format=torch.channels_last)  # about 3x faster depthwise convolutions on CPU (bench/train.py)
    t0 = time.perf_counter()
    cached = cache_inputs(model, data, acfg, k)
    log(
        f"adapt: cached the frozen part's outputs ({'none frozen' if k < 0 else f'stem + {k} blocks'}) "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    set_trainable(model, list(acfg.trainable) or None)
    opt = _optimizer(model, acfg)
    steps = acfg.epochs * len(_batches(len(cached.ext), len(cached.src), acfg, 0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 0, steps))
    best = heldout_scores(model, cached, k, no_tumor, acfg.batch_size)
    history = [{"epoch": -1, **best}]
    best_state, bad = copy.deepcopy(model.state_dict()), 0
    log(f"adapt: before: held-out BCE {best['holdout_bce']:.4f}, AUC {best['holdout_auc']:.4f}")
    for epoch in range(acfg.epochs):
        t0 = time.perf_counter()
        train = run_epoch(model, cached, k, acfg, epoch, opt, sched, no_tumor)
        held = heldout_scores(model, cached, k, no_tumor, acfg.batch_size)
        history.append({"epoch": epoch, **train, **held, "seconds": round(time.perf_counter() - t0, 2)})
        log(
            f"adapt: epoch {epoch}: loss {train['loss']:.4f}, held-out BCE {held['holdout_bce']:.4f}, "
            f"AUC {held['holdout_auc']:.4f} ({history[-1]['seconds']:.0f} s)"
        )
        if held["holdout_bce"] < best["holdout_bce"] - 1e-4:
            best, best_state, bad = held, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= acfg.patience:
                break
    model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad = True
    return model.eval().to(memory_format=torch.contiguous_format), history


# ------------------------------------------------------------------------------------------------ the command


def split_calibration(ext: ExternalSet, acfg: AdaptConfig) -> tuple[list[str], list[str]]:
    """(train ids, held-out ids) of the calibration part: whole groups, stratified, seeded."""
    cal = ext.part("calibration")
    y = tumour_of(cal["label"])
    hold = grouped_split(y, cal["group"].to_numpy(), acfg.holdout_fraction, acfg.seed)
    if len(set(y[hold])) < 2 or len(set(y[~hold])) < 2:
        raise DataError(f"{ext.name}: the calibration part is too small to hold out a slice with both classes")
    ids = cal["id"].to_numpy()
    return [str(i) for i in ids[~hold]], [str(i) for i in ids[hold]]


def load_data(run: Run, ext: ExternalSet, train_ids: list[str], hold_ids: list[str], acfg: AdaptConfig) -> AdaptData:
    pre = run.preprocessor()
    frame = ext.frame.set_index("id", drop=False)
    tr = images_from_files(frame.loc[train_ids].reset_index(drop=True), pre, run.classes)
    ho = images_from_files(frame.loc[hold_ids].reset_index(drop=True), pre, run.classes)
    src = replay_pool(run, acfg) if acfg.replay_fraction > 0 else None
    empty = np.zeros((0, *tr.images.shape[1:]), np.uint8)
    return AdaptData(
        tr.images,
        tumour_of(tr.label_names),
        ho.images,
        tumour_of(ho.label_names),
        src.images if src is not None else empty,
        src.labels if src is not None else np.zeros(0, np.int64),
    )


def replay_pool(run: Run, acfg: AdaptConfig):
    """Source training images to replay: all, or a class-stratified seeded sample of ``adapt.replay_pool``."""
    src = run.load_images("train")
    if acfg.replay_pool and len(src.labels) > acfg.replay_pool:
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(
            np.arange(len(src.labels)), train_size=acfg.replay_pool, stratify=src.labels, random_state=acfg.seed
        )
        keep = np.sort(keep)
        src.images, src.labels = src.images[keep], src.labels[keep]
    return src


def new_run_dir(run: Run, ext: ExternalSet, cfg: Config) -> Path:
    name = cfg.adapt.run_name or f"{run.name}-adapted-{ext.name}"
    return Layout.from_config(cfg.paths).runs_dir / name


def resolve_method(source: Run | BundleSource, acfg: AdaptConfig) -> str:
    """``adapt.method`` with ``auto`` resolved: the site head for a bundle, fine-tuning for a run."""
    is_bundle = isinstance(source, BundleSource)
    method = acfg.method if acfg.method != "auto" else ("head" if is_bundle else "finetune")
    if is_bundle and method == "finetune":
        raise ConfigError(
            f"{source.dir}: a bundle can only be adapted with adapt.method=head (fine-tuning replays the training "
            "images, which a bundle does not carry); adapt the training run instead"
        )
    members = source.bundle.model_config().ensemble if is_bundle else source.cfg.model.ensemble
    if members > 1:
        raise ConfigError(
            f"{source.dir}: an ensemble of {members} networks; adapt each member run, then combine "
            "the adapted runs with `brainmri ensemble`"
        )
    return method


def adapt_run(
    run_dir: str | Path,
    specs: list[str],
    cfg: Config,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Run | Path:
    """``brainmri adapt``: prepare the external set, adapt, and write a new run folder or bundle (atomically).

    Returns the new :class:`Run`, or the new bundle's folder when ``run_dir`` is a bundle.
    """
    from brainmri.utils import setup_torch

    setup_torch(cfg.adapt.threads)
    torch.manual_seed(cfg.adapt.seed)
    source = load_source(run_dir, cfg)
    method = resolve_method(source, cfg.adapt)
    ext = prepare_external(specs, cfg, source.without_training_overlap, str(source.dir))
    train_ids, hold_ids = split_calibration(ext, cfg.adapt)
    t0 = time.perf_counter()
    if method == "head":
        model, extra = head_adapt(source, ext, train_ids, hold_ids, cfg.adapt, log)
    else:
        data = load_data(source, ext, train_ids, hold_ids, cfg.adapt)
        log(
            f"adapt: {len(train_ids)} external training + {len(hold_ids)} held-out images, "
            f"{len(data.src_images)} source images to replay"
        )
        model, history = adapt_model(source.build_model(), data, cfg.adapt, source.classes, log)
        extra = {"history": history}
    extra["seconds"] = round(time.perf_counter() - t0, 1)
    split = {**ext.split, "adapt_train": train_ids, "adapt_holdout": hold_ids}
    if isinstance(source, BundleSource):
        return write_adapted_bundle(source, model, ext, split, cfg, extra, out_dir)
    out = Path(out_dir) if out_dir else new_run_dir(source, ext, cfg)
    extra.pop("holdout", None)
    return write_adapted(source, model, out, split, cfg, extra)


# ------------------------------------------------------------------------------------------------ the site head


def features_and_logits(model: nn.Module, images: np.ndarray, batch: int, flips: bool) -> tuple[np.ndarray, ...]:
    """Pooled features and logits of uint8 images (with the horizontally flipped copies appended when ``flips``)."""
    model.eval()
    feats, logits = [], []
    with torch.inference_mode():
        for flip in (False, True) if flips else (False,):
            for s in range(0, len(images), batch):
                x = _to_x(images[s : s + batch])
                f = model.forward_features(x.flip(-1) if flip else x)
                feats.append(f.float().numpy())
                logits.append(model.forward_classifier(f).float().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def source_temperature(source: Run | BundleSource) -> float:
    """The temperature the source serves its probabilities with (1 when it was never calibrated)."""
    if isinstance(source, BundleSource):
        return float(source.bundle.temperature)
    if source.calibration_path.is_file():
        from brainmri.calibrate.posthoc import PostHocCalibration

        return float(PostHocCalibration.load(source.calibration_path).temperature)
    return 1.0


def source_stand_ins(source: Run | BundleSource, acfg: AdaptConfig, log: Callable[[str], None]) -> np.ndarray | None:
    """Draws from the source's Mahalanobis gate (its fitted Gaussian of training features), or None without one."""
    from brainmri.calibrate.ood import MahalanobisOOD, ood_from_dict

    if isinstance(source, BundleSource):
        gate = source.bundle.ood()
    else:
        gate = ood_from_dict(json.loads(source.ood_path.read_text())) if source.ood_path.is_file() else None
    if not isinstance(gate, MahalanobisOOD) or gate.normalize or not acfg.head_anchor_grid:
        log("adapt (site head): no Mahalanobis gate state (or no anchor grid): the head is not anchored to the source")
        return None
    return gate.sample(acfg.head_anchor_samples, acfg.seed)


def head_adapt(
    source: Run | BundleSource,
    ext: ExternalSet,
    train_ids: list[str],
    hold_ids: list[str],
    acfg: AdaptConfig,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fit the site head on the training ids, score it on the held-out ids, write it into the source's model."""
    from brainmri.train.site_head import (
        apply_site_head,
        calibrated_log_odds,
        fit_site_head,
        head_summary,
        holdout_scores,
    )

    pre, frame = source.preprocessor(), ext.frame.set_index("id", drop=False)
    tr = images_from_files(frame.loc[train_ids].reset_index(drop=True), pre, source.classes)
    ho = images_from_files(frame.loc[hold_ids].reset_index(drop=True), pre, source.classes)
    model, no, temp = source.build_model(), source.classes.index(NO_TUMOR), source_temperature(source)
    f_tr, z_tr = features_and_logits(model, tr.images, acfg.batch_size, acfg.hflip)
    copies = 2 if acfg.hflip else 1
    y_tr = np.tile(tumour_of(tr.label_names), copies)
    groups = np.tile(frame.loc[train_ids, "group"].astype(str).to_numpy(), copies)
    anchors = source_stand_ins(source, acfg, log)
    head = fit_site_head(
        f_tr, calibrated_log_odds(z_tr, temp, no), y_tr, groups, acfg.head_c_grid, acfg.head_folds,
        anchors=anchors, anchor_grid=acfg.head_anchor_grid, anchor_tolerance=acfg.head_anchor_tolerance,
    )  # fmt: skip
    f_ho, z_ho = features_and_logits(model, ho.images, acfg.batch_size, False)
    o_ho, y_ho = calibrated_log_odds(z_ho, temp, no), tumour_of(ho.label_names)
    o_after = o_ho + head.correction(f_ho)
    before, after = holdout_scores(o_ho, y_ho), holdout_scores(o_after, y_ho)
    log(
        f"adapt (site head): {len(train_ids)} slices (x{copies} with flips) fitted, C = {head.c:g}, anchor "
        f"{head.anchor:g}; held-out "
        f"({len(hold_ids)}): AUC {before['holdout_auc']:.4f} -> {after['holdout_auc']:.4f}, "
        f"log loss {before['holdout_bce']:.4f} -> {after['holdout_bce']:.4f}"
    )
    if after["holdout_bce"] > before["holdout_bce"]:
        log("adapt (site head): warning: the held-out log loss got worse; this site head may not help here")
    apply_site_head(model, head, temp, no)
    summary = head_summary(head, before, after) | {"source_temperature": temp}
    return model.eval(), {"history": [{"epoch": 0, **after}], **summary, "holdout": (expit(o_after), y_ho)}


def site_calibration(source: BundleSource, hold_p: np.ndarray, hold_y: np.ndarray, set_name: str) -> dict[str, Any]:
    """The adapted bundle's ``calibration`` card section: temperature 1 (folded in), threshold on held-out slices,
    no conformal sets (tumour / no-tumour labels cannot refit them); the format is ``PostHocCalibration``'s."""
    from brainmri.calibrate.posthoc import PostHocCalibration
    from brainmri.calibrate.temperature import TemperatureScaler
    from brainmri.calibrate.threshold import ThresholdSelector

    details = (source.bundle.calibration.get("details") or {}).get("threshold") or {}
    target, cap = float(details.get("target_sensitivity", 0.95)), float(details.get("max_threshold", 0.5))
    cal = PostHocCalibration(source.classes, alphas=(), target_sensitivity=target, max_threshold=cap)
    cal.temperature_ = TemperatureScaler.from_dict({"temperature": 1.0})
    cal.threshold_ = ThresholdSelector(target, cap).fit(hold_p, hold_y)
    cal.conformal_ = {}
    cal.fitted_on_ = f"{set_name} held-out calibration slices (site head)"
    cal.n_fit_, cal.source_ = len(hold_y), {"fitted_on": cal.fitted_on_}
    return {
        "calibrated": True,
        "source": f"brainmri adapt (site head), threshold on {len(hold_y)} held-out slices of {set_name}",
        "source_sha256": None,
        "note": "temperature folded into the adapted head; conformal sets dropped (not refittable from "
        "tumour / no-tumour labels)",
        **cal.to_dict(),
    }


def write_adapted_bundle(
    source: BundleSource,
    model: nn.Module,
    ext: ExternalSet,
    split: dict[str, Any],
    cfg: Config,
    extra: dict[str, Any],
    out_dir: str | Path | None,
) -> Path:
    """The adapted bundle (``bundles/<bundle>-adapted-<set>`` by default), with its external split file beside it."""
    from brainmri.bundle.export import export_adapted_bundle

    layout = Layout.from_config(cfg.paths)
    out = Path(out_dir) if out_dir else layout.bundle_dir(cfg.adapt.run_name or f"{source.name}-adapted-{ext.name}")
    split_path = layout.external_dir(ext.name) / f"{out.name}-{SPLIT_FILE}"
    write_split_file(split, split_path)
    hold_p, hold_y = extra.pop("holdout")
    adaptation = {
        **extra,
        "external": {
            "name": split["name"],
            "data": split["data"],
            "split_file": str(split_path.resolve()),
            "n_train": len(split["adapt_train"]),
            "n_holdout": len(split["adapt_holdout"]),
        },
        "config": cfg.adapt.model_dump(mode="json"),
    }
    calibration = site_calibration(source, hold_p, hold_y, ext.name)
    return export_adapted_bundle(source.bundle, model, out, calibration, adaptation)


def write_adapted(
    run: Run, model: nn.Module, out: Path, split: dict[str, Any], cfg: Config, extra: dict[str, Any]
) -> Run:
    """Write the new run into a temporary sibling folder, then move it into place (never half-written)."""
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    new_cfg = run.cfg.model_copy(update={"adapt": cfg.adapt, "external": cfg.external})
    new_cfg.train.run_name = out.name
    write_split_file(split, tmp / SPLIT_FILE)
    best = min(extra["history"], key=lambda h: h["holdout_bce"])
    lineage = {
        "adapted_from": str(run.dir.resolve()),
        "external": {
            "name": split["name"],
            "data": split["data"],
            "split_file": str((out / SPLIT_FILE).resolve()),
            "n_train": len(split["adapt_train"]),
            "n_holdout": len(split["adapt_holdout"]),
        },
        "adapt": {**cfg.adapt.model_dump(mode="json"), "best_epoch": best["epoch"], **extra},
        "best_score": best["holdout_bce"],
        "monitor": "holdout_bce",
    }
    write_run(
        tmp,
        new_cfg,
        model,
        run.preprocessor(),
        classes=run.classes,
        split_file=run.info["split_file"],
        preprocess_dir=run.info["preprocess_dir"],
        extra=lineage,
    )
    info_name = out.name
    replace_dir(tmp, out)
    adapted = Run.load(out)
    if adapted.info.get("name") != info_name:  # write_run named it after the temporary folder
        from brainmri.utils import atomic_write_json

        adapted.info["name"] = info_name
        atomic_write_json(out / "run.json", adapted.info)
    return adapted
