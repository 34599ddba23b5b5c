"""Every metric of one evaluated set, from arrays: the pure half of ``brainmri evaluate`` (and ``kfold``).

Nothing here reads or writes files or runs a model: :func:`assess` takes logits, calibrated probabilities,
labels and prediction sets and returns the ``metrics.json`` body; :func:`headline` picks the numbers the
README quotes; :func:`conformal_sets` turns fitted conformal predictors into prediction sets (every method,
marginal and Mondrian); :func:`primary_variant` names the configured one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from brainmri.calibrate.conformal import ConformalPredictor, alpha_key, variant_key, variants
from brainmri.calibrate.posthoc import PostHocCalibration
from brainmri.calibrate.probabilities import softmax, tumour_labels, tumour_probability
from brainmri.config import EvaluateConfig
from brainmri.evaluate.coverage import set_metrics
from brainmri.evaluate.metrics import binary_metrics, compute_metrics, most_confused_pairs
from brainmri.labels import NO_TUMOR, TUMOR

UNCALIBRATED_THRESHOLD = 0.5

Sets = dict[str, dict[str, np.ndarray]]  # {variant: {alpha_key: bool (N, C)}}, variant e.g. lac, raps_mondrian


def primary_variant(ecfg: EvaluateConfig) -> str:
    """The report key of the configured (deployed) conformal variant, e.g. ``lac`` or ``lac_mondrian``."""
    return variant_key(ecfg.conformal_method, ecfg.conformal_mondrian)


def conformal_sets(
    cal: PostHocCalibration, val_probs: np.ndarray, val_labels: np.ndarray, probs: np.ndarray
) -> tuple[Sets, dict[str, dict[str, Any]]]:
    """Prediction sets of ``probs`` for every method (lac, aps, raps) x (marginal, Mondrian) and every alpha
    of ``cal``, and their qhat (Mondrian: the list of per-class ones).

    The configured variant's sets come from the predictors already fitted in ``cal`` (what
    ``calibration.json`` holds and deployment uses). The others, reported for comparison only, are fitted
    here on the same calibrated validation probabilities ``val_probs`` and labels ``val_labels``, with the
    same RAPS parameters. qhat ``None`` means +inf (every class in every set).
    """
    opts = {k: v for k, v in cal.conformal_options.items() if k != "mondrian"}
    deployed = variant_key(cal.conformal_method, cal.conformal_options["mondrian"])
    sets: Sets = {}
    qhat: dict[str, dict[str, Any]] = {}
    for m, mondrian in variants():
        key = variant_key(m, mondrian)
        sets[key], qhat[key] = {}, {}
        for a in cal.alphas:
            if key == deployed:
                predictor = cal.predictor(a)
            else:
                predictor = ConformalPredictor(a, m, mondrian=mondrian, **opts).fit(val_probs, val_labels)
            sets[key][alpha_key(a)] = predictor.predict_sets(probs)
            d = predictor.to_dict()
            qhat[key][alpha_key(a)] = d["qhat_per_class"] if mondrian else d["qhat"]
    return sets, qhat


def resampling_groups(run: Any, ids: list[str], from_split: bool) -> tuple[np.ndarray | None, str]:
    """Group labels for the bootstrap of a split part, and a sentence saying what is resampled.

    Why: the split keeps each scan's slices together, and those slices are correlated; resampling single
    slices would give intervals that are too narrow. Manifest CSVs and split files written before groups
    were recorded fall back to single images, and the sentence says so.
    """
    from brainmri.data.split import group_labels

    if not from_split:
        return None, "images (a manifest CSV carries no groups)"
    groups = group_labels(run.split(), ids)
    if groups is None:
        return None, "images (the split file records no groups; re-run `brainmri data split` to record them)"
    n_groups = len(np.unique(groups))
    if n_groups == len(ids):
        return None, "images (no two of them share a group of the split file)"
    return groups, f"whole groups of the split file: {n_groups} groups for {len(ids)} images"


def ci_note(grouped: bool, resampling: str, resamples: int) -> str:
    """One sentence on how the 95% intervals of a report were made (printed by the HTML report and the card)."""
    if grouped:
        return f"95% CIs: percentile bootstrap for every metric, {resamples} resamples of {resampling}."
    return (
        "95% CIs: exact Clopper–Pearson for sensitivity, specificity, PPV, NPV and conformal coverage; percentile "
        f"bootstrap otherwise, {resamples} resamples of {resampling}."
    )


def assess(
    logits: np.ndarray,
    probs_cal: np.ndarray,
    label_names: Sequence[str],
    classes: Sequence[str],
    ecfg: EvaluateConfig,
    *,
    thresholds: float | np.ndarray | None,
    sets: Sets | None,
    qhat: dict[str, dict[str, Any]] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """All metrics of one evaluated set, from arrays (used by ``evaluate`` and ``kfold``).

    Args:
        logits: (N, C) raw logits; ``probs_cal``: (N, C) calibrated probabilities.
        label_names: the manifest label per row (a class, ``tumor`` for binary sets, or anything else = unknown).
        thresholds: the tumour threshold (scalar, or per sample when calibration was cross-fitted).
        sets: ``{method: {alpha: bool (N, C)}}`` prediction sets of ``probs_cal``; ``qhat`` the matching quantiles.
        groups: one label per row (the split's scan groups): CIs then resample whole groups; ``None`` resamples rows.
    """
    classes = list(classes)
    probs_raw = softmax(logits)
    idx = {c: i for i, c in enumerate(classes)}
    y = np.array([idx.get(n, -1) for n in label_names], dtype=np.int64)
    binary_only = any(n == TUMOR for n in label_names)
    known = (y >= 0) & (not binary_only)
    boot = {"n_bootstrap": ecfg.bootstrap, "seed": ecfg.seed, "groups": groups}
    out: dict[str, Any] = {
        "n": len(label_names),
        "n_labelled_4class": int(known.sum()),
        "binary_labels_only": binary_only,
        "multiclass": None,
    }
    if known.any():
        out |= _multiclass_view(probs_raw[known], probs_cal[known], y[known], classes, ecfg, _rows(boot, known))
        if sets is not None:
            out["conformal"] = _conformal_view(sets, known, y[known], classes, qhat, _rows(boot, known))
            out["conformal"]["primary_method"] = primary_variant(ecfg)
    if NO_TUMOR in classes:
        view = _tumour_view(probs_raw, probs_cal, label_names, classes, ecfg, thresholds, boot)
        if view is not None:
            out["tumour_vs_no_tumour"] = view
    return out


def _rows(boot: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    """The bootstrap settings for the rows ``mask`` (the group labels follow the rows)."""
    return boot | {"groups": None if boot["groups"] is None else np.asarray(boot["groups"])[mask]}


def _multiclass_view(
    probs_raw: np.ndarray,
    probs_cal: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    ecfg: EvaluateConfig,
    boot: dict[str, Any],
) -> dict[str, Any]:
    """4-class metrics before and after temperature scaling, and the most confused class pairs."""
    return {
        "multiclass": {
            "uncalibrated": compute_metrics(probs_raw, y, classes, n_bins=ecfg.ece_bins, **boot),
            "calibrated": compute_metrics(probs_cal, y, classes, n_bins=ecfg.ece_bins, **boot),
        },
        "confused_pairs": most_confused_pairs(y, probs_cal.argmax(1), classes, top=6),
    }


def _conformal_view(
    sets: Sets,
    known: np.ndarray,
    y_known: np.ndarray,
    classes: list[str],
    qhat: dict[str, dict[str, Any]] | None,
    boot: dict[str, Any],
) -> dict[str, Any]:
    """Coverage and set sizes of every variant and alpha on the rows with a 4-class label (overall and per
    class; Mondrian variants promise coverage per class, marginal ones only overall)."""
    return {
        m: {
            a: set_metrics(s[known], y_known, classes, **boot) | ({"qhat": qhat[m][a]} if qhat else {})
            for a, s in per_alpha.items()
        }
        for m, per_alpha in sets.items()
    }


def _tumour_view(
    probs_raw: np.ndarray,
    probs_cal: np.ndarray,
    label_names: Sequence[str],
    classes: list[str],
    ecfg: EvaluateConfig,
    thresholds: float | np.ndarray | None,
    boot: dict[str, Any],
) -> dict[str, Any] | None:
    """Tumour vs no tumour: a fixed 0.5 on uncalibrated probabilities (reference) and the validation-chosen
    threshold on calibrated ones; ``None`` when no row has a tumour / no-tumour label."""
    yt = tumour_labels(label_names, classes)
    kt = yt >= 0
    if not kt.any():
        return None
    boot = _rows(boot, kt)
    views: dict[str, Any] = {
        "uncalibrated": binary_metrics(
            tumour_probability(probs_raw[kt], classes), yt[kt], UNCALIBRATED_THRESHOLD, **boot
        )
        | {"threshold_note": "fixed 0.5 on uncalibrated probabilities (reference only)"},
    }
    if thresholds is None:
        return views
    thr = thresholds if np.ndim(thresholds) == 0 else np.asarray(thresholds)[kt]
    cal = binary_metrics(tumour_probability(probs_cal[kt], classes), yt[kt], thr, **boot)
    if np.ndim(thresholds) > 0:
        cal["threshold"] = float(np.mean(thr))
        cal["threshold_note"] = "cross-fitted: mean of the per-half thresholds"
    else:
        cal["threshold_note"] = f"chosen on validation for sensitivity >= {ecfg.threshold_target_sensitivity}"
    views["calibrated"] = cal
    return views


def headline(metrics: dict[str, Any], ecfg: EvaluateConfig, temperature: float | None) -> dict[str, Any]:
    """The numbers the README quotes (calibrated where calibration changes them)."""
    h: dict[str, Any] = {"n": metrics["n"], "temperature": temperature}
    mc = metrics.get("multiclass")
    if mc:
        cal, raw = mc["calibrated"], mc["uncalibrated"]
        h |= {k: cal[k] for k in ("accuracy", "balanced_accuracy", "f1_macro", "auc_macro_ovr")}
        h |= {"ece_before": raw["ece"], "ece_after": cal["ece"], "nll_before": raw["nll"], "nll_after": cal["nll"]}
        h["brier_after"] = cal["brier"]
        conf = metrics.get("conformal")
        if conf:
            a = alpha_key(ecfg.conformal_alphas[0])
            c = conf[primary_variant(ecfg)][a]
            h["conformal"] = {
                "method": primary_variant(ecfg),
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
