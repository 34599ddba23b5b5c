"""AdaBN x TTA on a bundle -> bench/results/adabn.json (docs/robustness.md, docs/inference.md).

    nice -n 5 .venv/bin/python bench/adabn.py --bundle bundles/cpu-robust --run ../pipe/runs/cpu-robust

Four conditions through the deployed path (``Predictor`` on ONNX Runtime, the bundle's temperature and
threshold): none, AdaBN (``Predictor.adapt``), TTA (``infer.tta``, 10 views) and AdaBN + TTA, on

- the held-out test split (``split.json`` of the run; preprocessed cache): 4-class accuracy and tumour AUC;
- lgg-flair (FLAIR slices, another source, 55 patients): tumour AUC of p_tumour = 1 - p(no_tumor),
  sensitivity/specificity at the bundle threshold, patient-level bootstrap CIs;
- navoneel with its overlap with the run's train + val removed (``Run.load_external``; 149 images, only 11
  without tumour): the same, image-level bootstrap.

AdaBN is fitted on each evaluated set itself, without its labels (transductive). That is the setting
AdaBN is meant for (the unlabelled images of the target site are what it adapts to), so it is legitimate
and not a leak; for the test split it means adapting on in-domain images, a control that should change
little. Each set is adapted once on its evaluated subsample; TTA conditions run on a nested, smaller subset
(10 forwards per image), where the no-TTA numbers are reported again on the same images. Every
difference (condition minus none) gets a paired bootstrap CI (same resampled groups for both).

Cost (image forwards) is capped by the subsample sizes: ``--test``, ``--lgg``, ``--tta-*``; the defaults
keep it near 8,000 forwards on the shared 2-core machine.
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
sys.path.insert(0, str(REPO / "src"))

from robustness import (  # noqa: E402
    SEED,
    SHARED,
    corrupt_images,
    enter_project_of,
    external_images,
    git_commit,
    patient_groups,
    stratified_subset,
)

CONDITIONS = ("none", "adabn", "tta", "adabn+tta")


def per_group_subset(groups: list[str], fraction: float, seed: int = SEED) -> np.ndarray:
    """Sorted indices: round(fraction * n) random members of every group (at least one), e.g. per patient."""
    if fraction >= 1:
        return np.arange(len(groups))
    rng = np.random.default_rng(seed)
    arr = np.asarray(groups)
    keep = [rng.choice(idx, max(1, round(fraction * len(idx))), replace=False)
            for g in dict.fromkeys(groups) if len(idx := np.flatnonzero(arr == g))]  # fmt: skip
    return np.sort(np.concatenate(keep))


def _logits(fn, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def condition_logits(predictor, images: np.ndarray, tta_idx: np.ndarray, batch: int) -> tuple[dict, dict]:
    """Logits of the four conditions (TTA ones on ``images[tta_idx]``) and what adaptation cost."""
    from brainmri.infer.tta import tta_logits

    x = images[:, None].astype(np.float32) / np.float32(255.0)
    shift = predictor.config.tta_shift
    out: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    out["none"] = _logits(predictor.runtime.logits, x, batch)
    out["tta"] = _logits(lambda v: tta_logits(predictor.runtime.logits, v, shift), x[tta_idx], max(1, batch // 4))
    t1 = time.perf_counter()
    adapted = predictor.adapt(images)
    t2 = time.perf_counter()
    out["adabn"] = _logits(adapted.runtime.logits, x, batch)
    out["adabn+tta"] = _logits(lambda v: tta_logits(adapted.runtime.logits, v, shift), x[tta_idx], max(1, batch // 4))
    cost = {"adapt_seconds": round(t2 - t1, 1), "seconds": round(time.perf_counter() - t0, 1),
            "forwards": len(x) * 3 + len(tta_idx) * 20, "adaptation": adapted.adaptation}  # fmt: skip
    return out, cost


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float | None]:
    call = p >= threshold
    return {"auc": _auc(y, p), "sensitivity": float(call[y == 1].mean()) if (y == 1).any() else None,
            "specificity": float((~call[y == 0]).mean()) if (y == 0).any() else None}  # fmt: skip


def four_class_metrics(labels: np.ndarray, probs: np.ndarray, no: int) -> dict[str, float | None]:
    return {"accuracy": float((probs.argmax(1) == labels).mean()), "tumour_auc": _auc(labels != no, 1 - probs[:, no])}


def paired_bootstrap(groups, metric, scores: dict[str, np.ndarray], n_boot: int) -> dict[str, Any]:
    """Point values and 95% percentile CIs of ``metric(idx, scores[c])`` per condition and of c - none."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    rng = np.random.default_rng(SEED)
    whole = np.arange(len(inverse))
    point = {c: metric(whole, s) for c, s in scores.items()}
    draws: dict[str, dict[str, list[float]]] = {c: {} for c in scores}
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        values = {c: metric(idx, s) for c, s in scores.items()}
        for c, v in values.items():
            for k, x in v.items():
                if x is not None:
                    draws[c].setdefault(k, []).append(x)
                    base = values["none"].get(k)
                    if c != "none" and base is not None:
                        draws[c].setdefault(f"delta_{k}", []).append(x - base)

    def ci(v: list[float]) -> list[float]:
        return [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]

    out = {}
    for c, v in point.items():
        entry = {k: None if x is None else round(x, 4) for k, x in v.items()}
        entry.update({f"delta_{k}": round(x - point["none"][k], 4) for k, x in v.items()
                      if c != "none" and x is not None and point["none"][k] is not None})  # fmt: skip
        entry["ci95"] = {k: ci(d) for k, d in draws[c].items()}
        out[c] = entry
    return out


