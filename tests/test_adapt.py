"""Domain adaptation (``brainmri adapt``): the hybrid loss, BatchNorm handling, lineage, and the new run's use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainmri.config import load_config

pytest.importorskip("brainmri.preprocess.cache")


def test_tumour_log_probs_match_one_minus_no_tumour_softmax():
    from brainmri.train.adapt import tumour_bce, tumour_log_probs

    z = torch.tensor([[2.0, -1.0, 0.5, 0.0], [-30.0, -30.0, 40.0, -30.0], [60.0, 0.0, -60.0, 0.0]])
    lp_t, lp_n = tumour_log_probs(z, 2)
    p = torch.softmax(z.double(), 1)
    assert torch.allclose(lp_n.exp().double(), p[:, 2], atol=1e-6)
    assert torch.allclose(lp_t.exp().double(), 1 - p[:, 2], atol=1e-6)
    z.requires_grad_(True)
    loss = tumour_bce(z, torch.tensor([1, 1, 0]), 2)  # confident and wrong on rows 2 and 3: large, finite
    loss.backward()
    assert torch.isfinite(loss) and loss > 20 and torch.isfinite(z.grad).all()


def test_hybrid_loss_parts_and_distillation_to_itself_is_zero():
    from brainmri.models import create_model
    from brainmri.train.adapt import hybrid_loss

    cfg = load_config(None, ["model.backbone=test_efficientnet", "model.weights=none"])
    torch.manual_seed(0)
    model = create_model(cfg.model, 4).eval()
    src = torch.rand(2, 1, 32, 32)
    batch = {
        "ext_h": torch.rand(3, 1, 32, 32),
        "ext_y": torch.tensor([1, 0, 1]),
        "ext_w": torch.ones(3),
        "src_h": src,
        "src_y": torch.tensor([0, 3]),
        "src_t": model(src).detach(),
    }
    loss, parts = hybrid_loss(model, -1, batch, cfg.adapt, no_tumor=2)
    assert set(parts) == {"bce", "ce", "kd"} and parts["kd"] == pytest.approx(0.0, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(parts["bce"] + parts["ce"], rel=1e-5)
    acfg = cfg.adapt.model_copy(update={"w_kd": 0.0, "w_src": 0.0})
    loss2, parts2 = hybrid_loss(model, -1, batch, acfg, no_tumor=2)
    assert float(loss2.detach()) == pytest.approx(parts2["bce"], rel=1e-5)


def test_cached_prefix_plus_suffix_is_the_model():
    from brainmri.models import create_model
    from brainmri.train.adapt import frozen_depth, prefix, suffix

    cfg = load_config(None, ["model.backbone=test_efficientnet", "model.weights=none"])
    torch.manual_seed(0)
    model = create_model(cfg.model, 4).eval()
    assert frozen_depth(model, ["blocks.2", "conv_head"]) == 2
    assert frozen_depth(model, ["conv_head"]) == len(model.backbone.blocks)
    assert frozen_depth(model, []) == -1 and frozen_depth(model, ["conv_stem"]) == -1
    x = torch.rand(3, 1, 48, 48)
    with torch.no_grad():
        for k in (-1, 0, 2, len(model.backbone.blocks)):
            assert torch.allclose(suffix(model, prefix(model, x, k), k), model(x), atol=1e-5)


def test_batchnorm_freeze_or_update():
    from brainmri.models import create_model
    from brainmri.train.adapt import batchnorm_layers, set_modes

    cfg = load_config(None, ["model.backbone=test_efficientnet", "model.weights=none"])
    model = create_model(cfg.model, 4)
    freeze = cfg.adapt.model_copy(update={"batchnorm": "freeze", "trainable": ["blocks.2"]})
    set_modes(model, freeze)
    assert model.training and not any(m.training for _, m in batchnorm_layers(model))
    update = freeze.model_copy(update={"batchnorm": "update"})
    set_modes(model, update)
    modes = {n: m.training for n, m in batchnorm_layers(model)}
    assert any(modes.values()) and all(v == n.startswith("blocks.2") for n, v in modes.items())


def test_adapt_writes_a_run_with_lineage_that_evaluates(tmp_path, capsys):
    from brainmri.cli import main
    from brainmri.runs import Run, predict_logits
    from external_support import phantom_csv_set, tiny_run

    run = tiny_run(tmp_path)
    csv = phantom_csv_set(tmp_path / "ext", n_patients=12)
    out = tmp_path / "runs" / "tiny-adapted"
    args = [
        "adapt",
        str(run.dir),
        "--external",
        str(csv),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--set",
        "adapt.batch_size=8",
        "--set",
        "adapt.trainable=[]",
        "--set",
        "external.min_images=30",
    ]
    assert main(args) == 0, capsys.readouterr().err
    adapted = Run.load(out)
    info = adapted.info
    assert info["adapted_from"] == str(run.dir.resolve()) and info["name"] == "tiny-adapted"
    assert info["adapt"]["w_ext"] == 1.0 and info["adapt"]["batchnorm"] == "freeze"
    assert info["split_file"] == run.info["split_file"] and len(info["adapt"]["history"]) >= 2
    split = json.loads((out / "external_split.json").read_text())
    assert info["external"]["split_file"] == str((out / "external_split.json").resolve())
    assert set(split["adapt_train"]) | set(split["adapt_holdout"]) == set(split["calibration"])
    assert not set(split["adapt_train"]) & set(split["adapt_holdout"])
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")]  # no partial folders left

    images = run.load_images("test").images
    before = predict_logits(run.build_model(), images)
    after = predict_logits(adapted.build_model(), images)
    assert before.shape == after.shape and not np.allclose(before, after)

    # validation of the adapted run on the same split: thresholds only from calibration ids it did not train on
    vout = tmp_path / "val"
    rc = main(
        [
            "validate",
            str(out),
            str(csv),
            "--out",
            str(vout),
            "--split-file",
            str(out / "external_split.json"),
            "--set",
            "external.bootstrap=20",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    counts = json.loads((vout / "external.json").read_text())["counts"]
    assert counts["calibration_trained_on"] == len(split["adapt_train"])
    assert counts["threshold_fit"] == len(split["adapt_holdout"])

    # and it is a run like any other
    assert main(["evaluate", str(out), "--set", "evaluate.bootstrap=20", "--set", "evaluate.gallery_max=0"]) == 0
    assert (out / "calibration.json").is_file()
