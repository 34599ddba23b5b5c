"""Image reader: every mode, lying extensions, DICOM rescale/VOI/MONOCHROME1, NIfTI slices, clear errors."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from brainmri.errors import EmptyImageError, ImageTooLargeError, TruncatedImageError, UnreadableImageError
from brainmri.io import read_image


def _gradient(h: int = 20, w: int = 30) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_png_modes_decode_to_float_2d(tmp_path, mode):
    g = _gradient()
    img = Image.fromarray(g.astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(g).convert(mode)
    path = tmp_path / f"x_{mode.replace(';', '')}.png"
    img.save(path)
    out = read_image(path)
    assert out.array.dtype == np.float32 and out.array.shape == (20, 30)
    expected = g.astype(np.float32) * (257 if mode == "I;16" else 1)
    assert np.abs(out.array - expected).max() <= (257 if mode == "I;16" else 1)
    assert out.meta["format"] == "png" and not out.meta["extension_mismatch"]


def test_real_format_is_sniffed_when_extension_lies(tmp_path):
    path = tmp_path / "actually_png.jpg"
    Image.fromarray(_gradient()).save(path, format="PNG")
    out = read_image(path)
    assert out.meta["format"] == "png" and out.meta["extension_mismatch"]
    assert np.array_equal(out.array, _gradient().astype(np.float32))


def test_empty_truncated_text_and_missing_files_give_distinct_errors(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(EmptyImageError, match=r"empty\.jpg"):
        read_image(empty)
    with pytest.raises(UnreadableImageError, match=r"notes\.jpg: not a recognised image format"):
        read_image(text)
    with pytest.raises(TruncatedImageError, match=r"truncated\.jpg"):
        read_image(truncated)
    with pytest.raises(UnreadableImageError, match="file not found"):
        read_image(tmp_path / "missing.png")


def test_pixel_cap_refuses_bomb_header_before_decoding(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageTooLargeError, match="20000x20000"):
        read_image(path, max_pixels=40_000_000)


def test_bytes_input_is_bounded(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_gradient()).save(path)
    data = path.read_bytes()
    assert read_image(data, name="upload.png").array.shape == (20, 30)
    with pytest.raises(ImageTooLargeError, match=r"upload\.png"):
        read_image(data, name="upload.png", max_bytes=10)


def _dicom(
    path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_dicom_rescale_and_monochrome1(tmp_path):
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 10
    p = tmp_path / "a.dcm"
    _dicom(p, pixels, slope=2.0, intercept=-5.0)
    out = read_image(p)
    assert np.allclose(out.array, pixels * 2.0 - 5.0)
    assert out.meta["format"] == "dicom" and out.meta["rescale_slope"] == 2.0
    inv = tmp_path / "inv.dcm"
    _dicom(inv, pixels, photometric="MONOCHROME1")
    flipped = read_image(inv).array
    assert flipped[0, 0] == flipped.max() and flipped[-1, -1] == flipped.min()


def test_dicom_voi_window_is_applied(tmp_path):
    pixels = np.array([[0, 100, 200, 300]], dtype=np.uint16)
    p = tmp_path / "w.dcm"
    _dicom(p, pixels, window=(150, 100))
    out = read_image(p).array
    assert out[0, 0] == out[0, 1] and out[0, 2] == out[0, 3]  # clipped outside [100, 200]
    assert out[0, 1] < out[0, 2]


def test_nifti_middle_and_indexed_axial_slice(tmp_path):
    import nibabel as nib

    vol = np.zeros((8, 6, 5), np.float32)
    for z in range(5):
        vol[:, :, z] = z
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    middle = read_image(path)
    assert middle.array.shape == (6, 8) and np.all(middle.array == 2) and middle.meta["slice_index"] == 2
    assert np.all(read_image(path, nifti_slice=4).array == 4)
    with pytest.raises(UnreadableImageError, match="out of range"):
        read_image(path, nifti_slice=9)
