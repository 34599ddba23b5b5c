"""Predictor, runtimes, TTA, MC dropout and the predict CLI on a tiny exported bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import test_bundle_support as support
from brainmri.config import PredictConfig
from brainmri.errors import ConfigError, ImageReadError
from brainmri.infer import Failure, Predictor, create_runtime
from test_bundle_support import CLASSES, SIZE, phantom_images, write_png

bundle_dir = support.bundle_dir  # session fixtures shared with test_bundle.py
tiny_run_dir = support.tiny_run_dir


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    return Predictor.from_bundle(bundle_dir)


@pytest.fixture(scope="module")
def model_inputs(predictor: Predictor) -> np.ndarray:
    """Preprocessed phantoms as the model sees them: float32 (16, 1, S, S) in [0, 1]."""
    images, _ = phantom_images(4, seed=7)
    return np.stack([predictor.preprocessor(a) for a in images])[:, None].astype(np.float32) / 255.0


def test_round_trip_matches_the_run_step_by_step(predictor: Predictor, tiny_run_dir: Path, tmp_path: Path) -> None:
    """decode -> the run's preprocessor -> the run's torch model -> temperature -> decision, done by hand."""
    import torch

    from brainmri.calibrate.conformal import ConformalPredictor
    from brainmri.io import read_image
    from brainmri.runs import Run

    images, _ = phantom_images(2, seed=3)
    paths = [write_png(tmp_path / f"img{i}.png", a) for i, a in enumerate(images)]
    preds = predictor.predict([*paths, images[0]])
    assert [p.source for p in preds] == [*map(str, paths), "<array 0>"]

    run = Run.load(tiny_run_dir)
    pre, model = run.preprocessor(), run.build_model()
    x = np.stack([pre(read_image(p).array) for p in paths])[:, None].astype(np.float32) / 255
    with torch.inference_mode():
        expected = torch.softmax(model(torch.from_numpy(x)) / 1.7, dim=1).numpy()
    got = np.array([list(p.probabilities.values()) for p in preds[: len(paths)]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(list(preds[-1].probabilities.values()), got[0], atol=1e-6)  # array == its PNG

    sets = ConformalPredictor.from_dict({"alpha": 0.1, "method": "aps", "qhat": 0.8}).predict_sets(expected)
    for p, row, s in zip(preds, expected, sets, strict=False):
        assert p.label == CLASSES[int(row.argmax())]
        assert p.tumor_probability == pytest.approx(1 - row[2], abs=1e-4)
        assert p.is_tumor == (p.tumor_probability >= 0.3) and p.threshold == 0.3
        assert p.conformal_set == [c for c, m in zip(CLASSES, s, strict=True) if m] and p.conformal_alpha == 0.1
        entropy = -(row * np.log(row)).sum() / np.log(4)
        assert p.entropy == pytest.approx(entropy, abs=1e-4)
        assert p.review == (len(p.conformal_set) != 1 or p.entropy > 0.5)
        assert p.time_ms > 0 and p.meta["format"] == "png"


def test_onnx_and_torch_agree(predictor: Predictor, bundle_dir: Path, model_inputs: np.ndarray) -> None:
    from brainmri.bundle import Bundle

    torch_rt = create_runtime("torch", Bundle.load(bundle_dir))
    p_onnx = predictor.probabilities(predictor.runtime.logits(model_inputs))
    p_torch = predictor.probabilities(torch_rt.logits(model_inputs))
    assert np.abs(p_onnx - p_torch).max() <= 1e-4
    assert np.ptp(p_torch, axis=0).max() > 1e-3  # the inputs give different outputs: the check is not vacuous
    one_by_one = np.concatenate([predictor.runtime.logits(model_inputs[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(one_by_one, predictor.runtime.logits(model_inputs[:3]), atol=1e-5)  # dynamic batch


def test_onnx_runtime_keeps_torch_flushing_denormals(bundle_dir: Path) -> None:
    """ORT's first session in a process must not clear the flush-to-zero flags setup_torch() set (torch would
    run trained EfficientNets up to ~35x slower next to it, e.g. for Grad-CAM or MC dropout). Fresh process."""
    import subprocess
    import sys

    script = f"""
import torch
from brainmri.utils import setup_torch
from brainmri.infer import Predictor
flushed = lambda: float((torch.tensor([1e-39], dtype=torch.float32) * 1.0)[0]) == 0.0
setup_torch()
assert flushed()
Predictor.from_bundle({str(bundle_dir)!r}, runtime="onnx")
print("flushed" if flushed() else "denormals")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "flushed", out.stderr[-2000:]


def test_unknown_runtime_lists_the_known_ones(bundle_dir: Path) -> None:
    with pytest.raises(ConfigError, match="onnx, torch"):
        Predictor.from_bundle(bundle_dir, runtime="tensorrt")


