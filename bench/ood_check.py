"""How the deployed out-of-domain gate behaves: the fraction of images a bundle flags ``in_domain: false``.

Runs the bundle through the public Predictor (the deployed path: decode, preprocess, ONNX Runtime, the
sealed Mahalanobis score on the features, and the input checks on the decoded image: colourfulness and
border brightness, ``PredictConfig.ood_max_*``) on
- in-domain: the held-out test split of the bundle's own training data (expected ~5% flagged: the threshold
  passes 95% of validation images);
- not MRI at all: photographs shipped with pip packages (scikit-learn's sample images, matplotlib's sample
  photo, scikit-image's test images: colour ones as uploaded and every one as a grayscale JPEG, since the
  colour check cannot help there), a CT-like head (scikit-image's Shepp–Logan phantom, reconstructed by
  filtered back-projection from 30 to 360 projections, with and without noise: CT streaks on a head-shaped
  slice), chest X-ray-like images (frontal projections of random thorax phantoms: ribs, spine, lungs,
  heart, on a black background) and generated images (noise, textures, gradients, checkerboards,
  text-like stripes), and real clinical images of other modalities and body parts that pydicom ships as
  test files (two head CTs, a spine CT, a bone scan, ultrasound; an abdominal MRI and a small MR test
  image) — should be flagged;
- other MRI sources: lgg-flair (FLAIR, another hospital) and navoneel.

    python bench/ood_check.py bundles/cpu-robust --split work/data/split.json -> bench/results/ood_check.json

Each set reports ``flagged`` (the whole gate) and what flagged it: ``flagged_features`` (the feature score
alone, the gate before the input checks), ``flagged_colour``, ``flagged_border``. ``confident_unflagged`` is the share
of the set that passes the gate, is not sent to review and still gets a class with probability >= 0.9 (the
outcome that misleads a user); ``passed_labels`` counts the classes given to what passed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(REPO.parent / "shared" / "data")


def generated_images(n: int = 60, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Non-MRI images: uniform and Gaussian noise, smooth random fields, gradients, checkerboards, stripes."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            img = rng.uniform(0, 255, (size, size))
        elif kind == 1:
            img = np.clip(rng.normal(128, 40, (size, size)), 0, 255)
        elif kind == 2:
            img = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)), (0, 0), rng.uniform(3, 20))
            img = (img - img.min()) / (np.ptp(img) + 1e-6) * 255
        elif kind == 3:
            a = rng.uniform(0, 2 * np.pi)
            img = (np.cos(a) * xx + np.sin(a) * yy) * 180 + 40
        elif kind == 4:
            k = int(rng.integers(4, 32))
            img = ((np.floor(xx * k) + np.floor(yy * k)) % 2) * 200 + 30
        else:
            img = (np.sin(xx * rng.uniform(10, 80)) > 0) * 220 + rng.uniform(0, 30, (size, size))
        out.append(img.astype(np.float32))
    return out


def photographs() -> list[tuple[str, np.ndarray]]:
    """Photographs that pip packages ship (no download): scikit-learn's two, matplotlib's Grace Hopper."""
    out = []
    try:
        from sklearn.datasets import load_sample_images

        for name, img in zip(("sklearn china.jpg", "sklearn flower.jpg"), load_sample_images().images, strict=True):
            out.append((name, img.astype(np.float32)))
    except Exception as exc:  # the photos are a bonus; say why they are missing
        print(f"note: scikit-learn sample images unavailable ({exc})", file=sys.stderr)
    try:
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            out.append(("matplotlib grace_hopper.jpg", np.asarray(Image.open(f)).astype(np.float32)))
    except Exception as exc:
        print(f"note: matplotlib sample photo unavailable ({exc})", file=sys.stderr)
    return out


SKIMAGE_PHOTOS = (
    "astronaut",
    "camera",
    "moon",
    "coins",
    "clock",
    "page",
    "text",
    "horse",
    "brick",
    "grass",
    "gravel",
    "cell",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)


def skimage_photos() -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """scikit-image's bundled test images (no download): (colour ones as they are, every one in grayscale)."""
    try:
        import skimage.data
        from skimage.color import rgb2gray
    except ImportError as exc:
        print(f"note: scikit-image unavailable ({exc}); its images are left out", file=sys.stderr)
        return [], []
    colour, grey = [], []
    for name in SKIMAGE_PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 3:
            colour.append((f"skimage {name}", img[..., :3].astype(np.float32)))
            g = rgb2gray(img[..., :3])
        else:
            g = img.astype(np.float64) / (255.0 if img.max() > 1 else 1.0)
        grey.append((f"skimage {name} (grayscale)", (g * 255).astype(np.float32)))
    return colour, grey


