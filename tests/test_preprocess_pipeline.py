"""Preprocessor: presets, determinism, fit/save/load bit for bit, odd sizes and image modes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from brainmri.config import Config, PreprocessConfig
from brainmri.data.phantoms import make_phantom
from brainmri.errors import BrainMRIError
from brainmri.io.reader import read_image
from brainmri.preprocess import PRESETS, NotFittedError, Preprocessor, config_hash, resolve_preset

LABELS = ("glioma", "meningioma", "no_tumor", "pituitary")


def _images(n: int = 8, size: int | tuple[int, int] = 160, bias: float = 0.3) -> list[np.ndarray]:
    """Phantoms scaled like 8-bit files (0..255), with a bias field."""
    return [make_phantom(LABELS[i % 4], size=size, seed=i, bias_strength=bias).image * 255 for i in range(n)]


@pytest.fixture(scope="module")
def fitted() -> Preprocessor:
    return Preprocessor.from_config(PreprocessConfig(size=96)).fit(_images())


def test_default_chain_and_presets():
    pre = Preprocessor.from_config(Config().preprocess)
    assert pre.preset == "full" and pre.needs_fit and not pre.is_fitted
    assert [s.name for s in pre.steps] == [
        "grayscale", "crop", "limit_size", "bias", "skull", "nyul", "clahe", "resize",
    ]  # fmt: skip
    assert type(pre.steps[3]).__name__ == "FastBiasCorrection"
    names = {
        "raw": ["grayscale", "resize"],
        "crop": ["grayscale", "crop", "resize"],
        "crop+n4": ["grayscale", "crop", "limit_size", "bias", "resize"],
        "crop+n4+nyul": ["grayscale", "crop", "limit_size", "bias", "nyul", "resize"],
    }
    for preset, expected in names.items():
        p = Preprocessor.from_config(PreprocessConfig(preset=preset))
        assert [s.name for s in p.steps] == expected, preset
        assert p.needs_fit == ("nyul" in expected)
    assert set(PRESETS) == {"raw", "crop", "crop+n4", "crop+n4+nyul", "full"}
    # parameters come from the sections; true N4 in a preset
    cfg = PreprocessConfig(preset="crop+n4")
    cfg.bias.method = "n4"
    assert type(Preprocessor.from_config(cfg).steps[3]).__name__ == "N4BiasCorrection"
    # custom: the sections exactly as given
    custom = PreprocessConfig(preset="custom")
    custom.skull.enabled = False
    custom.clahe.enabled = False
    assert "skull" not in [s.name for s in Preprocessor.from_config(custom).steps]


def test_config_hash_tracks_pixels_not_workers():
    a = PreprocessConfig()
    b = PreprocessConfig(workers=7)
    assert config_hash(a) == config_hash(b)
    c = PreprocessConfig(size=256)
    assert config_hash(c) != config_hash(a)
    # a preset and the equivalent custom config produce the same pixels -> same hash
    assert config_hash(resolve_preset(PreprocessConfig(preset="crop"))) == config_hash(PreprocessConfig(preset="crop"))
    assert config_hash(PreprocessConfig(preset="raw")) != config_hash(PreprocessConfig(preset="crop"))
    assert Preprocessor.from_config(a).config_hash() == config_hash(a)


def test_unfitted_use_is_a_clear_error():
    pre = Preprocessor.from_config(PreprocessConfig())
    with pytest.raises(NotFittedError, match="not fitted"):
        pre(_images(1)[0])
    raw = Preprocessor.from_config(PreprocessConfig(preset="raw"))
    assert raw.is_fitted and raw.fit([]) is raw  # no-op


def test_output_contract_and_determinism(fitted):
    img = _images(1, size=(150, 198))[0]
    out1 = fitted(img)
    out2 = fitted(img.copy())
    assert out1.dtype == np.uint8 and out1.shape == (96, 96)
    assert out1.tobytes() == out2.tobytes()
    fresh = Preprocessor.from_config(PreprocessConfig(size=96)).fit(_images())
    assert fresh(img).tobytes() == out1.tobytes()  # fitting is deterministic too


def test_save_load_reproduces_bit_for_bit(fitted, tmp_path):
    path = fitted.save(tmp_path / "pre.json")
    loaded = Preprocessor.load(path)
    assert loaded.is_fitted and loaded.config_hash() == fitted.config_hash()
    for img in _images(4, size=(130, 170), bias=0.4):
        assert loaded(img).tobytes() == fitted(img).tobytes()
    clone = Preprocessor.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert clone(_images(1)[0]).tobytes() == fitted(_images(1)[0]).tobytes()
    # no temp files left behind by the atomic write
    assert [p.name for p in tmp_path.iterdir()] == ["pre.json"]


def test_load_rejects_bad_or_foreign_state(fitted, tmp_path):
    d = fitted.to_dict()
    with pytest.raises(BrainMRIError, match="format"):
        Preprocessor.from_dict({"config": d["config"]})
    with pytest.raises(BrainMRIError, match="pipeline version"):
        Preprocessor.from_dict({**d, "pipeline_version": 999})
    edited = json.loads(json.dumps(d))
    edited["config"]["size"] = 128
    with pytest.raises(BrainMRIError, match="config_hash"):
        Preprocessor.from_dict(edited)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(BrainMRIError, match=r"bad\.json"):
        Preprocessor.load(bad)
    with pytest.raises(BrainMRIError, match="not found"):
        Preprocessor.load(tmp_path / "missing.json")


def _encode(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    if mode == "I;16":
        Image.fromarray((array / 255 * 65535).astype(np.uint16)).save(buf, "PNG")
    else:
        gray = Image.fromarray(array.astype(np.uint8))
        img = {"L": gray, "RGB": gray.convert("RGB"), "RGBA": gray.convert("RGBA"), "P": gray.convert("P")}[mode]
        img.save(buf, "PNG")
    return buf.getvalue()


MODE_SHAPES = [(m, s) for m in ("L", "RGB", "RGBA", "P", "I;16") for s in ((168, 150), (150, 198))]
MODE_SHAPES += [("L", (1446, 1920)), ("I;16", (1446, 1920))]


@pytest.mark.parametrize("mode,shape", MODE_SHAPES)
def test_modes_and_odd_sizes_through_the_reader(fitted, mode, shape):
    img = make_phantom("meningioma", size=shape, seed=5, bias_strength=0.3).image * 255
    loaded = read_image(_encode(img, mode), name=f"x.{mode}.png")
    out = fitted(loaded.array)
    assert out.shape == (96, 96) and out.dtype == np.uint8
    assert out.std() > 10  # real content, not a blank square
    # 8-bit modes decode to the same gray values, so they give the same output bit for bit
    if mode in ("RGB", "RGBA", "P"):
        ref = fitted(read_image(_encode(img, "L"), name="x.png").array)
        assert out.tobytes() == ref.tobytes()


def test_raw_preset_is_grayscale_and_resize_only():
    pre = Preprocessor.from_config(PreprocessConfig(preset="raw", size=64))
    img = np.zeros((100, 50), np.float32)
    img[:, :25] = 200.0
    img[:, 25:] = 100.0
    out = pre(img)
    assert out.shape == (64, 64)
    assert out[:, :16].max() == 0 and out[:, -16:].max() == 0  # padding left and right
    assert out[32, 20] == 255 and out[32, 44] == 0  # percentile scaling maps 100 -> 0, 200 -> 255


def test_trace_returns_every_stage(fitted):
    out, s, stages = fitted.run(_images(1)[0], trace=True)
    assert [n for n, _ in stages] == [st.name for st in fitted.steps]
    assert "bias_field" in s.info["bias"] and "mask" in s.info["skull"]
    assert np.array_equal(np.floor(np.clip(stages[-1][1], 0, 1) * 255 + 0.5).astype(np.uint8), out)
