"""Generators of bad (and oddly shaped but valid) uploads for the service's fuzz tests and bench/fuzz.py.

Every case is ``Case(kind, name, data, content_type, valid)``: ``valid`` is True for unusual but legal
images (16-bit, float TIFF, CMYK, palette, a PNG named ``.dcm``...), which must be predicted (200); every
other case must get a 4xx whose message names the file and the problem, never a 5xx.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np

PROBLEM_WORDS = (
    "empty", "not a recognised", "truncated", "pixel", "limit", "decode", "dicom", "nifti", "missing",
    "cannot", "corrupt", "invalid", "not a valid", "no pixels", "too large", "unusable", "blank", "side",
    "strip", "slice", "shape", "format", "gzip", "aspect", "identify", "image", "file", "bytes", "nan",
)  # fmt: skip


@dataclass
class Case:
    kind: str
    name: str
    data: bytes
    content_type: str = "application/octet-stream"
    valid: bool = False


def names_problem(message: str, filename: str | None) -> bool:
    """A useful error: says which file (when there is one) and what is wrong with it, in a sentence."""
    text = message.lower()
    if not message or "internal error" in text or text in ("bad request", "error"):
        return False
    if filename and filename.lower() not in text:
        return False
    return any(w in text for w in PROBLEM_WORDS) and len(message) >= len(filename or "") + 12


# ------------------------------------------------------------------------------------------ valid images


def _image(rng: np.random.Generator, h: int = 48, w: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) / 2.5) ** 2
    return (disc * 150 + rng.integers(0, 60, (h, w))).astype(np.uint8)


def pil_bytes(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png16(rng: np.random.Generator) -> bytes:
    from PIL import Image

    a = (_image(rng).astype(np.uint16) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")  # uint16 -> mode I;16
    return buf.getvalue()


def float_tiff(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_image(rng).astype(np.float32) / 7.0).save(buf, format="TIFF")  # mode F
    return buf.getvalue()


def dicom_bytes(rng: np.random.Generator, pixels: np.ndarray | None = None, rows: int | None = None) -> bytes:
    """A minimal valid MR DICOM (explicit VR little endian) holding ``pixels`` (uint16)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    a = (_image(rng).astype(np.uint16) * 8) if pixels is None else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = (rows if rows is not None else a.shape[0]), a.shape[1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = a.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def nifti_bytes(volume: np.ndarray, compress: bool = False) -> bytes:
    import nibabel as nib

    data = nib.Nifti1Image(volume, np.eye(4)).to_bytes()
    return gzip.compress(data, 1) if compress else data


def valid_cases(rng: np.random.Generator) -> list[Case]:
    """Legal images in unusual modes and formats: all must be predicted."""
    a = _image(rng)
    rgb = np.stack([a, a // 2, 255 - a], axis=-1)
    return [
        Case("png_gray", "gray.png", pil_bytes(a, "PNG"), "image/png", True),
        Case("png_16bit", "sixteen.png", png16(rng), "image/png", True),
        Case("png_rgba", "rgba.png", pil_bytes(rgb, "PNG", "RGBA"), "image/png", True),
        Case("png_palette", "palette.png", pil_bytes(rgb, "PNG", "P"), "image/png", True),
        Case("png_1bit", "mono.png", pil_bytes(a, "PNG", "1"), "image/png", True),
        Case("png_la", "la.png", pil_bytes(a, "PNG", "LA"), "image/png", True),
        Case("jpeg_cmyk", "cmyk.jpg", pil_bytes(rgb, "JPEG", "CMYK"), "image/jpeg", True),
        Case("jpeg_rgb", "rgb.jpg", pil_bytes(rgb, "JPEG"), "image/jpeg", True),
        Case("tiff_float", "float.tif", float_tiff(rng), "image/tiff", True),
        Case("bmp", "x.bmp", pil_bytes(a, "BMP"), "image/bmp", True),
        Case("gif", "x.gif", pil_bytes(a, "GIF"), "image/gif", True),
        Case("webp", "x.webp", pil_bytes(rgb, "WEBP"), "image/webp", True),
        Case("dicom", "slice.dcm", dicom_bytes(rng), "application/dicom", True),
        Case("nifti", "vol.nii", nifti_bytes(np.stack([a.astype(np.float32)] * 3, -1)), valid=True),
        Case("nifti_gz", "vol.nii.gz", nifti_bytes(a.astype(np.int16)[..., None], True), "application/gzip", True),
        Case("png_named_dcm", "really_png.dcm", pil_bytes(a, "PNG"), "application/dicom", True),
        Case("png_as_text", "declared_text.png", pil_bytes(a, "PNG"), "text/plain", True),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------ bad inputs


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_bomb(width: int, height: int, bits: int = 8) -> bytes:
    """A PNG whose IHDR claims ``width x height``; the pixels are never there (nor allocated by the reader)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + _chunk(b"IEND", b"")
    )


def gif_header_bomb(width: int, height: int) -> bytes:
    return (
        b"GIF89a"
        + struct.pack("<HH", width, height)
        + b"\x00\x00\x00"
        + b"\x2c"
        + b"\0" * 4
        + struct.pack("<HH", width, height)
        + b"\x00\x02\x02\x44\x01\x00\x3b"
    )


def bmp_header_bomb(width: int, height: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, 0, 0, 0, 0, 0)
    return header + info + b"\0" * 64


def nifti_gzip_bomb() -> bytes:
    """A gzip NIfTI whose header claims a huge volume of zeros (compresses ~1000:1)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((8000, 8000, 4))
    header.set_data_dtype(np.uint8)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * (8 * 1024 * 1024)
    return gzip.compress(raw, 9)


def nifti_without_slices() -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((64, 64, 0))
    header.set_data_dtype(np.int16)
    return header.binaryblock + b"\0" * 4


def dicom_without_pixels(rng: np.random.Generator) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rng)))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


MAGICS = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff\xe0",
    "gif": b"GIF89a",
    "bmp": b"BM",
    "tiff": b"II*\x00",
    "webp": b"RIFF\x00\x00\x00\x00WEBP",
    "dicom": b"\0" * 128 + b"DICM",
    "gzip": b"\x1f\x8b\x08\x00",
}