def test_tta_is_invariant_to_a_horizontal_flip(predictor: Predictor, model_inputs: np.ndarray) -> None:
    from brainmri.infer.tta import tta_views

    assert tta_views(model_inputs[:2]).shape == (10, 2, 1, SIZE, SIZE)
    tta = predictor.logits(model_inputs, tta=True)
    flipped = predictor.logits(np.ascontiguousarray(model_inputs[..., ::-1]), tta=True)
    np.testing.assert_allclose(tta, flipped, atol=1e-5)
    plain, plain_flipped = predictor.logits(model_inputs), predictor.logits(model_inputs[..., ::-1])
    assert np.abs(plain - plain_flipped).max() > 1e-3  # the model itself is not flip invariant
    assert np.abs(tta - plain).max() > 1e-4  # TTA changed something


def test_mc_dropout_keeps_batchnorm_frozen_and_spreads(predictor: Predictor, model_inputs: np.ndarray) -> None:
    import torch

    from brainmri.infer.mc_dropout import mc_dropout_probs

    model = predictor.torch_runtime().model
    bn = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    assert bn and any(not torch.all(v == 0) for k, v in bn.items() if "running_mean" in k)  # trained, not defaults
    before = predictor.torch_runtime().logits(model_inputs)
    probs = mc_dropout_probs(model, model_inputs, 8, predictor.probabilities)
    assert probs.shape == (8, len(model_inputs), 4)
    assert probs.std(axis=0).max() > 1e-3
    for k, v in model.state_dict().items():
        if k in bn:
            assert torch.equal(v, bn[k]), k
    assert not any(m.training for m in model.modules())
    np.testing.assert_array_equal(predictor.torch_runtime().logits(model_inputs), before)

    pred = predictor.predict(phantom_images(1)[0][:1], mc_dropout=5)[0]
    assert pred.mc_dropout["passes"] == 5 and max(pred.mc_dropout["std"].values()) > 0
    assert sum(pred.mc_dropout["mean"].values()) == pytest.approx(1.0)


