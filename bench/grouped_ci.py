"""How much too narrow are per-image confidence intervals on the test split? Image vs scan-group bootstrap.

Usage::

    .venv/bin/python bench/grouped_ci.py --split work/data/split.json \\
        --run seed42=runs/a/reports/predictions.csv --run seed7=runs/b/reports/predictions.csv \\
        --out bench/results/grouped_ci.json

Each ``--run NAME=CSV`` is a ``predictions.csv`` written by ``brainmri evaluate RUN --split test`` (its
calibrated probabilities ``p_<class>``, ``p_tumour`` and ``tumour_call``). The split file must record its
groups (written by ``brainmri data split`` since groups are recorded). For every run, the same metrics get
a 95% interval twice: resampling single slices (what evaluate did before) and resampling whole scan
groups (what it does now). Why: adjacent slices of one scan are right or wrong together, so treating
them as independent pretends the test split holds more evidence than it does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
N_BOOT, SEED = 2000, 0
METRICS = ("accuracy", "f1_macro", "ece", "tumour_auc", "tumour_sensitivity")


def interval(e: dict[str, Any]) -> dict[str, Any]:
    return {"value": e["value"], "ci": [e["ci_low"], e["ci_high"]], "width": e["ci_high"] - e["ci_low"],
            "method": e["ci_method"]}  # fmt: skip


def one_run(frame: pd.DataFrame, classes: list[str], groups: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro F1, ECE, tumour AUC and sensitivity at the run's threshold, both ways."""
    from brainmri.evaluate.metrics import binary_metrics, compute_metrics

    probs = frame[[f"p_{c}" for c in classes]].to_numpy(np.float64)
    probs /= probs.sum(1, keepdims=True)
    y = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    yt = (y != classes.index("no_tumor")).astype(int)
    called = frame["tumour_call"].astype(bool).to_numpy()
    threshold = float(frame.loc[called, "p_tumour"].min()) if called.any() else 1.0
    out: dict[str, Any] = {}
    for name, g in (("images", None), ("scan_groups", groups)):
        multi = compute_metrics(probs, y, classes, n_bootstrap=N_BOOT, seed=SEED, groups=g)
        tumour = binary_metrics(frame["p_tumour"].to_numpy(), yt, threshold, n_bootstrap=N_BOOT, seed=SEED, groups=g)
        out[name] = {
            "accuracy": interval(multi["accuracy"]),
            "f1_macro": interval(multi["f1_macro"]),
            "ece": interval(multi["ece"]),
            "tumour_auc": interval(tumour["auc"]),
            "tumour_sensitivity": interval(tumour["sensitivity"]),
        }
    out["width_ratio"] = {k: out["scan_groups"][k]["width"] / out["images"][k]["width"] for k in out["images"]}
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO / "src"))
    from brainmri.data.split import group_labels, read_split
    from brainmri.utils import atomic_write_json, machine_facts

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", required=True, help="split.json that records its groups")
    ap.add_argument("--run", action="append", required=True, metavar="NAME=CSV", help="a test predictions.csv")
    ap.add_argument("--out", default=str(REPO / "bench/results/grouped_ci.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    split = read_split(args.split)
    if "groups" not in split:
        raise SystemExit(f"{args.split}: records no groups; re-run `brainmri data split`")
    runs: dict[str, Any] = {}
    for spec in args.run:
        name, _, csv = spec.partition("=")
        frame = pd.read_csv(csv)
        if sorted(frame["id"]) != sorted(split["test"]):
            raise SystemExit(f"{csv}: does not hold the test split of {args.split}")
        groups = group_labels(split, list(frame["id"]))
        runs[name] = one_run(frame, list(split["classes"]), groups) | {"predictions": csv}
    test_groups = group_labels(split, split["test"])
    sizes = np.bincount(np.unique(test_groups, return_inverse=True)[1])
    result = {
        "split": args.split,
        "test_images": len(split["test"]),
        "test_groups": len(sizes),
        "largest_group": int(sizes.max()),
        "images_in_groups_of_2_or_more": int(sizes[sizes > 1].sum()),
        "bootstrap": {"resamples": N_BOOT, "seed": SEED, "level": 0.95},
        "runs": runs,
        "mean_width_ratio": {k: float(np.mean([r["width_ratio"][k] for r in runs.values()])) for k in METRICS},
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_facts(),
    }
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}: mean width ratio {result['mean_width_ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