def evaluate_set(predictor, images, labels, groups, tta_idx, kind: str, args) -> dict[str, Any]:
    """All four conditions on one set: metrics on the full subsample (no TTA) and on the TTA subset."""
    logits, cost = condition_logits(predictor, images, tta_idx, args.batch)
    probs = {c: predictor.probabilities(z) for c, z in logits.items()}
    no = predictor.classes.index("no_tumor")
    threshold = predictor.threshold
    groups = np.asarray(groups)
    if kind == "four_class":
        y = labels

        def metric_of(sel):
            return lambda idx, p: four_class_metrics(y[sel][idx], p[idx], no)
    else:
        y = (labels == 1).astype(int)

        def metric_of(sel):
            return lambda idx, p: binary_metrics(y[sel][idx], 1 - p[idx][:, no], threshold)

    full = {c: probs[c] for c in ("none", "adabn")}
    sub = {"none": probs["none"][tta_idx], "adabn": probs["adabn"][tta_idx], "tta": probs["tta"],
           "adabn+tta": probs["adabn+tta"]}  # fmt: skip
    every = np.arange(len(y))
    return {
        "n": len(y), "n_groups": len(set(groups.tolist())), "n_tta_subset": len(tta_idx),
        "n_tta_groups": len(set(groups[tta_idx].tolist())),
        "full": paired_bootstrap(groups, metric_of(every), full, args.bootstrap),
        "tta_subset": paired_bootstrap(groups[tta_idx], metric_of(tta_idx), sub, args.bootstrap),
        "cost": cost,
    }  # fmt: skip


