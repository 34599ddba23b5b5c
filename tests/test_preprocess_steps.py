"""Preprocessing steps on phantoms with known ground truth (bias field, brain mask, intensities)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from brainmri.config import PreprocessConfig
from brainmri.data.phantoms import make_phantom
from brainmri.preprocess import (
    BrainCrop,
    Clahe,
    FastBiasCorrection,
    N4BiasCorrection,
    NotFittedError,
    NyulStandardizer,
    ResizePad,
    SkullStrip,
    Slice,
    ToUnitRange,
)
from brainmri.preprocess.base import fill_holes, foreground_mask

LABELS = ("glioma", "meningioma", "no_tumor", "pituitary")


# ------------------------------------------------------------------------------------------ bias field


def _wm_region(clean) -> np.ndarray:
    """White matter (intensity 0.6 in the phantom) minus lesion (dilated) and ventricles, eroded off edges."""
    wm = (np.abs(clean.image - 0.6) < 0.12) & clean.brain_mask & ~ndi.binary_dilation(clean.lesion_mask, iterations=3)
    return ndi.binary_erosion(wm, iterations=2)


def _cov(a: np.ndarray, region: np.ndarray) -> float:
    return float(a[region].std() / a[region].mean())


def _bias_cases(size: int = 256, min_cov: float = 0.05):
    """Phantoms (bias_strength=0.4) whose bias varies by >= 5% (CoV) inside white matter.

    Where the random field happens to be nearly flat over white matter (CoV ~2%) the bias is below the
    phantom's own texture and noise and "halving" it is not measurable; those seeds are skipped by this
    rule, which looks only at the true field, never at a method's result.
    """
    cases = []
    for seed in range(16):
        label = LABELS[seed % 4]
        biased = make_phantom(label, size=size, seed=seed, bias_strength=0.4)
        clean = make_phantom(label, size=size, seed=seed, bias_strength=0.0)  # same anatomy, texture and noise
        wm = _wm_region(clean)
        if _cov(biased.image / np.maximum(clean.image, 1e-3), wm) >= min_cov:
            cases.append((biased, clean, wm))
    assert len(cases) >= 5
    return cases


@pytest.fixture(scope="module")
def bias_cases():
    return _bias_cases()


@pytest.mark.parametrize("step", [N4BiasCorrection(), FastBiasCorrection()], ids=["n4", "n4_fast"])
def test_bias_correction_halves_white_matter_cov(step, bias_cases):
    """CoV inside the homogeneous region (white matter) caused by the bias: at least halved on average.

    The bias part of the CoV is measured on ``corrected / bias-free phantom`` (same seed: identical
    anatomy, texture and noise), i.e. the CoV white matter would have if it were perfectly uniform.
    The raw CoV (texture + noise included) must drop on every phantom.
    """
    before, after = [], []
    for biased, clean, wm in bias_cases:
        corrected = step(Slice(biased.image.copy())).image
        b = _cov(biased.image / np.maximum(clean.image, 1e-3), wm)
        a = _cov(corrected / np.maximum(clean.image, 1e-3), wm)
        before.append(b)
        after.append(a)
        assert a < b, f"{biased.label}: bias CoV in WM rose from {b:.3f} to {a:.3f}"
        assert _cov(corrected, wm) < _cov(biased.image, wm)
    ratio = float(np.mean(after) / np.mean(before))
    assert ratio <= 0.5, f"{type(step).__name__} removed only {1 - ratio:.0%} of the white-matter CoV"
    if isinstance(step, N4BiasCorrection):  # true N4: on every phantom
        assert max(a / b for a, b in zip(after, before, strict=True)) <= 0.5


def test_bias_field_is_recovered_at_full_resolution():
    ph = make_phantom("no_tumor", size=(200, 260), seed=6, bias_strength=0.4)
    s = N4BiasCorrection()(Slice(ph.image.copy(), trace=True))
    field = s.info["bias"]["bias_field"]
    assert field.shape == ph.image.shape == s.image.shape
    inside = ph.brain_mask
    corr = np.corrcoef(np.log(field[inside]), np.log(ph.bias_field[inside]))[0, 1]
    assert corr > 0.9
    assert s.image.min() >= 0 and s.image.max() <= 1


def test_uniform_image_without_bias_is_left_nearly_unchanged():
    ph = make_phantom("no_tumor", size=160, seed=1, bias_strength=0.0)
    for step in (N4BiasCorrection(), FastBiasCorrection()):
        s = step(Slice(ph.image.copy(), trace=True))
        f = s.info["bias"]["bias_field"][ph.brain_mask]
        assert f.max() / f.min() < 1.35, type(step).__name__


# ------------------------------------------------------------------------------------------ Nyúl


def _scanner_variants():
    """The same anatomy under three 'scanners': different gain, offset and gamma."""
    base = make_phantom("glioma", size=160, seed=3)
    m = base.brain_mask
    return base, m, [base.image, np.clip(0.6 * base.image + 0.1, 0, 1), base.image**1.8]


def test_nyul_is_monotonic_and_sends_landmarks_to_standard_scale():
    _base, mask, images = _scanner_variants()
    nyul = NyulStandardizer()
    with pytest.raises(NotFittedError):
        nyul.transform(images[0], mask)
    nyul.fit([(img, mask) for img in images])
    std = nyul.standard_landmarks_
    assert std is not None and nyul.n_images_ == 3
    assert np.all(np.diff(std) > 0)
    assert std[0] == pytest.approx(nyul.scale_min) and std[-1] == pytest.approx(nyul.scale_max)
    for img in images:
        lm = nyul.landmarks(img, mask)
        x, y = nyul.mapping(lm)
        np.testing.assert_allclose(np.interp(lm, x, y), std, atol=1e-5)  # landmarks -> standard landmarks
        out = nyul.transform(img, mask)
        np.testing.assert_allclose(np.percentile(out[mask], nyul.percentiles), std, atol=0.02)
        ramp = np.linspace(img.min(), img.max(), 2000, dtype=np.float32)
        mapped = np.interp(ramp, x, y)
        assert np.all(np.diff(mapped) >= 0), "Nyúl map must be monotonic"


def test_nyul_standardises_across_scanners():
    _base, mask, images = _scanner_variants()
    nyul = NyulStandardizer().fit([(img, mask) for img in images])
    before = max(np.abs(a[mask] - images[0][mask]).mean() for a in images[1:])
    outs = [nyul.transform(img, mask) for img in images]
    after = max(np.abs(o[mask] - outs[0][mask]).mean() for o in outs[1:])
    assert after < 0.35 * before


def test_nyul_serialisation_and_validation():
    _base, mask, images = _scanner_variants()
    nyul = NyulStandardizer(percentiles=[2, 25, 50, 75, 98], scale_min=0.1, scale_max=0.9).fit(images)
    clone = NyulStandardizer.from_dict(nyul.to_dict())
    assert np.array_equal(clone.transform(images[1], mask), nyul.transform(images[1], mask))
    unfitted = NyulStandardizer.from_dict(NyulStandardizer().to_dict())
    assert not unfitted.is_fitted
    with pytest.raises(ValueError):
        NyulStandardizer(percentiles=[10, 5, 50])
    with pytest.raises(ValueError):
        NyulStandardizer().fit([np.zeros((32, 32), np.float32)])  # flat image: no histogram to learn


# ------------------------------------------------------------------------------------------ skull strip


@pytest.mark.parametrize("label,seed", [(lab, s) for s in (0, 1) for lab in LABELS])
def test_skull_strip_matches_phantom_brain(label, seed):
    """Dice >= 0.9 against ``brain_mask`` (parenchyma), not ``head_mask``: skull stripping must remove the skull,
    so a mask that matched the head would be a failure. The phantom skull is thin (head vs brain Dice is ~0.9
    already), so the test also demands no skull pixel inside the mask and a Dice clearly above the head's."""
    ph = make_phantom(label, size=256, seed=seed, bias_strength=0.2)
    s = SkullStrip()(Slice(ph.image.copy()))
    mask = s.brain
    assert not s.info["skull"]["fallback"], s.info["skull"]["reason"]

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    ours = dice(mask, ph.brain_mask)
    assert ours >= 0.9
    assert ours >= dice(ph.head_mask, ph.brain_mask) + 0.03  # tells stripping from not stripping
    skull = ph.head_mask & ~ph.brain_mask & (ph.image > 0.6)
    assert (mask & skull).sum() <= 0.01 * skull.sum()


