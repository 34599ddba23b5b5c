"""The deployed two-score out-of-domain gate: early-stage statistics in the graph, fitted, sealed, used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import test_bundle_support as support
from brainmri.config import ModelConfig
from brainmri.models import create_model
from brainmri.models.classifier import BLOCK_STAGES, DeployedHeads, supports_block_stats, supports_cam


def _model(backbone: str = "test_efficientnet"):
    torch.manual_seed(0)
    return create_model(ModelConfig(backbone=backbone, weights="none"), 4).eval()


def test_block_stats_are_channel_means_and_stds_of_the_early_stages():
    model = _model()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        stages = model.backbone.forward_intermediates(model.normalise(x), indices=list(BLOCK_STAGES),
                                                      intermediates_only=True)  # fmt: skip
        want = torch.cat([t for f in stages for t in (f.mean((2, 3)), f.std((2, 3), unbiased=False))], 1)
        got = model.forward_block_stats(x)
        heads = dict(zip(DeployedHeads(model).output_names, DeployedHeads(model)(x), strict=True))
        alone = model.forward_block_stats(x[:1])
    assert got.shape == (3, 2 * sum(f.shape[1] for f in stages)) and torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(heads["block_stats"], got, atol=1e-5)
    assert torch.allclose(alone, got[:1], atol=1e-5)  # an image's statistics do not depend on its batch
    assert torch.allclose(heads["logits"], model(x), atol=1e-5)  # one pass computes both, logits unchanged


def test_heads_name_their_outputs_and_leave_out_what_a_backbone_cannot_give():
    lite = DeployedHeads(_model("efficientnet_lite0"))
    assert lite.output_names == ["logits", "features", "cams", "block_stats"]
    mobile = _model("mobilenetv3_small_050")  # a conv layer after pooling: the linear head sees other channels
    assert not supports_cam(mobile) and supports_block_stats(mobile)
    assert DeployedHeads(mobile).output_names == ["logits", "features", "block_stats"]
    with torch.no_grad():
        outs = DeployedHeads(mobile)(torch.rand(2, 1, 64, 64))
    assert [o.shape[0] for o in outs] == [2, 2, 2]


def test_an_ensemble_concatenates_its_members_block_stats():
    from brainmri.models.ensemble import EnsembleClassifier

    members = [_model(), _model()]
    with torch.no_grad():
        members[1].backbone.conv_stem.weight.mul_(2.0)
        ens = EnsembleClassifier(members).eval()
        x = torch.rand(2, 1, 64, 64)
        heads = dict(zip(DeployedHeads(ens).output_names, DeployedHeads(ens)(x), strict=True))
        want = torch.cat([m.forward_block_stats(x) for m in members], 1)
    assert torch.allclose(heads["block_stats"], want, atol=1e-5) and torch.allclose(ens.forward_block_stats(x), want)


@pytest.fixture(scope="module")
def gated_bundle(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A tiny run with both scores fitted on its phantoms, exported; returns the bundle and preprocessed images."""
    from brainmri.bundle import export_bundle

    root = tmp_path_factory.mktemp("gated")
    run = support.build_run(root)
    x = support.fit_gate(run)
    return export_bundle(run, root / "bundles" / "gated"), x


def test_one_pass_gives_what_the_single_output_predictions_give():
    from brainmri.calibrate.ood import MahalanobisOOD
    from brainmri.evaluate.domain import gate_passes
    from brainmri.runs import predict_block_stats, predict_features, predict_logits, predict_outputs

    model = _model()
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    outs = predict_outputs(model, images, batch_size=2)
    assert np.allclose(outs["logits"], predict_logits(model, images, 3), atol=1e-5)
    assert np.allclose(outs["features"], predict_features(model, images, 3), atol=1e-5)
    assert np.allclose(outs["block_stats"], predict_block_stats(model, images, 3), atol=1e-5)
    empty = predict_outputs(model, images[:0])
    assert {k: v.shape[1:] for k, v in empty.items()} == {k: v.shape[1:] for k, v in outs.items()}
    assert all(len(v) == 0 for v in empty.values())
    score = MahalanobisOOD().fit(outs["block_stats"], np.array([0, 0, 1, 1, 1]))
    score.threshold_ = float(np.sort(score.score(outs["block_stats"]))[2])  # three of five pass
    assert gate_passes([("block_stats", score)], outs).sum() == 3
    assert gate_passes([], outs) is None


def test_export_seals_both_scores_and_the_graph_returns_block_stats(gated_bundle) -> None:
    from brainmri.bundle import Bundle
    from brainmri.infer.runtime import create_runtime

    bundle_path, x = gated_bundle
    bundle = Bundle.load(bundle_path)
    assert bundle.ood() is not None and bundle.ood_blocks() is not None
    assert "block_stats" in bundle.card["outputs"]
    batch = x[:5, None].astype(np.float32) / 255.0
    onnx, torch_ = create_runtime("onnx", bundle).outputs(batch), create_runtime("torch", bundle).outputs(batch)
    assert onnx["block_stats"].shape == torch_["block_stats"].shape == (5, bundle.ood_blocks().n_features_in_)
    assert np.allclose(onnx["block_stats"], torch_["block_stats"], rtol=1e-3, atol=1e-4)


def test_predictions_carry_both_scores_and_say_which_one_flagged(gated_bundle) -> None:
    from brainmri.infer import Predictor

    bundle_path, x = gated_bundle
    with Predictor.from_bundle(bundle_path) as predictor:
        passed = predictor.predict_images(x)
        assert all(p.ood_score is not None and p.ood_block_score is not None for p in passed)
        expected = predictor.ood_blocks.score(predictor.runtime.outputs(x[:, None] / np.float32(255))["block_stats"])
        assert [p.ood_block_score for p in passed] == pytest.approx(expected, rel=1e-5)
        predictor.ood_blocks.threshold_ = float(min(p.ood_block_score for p in passed)) / 2  # everything fails it
        flagged = predictor.predict_images(x[:6])
    assert all(p.in_domain is False and p.review for p in flagged)
    assert all(any(r.startswith("unlike the training images (low-level image statistics score") for r in p.ood_reasons)
               for p in flagged)  # fmt: skip
    assert [p.in_domain for p in passed].count(True) >= 21  # the fitting images: 95% pass (23 of 24; ONNX rounding)
