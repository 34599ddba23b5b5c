"""The preprocessing ablation, run honestly: every preset x seeds with one fixed recipe -> ablation.json.

The reference design's README claims raw 87.3/71.2 -> +crop 94.1/74.8 -> +N4 96.8/79.1 -> +Nyul 98.4/82.5
-> full 99.2/84.0 (internal/external accuracy) but its code never ran the study. Here each preset of
``brainmri.preprocess.presets`` is fitted on the training split (Nyul landmarks on train only), the same
recipe is trained with several seeds, and every model is scored on the held-out test split and zero-shot
on lgg-flair (patients known: patient-level bootstrap) and navoneel (train+val overlap removed).

The recipe is the project's **stage 1 on cached frozen features** (``train.fit_head``: frozen ImageNet
EfficientNet-Lite0 at 192 px, linear head, AdamW + cosine, label smoothing, class weights, 30 epochs,
best epoch by validation macro-F1) -- the full CPU recipe's fine-tuning costs ~20 min per model on 2
cores, 15 models would not fit. Consequences, stated in the JSON: no augmentation, and the seed only
changes the head's initialisation and batch order, so the seed-to-seed spread is small; the image- or
patient-level bootstrap CI is the uncertainty that matters. Fine-tuning could change the ranking.

CIs: percentile bootstrap of the seed-averaged metric (the same resample weights for every seed and
every preset, so differences between presets are paired). ``python bench/ablation.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from robustness import build_manifest_file, git_commit, patient_groups  # noqa: E402

PRESETS = ["raw", "crop", "crop+n4", "crop+n4+nyul", "full"]
#: Quoted from the reference design's README (issue 13): claims, not measurements of this project.
REFERENCE_CLAIMS = {
    "source": "reference design README, as quoted in issue 13 (internal / external accuracy, %)",
    "raw": [87.3, 71.2],
    "crop": [94.1, 74.8],
    "crop+n4": [96.8, 79.1],
    "crop+n4+nyul": [98.4, 82.5],
    "full": [99.2, 84.0],
}
N_BOOT = 1000
BOOT_SEED = 0


def load_cfg(recipe: Path, preset: str, work: Path, seed: int = 0):
    from brainmri.config import load_config

    return load_config(
        recipe, [f"preprocess.preset={preset}", f"paths.work_dir={work}", f"train.seed={seed}", "train.stage2.epochs=0"]
    )


def overlap_mask(frame, seen) -> np.ndarray:
    """True for rows of ``frame`` that are neither exact (md5) nor near (pHash <= 4) copies of ``seen``."""
    from brainmri.data.duplicates import hash_words, nearest

    exact = frame["md5"].isin(set(seen["md5"])).to_numpy()
    _, dist = nearest(hash_words(list(frame["phash"])), hash_words(list(seen["phash"])))
    return ~(exact | (dist <= 4))


def external_frames(cfg, split: dict, manifest, roots: dict[str, Path], work: Path) -> dict[str, Any]:
    """Readable rows of each external set; navoneel without its train+val overlap (lgg-flair: other source)."""
    from brainmri.data.manifest import read_manifest
    from brainmri.data.split import split_frame

    seen = split_frame(manifest, split, "trainval")
    out = {}
    for name, root in roots.items():
        frame = read_manifest(build_manifest_file(root, cfg, work / f"{name}_manifest.csv"))
        frame = frame[frame["readable"].astype(str).str.lower() == "true"].reset_index(drop=True)
        keep = overlap_mask(frame, seen) if name == "navoneel" else np.ones(len(frame), bool)
        out[name] = (frame[keep].reset_index(drop=True), {"n_readable": len(frame), "n_removed": int((~keep).sum())})
    return out


def preset_images(cfg, split_path: Path, split: dict, manifest, ext_frames: dict) -> dict[str, Any]:
    """Preprocess (fit on train, cache) and load every part: train/val/test from the cache, externals by file."""
    from brainmri.data.split import split_frame
    from brainmri.layout import Layout
    from brainmri.preprocess.cache import PreprocessedCache, build_cache, preprocess_dir_for
    from brainmri.runs import images_from_cache, images_from_files

    root = Layout.from_config(cfg.paths).preprocess_root
    report = build_cache(cfg.preprocess, cfg.data, split["manifest"], split_path, root, workers=2)
    cache = PreprocessedCache(preprocess_dir_for(cfg.preprocess, root))
    classes = cfg.data.classes
    parts = {p: images_from_cache(split_frame(manifest, split, p), cache, classes) for p in ("train", "val", "test")}
    pre = cache.preprocessor()
    for name, (frame, _) in ext_frames.items():
        parts[name] = images_from_files(frame, pre, classes)
    return {"parts": parts, "failed": len(report.failed), "fitted_on": report.fitted_on}


def features_of(cfg, parts: dict[str, Any]) -> dict[str, np.ndarray]:
    import torch

    from brainmri.models import create_model
    from brainmri.runs import predict_features

    model = create_model(cfg.model, len(cfg.data.classes)).eval()
    model.to(memory_format=torch.channels_last)
    return {p: predict_features(model, s.images, 64, desc=f"features {p}") for p, s in parts.items()}


def train_seed(cfg, feats: dict[str, np.ndarray], labels: dict[str, np.ndarray], tmp: Path) -> dict[str, Any]:
    """One seed of the stage-1 recipe on fixed features; logits of every evaluated part."""
    import lightning as L
    import torch
    from safetensors.torch import load_file

    from brainmri.models import create_model
    from brainmri.train.trainer import BestWeights, HeadData, fit_head

    L.seed_everything(cfg.train.seed, verbose=False)
    model = create_model(cfg.model, len(cfg.data.classes))
    tensor = {p: torch.from_numpy(f) for p, f in feats.items()}
    best = BestWeights(tmp / "head.safetensors", cfg.train.monitor, cfg.train.monitor_mode)
    data = HeadData(tensor["train"], labels["train"], tensor["val"], labels["val"])
    history: list[dict[str, Any]] = []
    fit_head(model, cfg, data, best, history)
    model.load_state_dict(load_file(str(best.path)))
    model.eval()
    with torch.inference_mode():
        logits = {p: model.forward_classifier(tensor[p]).numpy() for p in feats if p != "train"}
    return {"logits": logits, "best_epoch": best.best_epoch, "best_val": best.best}


def run_preset(args, preset: str, split_path: Path, split: dict, manifest, ext_frames: dict) -> Path:
    """Everything for one preset; logits of every seed saved to ``<work>/<preset>.npz`` (resumable)."""
    out = args.work / f"{preset.replace('+', '_')}.npz"
    if out.is_file():
        return out
    cfg = load_cfg(args.recipe, preset, args.work)
    t0 = time.perf_counter()
    data = preset_images(cfg, split_path, split, manifest, ext_frames)
    t_pre = time.perf_counter() - t0
    feats = features_of(cfg, data["parts"])
    t_feat = time.perf_counter() - t0 - t_pre
    labels = {p: s.labels for p, s in data["parts"].items()}
    arrays: dict[str, np.ndarray] = {f"labels_{p}": labels[p] for p in labels if p != "train"}
    arrays |= {f"names_{p}": np.array(data["parts"][p].label_names) for p in ("lgg-flair", "navoneel")}
    arrays["ids_lgg-flair"] = np.array(data["parts"]["lgg-flair"].ids)
    arrays["ids_test"] = np.array(data["parts"]["test"].ids)  # for resampling the split's scan groups
    info = {"preset": preset, "preprocess_seconds": round(t_pre, 1), "feature_seconds": round(t_feat, 1)}
    info |= {"failed": data["failed"], "nyul_fitted_on": data["fitted_on"], "seeds": {}}
    for seed in args.seeds:
        r = train_seed(load_cfg(args.recipe, preset, args.work, seed), feats, labels, args.work)
        arrays |= {f"logits_{p}_seed{seed}": v for p, v in r["logits"].items()}
        info["seeds"][str(seed)] = {"best_epoch": r["best_epoch"], "best_val_macro_f1": r["best_val"]}
        print(f"{preset} seed {seed}: best {r['best_epoch']} val macro-F1 {r['best_val']:.4f}", flush=True)
    arrays["info"] = np.array(json.dumps(info))
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- statistics


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def metric_draws(kind: str, w: np.ndarray, logits: np.ndarray, labels: np.ndarray, no: int) -> np.ndarray:
    """(B+1,) values of one metric: the point value (weights 1) first, then one per resample. ``labels`` are
    class indices for ``accuracy4`` and 1 = tumour / 0 = no tumour for the tumour metrics (``part_labels``)."""
    from brainmri.evaluate.metrics import weighted_auc

    w = np.vstack([np.ones(w.shape[1]), w])
    p = softmax(logits)
    if kind == "accuracy4":
        hit = (p.argmax(1) == labels).astype(float)
    elif kind == "tumour_accuracy":
        hit = ((p.argmax(1) != no) == labels).astype(float)
    else:  # tumour AUC: P(tumour) = 1 - P(no_tumor)
        return weighted_auc(w, 1.0 - p[:, no], labels.astype(bool))
    return (w @ hit) / w.sum(1)


METRICS = {  # name -> (part, kind, resampling)
    "test_accuracy": ("test", "accuracy4", "scan groups"),
    "test_tumour_auc": ("test", "auc", "scan groups"),
    "lgg_flair_auc": ("lgg-flair", "auc", "patients"),
    "lgg_flair_accuracy": ("lgg-flair", "tumour_accuracy", "patients"),
    "navoneel_auc": ("navoneel", "auc", "images"),
    "navoneel_accuracy": ("navoneel", "tumour_accuracy", "images"),
}


def part_labels(z, part: str, kind: str, no: int, no_name: str = "no_tumor") -> np.ndarray:
    """What ``metric_draws`` compares against: the test split's class indices for 4-class accuracy, else
    1 = tumour (the test split's labels binarised; the external sets' tumour folders)."""
    if part == "test":
        labels = z["labels_test"]
        return labels if kind == "accuracy4" else (labels != no).astype(int)
    return (z[f"names_{part}"] != no_name).astype(int)


def weights_for(z, part: str, resampling: str, lgg_root: Path, split: dict | None = None) -> np.ndarray:
    """Bootstrap multiplicities: lgg-flair's patients, the test split's recorded scan groups (images for a
    split file without groups), navoneel's images."""
    from brainmri.data.split import group_labels
    from brainmri.evaluate.metrics import bootstrap_counts

    n = len(z[f"labels_{part}"])
    groups = None
    if resampling == "patients":
        groups = np.array(patient_groups(list(z["ids_lgg-flair"]), lgg_root))
    elif resampling == "scan groups" and split is not None:
        groups = group_labels(split, list(z["ids_test"]))
    return bootstrap_counts(n, N_BOOT, BOOT_SEED, groups)


