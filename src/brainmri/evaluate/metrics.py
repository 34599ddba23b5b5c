"""Classification and calibration metrics, each with a 95% confidence interval (bootstrap or exact).

Definitions (``docs/evaluation.md`` has the formulas):

- standard metrics (accuracy, balanced accuracy, macro/weighted precision, recall, F1, one-vs-rest AUC,
  NLL, Brier) are computed by scikit-learn for the reported value;
- Brier = mean over samples of the *summed* squared error over classes (range 0..2, not divided by C);
- ECE / MCE (Guo et al. 2017): 15 equal-width bins ``(m-1)/M < conf <= m/M`` on the *maximum* probability,
  ECE = sum_m |B_m|/N |acc(B_m) - conf(B_m)|, MCE = max over non-empty bins of |acc - conf|;
- adaptive ECE (Nixon et al. 2019): the same with equal-mass bins (sorted by confidence, sample of
  rank j in bin floor(j M / N));
- class-wise ECE (Kull et al. 2019): for every class c, equal-width bins on p_c against 1[y = c],
  averaged over classes.

Bootstrap: ``n_resamples`` resamples of the N evaluated samples (with replacement, seeded), written as
a (B, N) matrix of multiplicities, so every metric is a weighted statistic evaluated for all resamples
at once with matrix products (about a second for N = 1000, B = 1000, every metric). The CI is the
2.5/97.5 percentile of the resampled values. The same seed gives the same resamples, so metrics before
and after calibration are paired.

Proportions of a count (sensitivity, specificity, PPV, NPV; conformal coverage and empty-set rate) get the
exact Clopper–Pearson 95% interval instead (``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``):
the percentile bootstrap collapses at 0/n and n/n and is too narrow for small n (10/11 gave 70–100%, the
exact interval is 58.7–99.8%). Every estimate says which interval it carries in ``ci_method``
(``"bootstrap"``, ``"clopper-pearson"``, ``"group bootstrap"``, or ``None`` when there is none).

Groups: with ``groups`` (one label per sample, e.g. the scan groups of the split file) whole groups are
drawn instead of samples (cluster bootstrap), and every interval, proportions included, comes from those
resamples (``"group bootstrap"``). Adjacent slices of one scan are correlated, so an interval that treats
them as independent is too narrow; Clopper–Pearson assumes independent trials and is not used then.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from brainmri.calibrate.base import as_labels, as_probs

CI_LEVEL = 0.95
BOOTSTRAP = "bootstrap"
GROUP_BOOTSTRAP = "group bootstrap"
CLOPPER_PEARSON = "clopper-pearson"
_CHUNK = 250  # resamples evaluated at once (bounds memory for large N)


# --------------------------------------------------------------------------------------------------
# bootstrap machinery


def bootstrap_counts(n: int, n_resamples: int, seed: int = 0, groups: Any = None) -> np.ndarray:
    """Multiplicity of each of ``n`` samples in each of ``n_resamples`` resamples: float64 (B, N).

    With ``groups`` (``n`` labels) whole groups are drawn with replacement and every member of a drawn
    group counts once per draw (cluster bootstrap).
    """
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape != (n,):
            raise ValueError(f"groups must hold one label per sample ({n}), got shape {labels.shape}")
        if n == 0:
            return bootstrap_counts(0, n_resamples, seed)
        _, inverse = np.unique(labels, return_inverse=True)
        return bootstrap_counts(int(inverse.max()) + 1, n_resamples, seed)[:, inverse]
    if n <= 0 or n_resamples <= 0:
        return np.zeros((max(n_resamples, 0), max(n, 0)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    flat = (idx + (np.arange(n_resamples) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def _clean(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def ci_method(groups: Any) -> str:
    """The ``ci_method`` of a resampled estimate: per sample, or per group when groups are given."""
    return BOOTSTRAP if groups is None else GROUP_BOOTSTRAP


def estimate(value: float, resampled: np.ndarray | None, method: str = BOOTSTRAP) -> dict[str, float | str | None]:
    """``{value, ci_low, ci_high, ci_method}`` with a percentile-bootstrap CI from the resampled values;
    non-finite numbers become ``None`` (JSON null)."""
    lo = hi = None
    if resampled is not None:
        r = np.asarray(resampled, dtype=np.float64)
        r = r[np.isfinite(r)]
        if r.size:
            q = 100 * (1 - CI_LEVEL) / 2
            lo, hi = np.percentile(r, [q, 100 - q])
    low = _clean(lo) if lo is not None else None
    high = _clean(hi) if hi is not None else None
    return {
        "value": _clean(value),
        "ci_low": low,
        "ci_high": high,
        "ci_method": method if low is not None and high is not None else None,
    }


def proportion_estimate(k: float, n: float) -> dict[str, float | str | None]:
    """``k / n`` with the exact Clopper–Pearson CI (``{value, ci_low, ci_high, ci_method}``); all ``None``
    when ``n == 0``. ``k`` and ``n`` are counts (integers, or floats holding integers)."""
    from scipy.stats import binomtest

    k, n = round(float(k)), round(float(n))
    if n <= 0:
        return {"value": None, "ci_low": None, "ci_high": None, "ci_method": None}
    ci = binomtest(k, n).proportion_ci(confidence_level=CI_LEVEL, method="exact")
    return {"value": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "ci_method": CLOPPER_PEARSON}


def _in_chunks(fn: Callable[[np.ndarray], dict[str, np.ndarray]], counts: np.ndarray) -> dict[str, np.ndarray]:
    parts: list[dict[str, np.ndarray]] = [fn(counts[s : s + _CHUNK]) for s in range(0, len(counts), _CHUNK)]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


# --------------------------------------------------------------------------------------------------
# weighted statistics: w is (B, N) sample multiplicities; each returns arrays with leading axis B


def weighted_confusion(w: np.ndarray, y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(B, C, C) confusion matrices, rows = true class, columns = predicted class."""
    onehot = np.zeros((len(y), n_classes * n_classes))
    onehot[np.arange(len(y)), y * n_classes + pred] = 1.0
    return (w @ onehot).reshape(len(w), n_classes, n_classes)


