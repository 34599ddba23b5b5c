"""A candidate for the out-of-domain gate: a Mahalanobis score on low-level feature statistics.

The deployed feature score (``calibrate.ood.MahalanobisOOD`` on the pooled last-layer features) lets some
grayscale non-MRI images through (`bench/results/ood_check_photos_ct.json`): the last layer has learnt what
separates the four classes, and a photograph can land near a class there. Lee et al. 2018 (the Mahalanobis
detector) score every stage of the network, not only the last: early layers describe texture, noise and edge
statistics, which differ between an MRI slice and a photograph or a CT reconstruction whatever the class.

This benchmark measures that idea without changing the product: the per-channel mean and standard deviation
of the outputs of the early blocks (``--blocks``, timm ``backbone.blocks`` indices) of a trained run, a
``MahalanobisOOD`` fitted on the training split (class means, shared covariance, as the deployed score), a
threshold that passes 95% of validation slices, and the share each image set gets flagged, beside the run's
deployed feature score (its ``ood.json``) on the same preprocessed images; ``either``: flagged by one of the
two at those thresholds; ``joint``: both thresholds raised to one common validation quantile so that 95% of
validation slices pass both (the gate a deployment would use). No input checks (colour, border)
are applied here: both columns are feature scores alone.

    python bench/ood_lowlevel.py --run runs/cpu-fast --out bench/results/ood_lowlevel.json

The block choice (1, 2, 3) was made before looking at any result and not tuned; the non-MRI sets are those
of ``bench/ood_check.py`` (scikit-image photographs in grayscale, CT-like phantoms, generated chest films,
generated textures), each through the run's preprocessor as the predictor would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def block_statistics(model, images: np.ndarray, blocks: tuple[int, ...], batch_size: int = 64) -> np.ndarray:
    """(N, D) per-channel mean and std of the named early blocks' outputs for uint8 (N, S, S) slices."""
    import torch

    backbone, out = model.backbone, []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size].astype(np.float32)[:, None] / 255.0)
            f, stats = backbone.bn1(backbone.conv_stem(model.normalise(x))), []
            for i, block in enumerate(backbone.blocks[: max(blocks) + 1]):
                f = block(f)
                if i in blocks:
                    stats += [f.mean((2, 3)), f.std((2, 3))]
            out.append(torch.cat(stats, 1).float().numpy())
    return np.concatenate(out)


def non_mri_sets(preprocessor) -> dict[str, np.ndarray]:
    """The non-MRI images of ``bench/ood_check.py`` as the run's preprocessor outputs (uint8 slices)."""
    import ood_check

    def prepared(images: list[np.ndarray]) -> np.ndarray:
        return np.stack([preprocessor(np.clip(img, 0, 255).astype(np.uint8)) for img in images])

    _, grey = ood_check.skimage_photos()
    return {
        "grayscale photographs (scikit-image)": prepared([img for _, img in grey]),
        "CT-like head phantom (scikit-image)": prepared([img for _, img in ood_check.ct_phantoms()]),
        "chest X-ray-like (generated radiographs)": prepared([img for _, img in ood_check.chest_radiographs()]),
        "generated noise/texture/pattern images": prepared(ood_check.generated_images()),
    }


def joint_thresholds(a: np.ndarray, b: np.ndarray, target: float = 0.95) -> tuple[float, float, float]:
    """Thresholds on two validation score arrays at one common quantile q, the smallest q (step 0.001) at which
    ``target`` of the validation images pass both: a gate of two scores with the in-domain pass rate of one."""
    for q in np.arange(target, 1.0, 0.001):
        ta, tb = float(np.quantile(a, q)), float(np.quantile(b, q))
        if np.mean((a <= ta) & (b <= tb)) >= target:
            return ta, tb, float(q)
    return float(a.max()), float(b.max()), 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--blocks", default="1,2,3", help="indices into backbone.blocks whose outputs are summarised")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cache-dir", default=str(REPO / "work" / "robustness"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ood_lowlevel.json"))
    args = ap.parse_args()

    import robustness as rb
    from brainmri.calibrate.ood import MahalanobisOOD, ood_from_dict
    from brainmri.runs import Run
    from brainmri.utils import atomic_write_json, machine_facts, setup_torch

    setup_torch()
    blocks = tuple(int(b) for b in args.blocks.split(","))
    run, cache, data = Run.load(Path(args.run)), Path(args.cache_dir), Path(args.data)
    model, deployed = run.build_model(), ood_from_dict(json.loads(run.ood_path.read_text()))
    pooled = rb.FeatureModel(run, "torch", cache)
    train, val = run.load_images("train"), run.load_images("val")
    sets = {"in-domain test split": run.load_images("test").images}
    sets["lgg-flair (FLAIR, other hospital)"] = rb.external_images(run, data / "lgg-flair", cache, False).images
    sets["navoneel (overlap removed)"] = rb.external_images(run, data / "navoneel", cache).images
    sets |= non_mri_sets(run.preprocessor())

    low = MahalanobisOOD(n_components=128).fit(block_statistics(model, train.images, blocks), train.labels)

    def scores(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (deployed, low-level) per image
        return deployed.score(pooled(images)[1]), low.score(block_statistics(model, images, blocks))

    val_deployed, val_low = scores(val.images)
    low.fit_threshold(val_low, quantile=0.95)
    joint_dep, joint_low, joint_q = joint_thresholds(val_deployed, val_low)
    rows = {}
    for name, images in sets.items():
        deployed_score, low_score = scores(images)
        low_flags, deployed_flags = low_score > low.threshold_, deployed_score > deployed.threshold_
        row = {
            "n": len(images),
            "deployed_feature_score": float(deployed_flags.mean()),
            "low_level_score": float(low_flags.mean()),
            "either": float((low_flags | deployed_flags).mean()),
            "joint": float(((low_score > joint_low) | (deployed_score > joint_dep)).mean()),
        }
        rows[name] = row
        print(f"{name:45s} n={row['n']:5d} deployed {row['deployed_feature_score']:.1%} low-level "
              f"{row['low_level_score']:.1%} either {row['either']:.1%} joint {row['joint']:.1%}")  # fmt: skip
    atomic_write_json(args.out, {
        "benchmark": "ood_lowlevel (bench/ood_lowlevel.py)",
        "command": "python " + " ".join(["bench/ood_lowlevel.py", *sys.argv[1:]]),
        "run": str(args.run), "blocks": list(blocks), "n_statistics": int(low.n_features_in_),
        "threshold_quantile": 0.95, "joint_quantile": joint_q, "sets": rows, "machine": machine_facts(),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
