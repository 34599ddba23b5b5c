"""AdaBN test-time adaptation (``infer.adabn``, ``Predictor.adapt``, ``predict --adapt-bn``) on the tiny bundle."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

import test_bundle_support as support
from brainmri.errors import BrainMRIError
from brainmri.infer import Predictor
from brainmri.infer.adabn import adapt_batchnorm, batch_slices, fused_sites
from test_bundle_support import phantom_images, write_png

bundle_dir = support.bundle_dir  # session fixtures shared with test_bundle.py / test_infer.py
tiny_run_dir = support.tiny_run_dir


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    return Predictor.from_bundle(bundle_dir, threads=1)


@pytest.fixture(scope="module")
def shifted(predictor: Predictor) -> np.ndarray:
    """32 preprocessed phantoms (uint8 (32, S, S)) moved to another appearance: dimmer, lower contrast, offset."""
    images, _ = phantom_images(8, seed=11)
    pre = np.stack([predictor.preprocessor(a) for a in images]).astype(np.float32)
    return np.clip(pre * 0.5 + 90.0, 0, 255).astype(np.uint8)


def _x(images: np.ndarray) -> np.ndarray:
    return images[:, None].astype(np.float32) / np.float32(255.0)


def test_batches_are_near_equal_and_cover_everything() -> None:
    sizes = [s.stop - s.start for s in batch_slices(33, 32)]
    assert sizes == [16, 17] or sizes == [17, 16]
    assert sum(s.stop - s.start for s in batch_slices(100, 7)) == 100
    assert [(s.start, s.stop) for s in batch_slices(5, 32)] == [(0, 5)]


def test_torch_adaptation_sets_the_first_batchnorm_to_the_target_statistics(
    predictor: Predictor, shifted: np.ndarray
) -> None:
    """The first BatchNorm's input (the stem convolution's output) depends on no other BatchNorm, so its new
    running statistics are exactly the target images' (two equal batches: mean of the batch statistics)."""
    import torch

    model = predictor.torch_runtime().model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = adapt_batchnorm(model, _x(shifted), batch_size=16)
    captured = []
    hook = model.backbone.conv_stem.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model(torch.from_numpy(_x(shifted)))
    hook.remove()
    stem = captured[0]
    target_mean = stem.mean(dim=(0, 2, 3))
    halves = [stem[:16], stem[16:]]
    target_var = torch.stack([h.permute(1, 0, 2, 3).reshape(h.shape[1], -1).var(dim=1) for h in halves]).mean(0)
    bn, old = adapted.backbone.bn1, model.backbone.bn1
    assert torch.allclose(bn.running_mean, target_mean, atol=1e-4)
    assert torch.allclose(bn.running_var, target_var, rtol=1e-3, atol=1e-5)
    assert (bn.running_mean - target_mean).abs().sum() < 0.01 * (old.running_mean - target_mean).abs().sum()
    assert not adapted.training and not any(m.training for m in adapted.modules())
    # the original model is untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_onnx_finds_every_folded_batchnorm(predictor: Predictor) -> None:
    import onnx
    from safetensors.numpy import load

    graph = onnx.load_from_string(predictor.bundle.read("model.onnx"))
    assert not any(n.op_type == "BatchNormalization" for n in graph.graph.node)  # folded by the exporter
    state = load(predictor.bundle.read("model.safetensors"))
    sites = fused_sites(graph, state)
    n_bn = sum(k.endswith(".running_var") for k in state)
    assert len(sites) == n_bn == len({s.batchnorm for s in sites}) and {s.eps for s in sites} == {1e-5}
    names = {graph.graph.node[s.node].input[1].removeprefix("model.").rsplit(".", 2)[0] for s in sites}
    assert all(s.batchnorm.rsplit(".", 1)[0] in names for s in sites)  # paired within the same module


