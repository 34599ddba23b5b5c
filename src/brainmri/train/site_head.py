"""Site head: adapt a model to a new site by refitting one row of its linear head (last-layer retraining).

Why: on a site it was not trained for, the frozen features separate tumour and lesion-free slices far better
than the source head does: on lgg-flair (FLAIR, another source), a site head fitted on half of the patients
ranks the other half far better than the bundle does zero-shot (``bench/site_head_anchor.py``); last-layer
retraining is known to undo what a head learnt from spurious cues (Kirichenko et al. 2022, "Last layer
re-training is sufficient for robustness to spurious correlations").

Method, an offset logistic regression. The deployed tumour probability is ``p = sigmoid(o)`` with the calibrated
log-odds ``o = logsumexp_{k != no_tumor}(z_k / T) - z_no_tumor / T``. The site head fits
``p' = sigmoid(o + w . f + b)`` on the site's labelled slices (f: pooled features; L2 on w, its strength chosen by
cross-validation over whole patients) and writes it into the network: the head is divided by T (the adapted model's
temperature is 1) and ``w . f + b`` is subtracted from its ``no_tumor`` row, so only that row changes beyond the
scaling. Consequences, each deliberate:

- the features are unchanged, so the out-of-domain gate fitted on the source training features stays valid;
- the tumour-type distribution ``p(k | tumour)`` is exactly the source model's (types are not relearnt from
  tumour / no-tumour labels);
- the network keeps its architecture: ONNX export, class activation maps and bundles work as before;
- fitting is cheap: features are computed once (with horizontally flipped copies as extra samples), then a
  few dozen L-BFGS fits of a linear model (seconds; a few minutes with the anchor below, on 2 cores).

The fit is unweighted, so the adapted probability is calibrated to the site's own tumour share in the fitted
slices (what a site's prevalence looks like); thresholds are chosen afterwards on held-out slices. Optionally
anchored: stand-ins for the source features (drawn from the out-of-domain gate's Gaussian) keep the correction
near 0 where the source images lie, so the adapted model keeps more of the source model's answers
(:func:`fit_site_head`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logsumexp

from brainmri.errors import DataError


@dataclass
class SiteHead:
    """The fitted correction ``w . f + b`` of the calibrated tumour log-odds (raw feature scale)."""

    w: np.ndarray
    b: float
    c: float  # inverse L2 strength used for the final fit
    cv: dict[str, float] = field(default_factory=dict)  # mean held-out log loss per C
    anchor: float = 0.0  # weight of the squared correction on the source stand-ins (0: not anchored)
    cv_anchor: dict[str, float] = field(default_factory=dict)  # mean held-out log loss per anchor weight, at c

    def correction(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, np.float64) @ self.w + self.b


def calibrated_log_odds(logits: np.ndarray, temperature: float, no_tumor: int) -> np.ndarray:
    """``log p_tumour - log p_no_tumor`` of ``softmax(logits / T)``: the offset the site head adds to."""
    z = np.asarray(logits, np.float64) / float(temperature)
    tumour = np.delete(z, no_tumor, axis=1)
    return logsumexp(tumour, axis=1) - z[:, no_tumor]


def _fit_l2(
    x: np.ndarray, offset: np.ndarray, y: np.ndarray, c: float, anchors: np.ndarray | None = None, anchor: float = 0.0
) -> tuple[np.ndarray, float]:
    """Minimise sum BCE(sigmoid(offset + x w + b), y) + ||w||^2 / (2c) on standardised x (L-BFGS), plus
    ``anchor * N * mean((anchors w + b)^2)``: the squared correction on stand-ins for the source features."""
    n, d = x.shape
    scale = anchor * n / len(anchors) if anchors is not None and anchor > 0 else 0.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], theta[d]
        t = offset + x @ w + b
        g = expit(t) - y
        value = np.sum(np.logaddexp(0.0, t) - y * t) + w @ w / (2 * c)
        grad_w, grad_b = x.T @ g + w / c, g.sum()
        if scale:
            r = anchors @ w + b
            value += scale * r @ r
            grad_w, grad_b = grad_w + 2 * scale * anchors.T @ r, grad_b + 2 * scale * r.sum()
        return value, np.concatenate([grad_w, [grad_b]])

    res = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x[:d], float(res.x[d])


def _log_loss(t: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, t) - y * t))


def _folds(groups: np.ndarray, k: int) -> list[np.ndarray]:
    """Test masks of ``k`` folds of whole groups (scikit-learn's GroupKFold); fewer when there are fewer groups."""
    from sklearn.model_selection import GroupKFold

    k = min(k, len(np.unique(groups)))
    if k < 2:
        return []
    return [np.isin(np.arange(len(groups)), test) for _, test in GroupKFold(k).split(groups, groups=groups)]


def _cv_log_loss(x, off, y, splits, c: float, xa: np.ndarray | None, anchor: float) -> float:
    losses = []
    for test in splits:
        if len(set(y[~test].tolist())) < 2 or not test.any():
            continue
        w, b = _fit_l2(x[~test], off[~test], y[~test], c, xa, anchor)
        losses.append(_log_loss(off[test] + x[test] @ w + b, y[test]))
    return float(np.mean(losses)) if losses else float("inf")


def fit_site_head(
    features: np.ndarray,
    offset: np.ndarray,
    y: np.ndarray,
    groups: Sequence[Any],
    c_grid: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1, 1.0),
    folds: int = 3,
    anchors: np.ndarray | None = None,
    anchor_grid: Sequence[float] = (),
    anchor_tolerance: float = 0.05,
) -> SiteHead:
    """Fit the correction on (N, F) features, (N,) offsets and 0/1 labels; C by grouped cross-validation.

    ``groups``: one id per row (patient, or near-duplicate cluster; flipped copies share their image's id) so
    that no patient is on both sides of a fold. ``anchors``: (M, F) stand-ins for the source features (drawn
    from the out-of-domain gate's Gaussian, :meth:`MahalanobisOOD.sample`) on which the correction is pushed
    towards 0, so that the adapted model keeps the source model's answers where the source images lie. Its
    weight (relative to the mean site log loss) is the largest of ``anchor_grid`` whose cross-validated site log
    loss, at the chosen C, is within ``anchor_tolerance`` (relative) of the unanchored one: as much of the
    source skill as the site's own data says costs next to nothing there.
    """
    f, y, off = (np.asarray(a, np.float64) for a in (features, y, offset))
    groups = np.asarray([str(g) for g in groups])
    if len(set(y.tolist())) < 2:
        raise DataError("site head: the labelled slices hold one class only (need tumour and no-tumour slices)")
    mu, sd = f.mean(axis=0), f.std(axis=0) + 1e-6
    x = (f - mu) / sd
    splits = _folds(groups, folds)
    # cross-validation only where there is something to choose (one C, one accepted weight: fit directly)
    cv = {str(c): _cv_log_loss(x, off, y, splits, c, None, 0.0) for c in c_grid} if len(c_grid) > 1 else {}
    best = min(c_grid, key=lambda c: cv[str(c)]) if cv else c_grid[0]
    anchor, cv_anchor, xa = 0.0, {}, None
    if anchors is not None and len(anchor_grid):
        xa = (np.asarray(anchors, np.float64) - mu) / sd
        if len(anchor_grid) == 1 and np.isinf(anchor_tolerance):
            anchor = float(anchor_grid[0])
        else:
            cv = cv or {str(best): _cv_log_loss(x, off, y, splits, best, None, 0.0)}  # the loss to stay near
            cv_anchor = {str(a): _cv_log_loss(x, off, y, splits, best, xa, a) for a in anchor_grid}
            ok = [a for a in anchor_grid if cv_anchor[str(a)] <= (1.0 + anchor_tolerance) * cv[str(best)]]
            anchor = max(ok, default=0.0)
    w, b = _fit_l2(x, off, y, best, xa, anchor)
    return SiteHead(
        w=w / sd, b=float(b - np.sum(w * mu / sd)), c=float(best), cv=cv, anchor=anchor, cv_anchor=cv_anchor
    )


