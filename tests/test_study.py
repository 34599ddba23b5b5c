"""Series and volumes in, study answers out: DICOM series (order, UIDs, several series, gaps, mixed sizes,
multi-frame), NIfTI volumes (acquisition axis, chosen axis, 4-D), the aggregate, the CLI and the montage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import test_bundle_support as support
from brainmri.errors import BrainMRIError, DegenerateImageError
from brainmri.infer.study import aggregate, summarise
from brainmri.io import read_image
from brainmri.io.series import check_positions, find_series, read_volume

bundle_dir = support.bundle_dir
tiny_run_dir = support.tiny_run_dir
STUDY = "1.2.826.0.1.3680043.8.498.1"


def _phantom(k: int, size: int = 64) -> np.ndarray:
    from brainmri.data.phantoms import make_phantom

    return np.round(make_phantom("glioma", size=size, seed=k).image * 1000).astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray, series: str, z: float | None, number: int, sop: str) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = STUDY, series, "MR"
    ds.SeriesDescription, ds.InstanceNumber = "AX FLAIR", number
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if z is not None:
        ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, series: str, zs: list[float | None], size: int | list[int] = 64) -> list[Path]:
    """Files named in a shuffled order (so sorting by name is wrong), positions ``zs``."""
    sizes = size if isinstance(size, list) else [size] * len(zs)
    order = np.random.default_rng(0).permutation(len(zs))
    return [
        write_dicom(folder / f"IM{order[i]:04d}", _phantom(i, sizes[i]), series, z, i + 1, f"{series}.{i + 1}")
        for i, z in enumerate(zs)
    ]


def write_nifti(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0), slice_dim: int | None = None) -> Path:
    import nibabel as nib

    affine = np.diag([*zooms[:3], 1.0])
    img = nib.Nifti1Image(data, affine)
    if slice_dim is not None:
        img.header.set_dim_info(slice=slice_dim)
    nib.save(img, str(path))
    return path


def _volume(depth: int = 6, size: int = 48) -> np.ndarray:
    return np.stack([_phantom(k, size).astype(np.float32) for k in range(depth)], axis=-1).transpose(1, 0, 2)


# ------------------------------------------------------------------------------------------ series


def test_dicom_series_is_ordered_by_position_with_uids(tmp_path: Path) -> None:
    write_series(tmp_path / "s", "1.2.3.4", [10.0, 15.0, 20.0, 25.0])
    (series,), skipped = find_series(tmp_path / "s")
    assert not skipped and series.kind == "dicom" and series.problems == []
    assert [s.position_mm for s in series.slices] == [10.0, 15.0, 20.0, 25.0]
    assert [s.instance_number for s in series.slices] == [1, 2, 3, 4]
    assert series.slices[2].uids == {
        "study_instance_uid": STUDY,
        "series_instance_uid": "1.2.3.4",
        "sop_instance_uid": "1.2.3.4.3",
    }
    assert series.uids == {"study_instance_uid": STUDY, "series_instance_uid": "1.2.3.4"} and series.spacing_mm == 5
    assert np.array_equal(series.load(1).array, read_image(series.slices[1].source).array)  # same decoding


def test_a_folder_with_several_series_gives_one_each(tmp_path: Path) -> None:
    write_series(tmp_path / "study" / "a", "1.2.3.4", [0.0, 5.0, 10.0])
    write_series(tmp_path / "study" / "b", "1.2.3.5", [0.0, 3.0])
    (tmp_path / "study" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "study" / "notes.txt").write_text("protocol: T1 post-contrast")
    series, skipped = find_series(tmp_path / "study")
    assert [(s.label, len(s.slices)) for s in series] == [("1.2.3.4", 3), ("1.2.3.5", 2)]
    assert len(skipped) == 1 and "notes.txt: not an image file" in skipped[0]  # named; the hidden file is not


def test_gaps_and_mixed_sizes_are_reported_not_resampled(tmp_path: Path) -> None:
    write_series(tmp_path / "gap", "1.2.3.6", [0.0, 5.0, 10.0, 25.0, 30.0])
    (series,), _ = find_series(tmp_path / "gap")
    assert len(series.slices) == 5
    assert any("gap between slices 2 and 3" in p and "2 slice(s) missing" in p for p in series.problems)
    write_series(tmp_path / "mixed", "1.2.3.7", [0.0, 5.0, 10.0], size=[64, 64, 96])
    (series,), _ = find_series(tmp_path / "mixed")
    assert any("mixed slice sizes: 64x64 (2 slices), 96x96 (1 slices)" in p for p in series.problems)
    assert series.load(2).array.shape == (96, 96)  # kept at its own size
    spacing, problems = check_positions([0.0, 5.0, 5.0, 10.0])
    assert spacing == 5.0 and "share a position" in problems[0]
    assert "ordered by InstanceNumber" in check_positions([0.0, None])[1][0]


def test_multiframe_dicom_frames_are_slices(tmp_path: Path) -> None:
    from pydicom import dcmread

    path = write_dicom(tmp_path / "mf.dcm", _phantom(0), "1.2.3.8", 0.0, 1, "1.2.3.8.1")
    ds = dcmread(path)
    frames = np.stack([_phantom(k) for k in range(3)])
    ds.NumberOfFrames = 3
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(path)
    (series,), _ = find_series(tmp_path)
    assert series.kind == "dicom-multiframe" and len(series.slices) == 3
    assert np.array_equal(series.load(1).array, frames[1].astype(np.float32))
    assert series.slices[0].uids["sop_instance_uid"] == "1.2.3.8.1" and series.slices[1].frame == 1


def test_nifti_volume_slices_follow_the_acquisition_axis(tmp_path: Path) -> None:
    vol = _volume()
    path = write_nifti(tmp_path / "v.nii.gz", vol, zooms=(1.0, 1.0, 5.0))
    series = read_volume(path)
    assert series.axis == "axial" and len(series.slices) == 6 and series.spacing_mm == 5.0
    assert np.array_equal(series.load(3).array, read_image(path).array)  # the middle slice, as read_image shows it
    assert [s.position_mm for s in series.slices] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    thick_x = write_nifti(tmp_path / "sag.nii.gz", vol, zooms=(4.0, 1.0, 1.0))
    assert read_volume(thick_x).axis == "sagittal" and len(read_volume(thick_x).slices) == vol.shape[0]
    header = write_nifti(tmp_path / "cor.nii", vol, slice_dim=1)
    assert read_volume(header).axis == "coronal"
    assert read_volume(path, axis="coronal").slices[0].source.endswith("[coronal 0]")


def test_4d_nifti_needs_a_volume_choice(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "t.nii.gz", np.stack([_volume(), _volume() * 2], axis=-1))
    with pytest.raises(DegenerateImageError, match="4-D NIfTI with 2 volumes"):
        read_volume(path)
    series = read_volume(path, volume=1)
    assert len(series.slices) == 6 and "volume 1 of 2" in series.problems[0]


# ------------------------------------------------------------------------------------------ aggregate


def test_aggregates() -> None:
    p = np.array([0.1, 0.9, 0.6, 0.2])
    assert aggregate(p, "max") == pytest.approx(0.9)
    assert aggregate(p, "topk_mean", 2) == pytest.approx(0.75)
    assert aggregate(p, "noisy_or") == pytest.approx(1 - 0.9 * 0.1 * 0.4 * 0.8)
    assert aggregate(np.array([0.5]), "topk_mean", 3) == 0.5
    with pytest.raises(ValueError, match="unknown aggregate"):
        aggregate(p, "mean")
    classes = ["glioma", "meningioma", "no_tumor", "pituitary"]
    probs = np.array([[0.0, 0.1, 0.9, 0.0], [0.2, 0.7, 0.1, 0.0], [0.5, 0.1, 0.4, 0.0], [0.1, 0.0, 0.8, 0.1]])
    s = summarise(1 - probs[:, 2], probs, classes, 0.5, "topk_mean", 2)
    assert s["driving_slices"] == [1, 2] and s["is_tumor"] and s["label"] == "meningioma"
    assert summarise(1 - probs[:, 2], probs, classes, 0.95, "max", 1)["label"] == "no_tumor"


# ------------------------------------------------------------------------------------------ end to end


def test_predict_study_on_a_series_and_a_volume(bundle_dir: Path, tmp_path: Path) -> None:
    from brainmri.infer.predictor import Predictor

    write_series(tmp_path / "s", "1.2.3.4", [0.0, 5.0, 10.0, 20.0])
    vol = _volume()
    vol[..., 0] = 0  # a blank slice: skipped, not predicted, not a review reason by itself
    nii = write_nifti(tmp_path / "v.nii.gz", vol)
    with Predictor.from_bundle(bundle_dir) as predictor:
        study = predictor.predict_study(tmp_path / "s", montage_dir=tmp_path / "m", top_k=2)
        slices = predictor.predict([p.source for p in find_series(tmp_path / "s")[0][0].slices])
        volume = predictor.predict_study(nii)
    assert study.n_predicted == 4 and study.uids["series_instance_uid"] == "1.2.3.4"
    p = [s["prediction"]["tumor_probability"] for s in study.slices]
    assert p == pytest.approx([x.tumor_probability for x in slices])  # each slice as a single image
    assert study.tumor_probability == pytest.approx(np.sort(p)[-2:].mean())
    assert study.driving_slices == list(np.argsort(p)[::-1][:2])
    assert study.slices[0]["uids"]["sop_instance_uid"] == "1.2.3.4.1"
    assert study.review and any("gap" in r for r in study.review_reasons)
    assert Path(study.montage).is_file()
    from PIL import Image

    assert Image.open(study.montage).size[0] >= 2 * 192
    assert volume.n_predicted == 5 and "blank" in volume.slices[0]["skip"]
    assert not any("not predicted" in r for r in volume.review_reasons)
    json.dumps(study.to_dict())


def test_several_series_need_a_choice_in_the_api_and_are_each_predicted_by_the_cli(
    bundle_dir: Path, tmp_path: Path
) -> None:
    from brainmri.cli import main
    from brainmri.infer.predictor import Predictor

    write_series(tmp_path / "study" / "a", "1.2.3.4", [0.0, 5.0])
    write_series(tmp_path / "study" / "b", "1.2.3.5", [0.0, 5.0, 10.0], size=[64, 64, 80])
    with Predictor.from_bundle(bundle_dir) as predictor:
        with pytest.raises(BrainMRIError, match="2 series"):
            predictor.predict_study(tmp_path / "study")
        assert predictor.predict_study(tmp_path / "study", series_uid="1.2.3.5").n_predicted == 3
    out = tmp_path / "out.json"
    rc = main(["predict", str(bundle_dir), str(tmp_path / "study"), "--study", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert rc == 0 and [s["uids"]["series_instance_uid"] for s in doc["studies"]] == ["1.2.3.4", "1.2.3.5"]
    assert any("mixed slice sizes" in p for p in doc["studies"][1]["series"]["problems"])
    assert doc["settings"]["study"]["method"] == "topk_mean"
    assert main(["predict", str(bundle_dir), str(tmp_path / "nothing"), "--study", "--out", str(out)]) == 1
    assert "not found" in json.loads(out.read_text())["errors"][0]["error"]
