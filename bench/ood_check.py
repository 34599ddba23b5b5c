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
  slice) and generated images (noise, textures, gradients, checkerboards, text-like stripes) — should be
  flagged;
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


REASONS = {"flagged_features": "unlike the training images", "flagged_colour": "colour image",
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
            "input_checks": predictor.input_checks.to_dict(),
            "sets": {
                "in-domain test split": flagged(predictor, sample(test)),
                "photographs (pip sample images)": flagged(predictor, photo_files(photos, Path(tmp))),
                "colour photographs (scikit-image)": named(predictor, colour_photos, Path(tmp) / "c"),
                "grayscale photographs (scikit-image)": named(predictor, grey_photos, Path(tmp) / "g"),
                "CT-like head phantom (scikit-image)": named(predictor, phantoms, Path(tmp) / "ct"),
                "generated noise/texture/pattern images": flagged(predictor, generated_images()),
                "lgg-flair (FLAIR, other hospital)": flagged(predictor, sample(lgg)),
                "navoneel": flagged(predictor, sample(nav)),
            },
            "photographs": [name for name, _ in photos + colour_photos + grey_photos],
            "ct_like": [name for name, _ in phantoms],
            "machine": machine_facts(),
        }
    atomic_write_json(args.out, result)
    for name, r in result["sets"].items():
        parts = " ".join(f"{k.removeprefix('flagged_')} {r[k]:.1%}" for k in REASONS)
        print(f"{name:45s} n={r['n']:4d} flagged {r['flagged']:.1%} ({parts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
