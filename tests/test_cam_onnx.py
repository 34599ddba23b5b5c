"""CAM from the exported heads equals pytorch-grad-cam's Grad-CAM at the last feature map (within tolerance)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_deployed_cam_matches_gradcam_at_the_last_feature_map():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from brainmri.config import ModelConfig
    from brainmri.models import create_model
    from brainmri.models.cam import cams_from_maps
    from brainmri.models.classifier import DeployedHeads, supports_cam

    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone="test_efficientnet", weights="none"), 4).eval()
    assert supports_cam(model)
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        logits, features, maps = DeployedHeads(model).eval()(x)[:3]
        np.testing.assert_allclose(logits.numpy(), model(x).numpy(), atol=1e-5)
    targets = [0, 2, 3]
    ours = cams_from_maps(maps.numpy(), targets, 64)
    last = model.backbone.bn2  # the module whose output is forward_features(x)
    with GradCAM(model=model, target_layers=[last]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 0.02
    assert features.shape[0] == 3
