"""Study level on lgg-flair: each patient's slices form a volume; how do slice probabilities add up to a study answer?

Usage: ``.venv/bin/python bench/study_level.py [--bundle /work/pipe/bundles/cpu-robust] [--out FILE]``

lgg-flair (``../shared/data/lgg-flair``, ``labels.csv``: file, label, patient, slice) holds 55 patients, *every*
one with a lower-grade glioma: a patient is tumour-positive at study level when any slice is ``tumor``, so all
55 studies are positive and a study-level specificity or AUC does not exist on this set. What is measured:

1. **Slice level** (reference): AUC of p_tumour = 1 - p(no_tumor), tumour vs lesion-free slices (patient
   bootstrap 95% CI), sensitivity and specificity at the bundle threshold with exact Clopper–Pearson CIs
   (these treat slices as independent, which they are not: the patient bootstrap CI is given beside them).
2. **Whole volumes** (55 positives): for each aggregate, the sensitivity at the bundle threshold with an exact
   CI, and the distribution of study scores.
3. **Size-matched windows** (a proxy for negatives, same scans): per patient, W = 5 consecutive slices centred
   on the lesion (positive) and, where the scan has one, W consecutive lesion-free slices at least 3 slices
   away from any tumour slice (negative; 53 of 55 patients). Equal W matters because max and noisy-OR grow
   with the number of slices. AUC (patient bootstrap CI), sensitivity and specificity at the bundle threshold
   (exact CIs). These negatives are the tops and bottoms of glioma scans (skull base, vertex), not healthy
   brains: the numbers rank the aggregates, they are not a screening specificity.

Not done, on purpose: pseudo-studies of brain-tumor-mri ``notumor`` slices. They are not volumes (unrelated
slices of different people), a different source and mostly other sequences than FLAIR, and that folder is the
bundle's own training source: study scores on them would measure the domain gap and training-set memory, not
how an aggregate behaves on a negative study.

The aggregate is chosen by window AUC (ties within 0.005: the higher window specificity at the threshold),
and its whole-volume sensitivity is reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_BUNDLE = Path("/work/pipe/bundles/cpu-robust")
WINDOW, BUFFER = 5, 2
N_BOOT, SEED = 2000, 20261202
CANDIDATES = [("max", 1), ("topk_mean", 2), ("topk_mean", 3), ("topk_mean", 5), ("noisy_or", 0)]


def auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Mann–Whitney AUC (ties count one half); None without both classes."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def patient_bootstrap_auc(groups: dict[str, tuple[list[float], list[float]]]) -> dict[str, Any]:
    """AUC over all (pos, neg) scores with a percentile CI from resampling patients."""

    def pooled(names: list[str]) -> float | None:
        return auc(np.concatenate([groups[n][0] for n in names]), np.concatenate([groups[n][1] for n in names]))

    names = sorted(groups)
    value = pooled(names)
    rng = np.random.default_rng(SEED)
    boots = []
    for _ in range(N_BOOT):
        pick = [names[i] for i in rng.integers(0, len(names), len(names))]
        a = pooled(pick)
        if a is not None:
            boots.append(a)
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (None, None)
    return {"value": value, "ci_low": float(lo), "ci_high": float(hi), "ci_method": "patient bootstrap percentile"}


def rate(k: int, n: int) -> dict[str, Any]:
    from brainmri.evaluate.metrics import proportion_estimate

    return proportion_estimate(k, n) | {"k": int(k), "n": int(n)}


def quantiles(x: list[float]) -> dict[str, float]:
    q = np.percentile(np.asarray(x, float), [0, 10, 25, 50, 75, 90, 100])
    return dict(zip(["min", "p10", "p25", "median", "p75", "p90", "max"], map(float, q), strict=True))


def read_patients(root: Path) -> dict[str, list[dict[str, Any]]]:
    patients: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            entry = {"path": root / row["file"], "label": row["label"], "slice": int(row["slice"])}
            patients[row["patient"]].append(entry)
    for rows in patients.values():
        rows.sort(key=lambda r: r["slice"])
    return dict(sorted(patients.items()))


def windows(rows: list[dict[str, Any]]) -> tuple[list[int], list[int] | None]:
    """Indices of the lesion window (centred on the median tumour slice) and a lesion-free window (or None)."""
    n = len(rows)
    tum = [i for i, r in enumerate(rows) if r["label"] == "tumor"]
    centre = tum[len(tum) // 2]
    start = min(max(0, centre - WINDOW // 2), max(0, n - WINDOW))
    pos = list(range(start, min(n, start + WINDOW)))
    free = [i for i in range(n) if min(abs(rows[i]["slice"] - rows[t]["slice"]) for t in tum) > BUFFER]
    for i in free:  # the first run of WINDOW consecutive slice numbers, from the bottom
        run = list(range(i, i + WINDOW))
        if all(j in free for j in run) and rows[run[-1]]["slice"] - rows[i]["slice"] == WINDOW - 1:
            return pos, run
    return pos, None


def predict_all(bundle: Path, patients: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], float]:
    """(p_tumour per slice in place, settings); predictions through the deployed Predictor."""
    from brainmri.infer.inputs import Failure
    from brainmri.infer.predictor import Predictor

    rows = [r for rs in patients.values() for r in rs]
    start = time.perf_counter()
    with Predictor.from_bundle(bundle) as predictor:
        results = predictor.predict([r["path"] for r in rows], errors="return")
        settings = predictor.settings()
    for r, res in zip(rows, results, strict=True):
        r["p"] = None if isinstance(res, Failure) else float(res.tumor_probability)
        r["in_domain"] = None if isinstance(res, Failure) else res.in_domain
    return settings, time.perf_counter() - start


def slice_level(patients: dict[str, list[dict[str, Any]]], t: float) -> dict[str, Any]:
    groups = {
        name: ([r["p"] for r in rs if r["label"] == "tumor"], [r["p"] for r in rs if r["label"] != "tumor"])
        for name, rs in patients.items()
    }
    pos = [p for g in groups.values() for p in g[0]]
    neg = [p for g in groups.values() for p in g[1]]
    return {
        "n_tumor_slices": len(pos),
        "n_lesion_free_slices": len(neg),
        "auc": patient_bootstrap_auc(groups),
        "sensitivity": rate(sum(p >= t for p in pos), len(pos)),
        "specificity": rate(sum(p < t for p in neg), len(neg)),
        "note": "exact CIs treat slices as independent; slices of one patient are correlated",
    }


def study_level(patients: dict[str, list[dict[str, Any]]], t: float, method: str, k: int) -> dict[str, Any]:
    from brainmri.infer.study import aggregate

    whole, groups = [], {}
    for name, rs in patients.items():
        p = np.array([r["p"] for r in rs])
        whole.append(aggregate(p, method, k))
        pos_i, neg_i = windows(rs)
        groups[name] = ([aggregate(p[pos_i], method, k)], [aggregate(p[neg_i], method, k)] if neg_i else [])
    pos = [g[0][0] for g in groups.values()]
    neg = [g[1][0] for g in groups.values() if g[1]]
    return {
        "aggregate": method,
        "k": k or None,
        "whole_volume": {
            "n_studies": len(whole),
            "sensitivity": rate(sum(s >= t for s in whole), len(whole)),
            "scores": quantiles(whole),
        },
        "windows": {
            "window": WINDOW,
            "n_positive": len(pos),
            "n_negative": len(neg),
            "auc": patient_bootstrap_auc(groups),
            "sensitivity": rate(sum(s >= t for s in pos), len(pos)),
            "specificity": rate(sum(s < t for s in neg), len(neg)),
            "positive_scores": quantiles(pos),
            "negative_scores": quantiles(neg),
        },
    }


def choose(results: list[dict[str, Any]], slices: dict[str, Any]) -> dict[str, Any]:
    """The aggregate with the best window AUC, or none when nothing (not even single slices) beats chance."""
    best = max(r["windows"]["auc"]["value"] for r in results)
    if best <= 0.5 or slices["auc"]["ci_low"] <= 0.5:
        return {
            "aggregate": None,
            "k": None,
            "rule": "none chosen: with this bundle lgg-flair slices are not separated better than chance "
            f"(slice AUC {slices['auc']['value']:.3f} [{slices['auc']['ci_low']:.3f}, {slices['auc']['ci_high']:.3f}],"
            f" best window AUC {best:.3f}), so the data cannot rank the aggregates",
        }
    close = [r for r in results if r["windows"]["auc"]["value"] >= best - 0.005]
    pick = max(close, key=lambda r: (r["windows"]["specificity"]["value"], r["windows"]["auc"]["value"]))
    return {"aggregate": pick["aggregate"], "k": pick["k"], "rule": "highest window AUC; within 0.005: higher "
            "window specificity at the bundle threshold"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from brainmri.bundle import Bundle
    from brainmri.utils import atomic_write_json, machine_facts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    ap.add_argument("--data", type=Path, default=SHARED / "lgg-flair")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "study_level.json")
    ap.add_argument("--note", default=None, help="what the bundle is (recorded in the JSON)")
    args = ap.parse_args(argv)
    patients = read_patients(args.data)
    settings, seconds = predict_all(args.bundle, patients)
    failed = [str(r["path"]) for rs in patients.values() for r in rs if r["p"] is None]
    patients = {n: [r for r in rs if r["p"] is not None] for n, rs in patients.items()}
    t = float(settings["threshold"])
    results = [study_level(patients, t, m, k) for m, k in CANDIDATES]
    slices = slice_level(patients, t)
    n_slices = sum(len(rs) for rs in patients.values())
    in_domain = [r["in_domain"] for rs in patients.values() for r in rs if r["in_domain"] is not None]
    doc = {
        "bench": "study_level",
        "bundle": str(args.bundle),
        "bundle_card_sha256": settings["bundle_card_sha256"],
        "bundle_evaluated": bool(Bundle.load(args.bundle).card.get("metrics")),
        "bundle_calibrated": bool(settings["calibrated"]),
        "note": args.note,
        "data": str(args.data),
        "threshold": t,
        "n_patients": len(patients),
        "n_slices": n_slices,
        "failed_slices": failed,
        "slices_in_domain": None if not in_domain else rate(sum(in_domain), len(in_domain)),
        "predict_seconds": round(seconds, 1),
        "study_negatives": "none: every lgg-flair patient has a glioma; see 'windows' for the size-matched "
        "lesion-free proxy and the module docstring for why brain-tumor-mri notumor slices are not used",
        "slice_level": slices,
        "study_level": results,
        "chosen": choose(results, slices),
        "machine": machine_facts(),
    }
    atomic_write_json(args.out, doc)
    print(json.dumps({k: doc[k] for k in ("threshold", "n_patients", "n_slices", "chosen")}, indent=2))
    for r in results:
        w = r["windows"]
        print(f"{r['aggregate']:>10} k={r['k']}: whole sens {r['whole_volume']['sensitivity']['value']:.3f}  "
              f"window AUC {w['auc']['value']:.3f} sens {w['sensitivity']['value']:.3f} "
              f"spec {w['specificity']['value']:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
