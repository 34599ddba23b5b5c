"""Conformal prediction sets on a trained run, without retraining -> bench/results/conformal.json.

Usage: ``.venv/bin/python bench/conformal.py --run ../pipe/runs/cpu-robust [--out bench/results/conformal.json]``
``[--cache /tmp/brainmri_conformal] [--bootstrap 1000] [--threads 1] [--lgg PATH | --no-external]``

What it measures (docs/evaluation.md, "Conformal prediction sets"): every method (``lac``, ``aps``, ``raps``)
x (marginal, Mondrian) x alpha in {0.01, 0.02, 0.05, 0.1}, fitted on the run's validation split (the
calibration split of ``brainmri evaluate``) with the run's temperature applied (``calibration.json``), and
reported on its held-out test split: coverage with exact Clopper–Pearson 95% CIs (overall and per class),
mean set size (percentile-bootstrap CI), the share of ambiguous sets (more than one class) and of full sets
(every class). RAPS uses the configured defaults (``evaluate.conformal_raps_lambda`` / ``_k_reg``); the paper's
fitted k_reg is reported beside it (``raps_k_reg_fitted``, marginal) to show why it is not the default.

The validation and test logits are computed once with the run's model (``brainmri.runs.predict_logits``,
~1 min of CPU) and cached under ``--cache`` keyed by the weights' SHA-256; the test logits are checked
against ``reports/predictions.csv`` when the run has one.

Second table (``external``): the same validation-fitted predictors on lgg-flair (FLAIR slices of another
source, tumour / no tumour only), zero-shot. A 4-class set "covers" a ``tumor`` slice when it holds any
tumour class and a ``no_tumor`` slice when it holds ``no_tumor``; CIs are patient-level percentile
bootstrap (slices of one patient are not independent). Exchangeability fails there by construction: this is
the honest check of the guarantee under shift. The preprocessed slices come from bench/robustness.py's cache
(``work/robustness/lgg-flair_all_<run>_<preprocessor sha>.npz``, every readable slice kept) when present,
else they are preprocessed here from ``labels.csv``.

The default alpha and variant are chosen by :data:`RULE` (stored in the JSON) and become the config default
(``evaluate.conformal_alphas`` first, ``evaluate.conformal_method``, ``evaluate.conformal_mondrian``), which
``brainmri evaluate`` writes into ``calibration.json`` and every bundle carries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from robustness import enter_project_of, git_commit  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
ALPHAS = (0.01, 0.02, 0.05, 0.1)
TOLERANCE = 0.02
MIN_AMBIGUOUS = 0.05
MAX_MEAN_SIZE = 1.5
RULE = (
    f"valid: |test coverage - (1 - alpha)| <= {TOLERANCE}; informative: at least {MIN_AMBIGUOUS:.0%} of test "
    f"sets hold more than one class and the mean set size is <= {MAX_MEAN_SIZE} (sets still narrow the "
    "diagnosis). The default alpha is the smallest alpha (highest promised coverage) at which some variant "
    "is valid and informative; the default variant is, at that alpha, the valid and informative one with the "
    "smallest mean test set size (a Mondrian variant wins ties within 0.01, for its per-class guarantee)."
)


def run_logits(run, cache_dir: Path) -> dict[str, np.ndarray]:
    """``{val,test}_{logits,labels,ids}`` of the run's model, cached by the weights' SHA-256."""
    from brainmri.runs import WEIGHTS_FILE, predict_logits

    digest = hashlib.sha256((run.dir / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    path = cache_dir / f"{run.name}_{digest}_logits.npz"
    if path.is_file():
        with np.load(path) as d:
            return {k: d[k] for k in d.files}
    cwd = os.getcwd()
    enter_project_of(run)
    model = run.build_model()
    out: dict[str, np.ndarray] = {}
    for part in ("val", "test"):
        data = run.load_images(part)
        out[f"{part}_logits"] = predict_logits(model, data.images, 64, desc=f"predict {part}")
        out[f"{part}_labels"], out[f"{part}_ids"] = data.labels, np.array(data.ids)
    os.chdir(cwd)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def parity_with_reports(run, d: dict[str, np.ndarray]) -> float | None:
    """Largest |logit difference| between the recomputed test logits and ``reports/predictions.csv``."""
    import pandas as pd

    path = run.reports_dir / "predictions.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path).set_index("id")
    cols = [f"logit_{c}" for c in run.classes]
    if not set(cols) <= set(frame.columns) or not set(d["test_ids"]) <= set(frame.index):
        return None
    saved = frame.loc[list(d["test_ids"]), cols].to_numpy(np.float64)
    return float(np.abs(saved - d["test_logits"]).max())


def measure(predictor, val_p, val_y, test_p, test_y, classes, n_boot: int, seed: int) -> dict[str, Any]:
    """Fit one predictor on validation, report its test sets (``set_metrics`` + qhat, k_reg)."""
    from brainmri.evaluate.coverage import set_metrics

    predictor.fit(val_p, val_y)
    r = set_metrics(predictor.predict_sets(test_p), test_y, classes, n_bootstrap=n_boot, seed=seed)
    d = predictor.to_dict()
    r["qhat"] = d["qhat_per_class"] if predictor.mondrian else d["qhat"]
    if predictor.method == "raps":
        r["k_reg"], r["lam"] = d["k_reg"], d["lam"]
    return r


def evaluate_all(opts, val_p, val_y, test_p, test_y, classes, n_boot: int, seed: int) -> dict[str, Any]:
    """``{variant: {alpha_key: result}}`` for every method x (marginal, Mondrian) and the fitted-k_reg RAPS;
    ``opts``: the RAPS parameters ``{lam, k_reg}``."""
    from brainmri.calibrate.conformal import ConformalPredictor, alpha_key, variant_key, variants

    out: dict[str, Any] = {}
    todo = [(variant_key(m, mo), m, mo, opts) for m, mo in variants()]
    todo.append(("raps_k_reg_fitted", "raps", False, {**opts, "k_reg": None}))
    for key, method, mondrian, kw in todo:
        out[key] = {}
        for a in ALPHAS:
            cp = ConformalPredictor(a, method, mondrian=mondrian, **kw)
            out[key][alpha_key(a)] = measure(cp, val_p, val_y, test_p, test_y, classes, n_boot, seed)
    return out


def lgg_images(run, root: Path, robustness_cache: Path):
    """(uint8 images, binary labels 1 = tumour, patient ids) of lgg-flair, preprocessed with the run's preprocessor."""
    import pandas as pd

    from brainmri.runs import images_from_files

    pre_hash = hashlib.sha256((run.dir / "preprocessor.json").read_bytes()).hexdigest()[:12]
    table = pd.read_csv(root / "labels.csv")
    patient = dict(zip(f"{root.name}/" + table["file"].astype(str), table["patient"].astype(str), strict=True))
    cached = robustness_cache / f"{root.name}_all_{run.name}_{pre_hash}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            images, meta = z["images"], json.loads(str(z["meta"]))
        ids, names = meta["ids"], meta["label_names"]
    else:
        frame = pd.DataFrame({"id": f"{root.name}/" + table["file"].astype(str),
                              "path": [str(root / f) for f in table["file"]], "label": table["label"]})  # fmt: skip
        data = images_from_files(frame, run.preprocessor(), run.classes)
        images, ids, names = data.images, data.ids, data.label_names
    y = np.array([n != "no_tumor" for n in names], dtype=np.int64)
    return images, y, [patient.get(i, i) for i in ids], str(cached) if cached.is_file() else "preprocessed here"