def summarise(
    npz: dict[str, Path], seeds: list[int], classes: list[str], lgg_root: Path, split: dict | None = None
) -> dict[str, Any]:
    """Per preset and metric: per-seed values, mean, sd, bootstrap CI of the seed mean, paired difference vs raw."""
    no = classes.index("no_tumor")
    draws: dict[str, dict[str, np.ndarray]] = {}
    out: dict[str, Any] = {}
    for preset, path in npz.items():
        z = np.load(path, allow_pickle=False)
        out[preset] = {"info": json.loads(str(z["info"])), "metrics": {}}
        draws[preset] = {}
        for name, (part, kind, resampling) in METRICS.items():
            y = part_labels(z, part, kind, no)
            w = weights_for(z, part, resampling, lgg_root, split)
            per_seed = np.stack([metric_draws(kind, w, z[f"logits_{part}_seed{s}"], y, no) for s in seeds])
            mean_draws = per_seed.mean(0)
            draws[preset][name] = mean_draws
            out[preset]["metrics"][name] = {
                "mean": float(mean_draws[0]),
                "sd_over_seeds": float(per_seed[:, 0].std(ddof=1)) if len(seeds) > 1 else None,
                "per_seed": [float(v) for v in per_seed[:, 0]],
                "ci95": [float(np.nanpercentile(mean_draws[1:], q)) for q in (2.5, 97.5)],
                "n": len(y),
                "resampling": resampling,
            }
    for preset in npz:
        for name in METRICS:
            if "raw" in draws and preset != "raw":
                d = draws[preset][name] - draws["raw"][name]
                out[preset]["metrics"][name]["minus_raw"] = {
                    "value": float(d[0]),
                    "ci95": [float(np.nanpercentile(d[1:], q)) for q in (2.5, 97.5)],
                }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", type=Path, required=True, help="split.json of `brainmri data split`")
    ap.add_argument("--recipe", type=Path, default=REPO / "configs/cpu-fast.yaml")
    ap.add_argument("--work", type=Path, default=Path("/tmp/brainmri-ablation"), help="caches and logits")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--lgg", type=Path, default=REPO.parent / "shared/data/lgg-flair")
    ap.add_argument("--navoneel", type=Path, default=REPO.parent / "shared/data/navoneel/brain_tumor_dataset")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/ablation.json")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.presets = args.presets.split(",")
    args.split, args.work = args.split.resolve(), args.work.resolve()
    args.lgg, args.navoneel, args.recipe = args.lgg.resolve(), args.navoneel.resolve(), args.recipe.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    from brainmri.data.manifest import read_manifest
    from brainmri.data.split import read_split
    from brainmri.utils import atomic_write_json, machine_facts, setup_torch

    args = parse_args(argv)
    setup_torch()
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(project_of(args.split))  # the split names its manifest relative to the project that wrote it
    split = read_split(args.split)
    manifest = read_manifest(split["manifest"])
    cfg = load_cfg(args.recipe, "raw", args.work)
    ext = external_frames(cfg, split, manifest, {"lgg-flair": args.lgg, "navoneel": args.navoneel}, args.work)
    npz = {p: run_preset(args, p, args.split, split, manifest, ext) for p in args.presets}
    result = {
        "benchmark": "preprocessing ablation (bench/ablation.py)",
        "command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])]),
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": {
            "config": os.path.relpath(args.recipe, REPO),
            "what": "stage 1 only: frozen ImageNet backbone, linear head on cached pooled features "
            "(train.fit_head), train.stage2.epochs=0; no augmentation",
            "why": "the full CPU recipe (fine-tuning) costs ~20 min per model on 2 cores; "
            "5 presets x 3 seeds would not fit",
            "seed_effect": "head initialisation and batch order only (frozen features), so seed spread is small",
        },
        "seeds": args.seeds,
        "split": str(args.split),
        "external": {k: v[1] | {"n_evaluated": len(v[0])} for k, v in ext.items()},
        "ci": f"percentile bootstrap ({N_BOOT} resamples) of the seed-averaged metric; lgg-flair resamples "
        "patients, the test split its recorded scan groups, navoneel images; 'minus_raw' is the paired "
        "difference (same resamples)",
        "presets": summarise(npz, args.seeds, cfg.data.classes, args.lgg, split),
        "reference_claims": REFERENCE_CLAIMS,
        "seconds": round(time.perf_counter() - t0, 1),
        "load_avg": list(os.getloadavg()),
        "machine": machine_facts(),
    }
    atomic_write_json(args.out, result)
    print(render_markdown(result))
    return 0