def ct_phantoms(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """A CT-like head: the Shepp–Logan phantom reconstructed by filtered back-projection (streaks, noise)."""
    try:
        from skimage.data import shepp_logan_phantom
        from skimage.transform import iradon, radon, rescale
    except ImportError as exc:
        print(f"note: scikit-image unavailable ({exc}); no CT-like images", file=sys.stderr)
        return []
    rng = np.random.default_rng(seed)
    phantom = rescale(shepp_logan_phantom(), 0.64)  # 256 px, a typical slice size
    out = [("shepp-logan phantom", phantom)]
    for n_angles in (30, 90, 360):
        theta = np.linspace(0.0, 180.0, n_angles, endpoint=False)
        sino = radon(phantom, theta=theta)
        for noise in (0.0, 0.02):
            noisy = sino + rng.normal(0, noise * sino.max(), sino.shape) if noise else sino
            out.append((f"FBP {n_angles} projections, noise {noise}", iradon(noisy, theta=theta, filter_name="ramp")))
    return [(name, (np.clip(img, 0, None) / max(img.max(), 1e-6) * 255).astype(np.float32)) for name, img in out]


def _thorax_attenuation(rng: np.random.Generator, size: int) -> np.ndarray:
    """Line integrals of a random frontal thorax phantom (arbitrary units): an elliptic body with a neck,
    two air-filled lungs over domed diaphragms, the heart, the spine, curved paired ribs, clavicles and the
    upper arms; each a closed-form path length through a simple solid."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    xx = xx - 0.5  # 0 on the midline; yy 0 at the top, 1 at the bottom

    def slab(cx: float, half_width: float) -> np.ndarray:  # path length through a vertical cylinder
        return np.sqrt(np.clip(1 - ((xx - cx) / half_width) ** 2, 0, None))

    shoulders = rng.uniform(0.1, 0.16)
    body = np.where(yy > shoulders, slab(0, rng.uniform(0.40, 0.46)), slab(0, 0.12) * (yy > 0.0))
    lungs = np.zeros_like(xx)
    for side in (-1, 1):
        cx, top, base = side * rng.uniform(0.15, 0.19), rng.uniform(0.1, 0.16), rng.uniform(0.72, 0.82)
        dome = base - 0.08 * ((xx - cx) / 0.14) ** 2  # the diaphragm, highest under the lung's centre
        vertical = np.sqrt(np.clip((yy - top) * (dome - yy), 0, None)) / (0.5 * (base - top))
        lungs += slab(cx, rng.uniform(0.12, 0.15)) * np.clip(vertical, 0, 1)
    heart = np.sqrt(np.clip(1 - ((xx - 0.05) / 0.14) ** 2 - ((yy - 0.63) / 0.16) ** 2, 0, None))
    bone = 0.8 * slab(0, 0.03)  # spine
    gap = rng.uniform(0.055, 0.065)
    for i in range(10):  # posterior ribs: from the spine up and out, then down along the chest wall
        y0 = shoulders + 0.04 + i * gap
        for side in (-1, 1):
            u = np.clip(side * xx, 0, None)
            arc = y0 - 0.25 * u + 1.6 * u**2
            bone += 0.5 * (np.abs(yy - arc) < 0.008 + 0.01 * u) * (u > 0.03) * (u < 0.4)
    for side in (-1, 1):  # clavicles and the upper arms at the edges
        u = side * xx
        bone += 0.7 * (np.abs(yy - shoulders - 0.02 + 0.1 * u) < 0.012) * (u > 0.03) * (u < 0.3)
        bone += 1.2 * slab(side * rng.uniform(0.44, 0.47), 0.025) * (yy > shoulders)
    return body - 0.85 * lungs + 0.5 * heart + bone


def chest_radiographs(n: int = 12, size: int = 256, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Chest X-ray-like images: frontal projections of random thorax phantoms, displayed as a radiograph
    (bone white, lungs dark, air outside the body black), with detector blur and quantum noise.

    No chest X-ray ships with the packages here, so a digitally reconstructed radiograph stands in: the
    point is an image a user could plausibly upload that shares the MRI slice's dark background (the border
    check cannot catch it), so only the feature score can."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        attenuation = _thorax_attenuation(rng, size)
        img = 1 - np.exp(-rng.uniform(1.2, 2.0) * np.clip(attenuation, 0, None))
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5)) + rng.normal(0, rng.uniform(0.005, 0.03), img.shape)
        img = np.clip(img, 0, None) ** rng.uniform(0.7, 1.3)  # display window / look-up table
        out.append((f"chest radiograph {i}", (img / max(img.max(), 1e-6) * 255).astype(np.float32)))
    return out


# Real clinical images that pydicom ships as test files (no download). Names as they show in the result;
# examples_jpeg2k.dcm is left out (the same ultrasound frame as examples_rgb_color.dcm).
PYDICOM_OTHER_MODALITIES = {
    "693_J2KI.dcm": "head CT, axial, brain level",
    "J2K_pixelrep_mismatch.dcm": "head CT, axial, skull base",
    "CT_small.dcm": "CT, thoracic spine",
    "JPEG2000.dcm": "nuclear medicine, whole-body bone scan",
    "examples_palette.dcm": "ultrasound (palette colour)",
    "examples_rgb_color.dcm": "ultrasound, lymph node (RGB)",
    "examples_ybr_color.dcm": "ultrasound (YBR, multi-frame)",
    "ExplVR_BigEnd.dcm": "ultrasound, small (RGB)",
}
PYDICOM_OTHER_MRI = {
    "examples_overlay.dcm": "MRI of the abdomen (liver, kidneys)",
    "MR_small.dcm": "MR test image, 64 x 64 (anatomy not stated)",
}


def pydicom_files(which: dict[str, str]) -> tuple[list[str], list[str]]:
    """Paths and names of pydicom's bundled test files in ``which`` (read by the bundle like any upload)."""
    from pydicom.data import get_testdata_file

    paths = [str(get_testdata_file(name)) for name in which]
    return paths, [f"{desc} ({name})" for name, desc in which.items()]


def photo_files(photos: list[tuple[str, np.ndarray]], folder: Path) -> list[str]:
    """The photographs as JPEG files: colour uploads go through the reader's grayscale conversion like a user's."""
    from PIL import Image

    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for i, (_, img) in enumerate(photos):
        path = folder / f"photo{i}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


REASONS = {"flagged_features": "unlike the training images (out-of-domain score",
           "flagged_block_stats": "unlike the training images (low-level", "flagged_colour": "colour image",
           "flagged_border": "no dark background"}  # fmt: skip
"""Which check flagged an image, from the first words of its ``ood_reasons``."""


def flagged(predictor, inputs: list, names: list[str] | None = None) -> dict:
    """Gate statistics of one set; with ``names`` (small sets) every image that passes is listed too."""
    preds = [p for p in predictor.predict(inputs) if hasattr(p, "in_domain")]
    flags = [p.in_domain is False for p in preds]
    out = {"n": len(preds), "flagged": float(np.mean(flags)) if flags else None,
           "median_score": float(np.median([p.ood_score for p in preds])) if preds else None}  # fmt: skip
    for key, prefix in REASONS.items():
        hits = [any(r.startswith(prefix) for r in getattr(p, "ood_reasons", [])) for p in preds]
        out[key] = float(np.mean(hits)) if hits else None
    passed = [p for p in preds if p.in_domain is not False]
    # the failure that matters: passes the gate, is not sent to review, and gets a confident class
    silent = [not p.review and max(p.probabilities.values()) >= 0.9 for p in passed]
    out["confident_unflagged"] = float(np.sum(silent) / len(preds)) if preds else None
    out["passed_labels"] = dict(Counter(p.label for p in passed))
    if names is not None:
        by_source = dict(zip(inputs, names, strict=True))
        out["passed"] = [
            {
                "image": by_source.get(p.source, p.source),
                "label": p.label,
                "p": round(max(p.probabilities.values()), 3),
                "review": p.review,
            }
            for p in passed
        ]
    return out


def named(predictor, images: list[tuple[str, np.ndarray]], folder: Path) -> dict:
    """``flagged`` for a small named set (files written to ``folder``), listing what passes the gate."""
    return flagged(predictor, photo_files(images, folder), [name for name, _ in images])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--split", required=True, help="split.json of the bundle's training data (test split used)")
    ap.add_argument("--limit", type=int, default=300, help="images per MRI set")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ood_check.json"))
    args = ap.parse_args()

    import brainmri
    from brainmri.data.manifest import read_manifest
    from brainmri.data.split import read_split, split_frame
    from brainmri.utils import atomic_write_json, machine_facts

    rng = np.random.default_rng(0)
    split = read_split(args.split)
    test = list(split_frame(read_manifest(split["manifest"]), split, "test")["path"])
    lgg = sorted(str(p) for p in (SHARED / "lgg-flair").rglob("*.png"))
    nav = sorted(str(p) for p in (SHARED / "navoneel").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))

    def sample(paths: list[str]) -> list[str]:
        return [paths[i] for i in sorted(rng.choice(len(paths), min(args.limit, len(paths)), replace=False))]

    photos = photographs()
    colour_photos, grey_photos = skimage_photos()
    phantoms = ct_phantoms()
    chests = chest_radiographs()
    with brainmri.load_bundle(args.bundle) as predictor, tempfile.TemporaryDirectory() as tmp:
        if predictor.ood is None:
            raise SystemExit(f"{args.bundle}: exported without an out-of-domain score (run brainmri evaluate first)")
        result = {
            "benchmark": "ood_check (bench/ood_check.py)",
            "command": "python " + " ".join(["bench/ood_check.py", *sys.argv[1:]]),
            "settings": {
                "limit": args.limit,
                "split": str(Path(args.split).resolve()),
                "sample_seed": 0,
                "generated_seed": 0,
            },
            "bundle": str(args.bundle),
            "bundle_card_sha256": predictor.bundle.card_sha256,
            "threshold": predictor.ood.threshold_,
            "threshold_block_stats": None if predictor.ood_blocks is None else predictor.ood_blocks.threshold_,
            "input_checks": predictor.input_checks.to_dict(),
            "sets": {
                "in-domain test split": flagged(predictor, sample(test)),
                "photographs (pip sample images)": flagged(predictor, photo_files(photos, Path(tmp))),
                "colour photographs (scikit-image)": named(predictor, colour_photos, Path(tmp) / "c"),
                "grayscale photographs (scikit-image)": named(predictor, grey_photos, Path(tmp) / "g"),
                "CT-like head phantom (scikit-image)": named(predictor, phantoms, Path(tmp) / "ct"),
                "chest X-ray-like (generated radiographs)": named(predictor, chests, Path(tmp) / "cxr"),
                "generated noise/texture/pattern images": flagged(predictor, generated_images()),
                "real CT, nuclear medicine, ultrasound (pydicom)": flagged(
                    predictor, *pydicom_files(PYDICOM_OTHER_MODALITIES)
                ),
                "MRI of other body parts (pydicom)": flagged(predictor, *pydicom_files(PYDICOM_OTHER_MRI)),
                "lgg-flair (FLAIR, other hospital)": flagged(predictor, sample(lgg)),
                "navoneel": flagged(predictor, sample(nav)),
            },
            "photographs": [name for name, _ in photos + colour_photos + grey_photos],
            "ct_like": [name for name, _ in phantoms],
            "chest_like": [name for name, _ in chests],
            "machine": machine_facts(),
        }
    atomic_write_json(args.out, result)
    for name, r in result["sets"].items():
        parts = " ".join(f"{k.removeprefix('flagged_')} {r[k]:.1%}" for k in REASONS)
        print(f"{name:45s} n={r['n']:4d} flagged {r['flagged']:.1%} ({parts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