def load_sets(run, args) -> dict[str, tuple]:
    """name -> (uint8 images, labels, groups, tta indices, kind); subsamples are seeded."""
    cache = Path(args.cache_dir)
    test = run.load_images("test")
    keep = stratified_subset(test.labels, args.test)
    t_img, t_lab = test.images[keep], test.labels[keep]
    t_tta = stratified_subset(t_lab, args.tta_test, seed=SEED + 1)
    sets: dict[str, tuple] = {"test": (t_img, t_lab, [test.ids[i] for i in keep], t_tta, "four_class")}
    lgg_root, nav_root = Path(args.lgg_root), Path(args.navoneel)
    lgg = external_images(run, lgg_root, cache, remove_overlap=False)
    groups = patient_groups(lgg.ids, lgg_root)
    keep = per_group_subset(groups, args.lgg_n / len(groups))
    g = [groups[i] for i in keep]
    lab = np.array([name != "no_tumor" for name in lgg.label_names], dtype=int)[keep]
    sets["lgg-flair"] = (lgg.images[keep], lab, g, per_group_subset(g, args.tta_lgg / len(g), SEED + 1), "binary")
    nav = external_images(run, nav_root, cache, remove_overlap=True)
    lab = np.array([name != "no_tumor" for name in nav.label_names], dtype=int)
    rng = np.random.default_rng(SEED + 1)
    tumour = np.flatnonzero(lab == 1)
    n_tta = max(0, args.tta_nav - int((lab == 0).sum()))
    tta = np.sort(
        np.concatenate([np.flatnonzero(lab == 0), rng.choice(tumour, min(n_tta, len(tumour)), replace=False)])
    )
    sets["navoneel"] = (nav.images, lab, list(nav.ids), tta, "binary")
    return sets


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from brainmri.config import PredictConfig
    from brainmri.infer import Predictor
    from brainmri.runs import Run
    from brainmri.utils import machine_facts

    start, load_start = time.perf_counter(), list(os.getloadavg())
    predictor = Predictor.from_bundle(
        Path(args.bundle).resolve(), config=PredictConfig(workers=0), threads=args.threads
    )
    run = Run.load(Path(args.run).resolve())
    if run.preprocessor().to_dict() != predictor.preprocessor.to_dict():
        raise SystemExit("the run's preprocessor differs from the bundle's: cached images would not match")
    project = enter_project_of(run)
    results, mric = {}, None
    if args.corruptions:
        mric = evaluate_mric(predictor, run, args)
    n_mric = 3 * mric["n"] * (len(mric) - 1) if mric else 0  # forwards: none, adaptation, adapted
    for name, (images, labels, groups, tta_idx, kind) in ({} if args.corruptions else load_sets(run, args)).items():
        results[name] = evaluate_set(predictor, images, labels, groups, tta_idx, kind, args)
        r = results[name]["full"]
        print(f"{name}: n {len(images)}, none {r['none']}, adabn {r['adabn']}", flush=True)
    return {
        "benchmark": "AdaBN x TTA (bench/adabn.py)", "command": " ".join([sys.executable, *sys.argv]),
        "bundle": str(predictor.bundle.dir), "bundle_card_sha256": predictor.bundle.card_sha256,
        "run": run.name, "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"runtime": predictor.runtime.name, "temperature": predictor.bundle.temperature,
                     "threshold": predictor.threshold, "tta_views": 10, "tta_shift": predictor.config.tta_shift,
                     "adapt_batch_size": predictor.config.batch_size, "bootstrap": args.bootstrap, "seed": SEED,
                     "subsample": {k: getattr(args, k) for k in ("test", "lgg_n", "tta_test", "tta_lgg", "tta_nav")},
                     "adaptation": "transductive: each set adapted on its own evaluated subsample, labels unused",
                     "p_tumour": "1 - p(no_tumor), calibrated (softmax(logits / T))",
                     "relative_paths_resolved_in": project},
        "sets": results,
        "mric": mric,
        "forwards": sum(r["cost"]["forwards"] for r in results.values()) + n_mric,
        "seconds": round(time.perf_counter() - start, 1), "load_avg_start": load_start,
        "load_avg_end": list(os.getloadavg()), "machine": machine_facts(),
    }  # fmt: skip


def evaluate_mric(predictor, run, args) -> dict[str, Any]:
    """MRI-C cells (``NAME:SEVERITY``) on a test subsample: none vs AdaBN fitted on the corrupted images.

    Every image of the "site" carries the same corruption, AdaBN's natural case (a global appearance shift).
    """
    test = run.load_images("test")
    keep = stratified_subset(test.labels, args.mric_test)
    images, labels, ids = test.images[keep], test.labels[keep], [test.ids[i] for i in keep]
    no = predictor.classes.index("no_tumor")
    out: dict[str, Any] = {"n": len(keep)}
    for spec in args.corruptions.split(","):
        name, level = spec.split(":")
        shifted = corrupt_images(images, name, int(level))
        x = shifted[:, None].astype(np.float32) / np.float32(255.0)
        probs = {"none": predictor.probabilities(_logits(predictor.runtime.logits, x, args.batch))}
        adapted = predictor.adapt(shifted)
        probs["adabn"] = predictor.probabilities(_logits(adapted.runtime.logits, x, args.batch))
        out[spec] = paired_bootstrap(ids, lambda idx, p: four_class_metrics(labels[idx], p[idx], no), probs,
                                     args.bootstrap)  # fmt: skip
        print(f"{spec}: none {out[spec]['none']['accuracy']}, adabn {out[spec]['adabn']['accuracy']}", flush=True)
    return out