def fixed_bad_cases(rng: np.random.Generator) -> list[Case]:
    """The named malformed uploads of the issue, once each."""
    a = _image(rng)
    png, jpeg = pil_bytes(a, "PNG"), pil_bytes(a, "JPEG")
    return [
        Case("empty", "empty.png", b"", "image/png"),
        Case("text", "notes.png", b"this is not an image\n", "image/png"),
        Case("html", "page.jpg", b"<html><body>hello</body></html>", "text/html"),
        Case("json", "data.json", b'{"file": "x"}', "application/json"),
        Case("truncated_png", "cut.png", png[: len(png) // 2], "image/png"),
        Case("truncated_jpeg", "cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"),
        Case("png_bomb", "bomb.png", png_header_bomb(50_000, 50_000), "image/png"),
        Case("png_bomb_16bit", "bomb16.png", png_header_bomb(30_000, 30_000, 16), "image/png"),
        Case("gif_bomb", "bomb.gif", gif_header_bomb(65_535, 65_535), "image/gif"),
        Case("bmp_bomb", "bomb.bmp", bmp_header_bomb(100_000, 100_000), "image/bmp"),
        Case("nifti_gzip_bomb", "bomb.nii.gz", nifti_gzip_bomb(), "application/gzip"),
        Case("nifti_no_slices", "noslices.nii", nifti_without_slices()),
        Case("dicom_garbage", "garbage.dcm", MAGICS["dicom"] + rng.bytes(300), "application/dicom"),
        Case("dicom_no_pixels", "nopixels.dcm", dicom_without_pixels(rng), "application/dicom"),
        Case("dicom_short_pixels", "short.dcm", dicom_bytes(rng, rows=4000), "application/dicom"),
        Case("zero_size_png", "zero.png", png_header_bomb(0, 0), "image/png"),
        Case("one_pixel", "dot.png", pil_bytes(np.zeros((1, 1), np.uint8), "PNG"), "image/png"),
    ]


def random_bad_case(rng: np.random.Generator, i: int, valid: list[Case]) -> Case:
    """One generated bad input: random bytes, magic + garbage, a truncated or bit-flipped valid file."""
    choice = int(rng.integers(0, 6))
    base = valid[int(rng.integers(0, len(valid)))]
    if choice == 0:
        return Case("random_bytes", f"r{i}.bin", rng.bytes(int(rng.integers(1, 2048))))
    if choice == 1:
        fmt = list(MAGICS)[int(rng.integers(0, len(MAGICS)))]
        ext = {"dicom": ".dcm", "gzip": ".nii.gz"}.get(fmt, "." + fmt)
        return Case(f"magic_{fmt}", f"m{i}{ext}", MAGICS[fmt] + rng.bytes(int(rng.integers(0, 1024))))
    if choice == 2:
        cut = int(rng.integers(1, max(2, len(base.data) - 1)))
        return Case(f"truncated_{base.kind}", f"t{i}_{base.name}", base.data[:cut])
    if choice == 3:
        data = bytearray(base.data)
        for _ in range(int(rng.integers(1, 16))):
            pos = int(rng.integers(0, len(data)))
            data[pos] ^= 1 << int(rng.integers(0, 8))
        return Case(f"bitflip_{base.kind}", f"f{i}_{base.name}", bytes(data))
    if choice == 4:
        w, h = int(rng.integers(0, 200_000)), int(rng.integers(0, 200_000))
        return Case("header_dims", f"d{i}.png", png_header_bomb(w, h))
    head = base.data[: int(rng.integers(0, min(600, len(base.data))))]
    return Case(f"header_only_{base.kind}", f"h{i}_{base.name}", head + rng.bytes(int(rng.integers(0, 64))))
