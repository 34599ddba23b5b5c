"""External validation: how good is a run on somebody else's scans, and which threshold should they use?

Protocol (``brainmri validate RUN DATA...``; docs/external.md):

1. import the set (folders or a ``file,label[,patient]`` CSV), refuse unreadable files, unknown labels, sets
   with fewer than ``external.min_images`` usable images or one class only (``brainmri.data.external``);
2. remove every image that is an exact or near copy of the run's train + val images, and say which;
3. split the rest into a *calibration* and an *evaluation* part: whole patients (or near-duplicate clusters
   when patients are unknown) on one side, stratified on tumour / no tumour, seeded; saved as a split file;
4. on the calibration part choose tumour thresholds by (a) a target sensitivity, (b) Youden's J, (c) the
   expected cost with a false negative costing ``external.cost_ratio`` false positives;
5. on the evaluation part report, at the run's own threshold and at each chosen one: sensitivity,
   specificity, PPV, NPV with exact (Clopper–Pearson) CIs, and with patient-level bootstrap CIs where
   patients are known (slices of one patient are not independent, so the exact CIs are too narrow there);
   AUC with a (patient-level) bootstrap CI; ECE of the tumour probability under the shift; per-class
   metrics where the labels name classes; ROC and reliability figures;
6. optionally re-fit the temperature on the calibration part (tumour-vs-no-tumour NLL), reported as a
   separate view.

Everything fitted (thresholds, temperature) sees only calibration ids the run was not trained on: for a run
made by ``brainmri adapt`` those are the held-out slice of its calibration part (its run.json says which
ids it trained on), and an evaluation id it trained on is an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmri.bundle.source import BundleSource, load_source
from brainmri.calibrate.probabilities import softmax, tumour_probability
from brainmri.calibrate.threshold import ThresholdSelector
from brainmri.config import Config, ExternalConfig, save_config
from brainmri.data.external import ExternalSet, prepare_external, tumour_of, write_split_file
from brainmri.errors import DataError
from brainmri.evaluate.domain import gate_passes, load_gate
from brainmri.evaluate.metrics import (
    binary_metrics,
    expected_calibration_error,
)
from brainmri.labels import NO_TUMOR
from brainmri.runs import Run, images_from_files, predict_logits, predict_outputs
from brainmri.utils import atomic_path, atomic_write_json

RESULT_FILE = "external.json"
SPLIT_FILE = "split.json"
RATES = ("sensitivity", "specificity", "ppv", "npv")


# ------------------------------------------------------------------------------------------------ thresholds


def youden_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (Youden 1950) on (p, y)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p)
    k = int(np.argmax(tpr - fpr))
    return float(min(thr[k], 1.0))


def cost_threshold(p: np.ndarray, y: np.ndarray, cost_ratio: float) -> float:
    """The threshold minimising ``cost_ratio * FN + FP`` on (p, y); ties: the largest such threshold."""
    cand = np.unique(np.concatenate([p, [1.0 + 1e-9]]))
    pos, neg = y == 1, y == 0
    order = np.sort(p[pos])
    fn = np.searchsorted(order, cand, side="left")  # positives below the threshold
    neg_sorted = np.sort(p[neg])
    fp = len(neg_sorted) - np.searchsorted(neg_sorted, cand, side="left")  # negatives at or above it
    cost = cost_ratio * fn + fp
    best = np.flatnonzero(cost == cost.min())[-1]
    return float(min(cand[best], 1.0))


def choose_thresholds(p: np.ndarray, y: np.ndarray, ecfg: ExternalConfig) -> dict[str, dict[str, Any]]:
    """Thresholds chosen on calibration scores, each with the rule and its sensitivity/specificity there."""
    sel = ThresholdSelector(ecfg.target_sensitivity, max_threshold=1.0).fit(p, y)
    chosen = {
        "target_sensitivity": (sel.threshold_, f"largest threshold with sensitivity >= {ecfg.target_sensitivity}"),
        "youden": (youden_threshold(p, y), "maximum of sensitivity + specificity - 1"),
        "cost": (cost_threshold(p, y, ecfg.cost_ratio), f"minimum of {ecfg.cost_ratio:g} x FN + FP"),
    }
    out = {}
    for name, (t, rule) in chosen.items():
        called = p >= t
        out[name] = {
            "threshold": float(t),
            "rule": rule,
            "on_calibration": {
                "sensitivity": float(called[y == 1].mean()),
                "specificity": float((~called[y == 0]).mean()),
                "n": len(y),
            },
        }
    return out


# ------------------------------------------------------------------------------------------------ metrics


def patient_bootstrap(p: np.ndarray, y: np.ndarray, groups: np.ndarray, t: float, n: int, seed: int) -> dict:
    """Sensitivity/specificity/PPV/NPV/AUC with percentile CIs from resampling whole patients
    (``binary_metrics``' group bootstrap, labelled as a patient bootstrap)."""
    full = binary_metrics(p, y, t, n_bootstrap=n, seed=seed, groups=groups)
    out = {k: full[k] for k in (*RATES, "auc")}
    for v in out.values():
        if v.get("ci_method"):
            v["ci_method"] = "patient bootstrap"
    return out


def binary_ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """ECE of the tumour-vs-no-tumour decision (max-probability bins of [1 - p, p])."""
    return float(expected_calibration_error(np.c_[1.0 - p, p], y, n_bins))


def at_threshold(p, y, groups, t: float, ecfg: ExternalConfig, patients_known: bool) -> dict[str, Any]:
    out = binary_metrics(p, y, t, n_bootstrap=ecfg.bootstrap, seed=ecfg.seed)
    if patients_known and ecfg.bootstrap > 0:
        out["patient_bootstrap"] = patient_bootstrap(p, y, groups, t, ecfg.bootstrap, ecfg.seed)
    return out


def per_class(logits: np.ndarray, label_names: list[str], classes: list[str]) -> dict[str, Any] | None:
    """4-class view of rows whose label names a class (3-/4-class sets); None for binary sets."""
    from sklearn.metrics import f1_score

    idx = {c: i for i, c in enumerate(classes)}
    rows = np.array([n in idx and n != NO_TUMOR for n in label_names])
    if not rows.any():
        return None
    known = np.array([n in idx for n in label_names])
    y = np.array([idx[n] for n in np.asarray(label_names)[known]])
    pred = logits[known].argmax(1)
    present = sorted(set(y))
    return {
        "n": int(known.sum()),
        "accuracy": float((pred == y).mean()),
        "macro_f1_present_classes": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "recall": {classes[c]: float((pred[y == c] == c).mean()) for c in present},
    }


# ------------------------------------------------------------------------------------------------ temperature


def fit_binary_temperature(logits: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, float]:
    """T minimising the tumour-vs-no-tumour NLL of p_tumour(softmax(z / T)) on the calibration part."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = np.clip(tumour_probability(softmax(logits / math.exp(log_t)), classes), 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    before, after = nll(0.0), float(res.fun)
    t = math.exp(float(res.x)) if after < before else 1.0
    return {"temperature": t, "nll_before": before, "nll_after": min(after, before), "n": len(y)}


# ------------------------------------------------------------------------------------------------ the protocol


def trained_ids(run: Run) -> set[str]:
    """External ids a run made by ``brainmri adapt`` was trained on (empty for any other run)."""
    ext = run.info.get("external") or {}
    path = ext.get("split_file")
    if not path or not Path(path).is_file():
        return set()
    return set(json.loads(Path(path).read_text()).get("adapt_train", []))


def run_calibration(run: Run | BundleSource) -> tuple[float, float, str]:
    """(temperature, threshold, source) of the run: its calibration.json, else T = 1 and 0.5 (a bundle: its own)."""
    from brainmri.calibrate.posthoc import PostHocCalibration

    if isinstance(run, BundleSource):
        return run.calibration()
    if run.calibration_path.is_file():
        cal = PostHocCalibration.load(run.calibration_path)
        t = cal.threshold
        return cal.temperature, (0.5 if t is None else t), str(run.calibration_path)
    return 1.0, 0.5, "none (no calibration.json: T = 1, threshold 0.5)"


def view(
    logits: dict[str, np.ndarray],
    data: dict[str, Any],
    temperature: float,
    run_threshold: float,
    ecfg: ExternalConfig,
    classes: list[str],
) -> dict[str, Any]:
    """All numbers for one temperature: thresholds chosen on the fit ids, metrics on the evaluation part."""
    p = {k: tumour_probability(softmax(z / temperature), classes) for k, z in logits.items()}
    y, groups, known = data["y"], data["groups"], data["patients_known"]
    chosen = choose_thresholds(p["fit"], y["fit"], ecfg)
    thresholds: dict[str, Any] = {"run": {"threshold": float(run_threshold), "rule": "the run's own threshold"}}
    thresholds.update(chosen)
    for entry in thresholds.values():
        entry["evaluation"] = at_threshold(p["evaluation"], y["evaluation"], groups, entry["threshold"], ecfg, known)
    return {
        "temperature": float(temperature),
        "auc": thresholds["run"]["evaluation"]["auc"],
        "ece": {k: binary_ece(p[k], y[k], ecfg.ece_bins) for k in ("fit", "evaluation")},
        "thresholds": thresholds,
    }, p


def score_parts(run: Run, model: Any, ext: ExternalSet, ecfg: ExternalConfig) -> dict[str, Any]:
    """Logits, labels and groups of the threshold-fit ids and of the evaluation part."""
    seen = trained_ids(run)
    leak = seen & set(ext.split["evaluation"])
    if leak:
        raise DataError(f"{run.dir}: was trained on {len(leak)} images of the evaluation part (e.g. {sorted(leak)[0]})")
    pre = run.preprocessor()
    frames = {"fit": ext.part("calibration"), "evaluation": ext.part("evaluation")}
    frames["fit"] = frames["fit"][~frames["fit"]["id"].isin(seen)].reset_index(drop=True)
    images = {k: images_from_files(f, pre, run.classes) for k, f in frames.items()}
    outputs = predict_outputs(model, images["evaluation"].images, ecfg.batch_size)  # one pass: logits and gate
    logits = {"fit": predict_logits(model, images["fit"].images, ecfg.batch_size), "evaluation": outputs["logits"]}
    logits = {k: z.astype(np.float64) for k, z in logits.items()}
    patients = frames["evaluation"]["patient"].astype(str)
    return {
        "in_domain": gate_passes(load_gate(run), outputs),
        "frames": frames,
        "logits": logits,
        "y": {k: tumour_of(f["label"]) for k, f in frames.items()},
        "groups": np.where(patients != "", patients, frames["evaluation"]["group"].astype(str)),
        "patients_known": bool((patients != "").all()),
        "n_trained_excluded": len(seen & set(ext.split["calibration"])),
    }


def validate_external(run: Run, ext: ExternalSet, cfg: Config, model: Any | None = None) -> dict[str, Any]:
    """The result dict of the protocol (no files written)."""
    ecfg = cfg.external
    model = run.build_model() if model is None else model
    data = score_parts(run, model, ext, ecfg)
    check_fit_part(ext, data)
    temperature, threshold, source = run_calibration(run)
    views = {}
    views["run_temperature"], probs = view(data["logits"], data, temperature, threshold, ecfg, run.classes)
    if ecfg.refit_temperature:
        fit = fit_binary_temperature(data["logits"]["fit"], data["y"]["fit"], run.classes)
        views["refit_temperature"], _ = view(data["logits"], data, fit["temperature"], threshold, ecfg, run.classes)
        views["refit_temperature"]["fit"] = fit
    ev = data["frames"]["evaluation"]
    return {
        "version": 1,
        "run": str(run.dir),
        "set": ext.name,
        "data": ext.specs,
        "group_by": ext.group_by,
        "calibration_source": source,
        "counts": counts(ext, data),
        "overlap": ext.overlap,
        "unreadable": ext.unreadable,
        "per_class": per_class(data["logits"]["evaluation"], list(ev["label"]), run.classes),
        "gate": gate_summary(data, probs["evaluation"], threshold, ecfg),
        "views": views,
        "_probs": probs,
        "_data": data,
    }


def gate_summary(data: dict[str, Any], p: np.ndarray, threshold: float, ecfg: ExternalConfig) -> dict[str, Any] | None:
    """The out-of-domain gate on the evaluation part: how much of the site's set it flags (overall and by truth),
    and the metrics at the run's threshold on the images it passes and on those it flags. Why: a site that honours
    ``in_domain: false`` (sends those images to a human) gets the first row's numbers for what the model answers.
    None when the run has no fitted gate."""
    passes = data["in_domain"]
    if passes is None:
        return None
    y, groups, known = data["y"]["evaluation"], data["groups"], data["patients_known"]
    out: dict[str, Any] = {
        "flagged": float(np.mean(~passes)) if len(passes) else None,
        "flagged_tumour": float(np.mean(~passes[y == 1])) if (y == 1).any() else None,
        "flagged_no_tumour": float(np.mean(~passes[y == 0])) if (y == 0).any() else None,
    }
    for name, mask in (("passed", passes), ("flagged_subset", ~passes)):
        entry: dict[str, Any] = {"n": int(mask.sum()), "n_tumour": int(y[mask].sum())}
        if 0 < entry["n_tumour"] < entry["n"]:
            entry |= at_threshold(p[mask], y[mask], groups[mask], threshold, ecfg, known)
            entry["ece"] = binary_ece(p[mask], y[mask], ecfg.ece_bins)
        out[name] = entry
    return out


def check_fit_part(ext: ExternalSet, data: dict[str, Any]) -> None:
    y = data["y"]["fit"]
    if len(y) < 2 or y.min() == y.max():
        raise DataError(f"{ext.name}: the calibration ids left for fitting thresholds hold one class only ({len(y)})")


def counts(ext: ExternalSet, data: dict[str, Any]) -> dict[str, Any]:
    ev = data["frames"]["evaluation"]
    return {
        "readable": ext.overlap["n_readable"],
        "removed_overlap": ext.overlap["n_removed"],
        "usable": len(ext.frame),
        "calibration": len(ext.split["calibration"]),
        "threshold_fit": len(data["frames"]["fit"]),
        "calibration_trained_on": data["n_trained_excluded"],
        "evaluation": len(ev),
        "evaluation_tumour": int(data["y"]["evaluation"].sum()),
        "evaluation_no_tumour": int((1 - data["y"]["evaluation"]).sum()),
        "evaluation_patients": int(ev["patient"].replace("", np.nan).nunique()),
        "groups": int(ext.frame["group"].nunique()),
    }


# ------------------------------------------------------------------------------------------------ files


def predictions_frame(result: dict[str, Any], classes: list[str]) -> pd.DataFrame:
    data, probs = result["_data"], result["_probs"]
    parts = []
    for k in ("fit", "evaluation"):
        f = data["frames"][k]
        df = pd.DataFrame(
            {
                "id": f["id"],
                "path": f["path"],
                "label": f["label"],
                "patient": f["patient"],
                "group": f["group"],
                "part": "calibration" if k == "fit" else "evaluation",
                "y_tumour": data["y"][k],
                "p_tumour": probs[k],
            }
        )
        if k == "evaluation" and data["in_domain"] is not None:
            df["in_domain"] = data["in_domain"]
        for i, c in enumerate(classes):
            df[f"logit_{c}"] = data["logits"][k][:, i]
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def write_figures(result: dict[str, Any], out: Path, ecfg: ExternalConfig) -> None:
    from brainmri.evaluate.plots import binary_roc, reliability_diagram

    data = result["_data"]
    p, y = result["_probs"]["evaluation"], data["y"]["evaluation"]
    t = result["views"]["run_temperature"]["thresholds"]["target_sensitivity"]["threshold"]
    binary_roc(p, y, t, out / "roc.png", title=f"{result['set']}: evaluation part (target-sensitivity threshold)")
    curves = {"run temperature": (np.c_[1 - p, p], y)}
    if "refit_temperature" in result["views"]:
        t_refit = result["views"]["refit_temperature"]["temperature"]
        pr = tumour_probability(softmax(data["logits"]["evaluation"] / t_refit), data["classes"])
        curves[f"refit T={t_refit:.2f}"] = (np.c_[1 - pr, pr], y)
    reliability_diagram(curves, out / "reliability.png", ecfg.ece_bins, title=f"{result['set']}: tumour vs no tumour")


def public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def default_out(run: Run | BundleSource, set_name: str, cfg: Config) -> Path:
    """``RUN/reports/external/<set>/``; for a bundle ``<work_dir>/validation/<bundle>/<set>/``."""
    from brainmri.layout import Layout

    if isinstance(run, BundleSource):
        return Layout.from_config(cfg.paths).validation_dir(run.name) / set_name
    return run.reports_dir / "external" / set_name


def validate(run_dir: str | Path, specs: list[str], cfg: Config, out_dir: str | Path | None = None) -> Path:
    """``brainmri validate``: run the protocol and write ``external.json``, ``predictions.csv``, the split
    file, figures and the resolved config into ``out_dir`` (default: :func:`default_out`). ``run_dir`` may be
    a bundle folder: a site that received only the bundle validates it the same way."""
    from brainmri.utils import setup_torch

    setup_torch()
    run = load_source(run_dir, cfg)
    ext = prepare_external(specs, cfg, run.without_training_overlap, str(run.dir))
    out = Path(out_dir or cfg.external.out_dir or default_out(run, ext.name, cfg))
    result = validate_external(run, ext, cfg)
    result["_data"]["classes"] = run.classes
    result["split_file"] = str(cfg.external.split_file or out / SPLIT_FILE)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.external.split_file:
        write_split_file(ext.split, out / SPLIT_FILE)
    with atomic_path(out / "predictions.csv") as tmp:
        predictions_frame(result, run.classes).to_csv(tmp, index=False, lineterminator="\n")
    write_figures(result, out, cfg.external)
    save_config(cfg, out / "config.yaml")
    atomic_write_json(out / RESULT_FILE, public(result))
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per view and threshold: sensitivity, specificity, AUC on the evaluation part."""
    c = result["counts"]
    lines = [
        f"{result['set']}: {c['readable']} readable, {c['removed_overlap']} removed as training overlap, "
        f"calibration {c['calibration']} / evaluation {c['evaluation']} (grouped by {result['group_by']})"
    ]
    lines += gate_lines(result.get("gate"))
    for vname, v in result["views"].items():
        auc = v["auc"]["value"]
        for tname, entry in v["thresholds"].items():
            e = entry["evaluation"]
            sens, spec = e["sensitivity"]["value"], e["specificity"]["value"]
            lines.append(
                f"  {vname:16s} {tname:18s} t={entry['threshold']:.3f}  sens {fmt(sens)}  spec {fmt(spec)}"
                f"  AUC {fmt(auc)}  ECE {v['ece']['evaluation']:.3f}"
            )
    return lines


def gate_lines(gate: dict[str, Any] | None) -> list[str]:
    """How the out-of-domain gate treats the evaluation part, in a few lines (one saying so without a gate)."""
    if gate is None:
        return ["  out-of-domain gate: none fitted (evaluate the run to fit one)"]
    if gate["flagged"] is None:
        return []
    lines = [f"  out-of-domain gate: flags {gate['flagged']:.1%} of the evaluation part (tumour "
             f"{fmt(gate['flagged_tumour'])}, no tumour {fmt(gate['flagged_no_tumour'])})"]  # fmt: skip
    for name in ("passed", "flagged_subset"):
        e = gate[name]
        if "auc" in e:
            sens, spec, auc = (fmt(e[k]["value"]) for k in ("sensitivity", "specificity", "auc"))
            lines.append(f"    {name:15s} n={e['n']:5d}  sens {sens}  spec {spec}  AUC {auc}  ECE {e['ece']:.3f}")
        else:
            lines.append(f"    {name:15s} n={e['n']:5d}  (one class only: no rates)")
    return lines


def fmt(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:.3f}"