HEADLINE = {"test": ["accuracy", "tumour_auc"], "lgg-flair": ["auc", "sensitivity", "specificity"],
            "navoneel": ["auc", "sensitivity", "specificity"]}  # fmt: skip


def _v(entry: dict, key: str) -> str:
    ci = entry["ci95"].get(key)
    value = entry.get(key)
    return "n/a" if value is None else f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def render_markdown(result: dict[str, Any]) -> str:
    """Two tables: none vs AdaBN on each evaluated subsample; the four conditions on the TTA subsets."""
    if result.get("mric"):
        lines = ["| MRI-C cell | n | none accuracy | AdaBN accuracy | AdaBN - none |", "|---|---|---|---|---|"]
        for spec, r in result["mric"].items():
            if spec != "n":
                lines.append(f"| {spec} | {result['mric']['n']} | {_v(r['none'], 'accuracy')} | "
                             f"{_v(r['adabn'], 'accuracy')} | {_v(r['adabn'], 'delta_accuracy')} |")  # fmt: skip
        return "\n".join(lines)
    lines = ["| set | metric | n (groups) | none | AdaBN | AdaBN - none |", "|---|---|---|---|---|---|"]
    for name, r in result["sets"].items():
        f = r["full"]
        for k in HEADLINE[name]:
            lines.append(f"| {name} | {k} | {r['n']} ({r['n_groups']}) | {_v(f['none'], k)} | {_v(f['adabn'], k)} "
                         f"| {_v(f['adabn'], 'delta_' + k)} |")  # fmt: skip
    lines += ["", "| set | metric | n (groups) | none | AdaBN | TTA | AdaBN + TTA | TTA - none | AdaBN + TTA - none |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in result["sets"].items():
        t = r["tta_subset"]
        for k in HEADLINE[name]:
            cells = " | ".join(_v(t[c], k) for c in CONDITIONS)
            lines.append(f"| {name} | {k} | {r['n_tta_subset']} ({r['n_tta_groups']}) | {cells} "
                         f"| {_v(t['tta'], 'delta_' + k)} | {_v(t['adabn+tta'], 'delta_' + k)} |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(REPO / "bundles" / "cpu-robust"))
    p.add_argument("--run", default=str(REPO.parent / "pipe" / "runs" / "cpu-robust"),
                   help="the bundle's run folder (its split and preprocessed cache give the test images)")  # fmt: skip
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "adabn.json"))
    p.add_argument("--render", metavar="JSON", help="only print a result file as markdown tables and exit")
    p.add_argument("--test", type=int, default=400, help="class-stratified test subsample (as robustness.py)")
    p.add_argument(
        "--lgg", dest="lgg_n", type=int, default=800, help="lgg-flair slices (the same share of every patient)"
    )
    p.add_argument("--tta-test", type=int, default=60)
    p.add_argument("--tta-lgg", type=int, default=110)
    p.add_argument("--tta-nav", type=int, default=50, help="navoneel TTA subset (every no-tumour image kept)")
    p.add_argument("--corruptions", default="", metavar="NAME:SEVERITY,...",
                   help="instead of the sets: MRI-C cells (bench/robustness.py names, severity 1-3), none vs AdaBN "
                   "fitted on the corrupted test subsample; write to another --out")  # fmt: skip
    p.add_argument("--mric-test", type=int, default=120, help="class-stratified test subsample for --corruptions")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--lgg-root", dest="lgg_root", default=str(SHARED / "lgg-flair"))
    p.add_argument("--navoneel", default=str(SHARED / "navoneel"))
    p.add_argument("--cache-dir", default=str(REPO / "work" / "robustness"),
                   help="preprocessed external sets (shared with bench/robustness.py)")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from brainmri.utils import atomic_write_json, setup_torch

    args = parse_args(argv)
    if args.render:
        print(render_markdown(json.loads(Path(args.render).read_text())))
        return 0
    setup_torch(args.threads)
    args.out = str(Path(args.out).resolve())
    result = run_benchmark(args)
    atomic_write_json(Path(args.out), result)
    print(f"{result['forwards']} forwards, {result['seconds']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