def test_bad_inputs_fail_alone_and_the_folder_completes(
    bundle_dir: Path, tmp_path: Path, bad_images, capsys: pytest.CaptureFixture
) -> None:
    from brainmri.cli import main

    folder = tmp_path / "scans"
    images, _ = phantom_images(1, seed=5)
    good = [write_png(folder / ("sub" if i % 2 else "") / f"ok{i}.png", a) for i, a in enumerate(images)]
    bad = bad_images(folder / "broken")
    (folder / "notes.txt").write_text("not an image, not an image extension: left out, and said so")
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden: not worth a word
    out = tmp_path / "pred.json"
    rc = main(["predict", str(bundle_dir), str(folder), "--out", str(out), "--batch-size", "2", "--workers", "0"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "note: left out 1 file(s) of the input folders that are not images (by extension or content): " in err
    assert err.count(str(folder / "notes.txt")) == 1 and ".DS_Store" not in err
    summary = err.strip().splitlines()[-1]
    done = len(json.loads(out.read_text())["predictions"])
    assert summary.startswith(f"{done} predicted, {len(bad)} failed; of them ") and summary.endswith(f"-> {out}")
    assert "no out-of-domain score in this bundle" in summary  # the test bundle is exported without one
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad)
    for path in bad.values():
        (line,) = [e for e in errors if str(path) in e]
        assert line.startswith(f"error: {path}: ")
    doc = json.loads(out.read_text())
    assert sorted(p["source"] for p in doc["predictions"]) == sorted(map(str, good))
    assert {e["kind"] for e in doc["errors"]} == set(bad)
    assert doc["settings"]["bundle_card_sha256"] and doc["settings"]["threshold"] == 0.3
    assert doc["left_out"] == [str(folder / "notes.txt")]

    rc = main(["predict", str(bundle_dir), *map(str, good), "--out", str(out), "--workers", "0"])
    assert rc == 0


def test_api_raises_on_a_bad_input_unless_asked_to_return_it(predictor: Predictor, tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png"):
        predictor.predict([phantom_images(1)[0][0], empty])
    ok, failed = predictor.predict([phantom_images(1)[0][0], empty], errors="return")
    assert ok.label in CLASSES and isinstance(failed, Failure) and failed.kind == "empty"


def test_cli_csv_threshold_dicom_and_nifti(bundle_dir: Path, tmp_path: Path) -> None:
    import csv

    import nibabel as nib
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from brainmri.cli import main

    image = phantom_images(1, seed=9)[0][0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (image * 16).astype(np.uint16).tobytes()
    ds.save_as(tmp_path / "slice.dcm", enforce_file_format=True)
    volume = np.stack([np.flipud(image).T] * 3, axis=2)  # reader: middle axial slice, displayed flipud(plane.T)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), tmp_path / "vol.nii.gz")

    out = tmp_path / "pred.csv"
    args = ["predict", str(bundle_dir), str(tmp_path / "slice.dcm"), str(tmp_path / "vol.nii.gz"), "--out", str(out)]
    assert main([*args, "--format", "csv", "--threshold", "0", "--runtime", "torch"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == [str(tmp_path / "slice.dcm"), str(tmp_path / "vol.nii.gz")]
    assert all(r["is_tumor"] == "True" and r["threshold"] == "0.0" for r in rows)
    assert float(rows[0]["p_glioma"]) == pytest.approx(float(rows[1]["p_glioma"]), abs=1e-3)  # same pixels, two formats
    assert main([*args, "--format", "csv", "--threshold", "1"]) == 0
    assert all(r["is_tumor"] == "False" for r in csv.DictReader(out.open()))


def test_worker_pool_gives_the_same_results(bundle_dir: Path, tmp_path: Path) -> None:
    images, _ = phantom_images(2, seed=11)
    paths = [write_png(tmp_path / f"{i}.png", a) for i, a in enumerate(images)]
    inline = Predictor.from_bundle(bundle_dir, config=PredictConfig(batch_size=3, workers=0)).predict(paths)
    with Predictor.from_bundle(bundle_dir, config=PredictConfig(batch_size=3, workers=2)) as pooled:
        results = pooled.predict(paths)
    for a, b in zip(inline, results, strict=True):
        assert a.source == b.source and a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_gradcam_overlays(predictor: Predictor, tmp_path: Path) -> None:
    pytest.importorskip("brainmri.models.cam")
    from PIL import Image

    preds = predictor.predict(phantom_images(1)[0][:2], gradcam_dir=tmp_path / "cams")
    for p in preds:
        overlay = np.asarray(Image.open(p.gradcam))
        assert overlay.shape == (SIZE, SIZE, 3) and p.label in Path(p.gradcam).name


@pytest.mark.integration
def test_parity_on_real_images(predictor: Predictor, bundle_dir: Path, brain_tumor_mri_dir: Path) -> None:
    """ORT vs torch on real Kaggle files (mixed sizes and modes), through the whole predict path."""
    files = [sorted((brain_tumor_mri_dir / "Training" / c).iterdir())[:3] for c in ("glioma", "notumor", "pituitary")]
    paths = [p for group in files for p in group]
    onnx_preds = predictor.predict(paths)
    torch_preds = Predictor.from_bundle(bundle_dir, runtime="torch").predict(paths)
    for a, b in zip(onnx_preds, torch_preds, strict=True):
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in CLASSES) <= 1e-4


def test_onnx_bundle_gives_overlays_and_domain_flags_without_torch_cam(bundle_dir: Path, tmp_path: Path) -> None:
    """The graph's class activation maps give the overlay (ONNX runtime); they match the torch runtime's."""
    images, _ = phantom_images(1, seed=5)
    onnx = Predictor.from_bundle(bundle_dir)
    x = np.stack([onnx.preprocessor(a) for a in images])
    heads = onnx.runtime.outputs(x[:, None].astype(np.float32) / 255.0)
    assert set(heads) >= {"logits", "features", "cams"}
    targets = heads["logits"].argmax(1)
    via_onnx = onnx.gradcam_maps(x, targets, heads)
    torch_pred = Predictor.from_bundle(bundle_dir, runtime="torch")
    via_torch = torch_pred.gradcam_maps(x, targets)
    assert via_onnx.shape == (len(x), onnx.size, onnx.size)
    np.testing.assert_allclose(via_onnx, via_torch, atol=1e-3)
    preds = onnx.predict_images(x, gradcam_dir=tmp_path / "cams")
    assert all(p.gradcam and Path(p.gradcam).is_file() for p in preds)


def test_one_walk_sorts_a_folder_into_images_and_left_out_files(tmp_path: Path) -> None:
    from brainmri.infer.inputs import expand_inputs, expand_inputs_reporting

    folder = tmp_path / "export"
    png = phantom_images(1, seed=3)[0][0]
    write_png(folder / "b" / "slice.png", png)
    dicom_like = folder / "a" / "IM0001"
    dicom_like.parent.mkdir(parents=True)
    dicom_like.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 400)  # extensionless, sniffed as DICOM
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0")
    array = np.zeros((8, 8), np.uint8)
    items, left_out = expand_inputs_reporting([folder, array])
    assert [i.source for i in items] == [str(dicom_like), str(folder / "b" / "slice.png"), "<array 0>"]
    assert left_out == [str(folder / "notes.txt")]
    assert [i.source for i in expand_inputs([folder, array])] == [i.source for i in items]


def test_the_summary_line_counts_flags_and_reviews_among_the_predicted() -> None:
    from brainmri.infer.cli import _flag_summary

    rows = [
        {"source": "a", "in_domain": False, "review": True},
        {"source": "b", "in_domain": True, "review": False},
        {"source": "c", "in_domain": True, "review": True},
        {"source": "d", "in_domain": True, "review": False},
        {"source": "e", "error": "unreadable"},  # failures are not counted
    ]
    assert _flag_summary(rows) == "; of them 1 flagged out-of-domain (25%), 2 sent to review (50%)"
    assert _flag_summary([{"source": "a", "in_domain": None, "review": False}]) == (
        "; of them no out-of-domain score in this bundle, 0 sent to review (0%)"
    )
    assert _flag_summary([{"source": "e", "error": "unreadable"}]) == ""
