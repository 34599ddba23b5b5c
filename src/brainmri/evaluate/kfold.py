"""``brainmri kfold``: train and evaluate every fold of the split file, then summarise across folds.

Fold k trains on ``folds[k].train`` and is evaluated on ``folds[k].val`` (the test split is never
touched). Calibration in a fold needs data the model did not train on, and the only such data is the
fold's own validation part. Fitting T / threshold / conformal quantiles on the fold's training data
would be wrong (the model is over-confident on data it has seen, so T would come out too small), and
fitting them on the whole validation part and then evaluating there would be optimistic. We therefore
**cross-fit**: the fold's validation part is split in two stratified halves (seeded); each half is
calibrated with the temperature, threshold and quantiles fitted on the *other* half. Every reported
calibrated number is thus out-of-sample, and conformal coverage keeps its guarantee within each half.
Uncalibrated metrics (T = 1) are reported beside them.

Remaining optimism, stated in the summary: the best epoch of each fold is selected on that fold's
validation part (early stopping / checkpointing), so fold numbers are mildly optimistic; the held-out
test split (``brainmri evaluate``) is the unbiased estimate.

Summary across K folds: mean, sample standard deviation and the 95% t-interval
mean ± t(0.975, K-1) · sd / sqrt(K) of each headline number.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.calibrate.conformal import alpha_key, variant_key, variants
from brainmri.calibrate.posthoc import PostHocCalibration
from brainmri.config import Config, EvaluateConfig, save_config
from brainmri.errors import DataError
from brainmri.evaluate.assess import assess, ci_note, conformal_sets, headline, resampling_groups
from brainmri.utils import atomic_write_json, atomic_write_text

HEADLINE_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "auc_macro_ovr",
    "nll_before",
    "nll_after",
    "ece_before",
    "ece_after",
    "brier_after",
    "temperature",
    "conformal_coverage",
    "conformal_mean_set_size",
    "tumour_sensitivity",
    "tumour_specificity",
    "tumour_auc",
)
OPTIMISM_NOTE = (
    "each fold's checkpoint was selected on that fold's validation part, so fold numbers are mildly optimistic; "
    "calibrated numbers are cross-fitted (each half of the fold's validation part calibrated on the other half)"
)


def _halves(y: np.ndarray, seed: int) -> list[np.ndarray]:
    """Two stratified halves of the row indices (plain random halves if a class has a single row)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    if n < 4:
        raise DataError(f"cross-fitted calibration needs at least 4 validation images, got {n}")
    counts = np.bincount(y[y >= 0]) if (y >= 0).any() else np.array([])
    strat = np.where(y >= 0, y, counts.size)
    if np.bincount(strat).min() >= 2:
        splitter = StratifiedKFold(2, shuffle=True, random_state=seed).split(np.zeros(n), strat)
    else:
        splitter = KFold(2, shuffle=True, random_state=seed).split(np.zeros(n))
    return [test for _, test in splitter]


