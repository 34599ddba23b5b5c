"""``brainmri evaluate RUN``: fit post-hoc calibration on validation, evaluate a split, write the reports.

Order of work (nothing is ever fitted on the split being reported, except when that split *is* val):

1. logits of the validation split (``val``, or ``fold<k>:val`` for a k-fold run);
2. temperature, tumour threshold and conformal quantiles fitted on those logits only, saved to
   ``RUN/calibration.json`` (:class:`~brainmri.calibrate.posthoc.PostHocCalibration`);
3. logits of the evaluated split (``test``, ``val`` or an external manifest CSV);
4. every metric before and after temperature scaling with bootstrap CIs, conformal coverage, the
   tumour-vs-no-tumour view, figures and the error gallery, written into ``RUN/reports/`` (``test``) or
   ``RUN/reports/<name>/`` (anything else).

External sets with binary labels (``tumor`` / ``no_tumor``, e.g. Navoneel's yes/no set) are evaluated in
the tumour-vs-no-tumour view only: they carry no tumour type, so the 4-class metrics do not apply.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.calibrate.conformal import METHODS, ConformalPredictor, format_set
from brainmri.calibrate.posthoc import PostHocCalibration
from brainmri.calibrate.probabilities import softmax, tumour_labels, tumour_probability
from brainmri.config import Config, EvaluateConfig, save_config
from brainmri.errors import DataError
from brainmri.evaluate.coverage import set_metrics
from brainmri.evaluate.metrics import (
    binary_metrics,
    compute_metrics,
    most_confused_pairs,
)
from brainmri.labels import NO_TUMOR, TUMOR
from brainmri.utils import atomic_write_json, atomic_write_text

SPLIT_NAMES = ("test", "val")
OPTIMISTIC_NOTE = (
    "evaluated on the validation split: the temperature, the tumour threshold and the conformal quantiles were "
    "fitted on it and the checkpoint was selected on it, so these numbers are optimistic; quote the test split"
)
UNCALIBRATED_THRESHOLD = 0.5


# ------------------------------------------------------------------------------------------ core (arrays)


def _alpha_key(a: float) -> str:
    return repr(float(a))


def conformal_sets_for(
    val_probs: np.ndarray, val_labels: np.ndarray, probs: np.ndarray, alphas: Sequence[float]
) -> dict[str, dict[str, np.ndarray]]:
    """Both methods' prediction sets on ``probs``, each fitted on the (calibrated) validation probabilities."""
    return {
        m: {_alpha_key(a): ConformalPredictor(a, m).fit(val_probs, val_labels).predict_sets(probs) for a in alphas}
        for m in METHODS
    }


