"""Shared pytest fixtures. Each stage adds its own fixtures here; keep the others' fixtures intact."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("BRAINMRI_NO_PROGRESS", "1")


# ----------------------------------------------------------------------------------- data stage fixtures


def shared_data_path() -> Path:
    """Real data folder: $BRAINMRI_SHARED_DATA, else <repo>/../shared/data (may not exist)."""
    env = os.environ.get("BRAINMRI_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data folder, or skip with the reason when it is absent."""
    path = shared_data_path()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set BRAINMRI_SHARED_DATA or place it at ../shared/data)")
    return path


@pytest.fixture(scope="session")
def brain_tumor_mri_dir(shared_data_dir: Path) -> Path:
    """``shared/data/brain-tumor-mri`` (Kaggle layout, Training/ only), or skip."""
    path = shared_data_dir / "brain-tumor-mri"
    if not (path / "Training").is_dir():
        pytest.skip(f"{path}/Training not found (real data set brain-tumor-mri is absent)")
    return path


@pytest.fixture(scope="session")
def navoneel_dir(shared_data_dir: Path) -> Path:
    """``shared/data/navoneel`` (binary yes/no set nested in brain_tumor_dataset/), or skip."""
    path = shared_data_dir / "navoneel"
    if not path.is_dir():
        pytest.skip(f"{path} not found (real data set navoneel is absent)")
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bad_images(folder: Path) -> dict[str, Path]:
    """Write the four kinds of broken image file into ``folder``; returns kind -> path.

    - ``truncated``: a valid JPEG cut in the middle of its entropy-coded data;
    - ``unreadable``: a text file named ``.jpg``;
    - ``empty``: a 0-byte ``.jpg``;
    - ``too_large``: a PNG whose IHDR says 20000x20000 (written by hand: the pixels are never allocated).
    """
    import io

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    paths = {
        "truncated": folder / "bad_truncated.jpg",
        "unreadable": folder / "bad_text.jpg",
        "empty": folder / "bad_empty.jpg",
        "too_large": folder / "bad_bomb.png",
    }
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["unreadable"].write_text("this is not an image\n", encoding="utf-8")
    paths["empty"].write_bytes(b"")
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    paths["too_large"].write_bytes(png)
    return paths


@pytest.fixture
def bad_images():
    """Factory: ``bad_images(folder) -> {kind: path}`` writing the four broken files (see write_bad_images)."""
    return write_bad_images
