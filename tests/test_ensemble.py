"""Deep ensembles: the averaging module, ``brainmri ensemble`` over tiny runs, export and prediction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import test_bundle_support as support
from brainmri.errors import ConfigError, DataError

tiny_run_dir = support.tiny_run_dir


def _tiny_model(seed: int):
    from brainmri.config import ModelConfig
    from brainmri.models import create_model

    torch.manual_seed(seed)
    return create_model(ModelConfig(backbone="test_efficientnet", weights="none"), 4).eval()


def test_ensemble_logits_are_the_log_of_the_members_mean_probability() -> None:
    from brainmri.models import EnsembleClassifier
    from brainmri.models.classifier import DeployedHeads

    members = [_tiny_model(1), _tiny_model(2)]
    ens = EnsembleClassifier(members).eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.inference_mode():
        probs = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
        logits = ens(x)
        assert torch.allclose(torch.softmax(logits, 1), probs, atol=1e-6)
        assert torch.allclose(logits.exp().sum(1), torch.ones(3), atol=1e-5)  # log-probabilities
        feats = ens.forward_features(x)
        assert feats.shape[1] == sum(m.forward_features(x).shape[1] for m in members)
        assert torch.allclose(ens.forward_classifier(feats), logits, atol=1e-5)
        heads = DeployedHeads(ens).eval()(x)
        assert torch.allclose(heads[0], logits, atol=1e-5) and torch.equal(heads[1], feats)
        member_cams = [DeployedHeads(m).eval()(x)[2] for m in members]
        assert torch.allclose(heads[2], (member_cams[0] + member_cams[1]) / 2, atol=1e-5)
    assert len(ens.gradcam_target_layers()) == 2
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleClassifier(members[:1])


def test_create_model_builds_the_members_the_config_asks_for() -> None:
    from brainmri.config import ModelConfig
    from brainmri.models import EnsembleClassifier, create_model

    model = create_model(ModelConfig(backbone="test_efficientnet", weights="none", ensemble=3), 4)
    assert isinstance(model, EnsembleClassifier) and len(model.members) == 3
    assert all(k.startswith("members.") for k in model.state_dict())


def _member_copy(run_dir: Path, dest: Path, seed: int) -> Path:
    """A second member: the tiny run with its weights perturbed (another 'seed')."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(run_dir, dest)
    state = load_file(str(dest / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()
    }
    save_file(state, str(dest / "model.safetensors"))
    return dest


@pytest.fixture(scope="module")
def members(tiny_run_dir: Path, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ensemble")
    return [_member_copy(tiny_run_dir, root / "a", 1), _member_copy(tiny_run_dir, root / "b", 2)]


def test_combined_run_averages_its_members_and_exports(members: list[Path], tmp_path: Path) -> None:
    from brainmri import load_bundle
    from brainmri.bundle import export_bundle
    from brainmri.cli import main
    from brainmri.runs import Run, predict_logits

    out = tmp_path / "ens"
    assert main(["ensemble", *map(str, members), "--out", str(out)]) == 0
    run = Run.load(out)
    assert run.cfg.model.ensemble == 2 and [Path(m["dir"]).name for m in run.info["ensemble_members"]] == ["a", "b"]
    images = np.random.default_rng(0).integers(0, 255, (4, support.SIZE, support.SIZE), dtype=np.uint8)
    member_probs = [
        torch.softmax(torch.from_numpy(predict_logits(Run.load(m).build_model(), images)), 1) for m in members
    ]
    ens_probs = torch.softmax(torch.from_numpy(predict_logits(run.build_model(), images)), 1)
    assert torch.allclose(ens_probs, (member_probs[0] + member_probs[1]) / 2, atol=1e-5)
    assert not torch.allclose(member_probs[0], member_probs[1], atol=1e-3)  # the members really differ

    shutil.copy(members[0] / "calibration.json", out / "calibration.json")  # evaluate would fit it
    bundle = export_bundle(out, tmp_path / "bundle")
    card = json.loads((bundle / "card.json").read_text())
    assert card["model"]["config"]["ensemble"] == 2
    assert "A deep ensemble of 2 networks" in (bundle / "README.md").read_text()
    files = [support.write_png(tmp_path / f"x{i}.png", a) for i, a in enumerate(support.phantom_images(1)[0])]
    for runtime in ("onnx", "torch"):
        preds = load_bundle(bundle, runtime=runtime).predict([str(f) for f in files])
        assert len(preds) == 4 and all(abs(sum(p.probabilities.values()) - 1) < 1e-4 for p in preds)
    predictor = load_bundle(bundle)
    adapted = predictor.adapt(np.repeat(images, 4, axis=0), min_images=8)  # AdaBN finds every member's BatchNorms
    assert adapted.predict([str(f) for f in files])[0].label in support.CLASSES
    pre = np.stack([predictor.preprocessor(support.phantom_images(1)[0][0])])
    cam = predictor.gradcam_maps(pre, np.array([0]))  # from the graph's mean class activation maps
    assert cam.shape == (1, support.SIZE, support.SIZE) and cam.min() >= 0 and cam.max() <= 1
    from brainmri.models.cam import compute_cams

    plus = compute_cams(predictor.torch_runtime().model, pre, targets=[0], method="gradcam++")  # hooks both members
    assert plus.shape == cam.shape and np.isfinite(plus).all()


def test_unfit_members_are_refused_with_the_difference_named(members: list[Path], tmp_path: Path) -> None:
    from brainmri.train.ensemble import combine_runs

    with pytest.raises(ConfigError, match="at least 2"):
        combine_runs(members[:1], tmp_path / "one")
    other = shutil.copytree(members[1], tmp_path / "other-pre")
    (other / "preprocessor.json").write_text((other / "preprocessor.json").read_text().replace("crop", "full", 1))
    with pytest.raises(ConfigError, match="fitted preprocessor"):
        combine_runs([members[0], other], tmp_path / "x")
    info = json.loads((members[1] / "run.json").read_text())
    other = shutil.copytree(members[1], tmp_path / "other-split")
    (other / "run.json").write_text(json.dumps({**info, "split_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="split file"):
        combine_runs([members[0], other], tmp_path / "x")
    done = combine_runs(members, tmp_path / "done")
    with pytest.raises(DataError, match="already holds a run"):
        combine_runs(members, done.dir)
    with pytest.raises(ConfigError, match="itself an ensemble"):
        combine_runs([done.dir, members[0]], tmp_path / "nested")
    assert combine_runs(members, done.dir, overwrite=True).dir == done.dir


def test_training_or_adapting_an_ensemble_is_refused_with_the_way_to_get_one(
    members: list[Path], tmp_path: Path
) -> None:
    from brainmri.config import load_config
    from brainmri.train.adapt import adapt_run
    from brainmri.train.ensemble import combine_runs
    from brainmri.train.trainer import train_run

    cfg = load_config(overrides=["model.ensemble=2"])
    with pytest.raises(ConfigError, match="brainmri ensemble"):
        train_run(cfg, tmp_path / "split.json", run_dir=tmp_path / "run")
    ensemble = combine_runs(members, tmp_path / "ens")
    with pytest.raises(ConfigError, match="adapt each member run"):
        adapt_run(ensemble.dir, [f"site={tmp_path / 'no-such-folder'}"], load_config())