def assess(
    logits: np.ndarray,
    probs_cal: np.ndarray,
    label_names: Sequence[str],
    classes: Sequence[str],
    ecfg: EvaluateConfig,
    *,
    thresholds: float | np.ndarray | None,
    sets: dict[str, dict[str, np.ndarray]] | None,
    qhat: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """All metrics of one evaluated set, from arrays (used by ``evaluate`` and ``kfold``).

    Args:
        logits: (N, C) raw logits; ``probs_cal``: (N, C) calibrated probabilities.
        label_names: the manifest label per row (a class, ``tumor`` for binary sets, or anything else = unknown).
        thresholds: the tumour threshold (scalar, or per sample when calibration was cross-fitted).
        sets: ``{method: {alpha: bool (N, C)}}`` prediction sets of ``probs_cal``.
    """
    classes = list(classes)
    probs_raw = softmax(logits)
    idx = {c: i for i, c in enumerate(classes)}
    y = np.array([idx.get(n, -1) for n in label_names], dtype=np.int64)
    binary_only = any(n == TUMOR for n in label_names)
    known = (y >= 0) & (not binary_only)
    boot = {"n_bootstrap": ecfg.bootstrap, "seed": ecfg.seed}
    out: dict[str, Any] = {
        "n": len(label_names),
        "n_labelled_4class": int(known.sum()),
        "binary_labels_only": binary_only,
    }
    if known.any():
        yk = y[known]
        out["multiclass"] = {
            "uncalibrated": compute_metrics(probs_raw[known], yk, classes, n_bins=ecfg.ece_bins, **boot),
            "calibrated": compute_metrics(probs_cal[known], yk, classes, n_bins=ecfg.ece_bins, **boot),
        }
        out["confused_pairs"] = most_confused_pairs(yk, probs_cal[known].argmax(1), classes, top=6)
        if sets is not None:
            out["conformal"] = {
                m: {
                    a: set_metrics(s[known], yk, classes, **boot) | ({"qhat": qhat[m][a]} if qhat else {})
                    for a, s in per_alpha.items()
                }
                for m, per_alpha in sets.items()
            }
            out["conformal"]["primary_method"] = ecfg.conformal_method
    else:
        out["multiclass"] = None
    if NO_TUMOR in classes:
        yt = tumour_labels(label_names, classes)
        kt = yt >= 0
        if kt.any():
            thr = thresholds if np.ndim(thresholds) == 0 else np.asarray(thresholds)[kt]
            views: dict[str, Any] = {
                "uncalibrated": binary_metrics(
                    tumour_probability(probs_raw[kt], classes), yt[kt], UNCALIBRATED_THRESHOLD, **boot
                )
                | {"threshold_note": "fixed 0.5 on uncalibrated probabilities (reference only)"},
            }
            if thresholds is not None:
                views["calibrated"] = binary_metrics(tumour_probability(probs_cal[kt], classes), yt[kt], thr, **boot)
                if np.ndim(thresholds) > 0:
                    views["calibrated"]["threshold"] = float(np.mean(thr))
                    views["calibrated"]["threshold_note"] = "cross-fitted: mean of the per-half thresholds"
                else:
                    views["calibrated"]["threshold_note"] = (
                        f"chosen on validation for sensitivity >= {ecfg.threshold_target_sensitivity}"
                    )
            out["tumour_vs_no_tumour"] = views
    return out


def headline(metrics: dict[str, Any], ecfg: EvaluateConfig, temperature: float | None) -> dict[str, Any]:
    """The numbers the README quotes (calibrated where calibration changes them)."""
    h: dict[str, Any] = {"n": metrics["n"], "temperature": temperature}
    mc = metrics.get("multiclass")
    if mc:
        cal, raw = mc["calibrated"], mc["uncalibrated"]
        h |= {
            "accuracy": cal["accuracy"],
            "balanced_accuracy": cal["balanced_accuracy"],
            "f1_macro": cal["f1_macro"],
            "auc_macro_ovr": cal["auc_macro_ovr"],
            "ece_before": raw["ece"],
            "ece_after": cal["ece"],
            "nll_before": raw["nll"],
            "nll_after": cal["nll"],
            "brier_after": cal["brier"],
        }
        conf = metrics.get("conformal")
        if conf:
            a = _alpha_key(ecfg.conformal_alphas[0])
            c = conf[ecfg.conformal_method][a]
            h["conformal"] = {
                "method": ecfg.conformal_method,
                "alpha": float(a),
                "target_coverage": 1 - float(a),
                "coverage": c["coverage"],
                "mean_set_size": c["mean_set_size"],
            }
    tv = (metrics.get("tumour_vs_no_tumour") or {}).get("calibrated")
    if tv:
        h |= {
            "tumour_threshold": tv["threshold"],
            "tumour_sensitivity": tv["sensitivity"],
            "tumour_specificity": tv["specificity"],
            "tumour_auc": tv["auc"],
        }
    return h


# ------------------------------------------------------------------------------------------ run level


def resolve_split(split: str) -> tuple[str, Path | None]:
    """``(name, manifest path or None)``: ``test``/``val``, or an existing manifest CSV."""
    if split in SPLIT_NAMES:
        return split, None
    p = Path(split)
    if not p.is_file():
        raise DataError(f"evaluate.split: '{split}' is neither test, val nor an existing manifest CSV")
    stem = p.stem if p.stem != "manifest" else (p.parent.name or "external")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "external", p


def val_part(run: Any) -> str:
    """The validation part of a run: ``val``, or ``fold<k>:val`` for a k-fold run."""
    fold = run.info.get("fold")
    return "val" if fold is None else f"fold{int(fold)}:val"


def fit_on_val(run: Any, model: Any, ecfg: EvaluateConfig) -> tuple[PostHocCalibration, Any, np.ndarray]:
    """Fit the post-hoc calibration on the run's validation logits; returns (calibration, images, logits)."""
    from brainmri.runs import predict_logits

    part = val_part(run)
    val = run.load_images(part)
    keep = val.labels >= 0
    if keep.sum() == 0:
        raise DataError(f"{run.dir}: the validation split '{part}' has no labelled images to calibrate on")
    logits = predict_logits(model, val.images, ecfg.batch_size)
    cal = PostHocCalibration.from_config(run.classes, ecfg).fit(
        logits[keep],
        val.labels[keep],
        fitted_on=part,
        source={
            "run": run.name,
            "split_file": run.info.get("split_file"),
            "split_sha256": run.info.get("split_sha256"),
        },
    )
    return cal, val, logits


def _predictions_frame(
    data: Any,
    logits: np.ndarray,
    probs: np.ndarray,
    cal: PostHocCalibration,
    sets: dict[str, np.ndarray],
    classes: list[str],
):
    import pandas as pd

    pred = probs.argmax(1)
    frame = pd.DataFrame({"id": data.ids, "path": data.paths, "label": data.label_names})
    for i, c in enumerate(classes):
        frame[f"p_{c}"] = probs[:, i]
    frame["prediction"] = [classes[k] for k in pred]
    frame["confidence"] = probs.max(1)
    frame["correct"] = np.where(data.labels >= 0, pred == data.labels, np.nan)
    if NO_TUMOR in classes and cal.threshold is not None:
        pt = cal.tumour_probability(probs)
        frame["p_tumour"] = pt
        frame["tumour_call"] = pt >= cal.threshold
    for a, s in sets.items():
        frame[f"set_alpha_{a}"] = [format_set(r, classes) for r in s]
    for i, c in enumerate(classes):
        frame[f"logit_{c}"] = logits[:, i]
    return frame


def _gallery(
    model: Any,
    data: Any,
    probs: np.ndarray,
    classes: list[str],
    ecfg: EvaluateConfig,
    out: Path,
    title: str,
    binary_only: bool,
    cal: PostHocCalibration,
) -> list[dict[str, Any]]:
    from brainmri.evaluate.gallery import error_gallery, select_errors
    from brainmri.models.cam import compute_cams

    pred = probs.argmax(1)
    conf = probs.max(1)
    if binary_only and cal.threshold is not None:
        yt = tumour_labels(data.label_names, classes)
        called = cal.tumour_call(probs).astype(np.int64)
        pt = cal.tumour_probability(probs)
        wrong_conf = np.where(called == 1, pt, 1 - pt)
        chosen = select_errors(yt, called, wrong_conf, ecfg.gallery_max)
        captions = [
            f"true: {'tumour' if yt[i] else 'no tumour'}\ncalled: {'tumour' if called[i] else 'no tumour'} "
            f"(p_tumour {pt[i]:.2f})\n(argmax {classes[pred[i]]})"
            for i in chosen
        ]
    else:
        chosen = select_errors(data.labels, pred, conf, ecfg.gallery_max)
        captions = [f"true: {classes[data.labels[i]]}\npred: {classes[pred[i]]} ({conf[i]:.2f})" for i in chosen]
    cams = (
        compute_cams(model, data.images[chosen], targets=pred[chosen], method=ecfg.gradcam_method)
        if len(chosen)
        else np.zeros((0, 1, 1), np.float32)
    )
    error_gallery(
        data.images[chosen],
        cams,
        captions,
        out / "error_gallery.png",
        title=f"{title}: misclassified, most confident first (Grad-CAM of the predicted class)",
    )
    return [{"id": data.ids[i], "caption": c.replace("\n", "; ")} for i, c in zip(chosen, captions, strict=True)]


def _figures(
    data: Any,
    probs_raw: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    cal: PostHocCalibration,
    ecfg: EvaluateConfig,
    out: Path,
    title: str,
    binary_only: bool,
) -> list[str]:
    from brainmri.evaluate import plots

    written = []
    y = data.labels
    known = (y >= 0) & (not binary_only)
    if known.any():
        yk = y[known]
        plots.confusion_matrices(yk, probs[known].argmax(1), classes, out / "confusion_matrix.png", title)
        plots.roc_pr_curves(probs[known], yk, classes, out / "roc_pr.png", title)
        curves = {"before (T = 1)": (probs_raw[known], yk), f"after (T = {cal.temperature:.2f})": (probs[known], yk)}
        plots.reliability_diagram(curves, out / "reliability.png", ecfg.ece_bins, title)
        plots.confidence_histogram(curves, out / "confidence_hist.png", title)
        written += ["confusion_matrix.png", "roc_pr.png", "reliability.png", "confidence_hist.png"]
    if NO_TUMOR in classes:
        yt = tumour_labels(data.label_names, classes)
        kt = yt >= 0
        if kt.any():
            plots.binary_roc(
                cal.tumour_probability(probs[kt]),
                yt[kt],
                cal.threshold,
                out / "tumour_roc.png",
                f"{title}: tumour vs no tumour",
            )
            written.append("tumour_roc.png")
    return written


def evaluate_run(run_dir: str | Path, cfg: Config | None = None, split: str | None = None) -> Path:
    """Evaluate a run; returns the reports folder. ``cfg`` supplies the evaluate section (default: the run's)."""
    from sklearn.metrics import classification_report

    from brainmri.runs import Run, predict_logits
    from brainmri.utils import setup_torch

    setup_torch()
    run = Run.load(run_dir)
    ecfg = (cfg or run.cfg).evaluate
    if split is not None:
        ecfg = ecfg.model_copy(update={"split": split})
    name, manifest = resolve_split(ecfg.split)
    out = run.reports_dir if name == "test" else run.reports_dir / name
    out.mkdir(parents=True, exist_ok=True)
    classes = run.classes
    model = run.build_model()

    cal, val, val_logits = fit_on_val(run, model, ecfg)
    cal.save(run.calibration_path)
    val_keep = val.labels >= 0
    val_probs = cal.probabilities(val_logits[val_keep])

    if name == "val":
        data, logits = val, val_logits
    else:
        data = run.load_images("test") if name == "test" else run.load_external(manifest)
        if len(data.ids) == 0:
            raise DataError(
                f"{run.info.get('split_file')}: the split has no test images; evaluate --split val or a manifest CSV"
                if name == "test"
                else f"{manifest}: no readable images to evaluate"
            )
        logits = predict_logits(model, data.images, ecfg.batch_size)

    probs_raw = softmax(logits)
    probs = cal.probabilities(logits)
    sets = conformal_sets_for(val_probs, val.labels[val_keep], probs, ecfg.conformal_alphas)
    qhat = {
        m: {
            _alpha_key(a): ConformalPredictor(a, m).fit(val_probs, val.labels[val_keep]).to_dict()["qhat"]
            for a in ecfg.conformal_alphas
        }
        for m in METHODS
    }
    metrics = assess(logits, probs, data.label_names, classes, ecfg, thresholds=cal.threshold, sets=sets, qhat=qhat)
    binary_only = metrics["binary_labels_only"]
    optimistic = name == "val"
    title = f"{run.name} / {name}"

    meta = {
        "run": run.name,
        "split": name,
        "source": str(manifest) if manifest else val_part(run) if name == "val" else "test",
        "classes": classes,
        "fitted_on": {"split": cal.fitted_on_, "n": cal.n_fit_},
        "temperature": cal.temperature,
        "bootstrap": {"resamples": ecfg.bootstrap, "seed": ecfg.seed, "level": 0.95, "method": "percentile"},
        "ece_bins": ecfg.ece_bins,
        "optimistic": optimistic,
    }
    if data.overlap is not None:
        meta["overlap_removed"] = data.overlap
    if optimistic:
        meta["note"] = OPTIMISTIC_NOTE
    if binary_only:
        meta["note_binary"] = "binary tumor/no_tumor labels: evaluated in the tumour-vs-no-tumour view only"
    metrics = meta | metrics

    figures = _figures(data, probs_raw, probs, classes, cal, ecfg, out, title, binary_only)
    gallery = _gallery(model, data, probs, classes, ecfg, out, title, binary_only, cal)
    figures.append("error_gallery.png")
    metrics["error_gallery"] = gallery

    atomic_write_json(out / "metrics.json", metrics)
    primary = sets[ecfg.conformal_method]
    _predictions_frame(data, logits, probs, cal, primary, classes).pipe(
        lambda f: atomic_write_text(out / "predictions.csv", f.to_csv(index=False))
    )
    known = (data.labels >= 0) & (not binary_only)
    report = (
        classification_report(
            data.labels[known],
            probs[known].argmax(1),
            labels=list(range(len(classes))),
            target_names=classes,
            digits=4,
            zero_division=0,
        )
        if known.any()
        else "no 4-class labels in this set (binary tumour/no-tumour labels only)\n"
    )
    header = f"{title} (n = {int(known.sum())}); calibrated probabilities (argmax unchanged by temperature)\n"
    atomic_write_text(
        out / "classification_report.txt",
        header + ("NOTE: " + OPTIMISTIC_NOTE + "\n" if optimistic else "") + "\n" + report,
    )
    summary = {k: meta[k] for k in ("run", "split", "source", "fitted_on", "optimistic")}
    if optimistic:
        summary["note"] = OPTIMISTIC_NOTE
    if binary_only:
        summary["note_binary"] = meta["note_binary"]
    if "overlap_removed" in meta:
        summary["overlap_removed"] = {k: v for k, v in meta["overlap_removed"].items() if k != "removed_ids"}
    summary |= headline(metrics, ecfg, cal.temperature) | {"figures": figures}
    atomic_write_json(out / "summary.json", summary)
    resolved = run.cfg.model_copy(update={"evaluate": ecfg})
    save_config(resolved, out / "config.yaml")
    if optimistic:
        print(f"warning: {OPTIMISTIC_NOTE}", file=sys.stderr)
    return out
