"""Model factory: offline ImageNet weights really are ImageNet weights; clear errors; wrapper semantics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from brainmri.config import ModelConfig
from brainmri.errors import ConfigError
from brainmri.models import create_model
from brainmri.models.weights import positional_rename

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_offline_lite0_weights_classify_a_cat_photo():
    from skimage import data

    model = create_model(ModelConfig(backbone="efficientnet_lite0", weights="offline"), None).eval()
    rgb = cv2.resize(data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None] - 0.5) / 0.5  # lite weights: mean = std = 0.5
    with torch.no_grad():
        top = int(model.backbone(x).argmax())
    assert top in IMAGENET_CATS
    assert model.mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_positional_rename_checks_every_shape():
    target = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(4)}
    ok = positional_rename({"x": torch.ones(2, 3), "y": torch.ones(4)}, target)
    assert list(ok) == ["a.weight", "b.bias"]
    with pytest.raises(ConfigError, match="tensor 1"):
        positional_rename({"x": torch.ones(2, 3), "y": torch.ones(5)}, target)
    with pytest.raises(ConfigError, match="expects 2"):
        positional_rename({"x": torch.ones(2, 3)}, target)


def test_unknown_backbone_lists_close_names():
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        create_model(ModelConfig(backbone="efficientnet_lite9", weights="none"), 4)


def test_offline_weights_only_for_known_backbones():
    with pytest.raises(ConfigError, match="no offline weights"):
        create_model(ModelConfig(backbone="resnet18", weights="offline"), 4)


def test_local_weights_file_roundtrip(tmp_path):
    from safetensors.torch import save_file

    cfg = ModelConfig(backbone="test_efficientnet", weights="none")
    src = create_model(cfg, None)
    save_file({k: v.contiguous() for k, v in src.backbone.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = create_model(cfg.model_copy(update={"weights": str(tmp_path / "w.safetensors")}), 4)
    key = "conv_stem.weight"
    assert torch.equal(loaded.backbone.state_dict()[key], src.backbone.state_dict()[key])
    with pytest.raises(ConfigError, match="not found"):
        create_model(cfg.model_copy(update={"weights": str(tmp_path / "missing.pth")}), 4)


@pytest.mark.parametrize("gray_mode", ["replicate", "stem", "mirror"])
def test_grayscale_input_and_gradcam_layer(gray_mode):
    model = create_model(ModelConfig(backbone="test_efficientnet", weights="none", gray_mode=gray_mode), 4).eval()
    x = torch.rand(2, 1, 64, 64)
    assert model(x).shape == (2, 4)
    assert model.forward_features(x).ndim == 2
    assert isinstance(model.gradcam_target_layer(), torch.nn.Module)


def test_mirror_mode_is_grey_for_symmetric_and_coloured_for_one_sided_input():
    model = create_model(ModelConfig(backbone="test_efficientnet", weights="none", gray_mode="mirror"), 4).eval()
    sym = torch.zeros(1, 1, 8, 8)
    sym[..., 2:6, 3:5] = 1.0
    one_sided = torch.zeros(1, 1, 8, 8)
    one_sided[..., 2:4, 0:2] = 1.0
    channels = model.normalise(sym) * model.std + model.mean
    assert torch.allclose(channels[:, 0], channels[:, 2])
    channels = model.normalise(one_sided) * model.std + model.mean
    assert float(channels[0, 2, 2, 7]) == pytest.approx(1.0, abs=1e-5)
    assert float(channels[0, 0, 2, 7]) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("pool", ["max", "avgmax"])
def test_global_pool_survives_the_head_reset_and_exports_without_cams(pool, tmp_path):
    from brainmri.bundle.export import export_onnx, onnx_parity
    from brainmri.models.classifier import supports_cam

    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone="test_efficientnet", weights="none", global_pool=pool), 4).eval()
    assert model.backbone.global_pool.pool_type == pool  # reset_classifier(4) must not fall back to "avg"
    assert not supports_cam(model)  # CAM = sum_k w_ck A_k is exact for average pooling only
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        feats = model.backbone.forward_features(model.normalise(x))
        want = feats.amax((2, 3)) if pool == "max" else 0.5 * (feats.amax((2, 3)) + feats.mean((2, 3)))
        assert torch.allclose(model.forward_features(x), want, atol=1e-5)
    path = tmp_path / "model.onnx"
    assert export_onnx(model, 64, path) == ["logits", "features", "block_stats"]
    assert onnx_parity(model, path.read_bytes(), 64) < 1e-4
