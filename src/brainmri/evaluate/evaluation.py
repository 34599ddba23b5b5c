"""``brainmri evaluate RUN``: fit post-hoc calibration on validation, evaluate a split, write the reports.

Order of work (nothing is ever fitted on the split being reported, except when that split *is* val):

1. logits of the validation split (``val``, or ``fold<k>:val`` for a k-fold run);
2. temperature, tumour threshold and conformal quantiles fitted on those logits only, saved to
   ``RUN/calibration.json`` (:class:`~brainmri.calibrate.posthoc.PostHocCalibration`);
3. logits of the evaluated split (``test``, ``val`` or an external manifest CSV);
4. every metric before and after temperature scaling with 95% CIs (exact Clopper–Pearson for
   proportions, percentile bootstrap otherwise; :mod:`brainmri.evaluate.assess`), conformal coverage of
   the fitted predictors' sets, the tumour-vs-no-tumour view, figures and the error gallery, written
   into ``RUN/reports/`` (``test``) or ``RUN/reports/<name>/`` (anything else).

External sets with binary labels (``tumor`` / ``no_tumor``, e.g. Navoneel's yes/no set) are evaluated in
the tumour-vs-no-tumour view only: they carry no tumour type, so the 4-class metrics do not apply.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.calibrate.conformal import format_set
from brainmri.calibrate.posthoc import PostHocCalibration
from brainmri.calibrate.probabilities import softmax, tumour_labels
from brainmri.config import Config, EvaluateConfig, save_config
from brainmri.errors import DataError
from brainmri.evaluate.assess import (
    assess,
    ci_note,
    conformal_sets,
    headline,
    primary_variant,
    resampling_groups,
)
from brainmri.evaluate.domain import fit_ood
from brainmri.labels import NO_TUMOR
from brainmri.utils import atomic_write_json, atomic_write_text

SPLIT_NAMES = ("test", "val")
OPTIMISTIC_NOTE = (
    "evaluated on the validation split: the temperature, the tumour threshold and the conformal quantiles were "
    "fitted on it and the checkpoint was selected on it, so these numbers are optimistic; quote the test split"
)

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
    logits = predict_logits(model, val.images, ecfg.batch_size, desc=f"predict {part}")
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


@dataclass
class _Evaluated:
    """The reported split: its images, raw logits, calibrated probabilities and conformal sets."""

    name: str
    manifest: Path | None
    data: Any  # brainmri.runs.SplitImages
    logits: np.ndarray
    probs: np.ndarray
    sets: dict[str, dict[str, np.ndarray]]  # {method: {alpha_key: bool (N, C)}}
    qhat: dict[str, dict[str, float | None]]


def evaluate_run(run_dir: str | Path, cfg: Config | None = None, split: str | None = None) -> Path:
    """Evaluate a run; returns the reports folder. ``cfg`` supplies the evaluate section (default: the run's)."""
    from brainmri.runs import Run
    from brainmri.utils import setup_torch

    setup_torch()
    run = Run.load(run_dir)
    ecfg = (cfg or run.cfg).evaluate
    if split is not None:
        ecfg = ecfg.model_copy(update={"split": split})
    name, manifest = resolve_split(ecfg.split)
    out = run.reports_dir if name == "test" else run.reports_dir / name
    out.mkdir(parents=True, exist_ok=True)
    model = run.build_model()

    cal, val, val_logits = fit_on_val(run, model, ecfg)
    cal.save(run.calibration_path)
    if ecfg.ood:
        fit_ood(run, model, val_part(run), quantile=ecfg.ood_quantile, batch_size=ecfg.batch_size)
    ev = _evaluated_split(run, model, ecfg, cal, name, manifest, val, val_logits)
    groups, resampling = resampling_groups(run, ev.data.ids, from_split=manifest is None)
    metrics = assess(ev.logits, ev.probs, ev.data.label_names, run.classes, ecfg, thresholds=cal.threshold,
                     sets=ev.sets, qhat=ev.qhat, groups=groups)  # fmt: skip
    binary_only = metrics["binary_labels_only"]
    meta = _meta(run, ev, cal, ecfg, binary_only)
    meta["bootstrap"] |= {"resampling": resampling, "note": ci_note(groups is not None, resampling, ecfg.bootstrap)}
    metrics = meta | metrics

    title = f"{run.name} / {name}"
    figures = _figures(ev.data, softmax(ev.logits), ev.probs, run.classes, cal, ecfg, out, title, binary_only)
    metrics["error_gallery"] = _gallery(model, ev.data, ev.probs, run.classes, ecfg, out, title, binary_only, cal)
    figures.append("error_gallery.png")
    _write_reports(out, run, ecfg, cal, ev, metrics, figures, title)
    if meta["optimistic"]:
        print(f"warning: {OPTIMISTIC_NOTE}", file=sys.stderr)
    return out


def _evaluated_split(
    run: Any,
    model: Any,
    ecfg: EvaluateConfig,
    cal: PostHocCalibration,
    name: str,
    manifest: Path | None,
    val: Any,
    val_logits: np.ndarray,
) -> _Evaluated:
    """Predict the reported split (``val`` reuses the validation logits) and apply the fitted calibration."""
    from brainmri.runs import predict_logits

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
        logits = predict_logits(model, data.images, ecfg.batch_size, desc=f"predict {name}")
    probs = cal.probabilities(logits)
    keep = val.labels >= 0
    sets, qhat = conformal_sets(cal, cal.probabilities(val_logits[keep]), val.labels[keep], probs)
    return _Evaluated(name, manifest, data, logits, probs, sets, qhat)


def _meta(run: Any, ev: _Evaluated, cal: PostHocCalibration, ecfg: EvaluateConfig, binary_only: bool) -> dict:
    """What was evaluated, against what calibration, with which settings (the head of ``metrics.json``)."""
    optimistic = ev.name == "val"
    meta = {
        "run": run.name,
        "split": ev.name,
        "source": str(ev.manifest) if ev.manifest else val_part(run) if optimistic else "test",
        "classes": run.classes,
        "fitted_on": {"split": cal.fitted_on_, "n": cal.n_fit_},
        "temperature": cal.temperature,
        "bootstrap": {"resamples": ecfg.bootstrap, "seed": ecfg.seed, "level": 0.95, "method": "percentile"},
        "ece_bins": ecfg.ece_bins,
        "optimistic": optimistic,
    }
    if ev.data.overlap is not None:
        meta["overlap_removed"] = ev.data.overlap
    if optimistic:
        meta["note"] = OPTIMISTIC_NOTE
    if binary_only:
        meta["note_binary"] = "binary tumor/no_tumor labels: evaluated in the tumour-vs-no-tumour view only"
    return meta


def _write_reports(
    out: Path,
    run: Any,
    ecfg: EvaluateConfig,
    cal: PostHocCalibration,
    ev: _Evaluated,
    metrics: dict[str, Any],
    figures: list[str],
    title: str,
) -> None:
    """``metrics.json``, ``predictions.csv``, ``classification_report.txt``, ``summary.json``, ``config.yaml``."""
    atomic_write_json(out / "metrics.json", metrics)
    frame = _predictions_frame(ev.data, ev.logits, ev.probs, cal, ev.sets[primary_variant(ecfg)], run.classes)
    atomic_write_text(out / "predictions.csv", frame.to_csv(index=False))
    report = _classification_report(ev, run.classes, title, metrics["optimistic"], metrics["binary_labels_only"])
    atomic_write_text(out / "classification_report.txt", report)
    summary = {k: metrics[k] for k in ("run", "split", "source", "fitted_on", "optimistic")}
    if metrics["optimistic"]:
        summary["note"] = OPTIMISTIC_NOTE
    if metrics["binary_labels_only"]:
        summary["note_binary"] = metrics["note_binary"]
    if "overlap_removed" in metrics:
        summary["overlap_removed"] = {k: v for k, v in metrics["overlap_removed"].items() if k != "removed_ids"}
    summary |= headline(metrics, ecfg, cal.temperature) | {"figures": figures}
    atomic_write_json(out / "summary.json", summary)
    save_config(run.cfg.model_copy(update={"evaluate": ecfg}), out / "config.yaml")


def _classification_report(ev: _Evaluated, classes: list[str], title: str, optimistic: bool, binary_only: bool) -> str:
    """scikit-learn's per-class report of the calibrated arg-max, with a header saying what it covers."""
    from sklearn.metrics import classification_report

    known = (ev.data.labels >= 0) & (not binary_only)
    report = (
        classification_report(
            ev.data.labels[known],
            ev.probs[known].argmax(1),
            labels=list(range(len(classes))),
            target_names=classes,
            digits=4,
            zero_division=0,
        )
        if known.any()
        else "no 4-class labels in this set (binary tumour/no-tumour labels only)\n"
    )
    header = f"{title} (n = {int(known.sum())}); calibrated probabilities (argmax unchanged by temperature)\n"
    return header + ("NOTE: " + OPTIMISTIC_NOTE + "\n" if optimistic else "") + "\n" + report
