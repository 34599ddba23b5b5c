"""Bundle interop: ONNX metadata_props, Hugging Face front matter, MONAI metadata.json, tolerant verification,
``brainmri bundle info|verify``, and version-1 bundles still loading."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

import test_bundle_support as support
from brainmri.bundle import Bundle
from brainmri.bundle.interop import parse_front_matter, read_onnx_metadata
from brainmri.bundle.sealed import BundleWarning, seal_card
from brainmri.cli import main
from brainmri.errors import BundleError
from test_bundle_support import CLASSES, SIZE

bundle_dir = support.bundle_dir
tiny_run_dir = support.tiny_run_dir


def test_onnx_metadata_props_describe_the_model(bundle_dir: Path) -> None:
    import onnx

    bundle = Bundle.load(bundle_dir)
    props = {p.key: p.value for p in onnx.load(str(bundle_dir / "model.onnx")).metadata_props}
    assert props == read_onnx_metadata((bundle_dir / "model.onnx").read_bytes())  # ORT reads the same
    assert json.loads(props["classes"]) == CLASSES
    assert json.loads(props["input_shape"]) == ["batch", 1, SIZE, SIZE] and props["input_size"] == str(SIZE)
    assert json.loads(props["value_range"]) == [0.0, 1.0] and "/ 255" in props["normalization"]
    assert float(props["temperature"]) == 1.7 and float(props["threshold"]) == 0.3
    # identity: the weights' sha256, which the card lists (the card's own hash would be circular)
    assert props["model_identity"] == "sha256:" + bundle.card["files"]["model.safetensors"]["sha256"]
    assert props["data_fingerprint"] == bundle.card["data"]["fingerprint"]


def test_readme_has_hugging_face_front_matter(bundle_dir: Path) -> None:
    text = (bundle_dir / "README.md").read_text()
    assert text.startswith("---\n")
    meta = parse_front_matter(text)
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "onnx"
    assert meta["pipeline_tag"] == "image-classification" and "mri" in meta["tags"]
    result = meta["model-index"][0]["results"][0]
    assert result["task"]["type"] == "image-classification"
    assert {"type": "accuracy", "name": "accuracy", "value": 0.625} in result["metrics"]  # the run's metrics.json
    assert result["dataset"]["revision"] == Bundle.load(bundle_dir).card["data"]["fingerprint"]
    assert "# Model card:" in text and "Research use only" in text


def test_monai_metadata_is_sealed_and_describes_input_and_output(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = Bundle.load(bundle_dir)
    meta = json.loads(bundle.read("configs/metadata.json"))
    assert meta["version"] in meta["changelog"] and meta["task"] == bundle.card["task"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == [SIZE, SIZE] and image["num_channels"] == 1
    assert image["dtype"] == "float32" and image["value_range"] == [0.0, 1.0] and image["modality"] == "MR"
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 4 and pred["channel_def"] == {str(i): c for i, c in enumerate(CLASSES)}
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "configs" / "metadata.json").write_text(json.dumps({**meta, "version": "9"}))
    with pytest.raises(BundleError, match=r"configs/metadata\.json"):
        Bundle.load(copy)


def test_hidden_files_are_ignored_and_others_named(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (copy / ".gitattributes").write_text("*.onnx filter=lfs diff=lfs merge=lfs -text\n")
    (copy / ".cache" / "huggingface").mkdir(parents=True)
    (copy / ".cache" / "huggingface" / "x.lock").write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        assert Bundle.load(copy).unexpected == []
    (copy / "notes.txt").write_text("mine")
    (copy / "configs" / "inference.json").write_text("{}")
    with pytest.warns(BundleWarning) as caught:
        bundle = Bundle.load(copy)
    assert bundle.unexpected == ["configs/inference.json", "notes.txt"]
    assert any("notes.txt" in str(w.message) for w in caught)


def test_version_1_bundles_still_load(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    card = json.loads((copy / "card.json").read_text())
    del card["files"]["configs/metadata.json"]
    card["format_version"] = 1
    shutil.rmtree(copy / "configs")
    (copy / "card.json").write_bytes(seal_card(card))
    assert Bundle.load(copy).card["format_version"] == 1
    card["format_version"] = 3
    (copy / "card.json").write_bytes(seal_card(card))
    with pytest.raises(BundleError, match="version 3"):
        Bundle.load(copy)


def test_bundle_info_and_verify_commands(bundle_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["bundle", "verify", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok:") and Bundle.load(bundle_dir).card_sha256 in out
    assert main(["bundle", "info", str(bundle_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == CLASSES and info["huggingface"]["license"] == "apache-2.0"
    assert info["onnx_metadata"]["model_identity"] == info["model_identity"]
    assert info["monai_metadata"]["network_data_format"]["inputs"]["image"]["spatial_shape"] == [SIZE, SIZE]
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "stray.bin").write_bytes(b"x")
    assert main(["bundle", "verify", str(copy)]) == 0
    assert "stray.bin" in capsys.readouterr().err
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert main(["bundle", "verify", str(copy)]) == 1
    assert "model.safetensors" in capsys.readouterr().err
