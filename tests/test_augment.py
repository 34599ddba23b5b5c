"""Augmentation: default images unchanged, every transform reproducible, shapes/ranges kept, presets logged."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from brainmri.config import AugmentConfig
from brainmri.train.augment import (
    APPEARANCE_PRESET,
    Augmenter,
    BiasField,
    ContrastInversion,
    Erase,
    FourierAmplitudeMix,
    IntensityRemap,
    RandErase,
    RandomConvNet,
    RandStripSkull,
    Resample,
    RicianNoise,
    StripSkull,
    build_transforms,
    effective_config,
    fourier_amplitude_mix,
    head_mask,
    low_band_amplitude,
)

SIZE = 64
ALL_ON = {
    "intensity_remap": 1.0,
    "invert": 1.0,
    "random_conv": 1.0,
    "fourier_mix": 1.0,
    "rician_noise": 1.0,
    "thickness": 1.0,
    "bias_field": 1.0,
    "gamma": 1.0,
    "noise": 1.0,
    "blur": 1.0,
    "downsample": 1.0,
    "random_erasing": 1.0,
    "skull_strip": 1.0,
}


def phantom(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A bright ellipse 'head' with darker and brighter blobs on a black background, float32 [0, 1]."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.float32)
    cv2.ellipse(img, (size // 2, size // 2), (size // 3, int(size / 2.6)), 0, 0, 360, 0.6, -1)
    cv2.circle(img, (size // 2 - 6, size // 2), 6, 0.2, -1)
    cv2.circle(img, (size // 2 + 8, size // 2 + 5), 4, 0.95, -1)
    return np.clip(img + rng.normal(0, 0.01, img.shape).astype(np.float32) * (img > 0), 0, 1)


def legacy_augment(c: AugmentConfig, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The augmenter as it was before the appearance transforms (frozen copy, for the bit-identity test)."""
    out = img.astype(np.float32, copy=True)
    h, w = out.shape
    if rng.random() < c.hflip:
        out = out[:, ::-1]
    angle = rng.uniform(-c.rotation_deg, c.rotation_deg) if c.rotation_deg else 0.0
    scale = rng.uniform(*c.scale)
    tx, ty = (rng.uniform(-c.translate, c.translate, size=2) * (w, h)) if c.translate else (0.0, 0.0)
    if angle or scale != 1.0 or tx or ty:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        m[:, 2] += (tx, ty)
        out = cv2.warpAffine(np.ascontiguousarray(out), m, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT)  # fmt: skip
    if c.bias_field and rng.random() < c.bias_field:
        y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        log_field = np.zeros((h, w), np.float32)
        for i in range(4):
            for j in range(4 - i):
                if i == j == 0:
                    continue
                log_field += rng.uniform(-0.4, 0.4) * (x**i) * (y**j)
        out = out * np.exp(log_field)
    if c.gamma and rng.random() < c.gamma:
        out = np.clip(out, 0, None) ** np.exp(rng.uniform(-0.3, 0.3))
    if c.contrast:
        mean = float(out.mean())
        out = (out - mean) * rng.uniform(1 - c.contrast, 1 + c.contrast) + mean
    if c.brightness:
        out = out + rng.uniform(-c.brightness, c.brightness)
    if c.blur and rng.random() < c.blur:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.3, 1.2))
    if c.downsample and rng.random() < c.downsample:
        factor = rng.uniform(1.5, 3.0)
        small = cv2.resize(out, (max(8, int(w / factor)), max(8, int(h / factor))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if c.noise and rng.random() < c.noise:
        out = out + rng.normal(0, rng.uniform(0.005, 0.03), out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("overrides", [{}, {k: 1.0 for k in ("bias_field", "gamma", "noise", "blur", "downsample")}])
def test_default_config_gives_the_same_images_as_before(overrides):
    cfg = AugmentConfig(**overrides)
    aug = Augmenter(cfg)
    for i in range(20):
        img = phantom(i)
        new = aug(img, np.random.default_rng((1, 2, i)))
        old = legacy_augment(cfg, img, np.random.default_rng((1, 2, i)))
        assert np.array_equal(new, old), i


def test_every_transform_on_is_reproducible_and_in_range():
    aug = Augmenter(AugmentConfig(**ALL_ON))
    img = phantom(3)
    a = aug(img, np.random.default_rng((5, 0, 7)))
    b = aug(img, np.random.default_rng((5, 0, 7)))
    c = aug(img, np.random.default_rng((5, 1, 7)))
    assert a.dtype == np.float32 and a.shape == img.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0 and np.isfinite(a).all()


def test_zero_probability_draws_nothing():
    """A new transform left at 0 consumes no random numbers (so existing runs are unchanged)."""
    new = {"skull_strip", "intensity_remap", "invert", "random_conv", "fourier_mix", "random_erasing"}
    picked = [t for t in build_transforms(AugmentConfig()) if t.name in new]
    assert len(picked) == len(new)
    for t in picked:
        rng = np.random.default_rng(0)
        assert t.draw((SIZE, SIZE), rng) is None
        assert rng.random() == np.random.default_rng(0).random()


def test_describe_lists_active_transforms_and_preset():
    assert Augmenter(AugmentConfig(enabled=False)).describe() == {}
    base = Augmenter(AugmentConfig()).describe()
    assert "bias_field" in base and "intensity_remap" not in base and "invert" not in base
    preset = Augmenter(AugmentConfig(appearance=True, invert=0.05)).describe()
    assert preset["invert"]["prob"] == 0.05  # an explicit value wins over the preset
    assert preset["intensity_remap"]["prob"] == APPEARANCE_PRESET["intensity_remap"]
    assert preset["bias_field"]["coefficient"] > 0.4
    assert {"thickness", "rician_noise", "fourier_mix"} <= set(preset)
    assert json.loads(json.dumps(preset)) == json.loads(json.dumps(preset, sort_keys=True))  # JSON-able for the log
    assert effective_config(AugmentConfig()) == AugmentConfig()


def test_monotone_remap_preserves_order_and_background():
    img = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    out = IntensityRemap(np.array([0.0, 0.1, 0.5, 0.6, 1.0]))(img).ravel()
    assert out[0] == pytest.approx(0.0, abs=1e-6) and np.all(np.diff(out) >= -1e-6)
    wiggly = IntensityRemap(np.array([0.0, 0.9, 0.1, 0.8, 0.2]))(img).ravel()
    assert np.any(np.diff(wiggly) < -1e-3) and wiggly.min() >= -1e-6 and wiggly.max() <= 1 + 1e-6


def test_contrast_inversion_only_inside_head():
    img = phantom(1)
    mask = head_mask(img)
    assert mask[SIZE // 2, SIZE // 2] and not mask[0, 0]
    out = ContrastInversion()(img)
    assert np.array_equal(out[~mask], img[~mask])
    top = img[mask].max()
    assert np.allclose(out[mask], top - img[mask])
    assert ContrastInversion()(np.zeros((8, 8), np.float32)).max() == 0  # empty mask: unchanged


def test_fourier_mix_keeps_anatomy_changes_style():
    a, b = phantom(0), 1.0 - phantom(1)
    same = fourier_amplitude_mix(a, low_band_amplitude(a, 0.1), beta=0.1, lam=1.0)
    assert np.allclose(same, a, atol=1e-5)  # own amplitude: identity
    mixed = FourierAmplitudeMix(beta=0.1, lam=1.0, other=b)(a)
    assert mixed.shape == a.shape and not np.allclose(mixed, a, atol=1e-3)
    edges = lambda x: np.abs(np.diff(x, axis=1))  # noqa: E731
    assert np.corrcoef(edges(mixed).ravel(), edges(a).ravel())[0, 1] > 0.8  # phase (edges) kept
    jittered = FourierAmplitudeMix(beta=0.1, seed=3)(a)
    assert np.array_equal(jittered, FourierAmplitudeMix(beta=0.1, seed=3)(a))


def test_fourier_mix_partner_from_bank_is_reproducible():
    bank = np.stack([np.round(phantom(i) * 255).astype(np.uint8) for i in range(4)])
    aug = Augmenter(AugmentConfig(fourier_mix=1.0), bank=bank)
    assert aug.describe()["fourier_mix"]["partner"] == "bank"
    img = phantom(9)
    assert np.array_equal(aug(img, np.random.default_rng(4)), aug(img, np.random.default_rng(4)))


def test_rician_noise_lifts_background_and_resample_axis():
    out = RicianNoise(sigma=0.05, seed=1)(np.zeros((SIZE, SIZE), np.float32))
    assert out.min() >= 0 and out.mean() == pytest.approx(0.05 * np.sqrt(np.pi / 2), rel=0.1)
    stripes = np.tile((np.arange(SIZE) % 2).astype(np.float32), (SIZE, 1))  # varies along columns only
    assert np.allclose(Resample(4.0, axis=0)(stripes), stripes)  # rows down-sampled: no change
    assert Resample(4.0, axis=1)(stripes).std() < 0.2 * stripes.std()
    field = BiasField(np.full(9, 0.3)).field((SIZE, SIZE))
    assert field.shape == (SIZE, SIZE) and field.min() > 0


def test_random_conv_net_changes_texture_keeps_shape_and_background():
    img = phantom(2)
    mask = head_mask(img)
    out = RandomConvNet(alpha=1.0, seed=5)(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.array_equal(out[~mask], img[~mask])  # air stays as it was
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.array_equal(out, RandomConvNet(alpha=1.0, seed=5)(img))  # the seed fixes the network
    assert not np.allclose(out, RandomConvNet(alpha=1.0, seed=6)(img), atol=1e-3)
    assert np.allclose(RandomConvNet(alpha=0.0, seed=5)(img), img)
    # not a pointwise curve: pixels of one input value (the flat ellipse) leave the network differently
    # near an edge than far from it, for at least one of a few random networks
    flat = np.zeros((SIZE, SIZE), np.float32)
    cv2.circle(flat, (SIZE // 2, SIZE // 2), SIZE // 3, 0.6, -1)
    flat[SIZE // 2 - 3 : SIZE // 2 + 3, SIZE // 2 - 3 : SIZE // 2 + 3] = 0.9
    inside = (flat == np.float32(0.6)) & (cv2.erode((flat > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    spreads = [RandomConvNet(alpha=1.0, seed=s)(flat)[inside].std() for s in range(5)]
    assert max(spreads) > 0.01


def test_random_erasing_replaces_one_rectangle_with_noise():
    img = phantom(4)
    out = Erase(top=5, left=10, height=8, width=20, seed=3)(img)
    changed = out != img
    assert changed[5:13, 10:30].mean() > 0.95 and not changed[:5].any() and not changed[:, 30:].any()
    assert out[5:13, 10:30].std() > 0.2  # noise, not a flat patch the network could learn to ignore
    t = RandErase(1.0)
    for i in range(50):
        e = t.draw((SIZE, SIZE), np.random.default_rng(i))
        area = e.height * e.width / SIZE**2
        assert 0.015 <= area <= 0.34 and e.top + e.height <= SIZE and e.left + e.width <= SIZE
    assert RandErase(0.0).draw((SIZE, SIZE), np.random.default_rng(0)) is None


def skull_phantom(size: int = 96) -> np.ndarray:
    """A brain ellipse (0.5) with a lesion (0.8) inside a bright skull ring (0.9), a dark gap between them."""
    img = np.zeros((size, size), np.float32)
    c = (size // 2, size // 2)
    cv2.ellipse(img, c, (40, 44), 0, 0, 360, 0.9, 4)
    cv2.ellipse(img, c, (30, 34), 0, 0, 360, 0.5, -1)
    cv2.circle(img, (c[0] + 10, c[1] - 8), 6, 0.8, -1)
    return img


def test_strip_skull_removes_the_ring_and_the_crop_closes_in_on_the_brain():
    img = skull_phantom()
    out = StripSkull()(img)
    assert out.shape == img.shape and out.dtype == np.float32
    assert img.max() == np.float32(0.9) and out.max() < 0.85  # the ring is gone, the lesion (0.8) stays
    assert (out > 0.7).sum() > (img == np.float32(0.8)).sum()  # ... and is larger: the brain fills the frame
    cols = np.flatnonzero((out > 0.25).any(axis=0))
    assert cols[-1] - cols[0] > 0.85 * img.shape[1] > 61 + 2 * 4  # the brain was 61 px wide in a 96 px frame


def test_strip_skull_leaves_a_slice_it_cannot_strip_unchanged():
    blank = np.zeros((64, 64), np.float32)
    assert StripSkull()(blank) is blank
    assert isinstance(RandStripSkull(1.0).draw((64, 64), np.random.default_rng(0)), StripSkull)
    assert RandStripSkull(0.0).draw((64, 64), np.random.default_rng(0)) is None
