"""The deployed out-of-domain gate, score by score: what the low-level score adds to the feature score.

The feature score (``calibrate.ood.MahalanobisOOD`` on the pooled last-layer features) alone let some grayscale
non-MRI images through (`bench/results/ood_check_photos_ct.json` before the gate had two scores): the last layer
has learnt what separates the four classes, and a photograph can land near a class there. Lee et al. 2018 (the
Mahalanobis detector) score every stage of the network: early stages describe texture, noise and edge statistics,
which differ between an MRI slice and a photograph or a CT reconstruction whatever the class. Evaluation now fits
a second Mahalanobis score on the per-channel mean and std of timm feature stages 1-3
(``BrainClassifier.forward_block_stats``) and raises both thresholds together so that 95% of validation slices
pass both (``calibrate.ood.fit_joint_thresholds``); bundles carry both and the ONNX graph returns ``block_stats``.

This benchmark reads a run's fitted gate (``ood.json``, ``ood_blocks.json``; ``brainmri evaluate`` writes them)
and reports, per image set, the share flagged by: ``features_alone`` (the feature score at its own 95% validation
quantile: the one-score gate bundles had before), ``features`` and ``block_stats`` (each at the gate's
threshold) and ``gate`` (either fails: what predictions use). No input checks (colour, border) are applied here.

    python bench/ood_lowlevel.py --run runs/cpu-fast --out bench/results/ood_lowlevel.json

The stage choice (1, 2, 3) was made before looking at any result and not tuned (a first measurement used
EfficientNet blocks 1-3 instead of timm's stages 1-3: the 80-channel block in place of the 112-channel one);
the non-MRI sets are those of ``bench/ood_check.py`` (scikit-image photographs in grayscale, CT-like phantoms,
generated chest films, generated textures), each through the run's preprocessor as the predictor would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


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


def gate_rows(sets: dict[str, np.ndarray], scores, features_alone: float) -> dict[str, dict]:
    """Share of each set flagged by each score and by the gate; ``scores(images) -> (features, block_stats)``."""
    rows = {}
    for name, images in sets.items():
        (feat, feat_thr), (blocks, blocks_thr) = scores(images)
        row = {"n": len(images), "features_alone": float((feat > features_alone).mean()),
               "features": float((feat > feat_thr).mean()), "block_stats": float((blocks > blocks_thr).mean()),
               "gate": float(((feat > feat_thr) | (blocks > blocks_thr)).mean())}  # fmt: skip
        rows[name] = row
        print(f"{name:45s} n={row['n']:5d} features alone {row['features_alone']:.1%} | gate: features "
              f"{row['features']:.1%} block stats {row['block_stats']:.1%} either {row['gate']:.1%}")  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cache-dir", default=str(REPO / "work" / "robustness"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ood_lowlevel.json"))
    args = ap.parse_args()

    import robustness as rb
    from brainmri.calibrate.ood import ood_from_dict
    from brainmri.models.classifier import BLOCK_STAGES
    from brainmri.runs import Run
    from brainmri.utils import atomic_write_json, machine_facts, setup_torch

    setup_torch()
    run, cache, data = Run.load(Path(args.run)), Path(args.cache_dir), Path(args.data)
    if not run.ood_blocks_path.is_file():
        sys.exit(f"{run.ood_blocks_path}: missing; evaluate the run first (brainmri evaluate {args.run})")
    feat_score, block_score = (ood_from_dict(json.loads(p.read_text())) for p in (run.ood_path, run.ood_blocks_path))
    model = rb.FeatureModel(run, "torch", cache)  # the bundle graph's outputs, one pass

    def scores(images: np.ndarray):
        out = model.outputs(images)
        feats, blocks = feat_score.score(out["features"]), block_score.score(out["block_stats"])
        return (feats, feat_score.threshold_), (blocks, block_score.threshold_)

    sets = {"in-domain test split": run.load_images("test").images}
    sets["lgg-flair (FLAIR, other hospital)"] = rb.external_images(run, data / "lgg-flair", cache, False).images
    sets["navoneel (overlap removed)"] = rb.external_images(run, data / "navoneel", cache).images
    sets |= non_mri_sets(run.preprocessor())
    val = scores(run.load_images("val").images)
    features_alone = float(np.quantile(val[0][0], 0.95))
    val_pass = float(((val[0][0] <= val[0][1]) & (val[1][0] <= val[1][1])).mean())
    rows = gate_rows(sets, scores, features_alone)
    atomic_write_json(args.out, {
        "benchmark": "ood_lowlevel (bench/ood_lowlevel.py)",
        "command": "python " + " ".join(["bench/ood_lowlevel.py", *sys.argv[1:]]),
        "run": str(args.run), "stages": list(BLOCK_STAGES), "n_statistics": int(block_score.n_features_in_),
        "gate_quantile": feat_score.quantile_, "validation_pass_rate": val_pass,
        "thresholds": {"features_alone": features_alone, "features": feat_score.threshold_,
                       "block_stats": block_score.threshold_},
        "sets": rows, "machine": machine_facts(),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