def apply_site_head(model: Any, head: SiteHead, temperature: float, no_tumor: int) -> Any:
    """Fold the temperature into the model's linear head and add the correction (in place; returns the model).

    Afterwards the model's raw logits are ``z / T`` with ``z_no_tumor / T - (w . f + b)`` in the ``no_tumor`` row:
    at temperature 1 its tumour log-odds are ``o + w . f + b`` and every other ratio, so ``p(k | tumour)``, is the
    source model's at its temperature T. The adapted model's own temperature is therefore 1.
    """
    import torch

    linear = model.backbone.get_classifier()
    if not isinstance(linear, torch.nn.Linear) or linear.bias is None:
        raise DataError(f"site head needs a linear classifier head with a bias, the model has {linear}")
    t = float(temperature)
    with torch.no_grad():
        linear.weight /= t
        linear.bias /= t
        linear.weight[no_tumor] -= torch.as_tensor(head.w, dtype=linear.weight.dtype)
        linear.bias[no_tumor] -= head.b
    return model


def head_summary(head: SiteHead, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the card / run.json records about the fit."""
    return {
        "method": "head",
        "c": head.c,
        "cv_log_loss": head.cv,
        "anchor": head.anchor,
        "cv_log_loss_anchor": head.cv_anchor,
        "weight_norm": float(np.linalg.norm(head.w)),
        "holdout_before": before,
        "holdout_after": after,
    }


def holdout_scores(log_odds: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Held-out BCE and AUC of tumour log-odds (the numbers ``adapt`` logs before and after)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, np.float64)
    auc = float(roc_auc_score(y, log_odds)) if len(set(y.tolist())) == 2 else float("nan")
    return {"holdout_bce": _log_loss(np.asarray(log_odds, np.float64), y), "holdout_auc": auc}
