"""Feature-statistics perturbation (train.style): what DSU and MixStyle change, and that only training sees it."""

from __future__ import annotations

import pytest
import torch

from brainmri.config import ModelConfig, TrainConfig
from brainmri.errors import ConfigError
from brainmri.models import create_model
from brainmri.train.style import attach_style_perturbation, dsu, mixstyle


def _standardised(x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(dim=(2, 3), keepdim=True)
    sig = (x.var(dim=(2, 3), keepdim=True) + 1e-6).sqrt()
    return (x - mu) / sig


def _features(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(6, 5, 1, 1, generator=g) * 3 + 0.5
    shift = torch.randn(6, 5, 1, 1, generator=g) * 2
    return torch.randn(6, 5, 8, 8, generator=g) * scale + shift


@pytest.mark.parametrize("perturb", [dsu, mixstyle])
def test_the_statistics_change_and_the_content_does_not(perturb):
    x = _features()
    torch.manual_seed(1)
    y = perturb(x)
    assert y.shape == x.shape
    assert not torch.allclose(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-3)
    # the normalised features survive (DSU's resampled std may come out negative: the paper keeps that sign flip)
    torch.testing.assert_close(_standardised(y).abs(), _standardised(x).abs(), atol=0.05, rtol=0.01)


def test_mixstyle_statistics_lie_between_the_two_images():
    x = _features()
    torch.manual_seed(2)
    mu = mixstyle(x).mean(dim=(2, 3))
    lo, hi = x.mean(dim=(2, 3)).min(0).values, x.mean(dim=(2, 3)).max(0).values
    assert torch.all(mu >= lo - 1e-4) and torch.all(mu <= hi + 1e-4)


def test_hooks_act_only_while_active_and_are_removable():
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone="test_efficientnet", weights="none"), 4).eval()  # no dropout draws
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        plain = model(x)
        state = {"on": True}
        handles = attach_style_perturbation(model.backbone, "dsu", ["blocks.1"], 1.0, lambda: state["on"])
        assert not torch.allclose(model(x), plain, atol=1e-4)
        state["on"] = False  # validation / evaluation
        torch.testing.assert_close(model(x), plain)
        state["on"] = True
        for h in handles:
            h.remove()
        torch.testing.assert_close(model(x), plain)
        never = attach_style_perturbation(model.backbone, "mixstyle", ["blocks.1"], 0.0, lambda: True)
        torch.testing.assert_close(model(x), plain)  # p = 0 draws nothing
        for h in never:
            h.remove()


def test_bad_settings_are_config_errors():
    model = create_model(ModelConfig(backbone="test_efficientnet", weights="none"), 4)
    with pytest.raises(ConfigError, match="no module named"):
        attach_style_perturbation(model.backbone, "dsu", ["blocks.99"], 0.5, lambda: True)
    with pytest.raises(ConfigError, match="unknown"):
        attach_style_perturbation(model.backbone, "adain", ["blocks.1"], 0.5, lambda: True)
    assert TrainConfig().style.kind == "none"


def test_the_training_module_attaches_in_stage_2_only_and_detaches_at_the_end():
    from brainmri.train.losses import WeightedSoftCrossEntropy
    from brainmri.train.module import ClassifierModule

    model = create_model(ModelConfig(backbone="test_efficientnet", weights="none"), 4)
    cfg = TrainConfig.model_validate({"style": {"kind": "dsu", "layers": ["blocks.1"]}})
    loss = WeightedSoftCrossEntropy(4)
    kwargs = {"lr": 1e-3, "steps_per_epoch": 1, "epochs": 1}
    stage1 = ClassifierModule(model, loss, cfg, frozen=True, stage=1, **kwargs)
    assert stage1._style_hooks == []
    stage2 = ClassifierModule(model, loss, cfg, frozen=False, stage=2, **kwargs)
    assert len(stage2._style_hooks) == 1 and len(model.backbone.blocks[1]._forward_hooks) == 1
    stage2.on_fit_end()
    assert len(model.backbone.blocks[1]._forward_hooks) == 0