def test_skull_strip_never_returns_empty_mask():
    step = SkullStrip(zero_outside=True)
    blank = step(Slice(np.zeros((64, 64), np.float32)))
    assert blank.brain.any() and blank.info["skull"]["fallback"] and blank.info["skull"]["reason"]
    flat = step(Slice(np.full((64, 64), 0.7, np.float32)))
    assert flat.brain.any()
    # a tiny bright blob: the mask would be < min_fraction of the foreground -> foreground fallback
    img = np.zeros((128, 128), np.float32)
    img[60:70, 60:70] = 1.0
    fg = np.ones(img.shape, bool)
    s = SkullStrip(min_fraction=0.25)(Slice(img, foreground=fg))
    assert s.info["skull"]["fallback"] and "foreground" in s.info["skull"]["reason"]
    assert s.brain.all()


def test_skull_strip_zero_outside_option():
    ph = make_phantom("meningioma", size=192, seed=2)
    kept = SkullStrip(zero_outside=False)(Slice(ph.image.copy()))
    stripped = SkullStrip(zero_outside=True)(Slice(ph.image.copy()))
    assert np.array_equal(kept.image, ph.image)
    assert np.all(stripped.image[~stripped.brain] == 0)
    assert np.array_equal(stripped.image[stripped.brain], ph.image[stripped.brain])