def cross_fit(
    logits: np.ndarray, labels: np.ndarray, classes: Sequence[str], ecfg: EvaluateConfig, seed: int = 0
) -> dict[str, Any]:
    """Calibrate each half of (logits, labels) with everything fitted on the other half.

    Returns ``probs`` (N, C) calibrated, ``thresholds`` (N,) or None, ``sets`` {method: {alpha: bool (N, C)}},
    ``qhat`` {method: {alpha: [qhat of half 0, half 1]}}, ``temperatures`` [T0, T1], ``halves``.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    halves = _halves(y, seed)
    probs = np.zeros_like(z)
    thresholds = np.full(len(z), np.nan)
    keys = [alpha_key(a) for a in ecfg.conformal_alphas]
    names = [variant_key(m, mondrian) for m, mondrian in variants()]
    sets = {m: {a: np.zeros(z.shape, bool) for a in keys} for m in names}
    qhat: dict[str, dict[str, list[Any]]] = {m: {a: [] for a in keys} for m in names}
    temperatures = []
    for h, rows in enumerate(halves):
        other = halves[1 - h]
        other = other[y[other] >= 0]
        cal = PostHocCalibration.from_config(classes, ecfg).fit(z[other], y[other], fitted_on=f"half {1 - h}")
        temperatures.append(cal.temperature)
        probs[rows] = cal.probabilities(z[rows])
        if cal.threshold is not None:
            thresholds[rows] = cal.threshold
        half_sets, half_qhat = conformal_sets(cal, cal.probabilities(z[other]), y[other], probs[rows])
        for m in names:
            for a in keys:
                sets[m][a][rows] = half_sets[m][a]
                qhat[m][a].append(half_qhat[m][a])
    return {
        "probs": probs,
        "thresholds": None if np.isnan(thresholds).any() else thresholds,
        "sets": sets,
        "qhat": qhat,
        "temperatures": temperatures,
        "halves": halves,
    }


def flat_headline(h: dict[str, Any]) -> dict[str, float | None]:
    """Headline numbers of one fold as plain floats (point values)."""

    def val(x: Any) -> float | None:
        if isinstance(x, dict):
            return x.get("value")
        return None if x is None else float(x)

    conf = h.get("conformal") or {}
    out = {k: val(h.get(k)) for k in HEADLINE_KEYS if not k.startswith("conformal_")}
    out["conformal_coverage"] = val(conf.get("coverage"))
    out["conformal_mean_set_size"] = val(conf.get("mean_set_size"))
    return out


def summarise_folds(per_fold: list[dict[str, float | None]], level: float = 0.95) -> dict[str, Any]:
    """Mean, sd (ddof=1) and t-interval over folds for every key (folds with None are left out)."""
    from scipy import stats

    out: dict[str, Any] = {}
    keys = [k for k in HEADLINE_KEYS if any(f.get(k) is not None for f in per_fold)]
    for k in keys:
        vals = np.array([f[k] for f in per_fold if f.get(k) is not None], dtype=np.float64)
        n = len(vals)
        mean = float(vals.mean())
        sd = float(vals.std(ddof=1)) if n > 1 else None
        if n > 1:
            half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n))
            lo, hi = mean - half, mean + half
        else:
            lo = hi = None
        out[k] = {"mean": mean, "sd": sd, "ci_low": lo, "ci_high": hi, "n_folds": n, "values": vals.tolist()}
    return out


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# k-fold cross-validation: {summary['name']} ({summary['k']} folds)",
        "",
        f"Split file: `{summary['split_file']}`. Each fold: trained on its train part, evaluated on its "
        "validation part; the test split is not used.",
        "",
        f"Note: {OPTIMISM_NOTE}.",
        "",
        "| metric | mean ± sd | 95% CI (t, over folds) | per fold |",
        "|---|---|---|---|",
    ]
    for k, s in summary["metrics"].items():
        sd = "" if s["sd"] is None else f" ± {s['sd']:.4f}"
        ci = "" if s["ci_low"] is None else f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]"
        per = ", ".join(f"{v:.4f}" for v in s["values"])
        lines.append(f"| {k} | {s['mean']:.4f}{sd} | {ci} | {per} |")
    lines.append("")
    return "\n".join(lines)


def evaluate_fold(run_dir: Path, fold: int, ecfg: EvaluateConfig) -> dict[str, Any]:
    """Cross-fitted evaluation of one fold run on its validation part; writes ``reports/`` there."""
    from brainmri.runs import Run, predict_logits

    run = Run.load(run_dir)
    model = run.build_model()
    data = run.load_images(f"fold{fold}:val")
    logits = predict_logits(model, data.images, ecfg.batch_size, desc=f"predict fold{fold}:val")
    cf = cross_fit(logits, data.labels, run.classes, ecfg, seed=ecfg.seed)
    groups, resampling = resampling_groups(run, data.ids, from_split=True)
    metrics = assess(logits, cf["probs"], data.label_names, run.classes, ecfg, thresholds=cf["thresholds"],
                     sets=cf["sets"], qhat=cf["qhat"], groups=groups)  # fmt: skip
    t_mean = float(np.mean(cf["temperatures"]))
    metrics = {
        "run": run.name,
        "fold": fold,
        "split": f"fold{fold}:val",
        "calibration": "cross-fitted: each half of the fold's validation part calibrated on the other half",
        "temperatures": cf["temperatures"],
        "bootstrap": {
            "resamples": ecfg.bootstrap,
            "seed": ecfg.seed,
            "level": 0.95,
            "method": "percentile",
            "resampling": resampling,
            "note": ci_note(groups is not None, resampling, ecfg.bootstrap),
        },
        "note": OPTIMISM_NOTE,
    } | metrics
    h = headline(metrics, ecfg, t_mean)
    out = run.reports_dir
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "summary.json", {"run": run.name, "fold": fold, "note": OPTIMISM_NOTE} | h)
    return h


def run_kfold(
    cfg: Config,
    split_file: str | Path,
    *,
    reuse: bool = False,
    overwrite: bool = False,
    folds: Sequence[int] | None = None,
) -> Path:
    """Train (``train_run(..., fold=k)``) and evaluate every fold; returns ``runs/<name>-kfold``."""
    from brainmri.data.split import read_split
    from brainmri.runs import RUN_JSON, WEIGHTS_FILE
    from brainmri.train.trainer import train_run
    from brainmri.utils import setup_torch

    setup_torch()
    split = read_split(split_file)
    k_total = len(split.get("folds") or [])
    if k_total < 2:
        raise DataError(f"{split_file}: no folds in the split file; run `brainmri data split` first")
    if cfg.split.folds != k_total:
        raise DataError(
            f"{split_file} has {k_total} folds but split.folds={cfg.split.folds}; re-split with "
            f"`brainmri data split --set split.folds={cfg.split.folds}` or pass --folds {k_total}"
        )
    name = cfg.train.run_name
    out = Path(cfg.paths.runs_dir) / f"{name}-kfold"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    per_fold = []
    fold_ids = list(range(k_total)) if folds is None else list(folds)
    for k in fold_ids:
        fold_dir = out / f"fold{k}"
        finished = (fold_dir / RUN_JSON).is_file() and (fold_dir / WEIGHTS_FILE).is_file()
        if not (reuse and finished):
            fold_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"run_name": f"{name}-fold{k}"})})
            train_run(fold_cfg, split_file, fold_dir, fold=k, overwrite=overwrite)
        h = evaluate_fold(fold_dir, k, cfg.evaluate)
        per_fold.append({"fold": k} | flat_headline(h))
    summary = {
        "name": name,
        "k": len(fold_ids),
        "folds": fold_ids,
        "split_file": str(Path(split_file).resolve()),
        "note": OPTIMISM_NOTE,
        "interval": "95% t-interval over folds: mean ± t(0.975, K-1) sd / sqrt(K)",
        "metrics": summarise_folds(per_fold),
        "per_fold": per_fold,
    }
    atomic_write_json(out / "kfold_summary.json", summary)
    atomic_write_text(out / "kfold_summary.md", summary_markdown(summary))
    return out
