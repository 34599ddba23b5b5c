"""Read any supported image (JPEG/PNG/BMP/TIFF, DICOM, NIfTI) into a float32 2D array plus metadata.

Why one module: every stage (import, preprocess, train, predict, serve) must decode a file the same
way, or deployed predictions see different pixels than training did. The real format is sniffed from
the file's magic bytes, because public sets contain PNGs named ``.jpg``. Pixel counts are checked from
the header *before* decoding, so a decompression bomb is refused without allocating it.

A file that decodes but holds no usable picture (blank, all NaN, under ``MIN_SIDE`` px on a side, a
strip beyond ``MAX_ASPECT``:1, a 4-D NIfTI series) is refused with a ``DegenerateImageError``.

``meta`` also carries two input-level signals measured on the decoded image (``brainmri.io.signals``):
``colourfulness`` (measured before the grayscale conversion; 0 for a grayscale file) and
``border_brightness``; the out-of-domain input checks of ``brainmri.calibrate.ood`` read them.

Intensities are returned in the file's own scale (0..255 for 8-bit, 0..65535 for 16-bit, Hounsfield
or scanner units for DICOM/NIfTI); scaling to [0, 1] is the preprocessing pipeline's job.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brainmri.errors import (
    DegenerateImageError,
    EmptyImageError,
    ImageReadError,
    ImageTooLargeError,
    TruncatedImageError,
    UnreadableImageError,
)
from brainmri.io.signals import border_brightness, colourfulness

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

MIN_SIDE = 16
"""Images with a side shorter than this (px) are refused: nothing of a brain survives at that size."""
MAX_ASPECT = 10.0
"""Images longer than this many times their width (or wider than tall) are refused: a strip, not a slice."""

EXTENSION_FORMATS: dict[str, str] = {
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".png": "png",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".gif": "gif",
    ".webp": "webp",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
}


@dataclass
class LoadedImage:
    """A decoded 2D slice. ``array`` is float32 (H, W); ``meta`` says where it came from."""

    array: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])


def extension_of(name: str | Path) -> str:
    lower = str(name).lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(lower).suffix


def is_image_file(path: Path, extensions: Sequence[str] | None = None) -> bool:
    """Whether a file in an input folder is taken as an image: an allowed image extension (``extensions``, else
    every one the reader knows), or a name the extensions do not settle (none, or one that is no image format,
    as in DICOM exports named ``IM0001`` or by UID, ``1.2.840...5``) with image magic bytes. Hidden files and
    image extensions left out of ``extensions`` are not taken; ``notes.txt`` is sniffed and not taken."""
    if path.name.startswith("."):
        return False
    ext = extension_of(path.name)
    allowed = EXTENSION_FORMATS if extensions is None else [e.lower() for e in extensions]
    if ext in allowed:
        return True
    if ext in EXTENSION_FORMATS:
        return False
    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(512), path.name) is not None
    except OSError:
        return False


def sniff_format(head: bytes, name: str | Path = "") -> str | None:
    """Real format from the first bytes (at least 348 for NIfTI/DICOM); extension only as a tie-breaker.

    DICOM's "DICM" marker is checked first: the standard lets the 128-byte preamble hold another format's
    header, and dual TIFF/DICOM files (a TIFF header there) exist in the wild (pydicom ships two).
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if head.startswith(b"\x1f\x8b") and extension_of(name) == ".nii.gz":
        return "nifti"
    ext = extension_of(name)
    if ext in (".dcm", ".dicom") and len(head) > 0:
        return "dicom"  # DICOM files without the 128-byte preamble exist
    return None


def read_image(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    nifti_slice: int | Literal["middle"] = "middle",
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
) -> LoadedImage:
    """Decode ``source`` (a path, or raw bytes with a ``name`` for messages) to a float32 2D array.

    Raises a subclass of :class:`ImageReadError` naming the file and the problem:
    ``EmptyImageError`` (0 bytes or 0 pixels), ``ImageTooLargeError`` (file or pixel cap),
    ``TruncatedImageError`` (decoder ran out of data), ``DegenerateImageError`` (decodes but holds no
    usable picture, see :func:`check_usable`), ``UnreadableImageError`` (anything else).
    """
    data, label = _read_source(source, name, max_bytes)
    fmt = sniff_format(data[:512], label)
    if fmt is None:
        raise UnreadableImageError(label, "not a recognised image format (JPEG, PNG, BMP, TIFF, DICOM, NIfTI)")
    loaded = _decode(data, fmt, label, max_pixels, max_bytes, nifti_slice)
    check_usable(loaded, label, min_side, max_aspect)
    expected = EXTENSION_FORMATS.get(extension_of(label))
    loaded.meta.setdefault("colourfulness", 0.0)  # no colour channels: a grayscale file (signals.py)
    loaded.meta.update(
        {
            "format": fmt,
            "extension_mismatch": expected is not None and expected != fmt,
            "height": loaded.height,
            "width": loaded.width,
            "border_brightness": border_brightness(loaded.array),
        }
    )
    return loaded


