"""Import: layouts, class-name normalisation, bad files, manifest read/write (small generated data)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainmri.cli import main
from brainmri.config import load_config
from brainmri.data.manifest import (
    MANIFEST_COLUMNS,
    build_manifest,
    default_roots,
    read_manifest,
    write_manifest,
)
from brainmri.data.phantoms import make_phantom, write_phantom_dataset
from brainmri.errors import DataError


def _import(roots, cfg):
    """build_manifest with the sections of ``cfg`` it takes."""
    return build_manifest(roots, cfg.data, cfg.audit)


def _cfg(**overrides):
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def _save(path: Path, label: str, seed: int, size: int = 64, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = (make_phantom(label, size=size, seed=seed).image * 255).round().astype(np.uint8)
    Image.fromarray(img).save(path, format=fmt)


def test_kaggle_layout_labels_splits_and_columns(tmp_path):
    root = write_phantom_dataset(tmp_path / "kag", n_per_class=2, size=64)
    _save(root / "Testing" / "notumor" / "t0.png", "no_tumor", 99)
    _save(root / "Testing" / "glioma_tumor" / "t1.JPG", "glioma", 98, fmt="JPEG")
    df = _import([str(root)], _cfg(**{"data.workers": 1}))

    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert len(df) == 10
    assert df["id"].tolist() == sorted(df["id"])
    assert set(df["label"]) == {"glioma", "meningioma", "no_tumor", "pituitary"}  # notumor -> no_tumor
    test_rows = df[df["source_split"] == "test"]
    assert sorted(test_rows["id"]) == ["kag/Testing/glioma_tumor/t1.JPG", "kag/Testing/notumor/t0.png"]
    assert dict(zip(test_rows["id"], test_rows["label"], strict=True))["kag/Testing/glioma_tumor/t1.JPG"] == "glioma"
    assert (df.loc[df["source_split"] != "test", "source_split"] == "train").all()
    assert (df["source"] == "kag").all()
    assert df["readable"].all() and (df["error"] == "").all()
    for _, row in df.iterrows():
        assert row["md5"] == hashlib.md5(Path(row["path"]).read_bytes()).hexdigest()
        assert re.fullmatch(r"[0-9a-f]{16}", row["phash"])
        assert Path(row["path"]).is_absolute()
    assert (df["width"] == 64).all() and (df["height"] == 64).all()
    assert set(df["format"]) == {"png", "jpeg"}


def test_binary_nested_layout_and_uppercase_extensions(tmp_path):
    root = tmp_path / "nav"
    _save(root / "brain_tumor_dataset" / "yes" / "Y1.JPG", "glioma", 1, fmt="JPEG")
    _save(root / "brain_tumor_dataset" / "yes" / "Y2.jpeg", "meningioma", 2, fmt="JPEG")
    _save(root / "brain_tumor_dataset" / "no" / "N1.png", "no_tumor", 3)
    (root / "brain_tumor_dataset" / "no" / "notes.txt").write_text("not an image extension")
    df = _import([str(root)], _cfg(**{"data.workers": 1}))
    assert df["id"].tolist() == [
        "nav/brain_tumor_dataset/no/N1.png",
        "nav/brain_tumor_dataset/yes/Y1.JPG",
        "nav/brain_tumor_dataset/yes/Y2.jpeg",
    ]
    assert df["label"].tolist() == ["no_tumor", "tumor", "tumor"]
    assert (df["source_split"] == "").all()


def test_plain_class_folders_and_named_root(tmp_path):
    root = write_phantom_dataset(tmp_path / "plain", n_per_class=1, size=48, layout="plain")
    df = _import([f"mine={root}"], _cfg(**{"data.workers": 1}))
    assert (df["source"] == "mine").all()
    assert df["id"].iloc[0].startswith("mine/")
    assert sorted(df["label"]) == ["glioma", "meningioma", "no_tumor", "pituitary"]


def test_unknown_class_folder_is_an_error(tmp_path):
    root = write_phantom_dataset(tmp_path / "kag", n_per_class=1, size=48)
    _save(root / "Training" / "astrocytoma" / "a.png", "glioma", 5)
    with pytest.raises(DataError) as exc:
        _import([str(root)], _cfg(**{"data.workers": 1}))
    msg = str(exc.value)
    assert "astrocytoma" in msg and "notumor" in msg and "glioma" in msg and "data.class_map" in msg


def test_class_map_from_config_accepts_new_folder(tmp_path):
    root = tmp_path / "d"
    _save(root / "Astro" / "a.png", "glioma", 5)
    cfg = load_config(None, ["data.class_map={astro: glioma}", "data.workers=1"])
    df = _import([str(root)], cfg)
    assert df["label"].tolist() == ["glioma"]


def test_missing_root_and_empty_root_are_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        _import([str(tmp_path / "nope")], _cfg())
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        _import([str(tmp_path / "empty")], _cfg())


def test_bad_files_one_line_each_and_run_completes(tmp_path, bad_images, capsys):
    root = write_phantom_dataset(tmp_path / "kag", n_per_class=1, size=48)
    bad = bad_images(root / "Training" / "glioma")
    out = tmp_path / "work" / "manifest.csv"
    rc = main(["data", "import", str(root), "--out", str(out), "--set", "data.workers=1"])
    captured = capsys.readouterr()
    assert rc == 0
    err_lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(err_lines) == 4, captured.err
    for kind, path in bad.items():
        mine = [ln for ln in err_lines if ln.startswith(f"{path}: ")]
        assert len(mine) == 1, (kind, err_lines)
        assert mine[0].split(": ", 1)[1].startswith(kind)
    assert "pixels" in next(ln for ln in err_lines if "bad_bomb" in ln)
    assert "4 unreadable" in captured.out

    df = read_manifest(out)
    assert len(df) == 8
    rows = df.set_index("path")
    for kind, path in bad.items():
        row = rows.loc[str(path)]
        assert not row["readable"]
        assert row["error"].startswith(kind) and "\n" not in row["error"]
        assert row["phash"] == ""
        assert pd.isna(row["width"])
    assert rows.loc[str(bad["too_large"]), "format"] == "png"
    assert df["readable"].sum() == 4
    assert (out.parent / "manifest.config.yaml").is_file()


def test_process_pool_gives_identical_manifest(tmp_path):
    root = write_phantom_dataset(tmp_path / "kag", n_per_class=3, size=48)
    from brainmri.data.manifest import collect_items, import_files

    cfg = _cfg()
    items = collect_items([str(root)], cfg.data)
    serial = import_files(items, cfg.data, cfg.audit, workers=1)
    pooled = import_files(items, cfg.data, cfg.audit, workers=2, chunk_size=4)
    pd.testing.assert_frame_equal(serial, pooled)


def test_manifest_roundtrip_and_read_errors(tmp_path):
    root = write_phantom_dataset(tmp_path / "kag", n_per_class=1, size=48)
    df = _import([str(root)], _cfg(**{"data.workers": 1}))
    path = write_manifest(df, tmp_path / "m.csv")
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back, df)
    assert path.read_text().splitlines()[0] == ",".join(MANIFEST_COLUMNS)

    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "missing.csv")
    (tmp_path / "cols.csv").write_text("id,path\na,b\n")
    with pytest.raises(DataError, match="lacks columns"):
        read_manifest(tmp_path / "cols.csv")
    bad = path.read_text().replace(",true,", ",yes,", 1)
    (tmp_path / "bad.csv").write_text(bad)
    with pytest.raises(DataError, match="readable"):
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="not a valid manifest"):
        read_manifest(tmp_path / "empty.csv")


def test_default_roots(tmp_path, monkeypatch):
    monkeypatch.delenv("BRAINMRI_DATA", raising=False)
    assert default_roots(load_config(None, ["data.roots=[/a, /b]"]).data) == ["/a", "/b"]
    monkeypatch.setenv("BRAINMRI_DATA", f"/x{__import__('os').pathsep}/y")
    assert default_roots(load_config().data) == ["/x", "/y"]
    monkeypatch.delenv("BRAINMRI_DATA")
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(DataError, match="BRAINMRI_DATA"):
        default_roots(load_config().data, repo_root=repo)
    (tmp_path / "shared" / "data" / "brain-tumor-mri").mkdir(parents=True)
    assert default_roots(load_config().data, repo_root=repo) == [str(tmp_path / "shared/data/brain-tumor-mri")]


def test_import_cli_without_roots_gives_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BRAINMRI_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    rc = main(["data", "import"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: no data roots given") and len(err.strip().splitlines()) == 1


def test_dicom_and_nifti_files_are_imported(tmp_path):
    import nibabel as nib
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = tmp_path / "vol" / "glioma"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1000, size=(40, 32, 5)).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), folder / "scan.nii.gz")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = 24, 20
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4000, size=(24, 20)).astype(np.uint16).tobytes()
    ds.save_as(folder / "slice.DCM", enforce_file_format=True)

    df = _import([str(tmp_path / "vol")], _cfg(**{"data.workers": 1}))
    rows = df.set_index("id")
    assert rows.loc["vol/glioma/scan.nii.gz", "format"] == "nifti"
    assert rows.loc["vol/glioma/slice.DCM", "format"] == "dicom"
    assert rows["readable"].all(), rows["error"].tolist()
    assert (rows.loc["vol/glioma/slice.DCM", "width"], rows.loc["vol/glioma/slice.DCM", "height"]) == (20, 24)
    assert rows["phash"].str.fullmatch(r"[0-9a-f]{16}").all()


def test_degenerate_images_are_recorded_unreadable_with_their_reason(tmp_path, capsys):
    import nibabel as nib

    from brainmri.data.split import make_split, reason_category

    root = write_phantom_dataset(tmp_path / "kag", n_per_class=2, size=48)
    folder = root / "Training" / "glioma"
    rng = np.random.default_rng(0)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "blank.png")
    Image.fromarray(np.full((1, 1), 9, np.uint8)).save(folder / "dot.png")
    Image.fromarray(rng.integers(0, 255, (20000, 1), dtype=np.uint8)).save(folder / "strip.png")
    nib.save(nib.Nifti1Image(rng.uniform(0, 1, (32, 32, 3, 2)).astype(np.float32), np.eye(4)), folder / "s.nii.gz")
    cfg = _cfg(**{"data.workers": 1, "split.folds": 2})
    df = _import([str(root)], cfg)
    expected = {
        "blank.png": "degenerate: image is blank (all pixels equal)",
        "dot.png": "degenerate: image is 1x1 px; at least 16 px per side needed",
        "strip.png": "degenerate: image is 1x20000 px; at least 16 px per side needed",
        "s.nii.gz": "degenerate: 4-D NIfTI with 2 volumes; give one 3-D volume",
    }
    err = capsys.readouterr().err
    rows = df.set_index("path")
    for name, reason in expected.items():
        row = rows.loc[str(folder / name)]
        assert not row["readable"] and row["error"] == reason and row["phash"] == ""
        assert f"{folder / name}: {reason}" in err
    assert df["readable"].sum() == 8
    split = make_split(df, cfg.split, cfg.audit, cfg.data.classes)
    excluded = {e["id"]: e["reason"] for e in split["excluded"]}
    for name, reason in expected.items():
        assert excluded[f"kag/Training/glioma/{name}"] == f"unreadable: {reason}"
        assert reason_category(excluded[f"kag/Training/glioma/{name}"]) == "unreadable"


def test_extensionless_dicom_exports_are_imported_and_other_files_named(tmp_path, capsys):
    """PACS exports name DICOM files IM0001 or by UID; they are taken by their magic bytes. A note beside them
    is not imported and is named on stderr, never skipped silently; a hidden file is simply ignored."""
    from pydicom.data import get_testdata_file

    dicom = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    for i, name in enumerate(["IM0001", "1.2.840.113619.2.5"]):
        (tmp_path / "site" / ("glioma", "notumor")[i]).mkdir(parents=True)
        (tmp_path / "site" / ("glioma", "notumor")[i] / name).write_bytes(dicom)
    (tmp_path / "site" / "glioma" / "notes.txt").write_text("scanned at 3 T")
    (tmp_path / "site" / "glioma" / ".DS_Store").write_bytes(b"\x00\x01")
    df = _import([str(tmp_path / "site")], _cfg(**{"data.workers": 1}))
    assert sorted(df["id"]) == ["site/glioma/IM0001", "site/notumor/1.2.840.113619.2.5"]
    assert df["readable"].all() and (df["format"] == "dicom").all()
    err = capsys.readouterr().err
    assert "left out 1 file(s)" in err and "notes.txt" in err and ".DS_Store" not in err


def test_an_image_extension_left_out_of_the_config_is_not_imported(tmp_path):
    _save(tmp_path / "set" / "glioma" / "a.png", "glioma", 0)
    _save(tmp_path / "set" / "glioma" / "b.jpg", "glioma", 1)
    df = _import([str(tmp_path / "set")], _cfg(**{"data.workers": 1, "data.extensions": "['.png']"}))
    assert list(df["id"]) == ["set/glioma/a.png"]
