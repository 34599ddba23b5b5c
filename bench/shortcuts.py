"""How much of the class the training set's look gives away, and what group balancing does to a linear probe.

Usage: ``.venv/bin/python bench/shortcuts.py --run runs/cpu-fast [--out bench/results/shortcuts.json]``

Why (docs/robustness.md, "Look-alike groups"): the training images are grouped the way ``train.balance``
groups them (k-means on frozen ImageNet features of the run's preprocessed slices; the run only lends its
split and preprocessor, its own weights are not used). Reported:

- the group x class table of the training split, and where the external sets' tumour and no-tumour slices
  land (lgg-flair: all of it; navoneel: overlap with train + val removed);
- ``group_only_val_accuracy``: validation accuracy of "the majority training class of the image's group",
  a classifier that sees only the look (chance: the largest class share);
- a linear probe (logistic regression on the same frozen features) with class-balanced weights against
  ``GroupBalancer`` weights, for several group counts and k-means seeds: validation accuracy and zero-shot
  tumour AUC (1 - p(no_tumor)) on both external sets. A probe is minutes, a fine-tune is hours: this says
  whether the idea has a chance; ``bench/paired.py`` on fine-tuned runs says whether it pays.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def frozen_features(cfg, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pooled features of the pretrained backbone (what ``train.balance`` clusters), one model for every set."""
    from brainmri.models import create_model
    from brainmri.train.trainer import frozen_features as features

    model = create_model(cfg.model, len(cfg.data.classes))
    return {name: features(model, cfg, x, f"features ({name})").numpy() for name, x in images.items()}


def landing(groups: np.ndarray, y_tumour: np.ndarray, n_groups: int) -> list[list[int]]:
    """Per group: [tumour, no tumour] slices of an external set."""
    return [[int(((groups == g) & y_tumour).sum()), int(((groups == g) & ~y_tumour).sum())] for g in range(n_groups)]


def probe(f: dict[str, np.ndarray], y: dict[str, np.ndarray], weights: np.ndarray, no_tumor: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import normalize

    x = {k: normalize(v) * 10 for k, v in f.items()}
    clf = LogisticRegression(max_iter=3000).fit(x["train"], y["train"], sample_weight=weights)
    out = {"val_accuracy": round(float((clf.predict(x["val"]) == y["val"]).mean()), 4)}
    for name in ("lgg-flair", "navoneel"):
        p_tumour = 1 - clf.predict_proba(x[name])[:, no_tumor]
        out[f"{name}_auc"] = round(float(roc_auc_score(y[name], p_tumour)), 4)
    return out


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    from brainmri.runs import Run
    from brainmri.train.balance import GroupBalancer
    from brainmri.train.data import oversampling_weights
    from brainmri.utils import machine_facts, setup_torch
    from robustness import enter_project_of, external_images, git_commit

    setup_torch(args.threads)
    t0 = time.perf_counter()
    run = Run.load(Path(args.run).resolve())
    cache_dir = Path(args.cache_dir).resolve()
    enter_project_of(run)
    cache_dir.mkdir(parents=True, exist_ok=True)
    no_tumor = run.classes.index("no_tumor")
    data = {"train": run.load_images("train"), "val": run.load_images("val")}
    data["lgg-flair"] = external_images(run, Path(args.lgg), cache_dir, remove_overlap=False)
    data["navoneel"] = external_images(run, Path(args.navoneel), cache_dir)
    f = frozen_features(run.cfg, {k: d.images for k, d in data.items()})
    y = {k: data[k].labels for k in ("train", "val")}
    y |= {k: np.asarray(data[k].label_names) != "no_tumor" for k in ("lgg-flair", "navoneel")}
    n_classes = len(run.classes)
    class_w = oversampling_weights(y["train"], n_classes)
    rows = [{"weights": "class-balanced", **probe(f, y, class_w / class_w.mean(), no_tumor)}]
    tables = {}
    for n_groups in args.groups:
        for seed in args.seeds:
            b = GroupBalancer(n_groups, args.max_weight, seed=seed).fit(f["train"], y["train"], n_classes)
            row = {"weights": "group-balanced", "groups": n_groups, "seed": seed}
            rows.append(row | probe(f, y, b.weights_, no_tumor))
            print(rows[-1], flush=True)
            if seed == args.seeds[0]:
                tables[str(n_groups)] = group_table(b, f, y, n_groups)
    return {
        "benchmark": "shortcuts (bench/shortcuts.py)", "run": run.name, "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "classes": run.classes,
        "settings": {"max_weight": args.max_weight, "groups": args.groups, "seeds": args.seeds,
                     "features": f"frozen {run.cfg.model.backbone} ({run.cfg.model.weights} weights)",
                     "n": {k: len(v) for k, v in f.items()}},
        "groups": tables, "linear_probe": rows,
        "seconds": round(time.perf_counter() - t0, 1), "machine": machine_facts(),
    }  # fmt: skip


def group_table(b, f: dict[str, np.ndarray], y: dict[str, np.ndarray], n_groups: int) -> dict[str, Any]:
    """The group x class table, where the external sets land, and the look-only classifier's accuracy."""
    majority = b.table_.argmax(1)
    val_groups = b.predict(f["val"])
    out = {
        "train_table": b.table_.tolist(),
        "group_only_val_accuracy": round(float((majority[val_groups] == y["val"]).mean()), 4),
        "largest_class_share_val": round(float(np.bincount(y["val"]).max() / len(y["val"])), 4),
    }
    for name in ("lgg-flair", "navoneel"):
        out[f"{name}_tumour_no_tumour"] = landing(b.predict(f[name]), y[name], n_groups)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run folder: its split and preprocessor are used")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "shortcuts.json"))
    p.add_argument("--groups", type=int, nargs="+", default=[8, 12, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 3])
    p.add_argument("--max-weight", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lgg", default=str(SHARED / "lgg-flair"))
    p.add_argument("--navoneel", default=str(SHARED / "navoneel"))
    p.add_argument("--cache-dir", default=str(REPO / "work" / "robustness"),
                   help="manifests and preprocessed external sets (shared with bench/robustness.py)")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = str(Path(args.out).resolve())
    result = run_study(args)
    from brainmri.utils import atomic_write_json

    atomic_write_json(Path(args.out), result)
    print(f"{result['seconds']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO / "bench"))
    sys.exit(main())
