"""Bundle export and verified loading: files, card, model card, tamper detection, no unpickling."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import test_bundle_support as support
from brainmri.bundle import BUNDLE_FILES, CARD_FILE, ONNX_OPSET, Bundle
from brainmri.errors import BundleError
from test_bundle_support import CLASSES, SIZE, phantom_images

bundle_dir = support.bundle_dir  # session fixtures shared with test_infer*.py
tiny_run_dir = support.tiny_run_dir
ALL_FILES = [*BUNDLE_FILES, CARD_FILE]


def test_export_writes_a_self_describing_bundle(bundle_dir: Path) -> None:
    import onnx

    assert sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()) == sorted(
        ALL_FILES
    )
    bundle = Bundle.load(bundle_dir)
    card = bundle.card
    assert card["classes"] == CLASSES
    assert card["input"]["size"] == SIZE and card["input"]["channels"] == 1
    assert card["input"]["dtype"] == "float32" and card["input"]["value_range"] == [0.0, 1.0]
    assert card["preprocessing"]["state"] == bundle.preprocessor().to_dict()
    assert card["model"]["config"]["backbone"] == "test_efficientnet"
    assert card["model"]["onnx"]["parity_max_abs_diff_probability"] <= 1e-4
    # calibration.json of the run, verbatim numbers
    cal = card["calibration"]
    assert cal["calibrated"] and cal["temperature"] == 1.7 and cal["threshold"] == 0.3
    entry = cal["conformal"]["0.1"]
    assert (entry["method"], entry["qhat"], cal["default_alpha"]) == ("aps", 0.8, 0.1)
    assert card["metrics"]["metrics"]["accuracy"]["value"] == 0.625
    assert len(card["data"]["fingerprint"]) == 64 and len(card["data"]["split_sha256"]) == 64
    assert card["training"]["config"]["model"]["drop_rate"] == 0.3
    assert card["versions"]["torch"] and card["versions"]["onnxruntime"]
    for name in BUNDLE_FILES:
        assert card["files"][name]["bytes"] == (bundle_dir / name).stat().st_size
    # ONNX: opset as documented, dynamic batch axis
    model = onnx.load(str(bundle_dir / "model.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == ONNX_OPSET
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, SIZE, SIZE]
    # the human model card: disclaimer, numbers from the run's files
    readme = (bundle_dir / "README.md").read_text()
    assert "Research use only" in readme and "not for diagnosis" in readme
    assert "0.625 [0.475, 0.775]" in readme and "Temperature: 1.7" in readme and ">= 0.3" in readme


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("name", ALL_FILES)
def test_a_changed_byte_in_any_file_is_refused(bundle_dir: Path, tmp_path: Path, name: str, where: str) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    path = copy / name
    data = bytearray(path.read_bytes())
    i = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[i] = (data[i] + 1) % 256 if data[i] != ord("{") else ord("[")
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        Bundle.load(copy)


def test_missing_or_unlisted_files_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "extra.bin").write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"extra\.bin"):  # named, not refused (test_bundle_interop.py)
        Bundle.load(copy)
    (copy / "extra.bin").unlink()
    (copy / "model.safetensors").unlink()
    with pytest.raises(BundleError, match=r"model\.safetensors"):
        Bundle.load(copy)
    with pytest.raises(BundleError, match="not found"):
        Bundle.load(tmp_path / "nowhere")


def test_bytes_are_rechecked_when_read(bundle_dir: Path, tmp_path: Path) -> None:
    """A file changed after load() is still refused by the runtime that reads it."""
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    bundle = Bundle.load(copy)
    (copy / "model.onnx").write_bytes(b"\x00" + (copy / "model.onnx").read_bytes()[1:])
    with pytest.raises(BundleError, match=r"model\.onnx"):
        bundle.read("model.onnx")


def test_loading_and_predicting_never_unpickles(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import brainmri

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for mod, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(mod, attr, refuse)
    images, _ = phantom_images(1)
    for runtime in ("onnx", "torch"):
        preds = brainmri.load_bundle(bundle_dir, runtime=runtime).predict(images)
        assert len(preds) == len(images)


def test_uncalibrated_run_exports_defaults_and_says_so(
    tiny_run_dir: Path, bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A run without calibration.json or reports: T = 1, threshold 0.5, no sets; card and README say so (CLI)."""
    import torch

    import brainmri
    import brainmri.bundle.export as export_module
    from brainmri.cli import main
    from brainmri.runs import Run

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_dir, ignore=shutil.ignore_patterns("calibration.json", "reports"))

    # same weights as the session bundle: reuse its graph to save an export (the parity check still runs)
    def reuse_graph(model, size, path, opset):
        shutil.copy(bundle_dir / "model.onnx", path)
        return list(json.loads((bundle_dir / CARD_FILE).read_text())["outputs"])

    monkeypatch.setattr(export_module, "export_onnx", reuse_graph)
    out = tmp_path / "bundles" / "plain"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    assert "calibration.json was not found" in capsys.readouterr().out
    card = json.loads((out / CARD_FILE).read_text())
    cal = card["calibration"]
    assert not cal["calibrated"] and cal["temperature"] == 1.0 and cal["threshold"] == 0.5 and cal["conformal"] == {}
    assert "calibration.json was not found" in cal["note"] and card["metrics"] is None
    readme = (out / "README.md").read_text()
    assert "Not calibrated" in readme and "performance is unknown" in readme
    # exporting again over the same folder replaces the bundle, which still verifies
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    image = phantom_images(1)[0][0]
    pred = brainmri.load_bundle(out).predict(image)[0]
    assert pred.conformal_set is None and pred.threshold == 0.5
    run = Run.load(run_dir)
    with torch.inference_mode():
        x = torch.from_numpy(run.preprocessor()(image)).float().div(255)[None, None]
        expected = torch.softmax(run.build_model()(x), dim=1)[0].numpy()  # T = 1
    np.testing.assert_allclose(list(pred.probabilities.values()), expected, atol=1e-4)
    p_tumour = 1 - pred.probabilities["no_tumor"]
    if abs(p_tumour - 0.5) > 1e-4:  # the call on a knife edge may differ with float rounding across machines
        assert pred.is_tumor == (p_tumour >= 0.5)