def test_onnx_and_torch_adaptation_agree_and_leave_the_original_alone(
    bundle_dir: Path, predictor: Predictor, shifted: np.ndarray
) -> None:
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in bundle_dir.iterdir() if p.is_file()}
    x = _x(shifted[:8])
    before = predictor.runtime.logits(x)
    on_onnx = predictor.adapt(shifted)
    on_torch = Predictor.from_bundle(bundle_dir, runtime="torch", threads=1).adapt(shifted)
    a, b = on_onnx.runtime.logits(x), on_torch.runtime.logits(x)
    assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(b).max())
    assert np.abs(on_onnx.probabilities(a) - on_torch.probabilities(b)).max() < 1e-4
    assert np.abs(a - before).max() > 1e-2  # adaptation changed the answer on shifted images
    # the torch runtime of an ONNX-adapted predictor (MC dropout, Grad-CAM++) is adapted alike
    assert np.abs(on_onnx.torch_runtime().logits(x) - b).max() < 1e-5
    # the original predictor and the bundle on disk are unchanged
    assert np.array_equal(predictor.runtime.logits(x), before) and predictor.adaptation is None
    assert predictor.settings()["adapt_bn"] is None
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in bundle_dir.iterdir() if p.is_file()} == digest
    info = on_onnx.settings()["adapt_bn"]
    assert info["images"] == 32 and info["batches"] == 1 and info["runtime"] == "onnx" and info["batchnorm_layers"]


class _FeatureNorm:
    """Stand-in out-of-domain score (the tiny bundle has none): the norm of the pooled features."""

    threshold_ = 1e9

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score = np.linalg.norm(features, axis=1)
        return score <= self.threshold_, score


def test_out_of_domain_score_reads_the_unadapted_network(bundle_dir: Path, shifted: np.ndarray) -> None:
    plain = Predictor.from_bundle(bundle_dir, threads=1)
    plain.ood = _FeatureNorm()
    adapted = plain.adapt(shifted)
    got, ref = adapted.predict_images(shifted[:4]), plain.predict_images(shifted[:4])
    assert [p.ood_score for p in got] == pytest.approx([p.ood_score for p in ref], rel=1e-5)
    features = adapted.runtime.outputs(_x(shifted[:4]))["features"]
    assert not np.allclose(np.linalg.norm(features, axis=1), [p.ood_score for p in ref], rtol=1e-3)


def test_too_few_images_is_a_clear_error(predictor: Predictor, shifted: np.ndarray) -> None:
    with pytest.raises(BrainMRIError, match=r"at least 16 target images.*got 15"):
        predictor.adapt(shifted[:15])
    assert predictor.adapt(shifted[:4], min_images=4).adaptation["images"] == 4


def test_cli_adapts_on_the_inputs_or_a_folder(bundle_dir: Path, tmp_path: Path, capsys) -> None:
    from brainmri.cli import main

    images, _ = phantom_images(5, seed=21)  # 20 images
    site = tmp_path / "site"
    inputs = [write_png(site / f"s{i:02d}.png", np.clip(a * 0.6 + 40, 0, 255)) for i, a in enumerate(images)]
    out = tmp_path / "pred.json"
    base = ["predict", str(bundle_dir), str(site), "--workers", "0"]
    assert main([*base, "--out", str(out)]) == 0
    plain = json.loads(out.read_text())
    assert plain["settings"]["adapt_bn"] is None

    assert main([*base, "--adapt-bn", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    info = doc["settings"]["adapt_bn"]
    assert info["images"] == 20 and info["failed_inputs"] == 0 and "transductive" in info["source"]
    assert len(doc["predictions"]) == 20
    changed = [abs(a["tumor_probability"] - b["tumor_probability"]) for a, b in
               zip(doc["predictions"], plain["predictions"], strict=True)]  # fmt: skip
    assert max(changed) > 1e-4

    assert main([*base, "--adapt-bn", str(site), "--format", "csv", "--out", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 20 and {r["adapt_bn_images"] for r in rows} == {"20"}

    assert main(["predict", str(bundle_dir), *map(str, inputs[:3]), "--adapt-bn", "--out", str(out)]) == 2
    assert "at least 16 target images" in capsys.readouterr().err
    assert main(["predict", str(bundle_dir), str(site), "--study", "--adapt-bn", "--out", str(out)]) == 2
    assert "--study needs --adapt-bn FOLDER" in capsys.readouterr().err

    (site / "broken.png").write_bytes(b"")  # an unreadable target file is counted, not fatal
    adapted = Predictor.from_bundle(bundle_dir, threads=1).adapt(str(site))
    assert adapted.adaptation["images"] == 20 and adapted.adaptation["failed_inputs"] == 1
    assert adapted.adaptation["source"] == str(site)
