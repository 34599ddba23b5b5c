"""Training: losses, class weights, MixUp maths, frozen stage, loss decrease, resume == uninterrupted."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file
from torch.nn import functional as F

from brainmri.config import Config, ModelConfig
from brainmri.data.phantoms import make_phantom
from brainmri.models import create_model
from brainmri.runs import SplitImages
from brainmri.train.losses import FocalLoss, WeightedSoftCrossEntropy, balanced_class_weights, cutmix, mixup
from brainmri.train.trainer import fit_stages

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def phantom_split(n_per_class: int, size: int = 32, seed: int = 0) -> SplitImages:
    images, labels = [], []
    for ci, label in enumerate(CLASSES):
        for i in range(n_per_class):
            ph = make_phantom(label, size=size, seed=seed * 1000 + ci * 100 + i)
            images.append((ph.image * 255).astype(np.uint8))
            labels.append(ci)
    ids = [f"p/{i}" for i in range(len(images))]
    return SplitImages(ids, ids, np.stack(images), np.array(labels), [CLASSES[i] for i in labels])


def tiny_cfg(**train) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(backbone="test_efficientnet", weights="none", drop_rate=0.0)
    cfg.preprocess.size = 32
    cfg.train.batch_size = 16
    cfg.train.num_workers = 0
    cfg.train.loggers = ["csv"]
    cfg.train.augment.enabled = False
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_balanced_class_weights_match_hand_computation():
    w = balanced_class_weights([0, 0, 0, 1], 2)
    assert torch.allclose(w, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))
    assert balanced_class_weights([0, 0, 1], 3)[2] == 0


def test_weighted_loss_is_per_sample_not_batch_rescaled():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    w = torch.tensor([0.5, 2.0])
    loss = WeightedSoftCrossEntropy(2, w)(logits, y)
    ce = F.cross_entropy(logits, y, reduction="none")
    expected = (0.5 * ce[0] + 2.0 * ce[1] + 2.0 * ce[2]) / 3
    assert torch.isclose(loss, expected)
    # PyTorch's weight= divides by the weight sum instead; ours must differ from it here
    assert not torch.isclose(loss, F.cross_entropy(logits, y, weight=w))


def test_label_smoothing_matches_torch():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 1])
    ours = WeightedSoftCrossEntropy(4, label_smoothing=0.1)(logits, y)
    assert torch.isclose(ours, F.cross_entropy(logits, y, label_smoothing=0.1), atol=1e-6)


def test_focal_loss_reduces_to_ce_and_downweights_easy_samples():
    logits = torch.tensor([[4.0, 0.0], [0.2, 0.0]])
    y = torch.tensor([0, 0])
    assert torch.isclose(FocalLoss(2, gamma=0.0)(logits, y), F.cross_entropy(logits, y))
    per = FocalLoss(2, gamma=2.0).per_sample(logits, y)
    ce = F.cross_entropy(logits, y, reduction="none")
    p = logits.softmax(-1)[:, 0]
    assert torch.allclose(per, (1 - p) ** 2 * ce)


def test_cutmix_pastes_one_box_and_mixes_targets_by_its_area():
    x = torch.stack([torch.full((1, 16, 16), float(i)) for i in range(4)])
    y = torch.tensor([0, 1, 2, 3])
    for seed in range(20):
        xm, ym, lam = cutmix(x, y, 4, alpha=1.0, rng=np.random.default_rng(seed))
        for i in range(4):
            box = xm[i] != x[i]
            if not box.any():  # paired with itself: nothing changes
                assert ym[i, i] == pytest.approx(1.0)
                continue
            partner = int(xm[i][box][0])  # slice i holds value i, so the box names its partner
            assert box.float().mean().item() == pytest.approx(1 - lam) and (xm[i][box] == partner).all()
            assert ym[i, i] == pytest.approx(lam) and ym[i, partner] == pytest.approx(1 - lam)
    same, targets, lam = cutmix(x, y, 4, alpha=0.0, rng=np.random.default_rng(0))
    assert same is x and lam == 1.0 and torch.equal(targets, torch.eye(4))


def test_mixup_maths():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    y = torch.tensor([0, 1, 1, 0])
    rng = np.random.default_rng(3)
    xm, ym, lam = mixup(x, y, 2, alpha=0.4, rng=rng)
    rng = np.random.default_rng(3)
    lam2 = rng.beta(0.4, 0.4)
    perm = rng.permutation(4)
    assert lam == pytest.approx(lam2)
    assert torch.allclose(xm.flatten(), lam * x.flatten() + (1 - lam) * x.flatten()[perm])
    # soft-target CE with class weights = λ w_a CE_a-part mixture, hand-computed for sample 0
    w = torch.tensor([1.0, 3.0])
    logits = torch.tensor([[0.3, -0.2]] * 4)
    loss_fn = WeightedSoftCrossEntropy(2, w)
    logp = F.log_softmax(logits, -1)
    a, b = int(y[0]), int(y[perm[0]])
    expected0 = (lam * w[a] + (1 - lam) * w[b]) * -(lam * logp[0, a] + (1 - lam) * logp[0, b])
    per = loss_fn.sample_weights(ym) * loss_fn.per_sample(logits, ym)
    assert torch.isclose(per[0], expected0)


def test_frozen_stage_leaves_backbone_and_bn_stats_unchanged(tmp_path):
    cfg = tiny_cfg()
    cfg.train.stage1.epochs, cfg.train.stage2.epochs = 2, 0
    data = phantom_split(6)
    model = create_model(cfg.model, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_stages(cfg, model, data, data, tmp_path)
    after = model.state_dict()
    head = {"backbone.classifier.weight", "backbone.classifier.bias"}
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "nothing trained"
    assert set(changed) <= head, f"frozen stage changed {sorted(set(changed) - head)[:5]}"
    assert any("running_mean" in k for k in before)
    assert (tmp_path / "logs" / "csv" / "stage1" / "metrics.csv").is_file()  # a Lightning stage 1 logs too


def test_training_reduces_loss(tmp_path):
    cfg = tiny_cfg()
    cfg.train.stage1.epochs, cfg.train.stage2.epochs = 0, 6
    cfg.train.stage2.lr = 3e-3
    cfg.train.warmup_epochs = 0
    data = phantom_split(8)
    L.seed_everything(0)
    model = create_model(cfg.model, 4)
    result = fit_stages(cfg, model, data, data, tmp_path)
    losses = [h["train_loss"] for h in result["history"]]
    assert len(losses) == 6
    assert losses[-1] < 0.8 * losses[0], losses
    assert (tmp_path / "model.safetensors").is_file()


class InterruptAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize(
    ("mixup_alpha", "ema_decay", "lesions"), [(0.0, 0.0, 0.0), (0.4, 0.0, 0.0), (0.0, 0.9, 0.0), (0.4, 0.0, 0.5)]
)
def test_resume_reaches_same_weights_as_uninterrupted(tmp_path, mixup_alpha, ema_decay, lesions):
    cfg = tiny_cfg(mixup_alpha=mixup_alpha, ema_decay=ema_decay)
    cfg.train.augment.enabled = True
    cfg.train.augment.synthetic_lesion = lesions  # drawn per step from (seed, stage, step): a resume redraws them
    cfg.model.drop_rate = 0.2
    cfg.train.stage1.epochs, cfg.train.stage2.epochs = 1, 3
    data = phantom_split(5)

    def fresh():
        L.seed_everything(7)
        return create_model(cfg.model, 4)

    straight = fresh()
    fit_stages(cfg, straight, data, data, tmp_path / "a")
    interrupted = fresh()
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_stages(cfg, interrupted, data, data, tmp_path / "b", extra_callbacks=[InterruptAfter(1)])
    resumed = fresh()  # a new process would start from scratch too
    fit_stages(cfg, resumed, data, data, tmp_path / "b", resume=True)
    # a tolerance, not bit equality: thread scheduling may reorder float sums; a wrong resume (LR schedule,
    # optimiser state or MixUp draws) moves weights by orders of magnitude more than 1e-5
    a, b = straight.state_dict(), resumed.state_dict()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5), k
    best_a = load_file(str(tmp_path / "a" / "model.safetensors"))
    best_b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.allclose(best_a[k].float(), best_b[k].float(), rtol=1e-4, atol=1e-5) for k in best_a)


def test_partial_stage2_trains_only_named_blocks(tmp_path):
    cfg = tiny_cfg(stage2_trainable=["blocks.1"])
    cfg.train.stage1.epochs, cfg.train.stage2.epochs = 0, 1
    data = phantom_split(4)
    model = create_model(cfg.model, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_stages(cfg, model, data, data, tmp_path)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("backbone.blocks.1.") for k in changed)
    outside = {k for k in changed if not k.startswith(("backbone.blocks.1.", "backbone.classifier."))}
    assert not outside, sorted(outside)[:5]


def test_cached_feature_stage1_then_partial_stage2(tmp_path):
    cfg = tiny_cfg(cache_frozen_features=True, stage2_trainable=["blocks.1"], channels_last=True)
    cfg.train.stage1.epochs, cfg.train.stage2.epochs = 3, 1
    data = phantom_split(4)
    model = create_model(cfg.model, 4)
    result = fit_stages(cfg, model, data, data, tmp_path)
    assert [h["stage"] for h in result["history"]] == [1, 1, 1, 2]
    assert all(p.requires_grad for p in model.backbone.blocks[1].parameters())


def test_both_stages_log_and_checkpoints_load_with_weights_only(tmp_path):
    import pandas as pd

    cfg = tiny_cfg(cache_frozen_features=True)
    cfg.train.stage1.epochs, cfg.train.stage2.epochs = 2, 1
    data = phantom_split(4)
    fit_stages(cfg, create_model(cfg.model, 4), data, data, tmp_path)
    for stage, epochs in ((1, 2), (2, 1)):
        rows = pd.read_csv(tmp_path / "logs" / "csv" / f"stage{stage}" / "metrics.csv")
        assert rows["val_loss"].notna().sum() == epochs, stage
    ckpt = torch.load(tmp_path / "checkpoints" / "stage2" / "last.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["stage"] == 2 and hp["train"]["batch_size"] == 16 and hp["num_classes"] == 4


def test_weight_average_is_what_validation_keeps_while_training_continues_from_raw_weights(tmp_path):
    cfg = tiny_cfg(ema_decay=0.9)
    cfg.train.stage1.epochs, cfg.train.stage2.epochs = 0, 1  # one epoch: without averaging, best == last
    data = phantom_split(8)  # 2 steps: the first copies the weights, the second averages
    fit_stages(cfg, create_model(cfg.model, 4), data, data, tmp_path)
    best = load_file(str(tmp_path / "model.safetensors"))
    ckpt = torch.load(tmp_path / "checkpoints" / "stage2" / "last.ckpt", weights_only=True)
    raw = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    (ema_state,) = [v["ema"] for k, v in ckpt["callbacks"].items() if k.startswith("WeightAverage")]
    key = "backbone.classifier.weight"
    assert torch.allclose(best[key], ema_state[key])  # validation and the kept weights used the average
    assert not torch.allclose(best[key], raw[key])  # and the raw weights went back for the checkpoint


def test_training_size_follows_the_schedule_and_resizes_with_antialiasing():
    from brainmri.train.module import resize_batch, training_size

    sizes = {3: 48, 0: 16, 5: 32}
    assert [training_size(sizes, e) for e in range(7)] == [16, 16, 16, 48, 48, 32, 32]
    assert training_size({2: 64}, 1) is None and training_size({}, 9) is None
    x = torch.rand(2, 1, 32, 32)
    assert resize_batch(x, None) is x and resize_batch(x, 32) is x
    small = resize_batch(x, 16)
    assert small.shape == (2, 1, 16, 16)
    # antialiased: a 4x reduction filters over the whole 4x4 footprint; plain bilinear would read 2 of its
    # pixels per axis and keep half the noise (std ratio 0.5)
    quarter = resize_batch(x, 8)
    assert quarter.mean().item() == pytest.approx(x.mean().item(), abs=0.02)
    assert quarter.std().item() < 0.35 * x.std().item()
    assert resize_batch(torch.rand(1, 1, 32, 16), 16).shape == (1, 1, 16, 8)


def test_progressive_resizing_trains_stage2_at_the_scheduled_sizes_and_validates_at_full_size(tmp_path):
    cfg = tiny_cfg(stage2_sizes={0: 16, 1: 32})
    cfg.train.stage1.epochs, cfg.train.stage2.epochs = 1, 2
    data = phantom_split(4)
    model = create_model(cfg.model, 4)
    seen: list[tuple[bool, int]] = []
    model.register_forward_pre_hook(lambda module, args: seen.append((module.training, args[0].shape[-1])))
    result = fit_stages(cfg, model, data, data, tmp_path)
    assert {size for training, size in seen if not training} == {32}  # validation: the preprocessing size
    assert {size for training, size in seen if training} == {16, 32}  # stage 1 at 32, stage-2 epoch 0 at 16
    assert [h.get("train_size") for h in result["history"]] == [None, 16, 32]


def test_progressive_resizing_config_is_validated():
    from brainmri.config import load_config
    from brainmri.errors import ConfigError

    assert load_config(None, ["train.stage2_sizes={4: 160, 0: 128}"]).train.stage2_sizes == {0: 128, 4: 160}
    with pytest.raises(ConfigError, match="stage2_sizes"):
        load_config(None, ["train.stage2_sizes={0: 8}"])


def test_style_perturbation_trains_in_stage_2_and_leaves_the_model_plain(tmp_path, monkeypatch):
    from brainmri.config import StyleConfig
    from brainmri.train import style

    calls: list[bool] = []

    def counted(x):
        calls.append(torch.is_grad_enabled())
        return style.dsu(x)

    monkeypatch.setitem(style.PERTURBATIONS, "dsu", counted)
    cfg = tiny_cfg(style=StyleConfig(kind="dsu", p=1.0, layers=["blocks.1"]))
    cfg.train.stage1.epochs, cfg.train.stage2.epochs = 1, 1
    data = phantom_split(4)
    model = create_model(cfg.model, 4)
    result = fit_stages(cfg, model, data, data, tmp_path)
    assert len(result["history"]) == 2
    assert calls and all(calls)  # stage-2 training steps only: validation (no grad) never perturbs
    n = len(calls)
    model.train()(torch.rand(4, 1, 32, 32))
    assert len(calls) == n and not model.backbone.blocks[1]._forward_hooks  # detached after fit