def project_of(split_path: Path) -> Path:
    manifest = Path(json.loads(split_path.read_text())["manifest"])
    if manifest.is_absolute():
        return Path.cwd()
    for root in split_path.parents:
        if (root / manifest).is_file():
            return root
    raise SystemExit(f"{split_path}: cannot find its manifest {manifest} in any parent folder")


def _cell(m: dict[str, Any], pct: bool) -> str:
    k = 100 if pct else 1
    d = 1 if pct else 3
    lo, hi = m["ci95"]
    sd = f" ±{m['sd_over_seeds'] * k:.{d}f}" if m.get("sd_over_seeds") is not None else ""
    return f"{m['mean'] * k:.{d}f}{sd} ({lo * k:.{d}f}–{hi * k:.{d}f})"


def render_markdown(r: dict[str, Any]) -> str:
    """The README table: one row per preset, mean ± seed sd (95% CI), beside the reference's claims."""
    lines = [
        "| preset | test acc % | lgg-flair AUC | lgg-flair acc % | navoneel AUC | navoneel acc % "
        "| reference claim (int/ext %) |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset, p in r["presets"].items():
        m = p["metrics"]
        claim = r["reference_claims"].get(preset)
        lines.append(
            f"| {preset} | {_cell(m['test_accuracy'], True)} | {_cell(m['lgg_flair_auc'], False)} | "
            f"{_cell(m['lgg_flair_accuracy'], True)} | {_cell(m['navoneel_auc'], False)} | "
            f"{_cell(m['navoneel_accuracy'], True)} | {claim[0]} / {claim[1]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