def external_coverage(opts, val_p, val_y, probs, yb, groups, classes, n_boot: int, seed: int) -> dict[str, Any]:
    """Binary coverage of the validation-fitted sets on an external tumour / no-tumour set, per variant and alpha."""
    from brainmri.calibrate.conformal import ConformalPredictor, alpha_key, variant_key, variants

    no = classes.index("no_tumor")
    tumour_cols = [i for i in range(len(classes)) if i != no]
    g = np.unique(groups, return_inverse=True)[1]
    counts = np.random.default_rng(seed).multinomial(g.max() + 1, np.full(g.max() + 1, 1 / (g.max() + 1)), n_boot)

    def boot(v: np.ndarray, rows: np.ndarray) -> dict[str, float | None]:
        if not rows.any():
            return {"value": None, "ci_low": None, "ci_high": None}
        num = np.bincount(g[rows], v[rows].astype(float), g.max() + 1)
        den = np.bincount(g[rows], minlength=g.max() + 1).astype(float)
        ratio = (counts @ num) / np.maximum(counts @ den, 1e-12)
        lo, hi = np.percentile(ratio[(counts @ den) > 0], [2.5, 97.5])
        return {"value": float(v[rows].mean()), "ci_low": float(lo), "ci_high": float(hi)}

    out: dict[str, Any] = {}
    for m, mo in variants():
        out[variant_key(m, mo)] = {}
        for a in ALPHAS:
            sets = ConformalPredictor(a, m, mondrian=mo, **opts).fit(val_p, val_y).predict_sets(probs)
            covered = np.where(yb == 1, sets[:, tumour_cols].any(1), sets[:, no])
            size = sets.sum(1)
            out[variant_key(m, mo)][alpha_key(a)] = {
                "coverage": boot(covered, np.ones(len(yb), bool)),
                "coverage_tumour": boot(covered, yb == 1), "coverage_no_tumour": boot(covered, yb == 0),
                "mean_set_size": float(size.mean()), "ambiguous_rate": float((size > 1).mean()),
                "both_tumour_and_no_tumour_rate": float((sets[:, tumour_cols].any(1) & sets[:, no]).mean()),
            }  # fmt: skip
    return out