def _read_source(source: str | Path | bytes, name: str | None, max_bytes: int) -> tuple[bytes, str]:
    """(file bytes, label for messages); missing, empty and oversized files are refused before reading."""
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
        label = name or "<upload>"
    else:
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise UnreadableImageError(label, "file not found")
        if not path.is_file():
            raise UnreadableImageError(label, "not a regular file")
        size = path.stat().st_size
        if size == 0:
            raise EmptyImageError(label, "file is empty (0 bytes)")
        if size > max_bytes:
            raise ImageTooLargeError(label, f"file is {size:,} bytes, over the {max_bytes:,}-byte limit")
        data = path.read_bytes()
    if len(data) == 0:
        raise EmptyImageError(label, "file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLargeError(label, f"file is {len(data):,} bytes, over the {max_bytes:,}-byte limit")
    return data, label


def _decode(
    data: bytes, fmt: str, label: str, max_pixels: int, max_bytes: int, nifti_slice: int | Literal["middle"]
) -> LoadedImage:
    """Run the decoder of ``fmt``; any decoder exception becomes one :class:`ImageReadError` line."""
    try:
        if fmt == "dicom":
            return _read_dicom(data, label, max_pixels)
        if fmt == "nifti":
            return _read_nifti(data, label, max_pixels, max_bytes, nifti_slice)
        return _read_raster(data, label, max_pixels)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageTooLargeError(label, "not enough memory to decode") from None
    except Exception as exc:  # decoder libraries raise many types; report one clear line
        raise UnreadableImageError(label, f"cannot decode {fmt}: {type(exc).__name__}: {exc}") from None


def check_usable(loaded: LoadedImage, label: str, min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT) -> None:
    """Refuse a decoded image that holds no usable picture; repair a few non-finite pixels in place.

    Why: a blank, all-NaN, needle-thin or few-pixel image still gets a confident prediction once it is
    resized to the model's input; refusing it here gives a clear error in every stage instead.
    Some NaN/inf pixels (NIfTI masks, failed reconstructions) are set to the finite minimum and counted
    in ``meta["non_finite_pixels"]``.
    """
    a = loaded.array
    if a.size == 0:
        raise EmptyImageError(label, "image has no pixels")
    finite = np.isfinite(a)
    if not finite.all():
        if not finite.any():
            raise DegenerateImageError(label, "image has no finite pixel values (all NaN or inf)")
        loaded.array = np.where(finite, a, a[finite].min()).astype(np.float32)
        loaded.meta["non_finite_pixels"] = int(a.size - finite.sum())
    h, w = loaded.height, loaded.width
    if min(h, w) < min_side:
        raise DegenerateImageError(label, f"image is {w}x{h} px; at least {min_side} px per side needed")
    if max(h, w) > max_aspect * min(h, w):
        raise DegenerateImageError(
            label, f"image is {w}x{h} px: aspect ratio {max(h, w) / min(h, w):.1f}:1 is beyond {max_aspect:g}:1"
        )
    if float(loaded.array.max()) <= float(loaded.array.min()):
        raise DegenerateImageError(label, "image is blank (all pixels equal)")


def _check_pixels(label: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise EmptyImageError(label, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            label, f"{width}x{height} = {width * height:,} pixels, over the {max_pixels:,}-pixel limit"
        )


def _read_raster(data: bytes, label: str, max_pixels: int) -> LoadedImage:
    from PIL import Image, UnidentifiedImageError

    # PIL's own bomb guard is replaced by ours (checked from the header, before any decoding), so the
    # error always names the file and its size the same way.
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        try:
            img = Image.open(io.BytesIO(data))
        except Exception as exc:  # PIL's message names its BytesIO object, not the file: say what failed instead
            reason = "not an image PIL can identify" if isinstance(exc, UnidentifiedImageError) else exc
            raise UnreadableImageError(label, f"cannot open image: {reason}") from None
        width, height = img.size
        _check_pixels(label, width, height, max_pixels)
        mode = img.mode
        try:
            img.load()
        except OSError as exc:
            msg = str(exc)
            if any(s in msg.lower() for s in ("truncated", "broken data stream", "premature")):
                raise TruncatedImageError(label, f"image data is truncated ({msg})") from None
            raise UnreadableImageError(label, f"cannot decode image: {msg}") from None
        except SyntaxError as exc:
            raise UnreadableImageError(label, f"corrupt image: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous

    colour = None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float32)
    elif mode in ("L", "1"):
        array = np.asarray(img.convert("L"), dtype=np.float32)
    elif mode == "LA":
        array = np.asarray(img.getchannel("L"), dtype=np.float32)
    else:  # RGB, RGBA, P, CMYK, YCbCr ... -> luminance (ITU-R 601-2), alpha dropped; colour measured first
        rgb = img.convert("RGB")
        colour = colourfulness(np.asarray(rgb))
        array = np.asarray(rgb.convert("L"), dtype=np.float32)
    if array.ndim != 2:
        raise UnreadableImageError(label, f"expected a 2D image, got shape {array.shape}")
    meta = {"mode": mode, "frames": getattr(img, "n_frames", 1)}
    if colour is not None:
        meta["colourfulness"] = colour
    return LoadedImage(np.ascontiguousarray(array), meta)


def _read_dicom(data: bytes, label: str, max_pixels: int) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except InvalidDicomError as exc:
        raise UnreadableImageError(label, f"not a valid DICOM file: {exc}") from None
    if "PixelData" not in ds:
        raise UnreadableImageError(label, "DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_pixels(label, cols, rows, max_pixels)
    if rows * cols * frames > max_pixels * 4:
        raise ImageTooLargeError(label, f"{frames} frames of {cols}x{rows} exceed the pixel limit")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        msg = str(exc)
        if "length" in msg.lower() or "truncat" in msg.lower() or "shorter" in msg.lower():
            raise TruncatedImageError(label, f"DICOM pixel data is truncated ({msg})") from None
        raise UnreadableImageError(label, _undecodable_dicom(ds, msg)) from None
    if frames > 1 and pixels.ndim >= 3:
        pixels = pixels[frames // 2]
    colour = None
    if pixels.ndim == 3:  # colour DICOM
        peak = float(pixels.max())
        colour = colourfulness(pixels.astype(np.float32) * np.float32(255.0 / peak if peak > 255 else 1.0))
        pixels = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        array = pixels.astype(np.float32)
    else:
        array = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            array = np.asarray(apply_voi_lut(array, ds, prefer_lut=True), dtype=np.float64)
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            array = array.max() + array.min() - array  # MONOCHROME1: low values are white
        array = array.astype(np.float32)
    meta = {
        "mode": str(ds.get("PhotometricInterpretation", "")),
        "frames": frames,
        "modality": str(ds.get("Modality", "")),
        "rescale_slope": float(ds.get("RescaleSlope", 1) or 1),
        "rescale_intercept": float(ds.get("RescaleIntercept", 0) or 0),
    }
    if colour is not None:
        meta["colourfulness"] = colour
    return LoadedImage(np.ascontiguousarray(array), meta)


def _undecodable_dicom(ds: Any, msg: str) -> str:
    """One line naming the transfer syntax and why each installed decoder refused it (pydicom lists them one
    per line). JPEG Extended that Pillow cannot read (12-bit) needs pylibjpeg-libjpeg, which is GPL-licensed
    and so not a dependency: the message names it."""
    from pydicom.uid import JPEGExtended12Bit

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", None) or "unknown transfer syntax"
    reasons = "; ".join(line.strip() for line in msg.splitlines()[1:] if line.strip()) or msg
    hint = " (pip install pylibjpeg pylibjpeg-libjpeg adds a decoder; GPL-3.0)" if syntax == JPEGExtended12Bit else ""
    return f"cannot decode DICOM pixel data ({name}): {reasons}{hint}"


def _read_nifti(
    data: bytes, label: str, max_pixels: int, max_bytes: int, nifti_slice: int | Literal["middle"]
) -> LoadedImage:
    import nibabel as nib

    if data.startswith(b"\x1f\x8b"):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                raw = gz.read(max_bytes * 8 + 1)
        except (OSError, EOFError) as exc:
            raise TruncatedImageError(label, f"gzip stream is truncated or corrupt ({exc})") from None
        if len(raw) > max_bytes * 8:
            raise ImageTooLargeError(label, "NIfTI volume decompresses beyond the size limit")
        data = raw
    try:
        img = nib.Nifti1Image.from_bytes(data)
    except Exception:
        try:
            img = nib.Nifti2Image.from_bytes(data)
        except Exception as exc:
            raise UnreadableImageError(label, f"not a valid NIfTI file: {exc}") from None
    shape = img.shape
    if len(shape) < 2 or any(s == 0 for s in shape):
        raise EmptyImageError(label, f"NIfTI has no pixels (shape {shape})")
    _check_pixels(label, int(shape[0]), int(shape[1]), max_pixels)
    volumes = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    if volumes > 1:  # a time series / multi-echo / DTI: which volume is meant is the caller's choice
        raise DegenerateImageError(label, f"{len(shape)}-D NIfTI with {volumes} volumes; give one 3-D volume")
    img = nib.as_closest_canonical(img) if len(shape) >= 3 else img
    volume = np.asanyarray(img.dataobj)
    volume = volume.reshape(volume.shape[:3]) if volume.ndim > 3 else volume  # trailing dimensions of size 1
    if volume.ndim == 3:
        depth = volume.shape[2]
        index = depth // 2 if nifti_slice == "middle" else int(nifti_slice)
        if not -depth <= index < depth:
            raise UnreadableImageError(label, f"slice {index} out of range: volume has {depth} axial slices")
        plane = volume[:, :, index]
    else:
        index = 0
        depth = 1
        plane = volume
    # RAS canonical: axis 0 = right->left... display with anterior at the top, patient left on the right
    array = np.flipud(np.asarray(plane, dtype=np.float32).T)
    meta = {"mode": str(img.get_data_dtype()), "frames": depth, "slice_index": int(index)}
    return LoadedImage(np.ascontiguousarray(array), meta)
