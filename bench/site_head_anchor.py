"""How much source skill does a site head keep, and what does the anchor cost at the site?

    python bench/site_head_anchor.py --run runs/cpu-fast --bundle bundles/cpu-fast \
        --out bench/results/site_head_anchor.json

On lgg-flair (all of it, split into two halves of whole patients), for each anchor weight: fit the site head on
one half (C fixed, the product's fit: ``brainmri.train.site_head.fit_site_head`` with stand-ins drawn from the
bundle's Mahalanobis gate), then measure the tumour AUC on the other half and the 4-class accuracy and tumour
AUC on the run's source test split with the correction applied. Means over the two directions. The run and the
bundle must be the same model (the bundle supplies temperature and gate, the run the source test images).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import robustness as rb

ANCHORS = [0.0, 0.0003, 0.001, 0.003, 0.01, 0.03]


def scores(site, source, head_fn, temperature: float, no: int) -> dict[str, float]:
    from scipy.special import softmax
    from sklearn.metrics import roc_auc_score

    (f, off, y, groups), (tl, tf, labels) = site, source
    out = []
    for test in [groups == g for g in np.unique(groups)]:
        head = head_fn(f[~test], off[~test], y[~test])
        z = tl / temperature
        z[:, no] -= head.correction(tf)
        p_source = softmax(z, axis=1)
        out.append(
            [
                roc_auc_score(y[test], off[test] + head.correction(f[test])),
                float((p_source.argmax(1) == labels).mean()),
                roc_auc_score(labels != no, 1.0 - p_source[:, no]),
            ]
        )
    site_auc, acc, auc = np.mean(out, axis=0)
    return {"site_auc": float(site_auc), "source_accuracy": float(acc), "source_tumour_auc": float(auc)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "lgg-flair"))
    ap.add_argument("--cache-dir", default="work/bench-robustness")
    ap.add_argument("--c", type=float, default=0.003)
    ap.add_argument("--out", default="bench/results/site_head_anchor.json")
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    from brainmri.bundle import Bundle
    from brainmri.runs import Run
    from brainmri.train.site_head import calibrated_log_odds, fit_site_head
    from brainmri.utils import atomic_write_json, machine_facts, setup_torch

    setup_torch()
    t0 = time.perf_counter()
    run, bundle, root, cache = Run.load(args.run), Bundle.load(args.bundle), Path(args.data), Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    model, no, temperature = rb.FeatureModel(run, "torch", cache), run.classes.index("no_tumor"), bundle.temperature
    data = rb.external_images(run, root, cache, remove_overlap=False)
    logits, feats = model(data.images)
    patients = np.array(rb.patient_groups(data.ids, root))
    halves = {p: i % 2 for i, p in enumerate(np.random.default_rng(0).permutation(np.unique(patients)))}
    y = np.array([name != "no_tumor" for name in data.label_names], float)
    site = (feats, calibrated_log_odds(logits, temperature, no), y, np.array([halves[p] for p in patients]))
    test = run.load_images("test")
    source = (*model(test.images), test.labels)
    stand_ins = bundle.ood().sample(2000, seed=0)
    rows = []
    for a in ANCHORS:
        grid = (a,) if a else ()

        def head_fn(f, off, yy, grid=grid):
            return fit_site_head(f, off, yy, np.arange(len(yy)) % 3, (args.c,), 3, stand_ins, grid, np.inf)

        rows.append({"anchor": a, **scores(site, source, head_fn, temperature, no)})
        print(rows[-1], flush=True)
    result = {
        "benchmark": "site_head_anchor",
        "run": str(args.run),
        "bundle": str(args.bundle),
        "set": str(root),
        "n_site": len(y),
        "n_patients": len(halves),
        "c": args.c,
        "stand_ins": 2000,
        "zero_shot_site_auc": float(roc_auc_score(y, site[1])),
        "source_accuracy_before": float((source[0].argmax(1) == test.labels).mean()),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_facts(),
    }
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
