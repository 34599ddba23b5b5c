"""The default chain on real slices from ../shared/data (skipped with a reason when the data is absent)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from brainmri.config import PreprocessConfig
from brainmri.io.reader import read_image
from brainmri.preprocess import Preprocessor

pytestmark = pytest.mark.integration

# odd sizes and modes of brain-tumor-mri/Training (width x height): 150x198 RGB, 300x168, 1920x1080 PNG
# named .jpg, 1375x1446, RGBA PNGs, a palette PNG
ODD_FILES = (
    "notumor/Tr-no_0419.jpg",
    "notumor/Tr-no_1500.jpg",
    "notumor/Tr-no_1005.jpg",
    "notumor/Tr-no_0138.jpg",
    "notumor/Tr-no_1011.jpg",
    "notumor/Tr-no_1019.jpg",
    "notumor/Tr-no_1012.jpg",
    "meningioma/Tr-me_0585.jpg",
)
CLASS_DIRS = ("glioma", "meningioma", "notumor", "pituitary")


def _sample(root: Path, per_class: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    out = []
    for c in CLASS_DIRS:
        files = sorted((root / "Training" / c).iterdir())
        out += rng.sample(files, per_class)
    return out


@pytest.fixture(scope="module")
def real_files(brain_tumor_mri_dir: Path) -> list[Path]:
    files = _sample(brain_tumor_mri_dir, 5, seed=1) + [brain_tumor_mri_dir / "Training" / f for f in ODD_FILES]
    return [f for f in files if f.is_file()]


@pytest.fixture(scope="module")
def default_pre(brain_tumor_mri_dir: Path) -> Preprocessor:
    fit_files = _sample(brain_tumor_mri_dir, 3, seed=99)
    return Preprocessor.from_config(PreprocessConfig()).fit(read_image(f).array for f in fit_files)


def test_default_chain_on_real_images(real_files, default_pre, navoneel_dir):
    files = real_files + sorted(p for p in navoneel_dir.rglob("*") if p.is_file())[::40]
    assert len(files) >= 30
    fractions, fallbacks = [], 0
    for f in files:
        loaded = read_image(f)
        out, s, _ = default_pre.run(loaded.array)
        assert out.shape == (224, 224) and out.dtype == np.uint8, f
        assert out.std() > 10, f"{f}: output is nearly blank"
        skull = s.info["skull"]
        assert s.brain is not None and s.brain.any(), f"{f}: empty brain mask"
        fractions.append(skull["fraction"])
        fallbacks += skull["fallback"]
        # the crop keeps the whole foreground blob
        fg = s.info["crop"]
        assert not fg["fallback"], f"{f}: no head found"
    fractions = np.array(fractions)
    assert np.median(fractions) > 0.5  # masks are brain-sized, not fragments
    assert fallbacks <= 0.2 * len(files)


def test_real_image_bit_for_bit_after_save_load(real_files, default_pre, tmp_path):
    loaded = Preprocessor.load(default_pre.save(tmp_path / "p.json"))
    for f in real_files[:6]:
        a = read_image(f).array
        assert loaded(a).tobytes() == default_pre(a).tobytes() == default_pre(a.copy()).tobytes()


def test_true_n4_chain_on_real_image(real_files):
    cfg = PreprocessConfig(preset="crop+n4")
    cfg.bias.method = "n4"
    pre = Preprocessor.from_config(cfg)
    out, s, _ = pre.run(read_image(real_files[0]).array)
    assert out.shape == (224, 224) and s.info["bias"]["method"] == "n4"
    assert 0.3 < s.info["bias"]["field_min"] <= 1.0 <= s.info["bias"]["field_max"] < 3.0
