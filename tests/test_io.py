"""Image reader: every mode, lying extensions, DICOM rescale/VOI/MONOCHROME1, NIfTI slices, clear errors."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainmri.errors import (
    DegenerateImageError,
    EmptyImageError,
    ImageTooLargeError,
    TruncatedImageError,
    UnreadableImageError,
)
from brainmri.io import read_image, to_uint8


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


def test_dicom_with_a_tiff_header_in_its_preamble_is_read_as_dicom(tmp_path):
    """Dual TIFF/DICOM files (the standard lets the preamble hold a TIFF header) are DICOM: their pixel data,
    rescale and window live in the DICOM part. pydicom ships two (CT_small.dcm, MR_small.dcm)."""
    import pydicom
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = Path(get_testdata_file(name))
        assert path.read_bytes()[:4] == b"II*\x00"  # the preamble starts like a TIFF file
        out = read_image(path)
        assert out.meta["format"] == "dicom"
        assert out.array.shape == pydicom.dcmread(path).pixel_array.shape
    # the same holds for a generated one: any TIFF magic in the preamble, "DICM" at byte 128
    dual = tmp_path / "dual.dcm"
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    dual.write_bytes(b"MM\x00*" + data[4:])
    assert read_image(dual).meta["format"] == "dicom"


@pytest.mark.parametrize(
    "compressed", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"]
)
def test_losslessly_compressed_dicom_decodes_to_the_uncompressed_pixels(compressed):
    """PACS exports are often compressed (JPEG-LS, JPEG 2000, RLE); GDCM decodes what Pillow cannot. pydicom
    ships one MR slice in each syntax: every lossless copy must give exactly the uncompressed image."""
    from pydicom.data import get_testdata_file

    reference = read_image(get_testdata_file("MR_small.dcm")).array
    np.testing.assert_array_equal(read_image(get_testdata_file(compressed)).array, reference)


def test_jpeg_lossless_dicom_is_read():
    from pydicom.data import get_testdata_file

    out = read_image(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))  # JPEG Lossless, first-order prediction
    assert out.meta["format"] == "dicom" and out.array.shape == (100, 100) and np.ptp(out.array) > 0


def test_undecodable_dicom_names_its_transfer_syntax_on_one_line():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEG-lossy.dcm")  # 12-bit JPEG Extended: only the GPL-licensed libjpeg decodes it
    try:
        read_image(path)
    except UnreadableImageError as err:
        message = str(err)
        assert "JPEG-lossy.dcm" in message and "JPEG Extended" in message and "\n" not in message
    else:  # only a user who installed pylibjpeg-libjpeg reads it
        import importlib.util

        assert importlib.util.find_spec("libjpeg") is not None


def test_a_file_no_decoder_identifies_is_named_without_internals(tmp_path):
    """A TIFF magic followed by garbage reaches PIL, whose message names its BytesIO object, not the file."""
    bad = tmp_path / "scan.tif"
    bad.write_bytes(b"II*\x00" + bytes(600))
    with pytest.raises(UnreadableImageError, match=r"scan\.tif") as err:
        read_image(bad)
    assert "BytesIO" not in str(err.value) and "0x" not in str(err.value)


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
    pixels = np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) * 10
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
    pixels = np.tile(np.array([[0, 100, 200, 300]], dtype=np.uint16), (16, 4))
    p = tmp_path / "w.dcm"
    _dicom(p, pixels, window=(150, 100))
    out = read_image(p).array
    assert out[0, 0] == out[0, 1] and out[0, 2] == out[0, 3]  # clipped outside [100, 200]
    assert out[0, 1] < out[0, 2]


def test_nifti_middle_and_indexed_axial_slice(tmp_path):
    import nibabel as nib

    vol = np.zeros((32, 24, 5), np.float32)
    for z in range(5):
        vol[:, :, z] = z
    vol[0, 0, :] = 100  # not blank
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    middle = read_image(path)
    assert middle.array.shape == (24, 32) and np.median(middle.array) == 2 and middle.meta["slice_index"] == 2
    assert np.median(read_image(path, nifti_slice=4).array) == 4
    with pytest.raises(UnreadableImageError, match="out of range"):
        read_image(path, nifti_slice=9)


# ------------------------------------------------------------------------------- degenerate inputs


def _nifti(path, volume: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), path)


def _png(path, array: np.ndarray) -> None:
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_all_nan_nifti_is_refused(tmp_path):
    path = tmp_path / "nan.nii.gz"
    _nifti(path, np.full((32, 32, 3), np.nan))
    with pytest.raises(DegenerateImageError, match=r"nan\.nii\.gz: image has no finite pixel values") as info:
        read_image(path)
    assert info.value.kind == "degenerate"


def test_some_nan_pixels_become_the_finite_minimum_and_are_counted(tmp_path):
    vol = np.tile(np.linspace(5, 50, 32, dtype=np.float32)[:, None, None], (1, 32, 3))
    vol[:4, :4, :] = np.nan
    vol[10, 10, :] = np.inf
    path = tmp_path / "partial.nii.gz"
    _nifti(path, vol)
    out = read_image(path)
    assert np.isfinite(out.array).all() and out.array.min() == 5.0
    assert out.meta["non_finite_pixels"] == 17


@pytest.mark.parametrize("value", [0, 255], ids=["black", "white"])
def test_blank_images_are_refused(tmp_path, value):
    path = tmp_path / f"blank{value}.png"
    _png(path, np.full((64, 64), value))
    with pytest.raises(DegenerateImageError, match=rf"blank{value}\.png: image is blank \(all pixels equal\)"):
        read_image(path)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 1), "image is 1x1 px; at least 16 px per side needed"),
        ((20000, 1), "image is 1x20000 px; at least 16 px per side needed"),
        ((15, 64), "image is 64x15 px; at least 16 px per side needed"),
        ((16, 200), "image is 200x16 px: aspect ratio 12.5:1 is beyond 10:1"),
    ],
)
def test_tiny_and_strip_images_are_refused(tmp_path, shape, message):
    path = tmp_path / "odd.png"
    _png(path, np.random.default_rng(0).integers(0, 255, shape))
    with pytest.raises(DegenerateImageError, match=r"odd\.png: " + message.replace(".", r"\.")):
        read_image(path)


def test_smallest_accepted_image(tmp_path):
    path = tmp_path / "ok.png"
    _png(path, np.random.default_rng(0).integers(0, 255, (16, 160)))  # 16 px, exactly 10:1
    assert read_image(path).array.shape == (16, 160)


def test_4d_nifti_series_is_refused_but_a_single_volume_is_read(tmp_path):
    rng = np.random.default_rng(0)
    series = tmp_path / "series.nii.gz"
    _nifti(series, rng.uniform(0, 100, (32, 32, 4, 3)))
    with pytest.raises(DegenerateImageError, match=r"series\.nii\.gz: 4-D NIfTI with 3 volumes; give one 3-D volume"):
        read_image(series)
    single = tmp_path / "single.nii.gz"
    vol = rng.uniform(0, 100, (32, 32, 4, 1))
    _nifti(single, vol)
    out = read_image(single)
    assert out.array.shape == (32, 32)
    assert np.allclose(out.array, np.flipud(vol[:, :, 2, 0].T))


def test_degenerate_bytes_upload_names_the_upload(tmp_path):
    path = tmp_path / "b.png"
    _png(path, np.zeros((64, 64)))
    with pytest.raises(DegenerateImageError, match=r"^scan\.png: image is blank"):
        read_image(path.read_bytes(), name="scan.png")


def test_to_uint8_min_max_and_fixed_range():
    a = np.array([[2.0, 3.0], [4.0, np.nan]], np.float32)
    assert to_uint8(a).tolist() == [[0, 128], [255, 0]]  # min-max; 127.5 rounds to even; NaN -> low end
    assert to_uint8(np.array([[0.0, 5.0, 10.0]]) * 0.1 + 2.0).tolist() == [[0, 128, 255]]
    assert to_uint8(np.array([[0.0, 1.0, 2.0, 102.0]])).tolist() == [[0, 2, 5, 255]]  # 2.5 -> 2 (half even)
    assert not to_uint8(np.full((3, 3), 7.0)).any()  # no dynamic range
    unit = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0, np.inf, 2.5 / 255]], np.float32)
    assert to_uint8(unit, (0.0, 1.0), rounding="half_up").tolist() == [[0, 0, 128, 255, 255, 255, 3]]
    with pytest.raises(ValueError, match="rounding"):
        to_uint8(unit, rounding="nearest")


def test_which_files_of_a_folder_are_taken_as_images(tmp_path):
    from pydicom.data import get_testdata_file

    from brainmri.io import is_image_file

    dicom = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    files = {"IM0001": dicom, "1.2.840.113619.2.5": dicom, "scan.PNG": b"", "notes.txt": b"hello", ".hidden.dcm": dicom}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    taken = {name for name in files if is_image_file(tmp_path / name)}
    assert taken == {"IM0001", "1.2.840.113619.2.5", "scan.PNG"}  # extensions count case-insensitively
    assert not is_image_file(tmp_path / "scan.PNG", extensions=[".dcm"])  # a config can narrow the extensions
    assert is_image_file(tmp_path / "IM0001", extensions=[".png"])  # content decides where the name cannot