# ------------------------------------------------------------------------------------------ other steps


def test_to_unit_range_percentile_and_minmax():
    rng = np.random.default_rng(0)
    img = rng.uniform(100, 1000, (64, 80)).astype(np.float32)
    img[0, 0] = 65535  # one hot pixel
    out = ToUnitRange("percentile")(Slice(img.copy())).image
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    assert np.median(out) > 0.3  # the hot pixel did not squash the tissue
    mm = ToUnitRange("minmax")(Slice(img.copy())).image
    assert np.median(mm) < 0.02
    rgba = np.dstack([img, img, img, np.full_like(img, 255)])
    np.testing.assert_allclose(ToUnitRange()(Slice(rgba)).image, out, atol=1e-5)
    assert not ToUnitRange()(Slice(np.full((8, 8), 7.0, np.float32))).image.any()
    with pytest.raises(ValueError):
        ToUnitRange()(Slice(np.zeros((4, 4, 2), np.float32)))


def test_crop_keeps_whole_head_and_drops_annotations():
    ph = make_phantom("pituitary", size=(180, 240), seed=4)
    img = np.zeros((300, 400), np.float32)
    img[60:240, 80:320] = ph.image
    img[280:290, 10:60] = 1.0  # burnt-in scale bar, far from the head
    s = BrainCrop(margin=0.02)(Slice(img))
    y0, x0, y1, x1 = s.info["crop"]["box"]
    hy, hx = np.nonzero(ph.head_mask)
    assert y0 <= 60 + hy.min() and y1 >= 60 + hy.max() + 1 and x0 <= 80 + hx.min() and x1 >= 80 + hx.max() + 1
    assert y1 <= 250 and s.image.shape == s.foreground.shape


def test_clahe_keeps_background_black_and_stays_in_range():
    ph = make_phantom("glioma", size=160, seed=0)
    out = Clahe()(Slice(ph.image.copy())).image
    assert out.min() >= 0 and out.max() <= 1
    assert np.all(out[ph.image == 0] == 0)
    assert out[ph.brain_mask].std() > ph.image[ph.brain_mask].std()  # contrast enhanced


@pytest.mark.parametrize("shape", [(150, 198), (168, 150), (1446, 1920), (7, 300), (224, 224)])
def test_resize_pad_shapes(shape):
    img = np.ones(shape, np.float32)
    s = ResizePad(224)(Slice(img, foreground=np.ones(shape, bool)))
    assert s.image.shape == (224, 224) and s.foreground.shape == (224, 224)
    nh, nw = s.info["resize"]["content"]
    assert max(nh, nw) == 224 and abs(nh / nw - shape[0] / shape[1]) < 0.05 + 1 / min(nh, nw)


def test_mask_helpers():
    assert foreground_mask(np.zeros((20, 20), np.float32)).all()  # nothing found: whole image, never empty
    ring = np.zeros((30, 30), bool)
    ring[5:25, 5:25] = True
    ring[10:20, 10:20] = False
    assert fill_holes(ring)[15, 15] and not fill_holes(ring)[0, 0]


def test_preprocess_config_rejects_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        PreprocessConfig(preset="fancy")
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({"bias": {"method": "n3"}})