def run_external(run, args, opts, cal, val_p, val_y) -> dict[str, Any]:
    """lgg-flair zero-shot: logits cached like the run's own, sets fitted on the run's validation split."""
    from brainmri.runs import predict_logits

    root = Path(args.lgg)
    images, yb, groups, source = lgg_images(run, root, Path(args.robustness_cache))
    path = Path(args.cache).resolve() / f"{root.name}_{run.name}_{len(yb)}_logits.npy"
    if path.is_file():
        logits = np.load(path)
    else:
        logits = predict_logits(run.build_model(), images, 64, desc=f"predict {root.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, logits)
    probs = cal.probabilities(logits)
    return {
        "set": root.name, "n": len(yb), "n_tumour": int(yb.sum()), "n_patients": len(set(groups)),
        "images_from": source, "overlap_with_training": "kept (another source: pHash matches are coincidences)",
        "coverage_definition": "tumor slice: set holds any tumour class; no_tumor slice: set holds no_tumor",
        "ci": "patient-level percentile bootstrap 95%", "accuracy_tumour_vs_no_tumour": float(
            ((probs.argmax(1) != run.classes.index("no_tumor")).astype(int) == yb).mean()),
        "results": external_coverage(opts, val_p, val_y, probs, yb, groups, run.classes, args.bootstrap, args.seed),
    }  # fmt: skip


def choose(results: dict[str, Any]) -> dict[str, Any]:
    """Apply :data:`RULE`; returns the chosen alpha and variant and, per alpha, the variants that qualified."""
    from brainmri.calibrate.conformal import alpha_key, variant_key, variants

    qualified: dict[str, list[str]] = {}
    for a in sorted(ALPHAS):
        ok = []
        for m, mo in variants():
            r = results[variant_key(m, mo)][alpha_key(a)]
            valid = abs(r["coverage"]["value"] - (1 - a)) <= TOLERANCE
            informative = r["ambiguous_rate"]["value"] >= MIN_AMBIGUOUS and r["mean_set_size"]["value"] <= MAX_MEAN_SIZE
            if valid and informative:
                ok.append(variant_key(m, mo))
        qualified[alpha_key(a)] = ok
    for a in sorted(ALPHAS):
        ok = qualified[alpha_key(a)]
        if ok:
            size = {v: results[v][alpha_key(a)]["mean_set_size"]["value"] for v in ok}
            best = min(size.values())
            near = [v for v in ok if size[v] <= best + 0.01]
            pick = next((v for v in near if v.endswith("_mondrian")), min(near, key=size.get))
            method, _, tail = pick.partition("_")
            return {"alpha": a, "variant": pick, "method": method, "mondrian": tail == "mondrian",
                    "qualified": qualified}  # fmt: skip
    return {"alpha": None, "variant": None, "method": None, "mondrian": None, "qualified": qualified}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from brainmri.calibrate.posthoc import PostHocCalibration
    from brainmri.config import EvaluateConfig
    from brainmri.runs import Run
    from brainmri.utils import machine_facts, setup_torch

    setup_torch(args.threads)
    t0 = time.perf_counter()
    run = Run.load(Path(args.run).resolve())
    cal = PostHocCalibration.load(run.calibration_path)
    d = run_logits(run, Path(args.cache).resolve())
    keep_v, keep_t = d["val_labels"] >= 0, d["test_labels"] >= 0
    val_p, val_y = cal.probabilities(d["val_logits"][keep_v]), d["val_labels"][keep_v]
    test_p, test_y = cal.probabilities(d["test_logits"][keep_t]), d["test_labels"][keep_t]
    ranks = [(np.argsort(-p, 1) == y[:, None]).argmax(1) + 1 for p, y in ((val_p, val_y), (test_p, test_y))]
    ecfg = EvaluateConfig()
    opts = {"lam": ecfg.conformal_raps_lambda, "k_reg": ecfg.conformal_raps_k_reg}
    results = evaluate_all(opts, val_p, val_y, test_p, test_y, run.classes, args.bootstrap, args.seed)
    external = None if args.no_external else run_external(run, args, opts, cal, val_p, val_y)
    return {
        "benchmark": "conformal prediction sets (bench/conformal.py)", "run": run.name,
        "run_dir": str(run.dir.resolve()), "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "alphas": list(ALPHAS), "fitted_on": f"val ({len(val_y)} images)",
            "reported_on": f"test ({len(test_y)} images)", "temperature": cal.temperature,
            "probabilities": "softmax(logits / temperature) (the run's calibration.json)",
            "raps": opts | {"source": "evaluate.conformal_raps_lambda / _k_reg defaults"},
            "allow_empty": False, "bootstrap": args.bootstrap, "seed": args.seed,
            "ci": "coverage, ambiguous and full rates: exact Clopper-Pearson 95%; "
                  "mean set size: percentile bootstrap 95%",
            "logit_parity_with_reports_predictions_csv": parity_with_reports(run, d),
        },
        "model": {
            "val_accuracy": float((ranks[0] == 1).mean()), "test_accuracy": float((ranks[1] == 1).mean()),
            "val_top2": float((ranks[0] <= 2).mean()), "test_top2": float((ranks[1] <= 2).mean()),
        },
        "rule": RULE, "chosen": choose(results),
        "config_default": {"conformal_alphas": ecfg.conformal_alphas, "conformal_method": ecfg.conformal_method,
                           "conformal_mondrian": ecfg.conformal_mondrian},
        "results": results,
        "external": external,
        "seconds": round(time.perf_counter() - t0, 1), "load_avg": list(os.getloadavg()), "machine": machine_facts(),
    }  # fmt: skip


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def render(r: dict[str, Any]) -> str:
    """Markdown tables of the result (what docs/evaluation.md quotes)."""
    from brainmri.calibrate.conformal import alpha_key

    lines = [
        "| variant | alpha | target % | coverage % (95% CI) | mean size | ambiguous % | full % "
        "| per-class coverage % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, per in r["results"].items():
        for a in ALPHAS:
            x = per[alpha_key(a)]
            c, pc = x["coverage"], x["per_class"]
            cls = " / ".join(_pct(pc[k]["coverage"]) for k in pc)
            lines.append(
                f"| {v} | {a} | {100 * (1 - a):.0f} | {_pct(c['value'])} ({_pct(c['ci_low'])}-{_pct(c['ci_high'])})"
                f" | {x['mean_set_size']['value']:.3f} | {_pct(x['ambiguous_rate']['value'])}"
                f" | {_pct(x['full_rate']['value'])} | {cls} |"
            )
    ch = r["chosen"]
    lines += ["", f"Chosen: alpha = {ch['alpha']}, variant `{ch['variant']}`. Rule: {r['rule']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="run folder with calibration.json (after brainmri evaluate)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "conformal.json"))
    ap.add_argument("--cache", default="/tmp/brainmri_conformal", help="folder for the cached logits")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    ap.add_argument("--lgg", default=str(SHARED / "lgg-flair"), help="lgg-flair root (labels.csv)")
    ap.add_argument("--robustness-cache", default=str(REPO / "work" / "robustness"),
                    help="bench/robustness.py's cache of preprocessed external slices")  # fmt: skip
    ap.add_argument("--no-external", action="store_true", help="skip the lgg-flair table")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    result = run_benchmark(args)
    from brainmri.utils import atomic_write_json

    atomic_write_json(out, result)
    ch = result["chosen"]
    print(f"wrote {out}; chosen alpha {ch['alpha']}, variant {ch['variant']}")
    if args.markdown:
        print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
