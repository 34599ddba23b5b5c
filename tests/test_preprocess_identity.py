"""Guard: the preprocessing output must not move beyond library rounding (train/inference identity).

A model is trained on the cached uint8 output of ``Preprocessor.__call__``; any speed-up of the chain
has to leave those bytes unchanged (up to the libraries' own rounding, see the test). This test runs the
CPU recipe's preprocessor settings (``configs/cpu-fast.yaml``:
192 px) with preset ``full`` (the recipe's preset until 2026-12-07; now ``crop``, also here) and a few
other presets on ~30 real slices of mixed sizes and modes
(brain-tumor-mri, lgg-flair, navoneel; also as 8-bit RGB arrays, the colour path) and compares sha256
digests with ``tests/data/preprocess_identity.json``, recorded from the code before the speed-up of
issue 12 part 8.

Regenerate the fixture only for a deliberate change of output pixels (which also bumps
``PIPELINE_VERSION`` and needs a new cache and a retrain):
``.venv/bin/python tests/test_preprocess_identity.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "preprocess_identity.json"
if str(REPO / "tests") not in sys.path:  # run as a script (--write)
    sys.path.insert(0, str(REPO / "tests"))

from conftest import shared_data_path  # noqa: E402

pytestmark = pytest.mark.integration

# (relative path under shared/data, how to feed it): "gray" = read_image(...).array (float32 2D, what
# every stage feeds), "rgb" = the decoded file as an 8-bit RGB array (to_grayscale's colour path)
BTM = "brain-tumor-mri/Training/"
FILES: tuple[tuple[str, str], ...] = (
    # odd sizes / modes: 150x198 RGB, 300x168, 1920x1080 PNG named .jpg, 1375x1446, RGBA, palette
    (BTM + "notumor/Tr-no_0419.jpg", "gray"),
    (BTM + "notumor/Tr-no_1500.jpg", "gray"),
    (BTM + "notumor/Tr-no_1005.jpg", "gray"),
    (BTM + "notumor/Tr-no_0138.jpg", "gray"),
    (BTM + "notumor/Tr-no_1011.jpg", "gray"),
    (BTM + "notumor/Tr-no_1019.jpg", "gray"),
    (BTM + "notumor/Tr-no_1012.jpg", "gray"),
    (BTM + "meningioma/Tr-me_0585.jpg", "gray"),
    # typical 512x512 slices of each class
    (BTM + "glioma/Tr-gl_0010.jpg", "gray"),
    (BTM + "glioma/Tr-gl_0500.jpg", "gray"),
    (BTM + "glioma/Tr-gl_1200.jpg", "rgb"),
    (BTM + "meningioma/Tr-me_0010.jpg", "gray"),
    (BTM + "meningioma/Tr-me_0700.jpg", "gray"),
    (BTM + "meningioma/Tr-me_1300.jpg", "rgb"),
    (BTM + "notumor/Tr-no_0020.jpg", "gray"),
    (BTM + "notumor/Tr-no_0800.jpg", "gray"),
    (BTM + "pituitary/Tr-pi_0010.jpg", "gray"),
    (BTM + "pituitary/Tr-pi_0600.jpg", "gray"),
    (BTM + "pituitary/Tr-pi_1400.jpg", "rgb"),
    # lgg-flair (256x256 PNG, FLAIR, often small brains)
    ("lgg-flair/tumor/TCGA_CS_4942_19970222_10.png", "gray"),
    ("lgg-flair/tumor/TCGA_CS_4942_19970222_12.png", "gray"),
    ("lgg-flair/no_tumor/TCGA_CS_4942_19970222_17.png", "gray"),
    ("lgg-flair/no_tumor/TCGA_CS_4942_19970222_15.png", "rgb"),
    # navoneel (small JPEGs, L / RGB / RGBA)
    ("navoneel/brain_tumor_dataset/no/1 no.jpeg", "gray"),
    ("navoneel/brain_tumor_dataset/no/29 no.jpg", "gray"),
    ("navoneel/brain_tumor_dataset/no/No18.jpg", "gray"),
    ("navoneel/brain_tumor_dataset/no/N3.jpg", "gray"),
    ("navoneel/brain_tumor_dataset/yes/Y100.JPG", "gray"),
    ("navoneel/brain_tumor_dataset/yes/Y3.jpg", "rgb"),
    ("navoneel/brain_tumor_dataset/yes/Y183.jpg", "gray"),
)
# Nyúl is fitted on these (deterministic; disjoint from FILES)
FIT_FILES: tuple[str, ...] = (
    BTM + "glioma/Tr-gl_0100.jpg",
    BTM + "glioma/Tr-gl_0900.jpg",
    BTM + "meningioma/Tr-me_0100.jpg",
    BTM + "meningioma/Tr-me_0900.jpg",
    BTM + "notumor/Tr-no_0100.jpg",
    BTM + "notumor/Tr-no_1200.jpg",
    BTM + "pituitary/Tr-pi_0100.jpg",
    BTM + "pituitary/Tr-pi_0900.jpg",
    "lgg-flair/tumor/TCGA_CS_4942_19970222_11.png",
    "navoneel/brain_tumor_dataset/yes/Y11.jpg",
)
THUMB = 8  # thumbnail grid: 8 x 8 block means per output
# the full chain (the CPU recipe's until 2026-12-07), then presets that share its steps (crop: the recipe's now)
VARIANTS: dict[str, list[str]] = {
    "full": ["preprocess.preset=full"],
    "crop": ["preprocess.preset=crop"],
    "crop+n4+nyul": ["preprocess.preset=crop+n4+nyul"],
    "full-zero-outside": ["preprocess.preset=full", "preprocess.skull.zero_outside=true"],
}


def _load(root: Path, rel: str, mode: str) -> np.ndarray:
    from PIL import Image

    from brainmri.io.reader import read_image

    if mode == "rgb":
        with Image.open(root / rel) as im:
            return np.asarray(im.convert("RGB"))
    return read_image(root / rel).array


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()).hexdigest()


def _thumbnail(a: np.ndarray, cells: int = THUMB) -> list[float]:
    """Block means on a cells x cells grid (gray levels, 2 decimals): what a tolerant comparison checks."""
    h, w = a.shape
    blocks = a[: h - h % cells, : w - w % cells].astype(np.float64).reshape(cells, h // cells, cells, w // cells)
    return np.round(blocks.mean((1, 3)), 2).ravel().tolist()


def _within_rounding(got: list[float], want: list[float]) -> bool:
    """A library's own rounding (OpenCV, SimpleITK, a JPEG decoder) moves a few pixels by a level or two;
    a real change of the chain moves regions. Block means within 1 gray level (max) / 0.1 (mean) allow the first."""
    diff = np.abs(np.asarray(got) - np.asarray(want))
    return bool(diff.max() <= 1.0 and diff.mean() <= 0.1)


def compute(root: Path) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, list[float]]]]:
    """{variant: {"nyul": digest of the fitted landmarks, "<file>|<mode>": digest of the uint8 output}} and
    {variant: {"<file>|<mode>": thumbnail of the output}}."""
    from brainmri.config import load_config
    from brainmri.preprocess import Preprocessor

    fit_arrays = [_load(root, rel, "gray") for rel in FIT_FILES]
    inputs = {f"{rel}|{mode}": _load(root, rel, mode) for rel, mode in FILES}
    out: dict[str, dict[str, str]] = {}
    thumbs: dict[str, dict[str, list[float]]] = {}
    for name, overrides in VARIANTS.items():
        cfg = load_config(REPO / "configs" / "cpu-fast.yaml", overrides)
        pre = Preprocessor.from_config(cfg.preprocess).fit(fit_arrays)
        digests: dict[str, str] = {}
        if pre.nyul is not None:
            digests["nyul"] = _digest(np.asarray(pre.nyul.standard_landmarks_, np.float64))
        for key, array in inputs.items():
            y = pre(array)
            assert y.dtype == np.uint8 and y.shape == (cfg.preprocess.size, cfg.preprocess.size)
            digests[key] = _digest(y)
            thumbs.setdefault(name, {})[key] = _thumbnail(y)
        out[name] = digests
    return out, thumbs


@pytest.fixture(scope="module")
def data_root() -> Path:
    root = shared_data_path()
    missing = [rel for rel in [*(r for r, _ in FILES), *FIT_FILES] if not (root / rel).is_file()]
    if missing:
        pytest.skip(f"real data not found under {root} (missing e.g. {missing[0]}); set BRAINMRI_SHARED_DATA")
    return root


def test_preprocess_output_is_identical_up_to_library_rounding(data_root: Path) -> None:
    """Bytes first; an output whose bytes differ must stay within rounding and be one of few in its variant.

    Why not bytes only: a fresh install of the same pinned-by-range dependencies on 2026-12-07 changed two of
    these outputs (the full chain on one colour JPEG; `crop+n4+nyul` on the same file unchanged, so the skull
    mask or CLAHE, i.e. OpenCV or scikit-image) with no change of ours; the guard is for our code, not for the
    libraries' last bit. The fixture was re-recorded then.
    """
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    expected, expected_thumbs = fixture["digests"], fixture["thumbnails"]
    got, thumbs = compute(data_root)
    assert set(got) == set(expected)
    for v in expected:
        assert got[v].get("nyul") == expected[v].get("nyul"), f"{v}: Nyúl landmarks changed"
        changed = [k for k in expected_thumbs[v] if got[v][k] != expected[v][k]]
        moved = [k for k in changed if not _within_rounding(thumbs[v][k], expected_thumbs[v][k])]
        assert not moved, f"{v}: {len(moved)} preprocessing outputs moved beyond rounding, e.g. {moved[:3]}"
        assert len(changed) <= len(expected_thumbs[v]) // 4, f"{v}: {len(changed)} outputs changed bytes: {changed[:5]}"


if __name__ == "__main__":
    if "--write" not in sys.argv:
        raise SystemExit("usage: test_preprocess_identity.py --write  (records the current outputs)")
    digests, thumbnails = compute(shared_data_path())
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": "configs/cpu-fast.yaml", "variants": VARIANTS, "digests": digests, "thumbnails": thumbnails}
    FIXTURE.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"-> {FIXTURE} ({sum(len(v) for v in digests.values())} digests)")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_percentile_and_histogram_match_numpy(dtype: type) -> None:
    """The sort-based percentile and the bincount histogram of ``preprocess.base`` equal numpy's, bit for bit."""
    from brainmri.preprocess.base import percentile, unit_histogram

    rng = np.random.default_rng(0)
    qs = (99.9, 50, 0.5, [0.5, 99.5], [10, 50, 90], [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99], [0, 100])
    for t in range(400):
        n = int(rng.integers(1, 2000))
        kind = t % 3
        if kind == 0:
            x = rng.random(n).astype(dtype)
        elif kind == 1:  # 8-bit data: many ties
            x = (rng.integers(0, 256, n) / 255).astype(dtype)
        else:  # outside [0, 1], negative
            x = rng.normal(0, 3, n).astype(dtype)
        for q in qs:
            got, want = percentile(x, q), np.percentile(x, q)
            assert np.asarray(got).dtype == np.asarray(want).dtype and np.shape(got) == np.shape(want)
            assert np.array_equal(got, want), (n, q)
        edge = np.array([0, 1, 1.0000001, -0.0, 0.5, np.nan, 255 / 256, -1e-9], dtype=dtype)
        xh = np.concatenate([x, edge])
        (h1, e1), (h2, e2) = unit_histogram(xh), np.histogram(xh, bins=256, range=(0.0, 1.0))
        assert h1.dtype == h2.dtype and e1.dtype == e2.dtype
        assert np.array_equal(h1, h2) and np.array_equal(e1, e2)
    assert np.isnan(percentile(np.array([1.0, np.nan], dtype), [50])).all()