def confusion_stats(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Counting metrics from (B, C, C) confusion matrices (zero_division=0, as scikit-learn)."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(2)
    predicted = cm.sum(1)
    total = cm.sum((1, 2))
    fp = predicted - tp
    tn = total[:, None] - support - predicted + tp
    recall = _div(tp, support)
    precision = _div(tp, predicted)
    f1 = _div(2 * tp, support + predicted)
    specificity = _div(tn, tn + fp)
    present = support > 0
    wsum = support.sum(1)
    return {
        "accuracy": _div(tp.sum(1), total),
        "balanced_accuracy": _div((recall * present).sum(1), present.sum(1)),
        "precision_macro": precision.mean(1),
        "recall_macro": recall.mean(1),
        "f1_macro": f1.mean(1),
        "precision_weighted": _div((precision * support).sum(1), wsum),
        "recall_weighted": _div((recall * support).sum(1), wsum),
        "f1_weighted": _div((f1 * support).sum(1), wsum),
        # (B, C), NaN where undefined (a resample without the class), so such resamples leave the CI
        "sensitivity": np.where(support > 0, recall, np.nan),
        "specificity": np.where(tn + fp > 0, specificity, np.nan),
    }


def weighted_auc(w: np.ndarray, score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count 1/2) of ``score`` for ``positive`` under sample weights; NaN if
    a resample has no positive or no negative."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    pos = positive[order].astype(np.float64)
    ww = w[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    wp = np.add.reduceat(ww * pos, starts, axis=1)
    wn = np.add.reduceat(ww * (1.0 - pos), starts, axis=1)
    neg_below = np.cumsum(wn, axis=1) - wn
    num = (wp * (neg_below + 0.5 * wn)).sum(1)
    den = wp.sum(1) * wn.sum(1)
    out = np.full(len(w), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def weighted_rates(w: np.ndarray, p: np.ndarray, y: np.ndarray, t: Any) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and AUC of calling ``p >= t`` a tumour, for every row of
    multiplicities ``w`` (B, N); NaN when undefined. ``t`` is a scalar or one threshold per sample."""
    pos, called = (y == 1).astype(np.float64), (p >= t).astype(np.float64)
    tp, fn = w @ (pos * called), w @ (pos * (1 - called))
    tn, fp = w @ ((1 - pos) * (1 - called)), w @ ((1 - pos) * called)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.full(len(w), np.nan)
        np.divide(a, b, out=out, where=b > 0)
        return out

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "auc": weighted_auc(w, p, y == 1),
    }


def equal_width_bin(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index m - 1 of ``(m-1)/M < v <= m/M`` (0 falls into the first bin)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.digitize(values, edges[1:-1], right=True), 0, n_bins - 1)


def _binned_gap(w: np.ndarray, onehot: np.ndarray, conf: np.ndarray, hit: np.ndarray):
    """Per-bin weighted counts and sums of (hit - conf): (B, K) each."""
    counts = w @ onehot
    gap = w @ (onehot * (hit - conf)[:, None])
    return counts, gap


def calibration_stats(w: np.ndarray, probs: np.ndarray, y: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """ECE, MCE, adaptive ECE and class-wise ECE under sample weights."""
    n, n_classes = probs.shape
    total = w.sum(1)
    conf = probs.max(1)
    hit = (probs.argmax(1) == y).astype(np.float64)

    # equal-width bins on the max probability (Guo et al. 2017)
    onehot = np.zeros((n, n_bins))
    onehot[np.arange(n), equal_width_bin(conf, n_bins)] = 1.0
    counts, gap = _binned_gap(w, onehot, conf, hit)
    ece = _div(np.abs(gap).sum(1), total)
    per_bin = np.where(counts > 0, np.abs(_div(gap, counts)), -np.inf)
    mce = per_bin.max(1)
    mce[~np.isfinite(mce)] = np.nan

    # equal-mass bins: sort by confidence; a sample goes to the bin of its first copy's rank
    order = np.argsort(conf, kind="mergesort")
    ws = w[:, order]
    start = np.cumsum(ws, axis=1) - ws
    safe_total = np.where(total > 0, total, 1.0)
    bins = np.minimum((start * n_bins / safe_total[:, None]).astype(np.int64), n_bins - 1)
    flat = (bins + (np.arange(len(w)) * n_bins)[:, None]).ravel()
    d = (hit - conf)[order]
    agap = np.bincount(flat, weights=(ws * d).ravel(), minlength=len(w) * n_bins).reshape(len(w), n_bins)
    ece_adaptive = _div(np.abs(agap).sum(1), total)

    # class-wise: equal-width bins on every class probability against 1[y = c]
    cols = np.arange(n_classes)[None, :] * n_bins + equal_width_bin(probs, n_bins)  # (N, C)
    target = (y[:, None] == np.arange(n_classes)[None, :]).astype(np.float64)
    # every sample contributes to exactly one bin per class, so sum the (target - p) per column
    contrib = np.zeros((n, n_classes * n_bins))
    np.put_along_axis(contrib, cols, target - probs, axis=1)
    cgap = w @ contrib
    ece_classwise = _div(np.abs(cgap).sum(1), total) / n_classes
    return {"ece": ece, "mce": mce, "ece_adaptive": ece_adaptive, "ece_classwise": ece_classwise}


def _per_sample_losses(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eps = np.finfo(np.float64).eps
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0))
    target = np.zeros_like(probs)
    target[np.arange(len(y)), y] = 1.0
    brier = ((probs - target) ** 2).sum(1)
    return nll, brier


def multiclass_stats(w: np.ndarray, probs: np.ndarray, y: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Every multi-class metric for each row of ``w`` (used for bootstrap; unit weights = point value)."""
    n_classes = probs.shape[1]
    out = confusion_stats(weighted_confusion(w, y, probs.argmax(1), n_classes))
    auc = np.stack([weighted_auc(w, probs[:, c], y == c) for c in range(n_classes)], axis=1)
    out["auc"] = auc
    out["auc_macro_ovr"] = auc.mean(1)
    total = w.sum(1)
    nll, brier = _per_sample_losses(probs, y)
    out["nll"] = _div(w @ nll, total)
    out["brier"] = _div(w @ brier, total)
    out.update(calibration_stats(w, probs, y, n_bins))
    return out


# --------------------------------------------------------------------------------------------------
# point values (single sample)


def _unit(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = as_probs(probs)
    y = as_labels(labels, len(p), p.shape[1])
    return p, y, np.ones((1, len(p)))


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE of Guo et al. (2017): equal-width bins on the maximum probability."""
    p, y, w = _unit(probs, labels)
    return float(calibration_stats(w, p, y, n_bins)["ece"][0])


def max_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """MCE: the largest |accuracy - confidence| over the non-empty equal-width bins."""
    p, y, w = _unit(probs, labels)
    return float(calibration_stats(w, p, y, n_bins)["mce"][0])


def adaptive_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE with equal-mass bins on the maximum probability."""
    p, y, w = _unit(probs, labels)
    return float(calibration_stats(w, p, y, n_bins)["ece_adaptive"][0])


def classwise_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Class-wise ECE: mean over classes of the equal-width-binned ECE of p_c against 1[y = c]."""
    p, y, w = _unit(probs, labels)
    return float(calibration_stats(w, p, y, n_bins)["ece_classwise"][0])


def brier_score(probs: Any, labels: Any) -> float:
    """Mean over samples of sum_c (p_ic - 1[y_i = c])^2 (range 0..2; not divided by the class count)."""
    from sklearn.metrics import brier_score_loss

    p, y, _ = _unit(probs, labels)
    return float(brier_score_loss(y, p, labels=list(range(p.shape[1])), scale_by_half=False))


def negative_log_likelihood(probs: Any, labels: Any) -> float:
    """Mean -log p_{i, y_i} (natural log)."""
    from sklearn.metrics import log_loss

    p, y, _ = _unit(probs, labels)
    return float(log_loss(y, p, labels=list(range(p.shape[1]))))


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin of the max probability: ``edges`` (M+1), ``count``, ``accuracy``, ``confidence``
    (NaN for empty bins). What the reliability diagram draws."""
    p, y, _ = _unit(probs, labels)
    conf = p.max(1)
    hit = (p.argmax(1) == y).astype(np.float64)
    b = equal_width_bin(conf, n_bins)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(b, weights=hit, minlength=n_bins) / count
        cf = np.bincount(b, weights=conf, minlength=n_bins) / count
    return {"edges": np.linspace(0, 1, n_bins + 1), "count": count, "accuracy": acc, "confidence": cf}


def _sklearn_point_values(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The reported values of the standard metrics, from scikit-learn."""
    from sklearn import metrics as skm

    labels = list(range(p.shape[1]))
    pred = p.argmax(1)
    out: dict[str, Any] = {"accuracy": skm.accuracy_score(y, pred)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # absent classes: sklearn warns, zero_division=0 decides
        out["balanced_accuracy"] = skm.balanced_accuracy_score(y, pred)
        for avg in ("macro", "weighted"):
            pr, rc, f1, _ = skm.precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
            out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = pr, rc, f1
        _, rc_c, _, _ = skm.precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=0)
    out["sensitivity"] = rc_c
    cm = skm.confusion_matrix(y, pred, labels=labels)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    fp = cm.sum(0) - np.diag(cm)
    out["specificity"] = _div(tn.astype(float), (tn + fp).astype(float))
    auc = np.array([skm.roc_auc_score(y == c, p[:, c]) if 0 < (y == c).sum() < len(y) else np.nan for c in labels])
    out["auc"] = auc
    out["auc_macro_ovr"] = float(auc.mean())  # NaN if a class is absent: AUC undefined
    out["nll"] = skm.log_loss(y, p, labels=labels)
    out["brier"] = skm.brier_score_loss(y, p, labels=labels, scale_by_half=False)
    return out


SCALAR_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "auc_macro_ovr",
    "nll",
    "brier",
    "ece",
    "mce",
    "ece_adaptive",
    "ece_classwise",
)


def compute_metrics(
    probs: Any,
    labels: Any,
    classes: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
    groups: Any = None,
) -> dict[str, Any]:
    """All multi-class metrics with 95% CIs: bootstrap, except the per-class sensitivity and specificity
    (proportions of counts: exact Clopper–Pearson; group bootstrap like the rest when ``groups`` is given).

    Returns ``{"n", metric: {value, ci_low, ci_high, ci_method} for SCALAR_METRICS, "per_class": {class:
    {sensitivity, specificity, auc, support}}}``. ``labels`` must be class indices in [0, C) (drop unknown
    ones first).
    """
    p = as_probs(probs, len(classes))
    y = as_labels(labels, len(p), len(classes))
    if len(p) == 0:
        raise ValueError("no labelled samples to evaluate")
    point = _sklearn_point_values(p, y)
    point.update(calibration_stats(np.ones((1, len(p))), p, y, n_bins))
    counts = bootstrap_counts(len(p), n_bootstrap, seed, groups)
    boot = _in_chunks(lambda w: multiclass_stats(w, p, y, n_bins), counts) if n_bootstrap > 0 else {}
    method = ci_method(groups)
    out: dict[str, Any] = {"n": len(p)}
    if groups is not None:
        out["n_groups"] = len(np.unique(groups))
    for name in SCALAR_METRICS:
        v = point[name]
        out[name] = estimate(float(np.ravel(v)[0]), boot.get(name), method)
    out["per_class"] = _per_class(p, y, classes, point, boot, method)
    return out


def _per_class(
    p: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    point: dict[str, Any],
    boot: dict[str, np.ndarray],
    method: str,
) -> dict[str, dict[str, Any]]:
    """Per class: sensitivity tp/(tp+fn) and specificity tn/(tn+fp) with exact CIs (group bootstrap CIs
    when ``method`` says so), AUC with the bootstrap."""
    n_classes = len(classes)
    cm = np.bincount(y * n_classes + p.argmax(1), minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    tn = len(y) - support - predicted + tp
    fp = predicted - tp

    def rate(name: str, i: int, k: float, n: float) -> dict[str, Any]:
        if method != GROUP_BOOTSTRAP:
            return proportion_estimate(k, n)
        return estimate(k / n if n else float("nan"), boot[name][:, i] if name in boot else None, method)

    return {
        c: {
            "sensitivity": rate("sensitivity", i, tp[i], support[i]),
            "specificity": rate("specificity", i, tn[i], tn[i] + fp[i]),
            "auc": estimate(point["auc"][i], boot["auc"][:, i] if "auc" in boot else None, method),
            "support": int(support[i]),
        }
        for i, c in enumerate(classes)
    }


# --------------------------------------------------------------------------------------------------
# tumour vs no tumour


def binary_metrics(
    p_tumour: Any,
    y_tumour: Any,
    threshold: float,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    groups: Any = None,
) -> dict[str, Any]:
    """Tumour-vs-no-tumour view: a slice is called 'tumour' when ``p_tumour >= threshold``.

    Sensitivity and specificity use that call; AUC is threshold-free (scikit-learn for the value).
    PPV/NPV depend on the prevalence of the evaluated set. Sensitivity, specificity, PPV and NPV are
    proportions of counts: exact Clopper–Pearson CIs; AUC: percentile bootstrap. With ``groups`` every
    CI comes from resampling whole groups (see the module docstring).
    """
    from sklearn.metrics import roc_auc_score

    s = np.asarray(p_tumour, dtype=np.float64)
    y = np.asarray(y_tumour).astype(np.int64)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("p_tumour and y_tumour must be 1-D of the same length")
    if y.size and (y.min() < 0 or y.max() > 1):
        raise ValueError("y_tumour must be 0/1; drop unknown (-1) rows first")
    if len(s) == 0:
        raise ValueError("no labelled samples for the tumour-vs-no-tumour view")
    pos = y == 1
    auc = roc_auc_score(pos, s) if 0 < pos.sum() < len(s) else np.nan
    t = np.asarray(threshold, dtype=np.float64)
    counts = bootstrap_counts(len(s), n_bootstrap, seed, groups)
    called = s >= t
    tp, fn = int((pos & called).sum()), int((pos & ~called).sum())
    tn, fp = int((~pos & ~called).sum()), int((~pos & called).sum())
    out: dict[str, Any] = {"threshold": float(np.mean(threshold)), "n_tumour": int(pos.sum()),
                           "n_no_tumour": int((~pos).sum())}  # fmt: skip
    if groups is None:
        boot = _in_chunks(lambda w: {"auc": weighted_auc(w, s, pos)}, counts) if n_bootstrap > 0 else {}
        for name, (k, n) in {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp),
                             "ppv": (tp, tp + fp), "npv": (tn, tn + fn)}.items():  # fmt: skip
            out[name] = proportion_estimate(k, n)
        out["auc"] = estimate(auc, boot.get("auc"))
        return out
    full = weighted_rates(np.ones((1, len(s))), s, y, t)
    boot = _in_chunks(lambda w: weighted_rates(w, s, y, t), counts) if n_bootstrap > 0 else {}
    out["n_groups"] = len(np.unique(groups))
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        out[name] = estimate(float(full[name][0]), boot.get(name), GROUP_BOOTSTRAP)
    out["auc"] = estimate(auc, boot.get("auc"), GROUP_BOOTSTRAP)
    return out


def most_confused_pairs(labels: Any, preds: Any, classes: Sequence[str], top: int = 5) -> list[dict[str, Any]]:
    """Off-diagonal confusion cells, largest first: ``{true, predicted, count, fraction_of_true}``."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    c = len(classes)
    cm = np.bincount(y * c + p, minlength=c * c).reshape(c, c)
    support = cm.sum(1)
    pairs = [
        {
            "true": classes[i],
            "predicted": classes[j],
            "count": int(cm[i, j]),
            "fraction_of_true": float(cm[i, j] / support[i]) if support[i] else 0.0,
        }
        for i in range(c)
        for j in range(c)
        if i != j and cm[i, j] > 0
    ]
    pairs.sort(key=lambda d: (-d["count"], d["true"], d["predicted"]))
    return pairs[:top]
