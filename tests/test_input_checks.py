"""Out-of-domain input checks on generated images: colourfulness and border brightness, reader to prediction."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import test_bundle_support as support
from brainmri.calibrate.ood import InputChecks
from brainmri.config import PredictConfig
from brainmri.infer import Predictor
from brainmri.infer.predictor import GateScore
from brainmri.io import read_image
from brainmri.io.signals import border_brightness, colourfulness
from test_bundle_support import phantom_images

bundle_dir = support.bundle_dir  # session fixtures shared with test_bundle.py
tiny_run_dir = support.tiny_run_dir

DEFAULTS = InputChecks(PredictConfig().ood_max_colourfulness, PredictConfig().ood_max_border_brightness)


def slice_like(size: int = 128, seed: int = 0) -> np.ndarray:
    """A gray 'slice': a textured ellipse on a black background, uint8 (size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    head = (xx / 0.4) ** 2 + (yy / 0.45) ** 2 < 1
    return (head * np.clip(rng.normal(120, 30, (size, size)), 0, 255)).astype(np.uint8)


def colour_photo(size: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth colourful RGB picture (three independent colour gradients + noise), uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([xx * 220, yy * 200, (1 - xx) * 180 + 40], axis=-1) + rng.normal(0, 10, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def test_colourfulness_of_gray_and_colour_arrays() -> None:
    assert colourfulness(gray_rgb(slice_like())) == 0.0
    assert colourfulness(colour_photo()) > 40
    rgba = np.concatenate([gray_rgb(slice_like()), np.full((128, 128, 1), 7, np.uint8)], axis=-1)
    assert colourfulness(rgba) == 0.0  # alpha ignored
    with pytest.raises(ValueError, match="RGB"):
        colourfulness(slice_like())


def test_border_brightness_dark_background_vs_filled_frame() -> None:
    assert border_brightness(slice_like()) < 0.05
    noise = np.random.default_rng(1).uniform(0, 255, (128, 128)).astype(np.float32)
    assert border_brightness(noise) == pytest.approx(0.5, abs=0.05)
    assert border_brightness(np.zeros((32, 32), np.float32)) == 0.0  # blank: nothing to say
    with_nan = slice_like().astype(np.float32)
    with_nan[0, 0] = np.nan
    assert np.isfinite(border_brightness(with_nan))


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [("PNG", {}), ("JPEG", {"quality": 75}), ("JPEG", {"quality": 30, "subsampling": 2})],
    ids=["png", "jpeg-q75", "jpeg-q30-420"],
)
def test_gray_rgb_file_passes(fmt: str, kw: dict) -> None:
    """A grayscale slice stored as RGB (as many Kaggle JPEGs are) passes, also through lossy JPEG chroma."""
    loaded = read_image(encode(gray_rgb(slice_like()), fmt, **kw), name=f"gray.{fmt.lower()}")
    assert loaded.meta["mode"] == "RGB"
    assert loaded.meta["colourfulness"] < 1.0
    assert DEFAULTS.reasons(loaded.meta) == []


def test_grayscale_file_has_zero_colourfulness() -> None:
    loaded = read_image(encode(slice_like(), "PNG"), name="gray.png")
    assert loaded.meta["mode"] == "L" and loaded.meta["colourfulness"] == 0.0
    assert loaded.meta["border_brightness"] < 0.05


def test_colour_image_is_flagged_with_its_reason() -> None:
    loaded = read_image(encode(colour_photo(), "JPEG", quality=90), name="photo.jpg")
    reasons = DEFAULTS.reasons(loaded.meta)
    assert len(reasons) >= 1 and reasons[0].startswith("colour image (colourfulness ")
    assert InputChecks(None, None).reasons(loaded.meta) == []  # both checks switched off
    assert DEFAULTS.reasons({}) == [] and DEFAULTS.reasons(None) == []  # nothing measured: nothing flagged


def test_predictor_combines_input_checks_with_the_feature_gate(bundle_dir: Path, tmp_path: Path) -> None:
    gray_path = tmp_path / "gray_rgb.jpg"
    gray_path.write_bytes(encode(gray_rgb(slice_like()), "JPEG", quality=75))
    photo_path = tmp_path / "photo.jpg"
    photo_path.write_bytes(encode(colour_photo(), "JPEG", quality=90))
    noise = np.random.default_rng(2).uniform(0, 255, (96, 96)).astype(np.float32)
    phantom = phantom_images(1, seed=5)[0][0]
    with Predictor.from_bundle(bundle_dir) as predictor:
        assert predictor.ood is None  # the tiny bundle has no feature score: every flag below is an input check
        gray, photo, tex, ok = predictor.predict([gray_path, photo_path, noise, phantom])
        assert predictor.settings()["input_checks"] == DEFAULTS.to_dict()
    assert gray.in_domain is None and gray.ood_reasons == []  # not flagged; no feature score to say "in domain"
    assert gray.meta["colourfulness"] < 1.0
    assert photo.in_domain is False and photo.review
    assert photo.ood_reasons[0].startswith("colour image") and photo.ood_reasons[0] in photo.review_reasons
    assert tex.in_domain is False and any(r.startswith("no dark background") for r in tex.ood_reasons)
    assert "colourfulness" not in tex.meta  # an array has no colour channels: not measured
    assert ok.in_domain is None and ok.ood_reasons == []
    assert photo.to_dict()["ood_reasons"] == photo.ood_reasons
    off = PredictConfig(ood_max_colourfulness=None, ood_max_border_brightness=None)
    with Predictor.from_bundle(bundle_dir, config=off) as predictor:
        photo_off, tex_off = predictor.predict([photo_path, noise])
    assert photo_off.ood_reasons == tex_off.ood_reasons == [] and photo_off.in_domain is None


def test_in_domain_is_feature_gate_and_input_checks(bundle_dir: Path) -> None:
    """in_domain = feature score passes and every input check passes; each failure says why."""
    from brainmri.calibrate.ood import EnergyOOD

    with Predictor.from_bundle(bundle_dir) as predictor:
        predictor.ood = EnergyOOD().fit().fit_threshold([0.0, 1.0], quantile=1.0)  # threshold 1.0
        probs = np.full((4, len(predictor.classes)), 1.0 / len(predictor.classes))
        domain = [GateScore("features", np.array([True, True, False, False]), np.array([0.5, 0.5, 3.0, 3.0]), 1.0)]
        colour = ["colour image (colourfulness 40.0 > 20; MRI is grayscale)"]
        preds = predictor.decide(probs, list("abcd"), domain=domain, input_reasons=[[], colour, [], colour])
    assert [p.in_domain for p in preds] == [True, False, False, False]
    assert [len(p.ood_reasons) for p in preds] == [0, 1, 1, 2]
    assert preds[2].ood_reasons[0].startswith("unlike the training images (out-of-domain score 3.0 > 1.0")
    assert preds[3].ood_reasons[0] == colour[0] and all(r in preds[3].review_reasons for r in preds[3].ood_reasons)
    assert [p.ood_score for p in preds] == [0.5, 0.5, 3.0, 3.0]
