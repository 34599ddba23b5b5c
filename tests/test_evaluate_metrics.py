"""Metrics: standard definitions checked against independent references, bootstrap and exact CIs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from brainmri.calibrate.probabilities import softmax, tumour_labels, tumour_probability
from brainmri.evaluate.metrics import (
    adaptive_calibration_error,
    binary_metrics,
    bootstrap_counts,
    brier_score,
    classwise_calibration_error,
    compute_metrics,
    expected_calibration_error,
    max_calibration_error,
    most_confused_pairs,
    multiclass_stats,
    negative_log_likelihood,
    proportion_estimate,
    weighted_auc,
)

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def _data(n: int, seed: int = 0, sharp: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    z = rng.normal(0, 1, (n, 4))
    z[np.arange(n), y] += 1.5
    return softmax(z * sharp), y


# ---------------------------------------------------------------- plain-loop references (Guo et al. 2017 etc.)


def ref_ece_mce(p: np.ndarray, y: np.ndarray, m: int = 15) -> tuple[float, float]:
    n = len(y)
    ece, mce = 0.0, 0.0
    for b in range(m):
        lo, hi = b / m, (b + 1) / m
        members = []
        for i in range(n):
            c = max(p[i])
            if (lo < c <= hi) or (b == 0 and c == 0):
                members.append(i)
        if not members:
            continue
        acc = sum(1.0 for i in members if int(np.argmax(p[i])) == y[i]) / len(members)
        conf = sum(max(p[i]) for i in members) / len(members)
        ece += len(members) / n * abs(acc - conf)
        mce = max(mce, abs(acc - conf))
    return ece, mce


def ref_brier(p: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for i in range(len(y)):
        for c in range(p.shape[1]):
            total += (p[i][c] - (1.0 if c == y[i] else 0.0)) ** 2
    return total / len(y)


def ref_adaptive_ece(p: np.ndarray, y: np.ndarray, m: int = 15) -> float:
    n = len(y)
    conf = p.max(1)
    order = sorted(range(n), key=lambda i: conf[i])
    bins: dict[int, list[int]] = {}
    for rank, i in enumerate(order):
        bins.setdefault(rank * m // n, []).append(i)
    total = 0.0
    for members in bins.values():
        acc = sum(1.0 for i in members if int(np.argmax(p[i])) == y[i]) / len(members)
        cf = sum(conf[i] for i in members) / len(members)
        total += len(members) / n * abs(acc - cf)
    return total


def ref_classwise_ece(p: np.ndarray, y: np.ndarray, m: int = 15) -> float:
    n, k = p.shape
    total = 0.0
    for c in range(k):
        for b in range(m):
            lo, hi = b / m, (b + 1) / m
            members = [i for i in range(n) if (lo < p[i][c] <= hi) or (b == 0 and p[i][c] == 0)]
            if members:
                freq = sum(1.0 for i in members if y[i] == c) / len(members)
                cf = sum(p[i][c] for i in members) / len(members)
                total += len(members) / n * abs(freq - cf)
    return total / k


def test_hand_computed_example() -> None:
    # two bins used: conf 0.9 (acc 1/2) and conf 0.58 (acc 2/2)
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.58, 0.42], [0.58, 0.42]])
    y = np.array([0, 1, 0, 0])
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.42)
    assert max_calibration_error(p, y) == pytest.approx(0.42)
    assert brier_score(p, y) == pytest.approx((0.02 + 1.62 + 2 * 2 * 0.42**2) / 4)
    assert negative_log_likelihood(p, y) == pytest.approx(-(np.log(0.9) + np.log(0.1) + 2 * np.log(0.58)) / 4)


def test_calibration_errors_match_plain_loop_references() -> None:
    p, y = _data(300, seed=1)
    e, m = ref_ece_mce(p, y)
    assert expected_calibration_error(p, y) == pytest.approx(e, abs=1e-12)
    assert max_calibration_error(p, y) == pytest.approx(m, abs=1e-12)
    assert brier_score(p, y) == pytest.approx(ref_brier(p, y), abs=1e-12)
    assert adaptive_calibration_error(p, y) == pytest.approx(ref_adaptive_ece(p, y), abs=1e-12)
    assert classwise_calibration_error(p, y) == pytest.approx(ref_classwise_ece(p, y), abs=1e-12)


def test_ece_bin_edges_are_right_closed() -> None:
    # confidence exactly 0.6 = 9/15 belongs to bin (8/15, 9/15], not to the next one
    p = np.array([[0.6, 0.4], [0.6, 0.4], [0.61, 0.39]])
    y = np.array([0, 1, 0])
    e, m = ref_ece_mce(p, y)
    assert expected_calibration_error(p, y) == pytest.approx(e, abs=1e-12)
    assert max_calibration_error(p, y) == pytest.approx(m, abs=1e-12)


def test_ece_agrees_with_torchmetrics_on_continuous_data() -> None:
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import multiclass_calibration_error

    p, y = _data(500, seed=2)
    ours = expected_calibration_error(p, y)
    theirs = multiclass_calibration_error(torch.tensor(p), torch.tensor(y), 4, n_bins=15, norm="l1")
    assert ours == pytest.approx(float(theirs), abs=1e-6)


def test_vectorised_statistics_equal_sklearn_values() -> None:
    """The bootstrap engine, evaluated with unit weights, reproduces the reported (scikit-learn) values."""
    p, y = _data(400, seed=3)
    unit = multiclass_stats(np.ones((1, len(y))), p, y, 15)
    res = compute_metrics(p, y, CLASSES, n_bootstrap=0)
    for name in (
        "accuracy",
        "balanced_accuracy",
        "f1_macro",
        "f1_weighted",
        "precision_macro",
        "recall_weighted",
        "auc_macro_ovr",
        "nll",
        "brier",
        "ece",
    ):
        assert unit[name][0] == pytest.approx(res[name]["value"], abs=1e-10), name
    for i, c in enumerate(CLASSES):
        for m in ("sensitivity", "specificity", "auc"):
            assert unit[m][0, i] == pytest.approx(res["per_class"][c][m]["value"], abs=1e-10), (c, m)


def test_weighted_auc_equals_sklearn_on_resample_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    s = np.round(rng.random(200), 1)  # many ties
    pos = rng.random(200) < 0.4
    w = bootstrap_counts(200, 3, seed=5)
    for row in w:
        idx = np.repeat(np.arange(200), row.astype(int))
        assert weighted_auc(row[None], s, pos)[0] == pytest.approx(roc_auc_score(pos[idx], s[idx]), abs=1e-12)


def test_bootstrap_ci_contains_point_and_narrows_with_n() -> None:
    widths = []
    for n in (200, 2000):
        p, y = _data(n, seed=6)
        res = compute_metrics(p, y, CLASSES, n_bootstrap=400, seed=0)
        for name in ("accuracy", "f1_macro", "auc_macro_ovr", "nll", "brier", "ece"):
            e = res[name]
            assert e["ci_low"] <= e["value"] <= e["ci_high"], (n, name, e)
        widths.append(res["accuracy"]["ci_high"] - res["accuracy"]["ci_low"])
    assert widths[1] < 0.6 * widths[0]  # ~ 1/sqrt(10)


def test_bootstrap_is_seeded_and_fast() -> None:
    p, y = _data(1000, seed=7)
    t = time.perf_counter()
    a = compute_metrics(p, y, CLASSES, n_bootstrap=1000, seed=3)
    elapsed = time.perf_counter() - t
    b = compute_metrics(p, y, CLASSES, n_bootstrap=1000, seed=3)
    assert a == b
    assert elapsed < 20  # ~1-2 s on one free core; generous for a shared machine


def test_binary_view_and_confused_pairs() -> None:
    p, y = _data(300, seed=8)
    names = [CLASSES[i] for i in y]
    yt = tumour_labels([*names, "tumor", "unknown"], CLASSES)
    assert yt[-2] == 1 and yt[-1] == -1
    assert set(yt[:-2][y == 2]) == {0}
    pt = tumour_probability(p, CLASSES)
    np.testing.assert_allclose(pt, 1 - p[:, 2])
    res = binary_metrics(pt, yt[:-2], 0.5, n_bootstrap=200)
    called = pt >= 0.5
    assert res["sensitivity"]["value"] == pytest.approx(called[yt[:-2] == 1].mean())
    assert res["specificity"]["value"] == pytest.approx((~called[yt[:-2] == 0]).mean())
    pairs = most_confused_pairs(y, p.argmax(1), CLASSES, top=3)
    assert len(pairs) == 3 and pairs[0]["count"] >= pairs[1]["count"] >= pairs[2]["count"]
    assert all(d["true"] != d["predicted"] for d in pairs)


def test_proportions_get_exact_clopper_pearson_intervals() -> None:
    e = proportion_estimate(10, 11)
    assert e["value"] == pytest.approx(10 / 11)
    assert (e["ci_low"], e["ci_high"]) == pytest.approx((0.5872, 0.9977), abs=1e-3)
    assert e["ci_method"] == "clopper-pearson"
    # edges: 0/n and n/n give a one-sided interval of width 1 - 0.025 ** (1 / n), never a degenerate one
    none, every = proportion_estimate(0, 20), proportion_estimate(20, 20)
    assert none["ci_low"] == 0.0 and none["ci_high"] == pytest.approx(1 - 0.025 ** (1 / 20))
    assert every["ci_high"] == 1.0 and every["ci_low"] == pytest.approx(0.025 ** (1 / 20))
    assert proportion_estimate(0, 0) == {"value": None, "ci_low": None, "ci_high": None, "ci_method": None}


def test_binary_view_uses_exact_intervals_for_proportions_and_bootstrap_for_auc() -> None:
    # 11 tumours, 10 called; 9 no-tumour slices, 9 cleared
    p_tumour = np.r_[np.linspace(0.6, 0.99, 10), 0.1, np.linspace(0.0, 0.4, 9)]
    y = np.r_[np.ones(11, int), np.zeros(9, int)]
    res = binary_metrics(p_tumour, y, 0.5, n_bootstrap=200)
    sens = res["sensitivity"]
    assert sens["value"] == pytest.approx(10 / 11) and sens["ci_method"] == "clopper-pearson"
    assert (sens["ci_low"], sens["ci_high"]) == pytest.approx((0.5872, 0.9977), abs=1e-3)
    assert res["specificity"]["ci_high"] == 1.0 and res["specificity"]["ci_low"] < 1.0
    assert res["ppv"]["value"] == pytest.approx(1.0) and res["npv"]["value"] == pytest.approx(0.9)
    assert res["auc"]["ci_method"] == "bootstrap"
    per_class = compute_metrics(*_data(200, seed=9), CLASSES, n_bootstrap=50)["per_class"]["glioma"]
    assert per_class["sensitivity"]["ci_method"] == per_class["specificity"]["ci_method"] == "clopper-pearson"
    assert per_class["auc"]["ci_method"] == "bootstrap"


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error(np.array([[2.0, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="unknown"):
        compute_metrics(np.array([[0.5, 0.5, 0, 0]]), np.array([-1]), CLASSES)


def _clustered(n_groups: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of ``size`` identical rows (a scan's adjacent slices, exaggerated): right or wrong together."""
    p, y = _data(n_groups, seed=seed)
    groups = np.repeat(np.arange(n_groups), size)
    return np.repeat(p, size, axis=0), np.repeat(y, size), groups


def test_group_bootstrap_draws_whole_groups() -> None:
    groups = np.array([5, 5, 5, 9, 9, 2])
    w = bootstrap_counts(6, 300, seed=4, groups=groups)
    assert w.shape == (300, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 1] == w[:, 2]).all() and (w[:, 3] == w[:, 4]).all()
    assert (w[:, [0, 3, 5]].sum(1) == 3).all()  # three groups drawn per resample
    with pytest.raises(ValueError, match="one label per sample"):
        bootstrap_counts(6, 10, groups=groups[:5])


def test_group_bootstrap_widens_intervals_of_correlated_rows() -> None:
    """60 groups of 8 copies: resampling rows pretends there are 480 independent samples; resampling
    groups gives the interval of 60 (what the data support)."""
    p, y, groups = _clustered(60, 8, seed=11)
    rows = compute_metrics(p, y, CLASSES, n_bootstrap=400, seed=0)
    grouped = compute_metrics(p, y, CLASSES, n_bootstrap=400, seed=0, groups=groups)
    alone = compute_metrics(p[::8], y[::8], CLASSES, n_bootstrap=400, seed=0)

    def width(e: dict) -> float:
        return e["ci_high"] - e["ci_low"]

    assert grouped["accuracy"]["value"] == pytest.approx(rows["accuracy"]["value"])
    assert width(grouped["accuracy"]) > 2 * width(rows["accuracy"])
    assert width(grouped["accuracy"]) == pytest.approx(width(alone["accuracy"]), rel=0.35)
    assert grouped["accuracy"]["ci_method"] == "group bootstrap" and grouped["n_groups"] == 60
    sens = grouped["per_class"]["glioma"]["sensitivity"]
    assert sens["ci_method"] == "group bootstrap" and sens["ci_low"] <= sens["value"] <= sens["ci_high"]


def test_binary_and_set_metrics_resample_groups_when_given() -> None:
    from brainmri.evaluate.coverage import set_metrics

    p, y, groups = _clustered(50, 6, seed=12)
    pt, yt = 1 - p[:, 2], (y != 2).astype(int)
    rows = binary_metrics(pt, yt, 0.5, n_bootstrap=300)
    grouped = binary_metrics(pt, yt, 0.5, n_bootstrap=300, groups=groups)
    for k in ("sensitivity", "specificity", "ppv", "npv", "auc"):
        assert grouped[k]["value"] == pytest.approx(rows[k]["value"]), k
        assert grouped[k]["ci_method"] == "group bootstrap"
    assert grouped["auc"]["ci_high"] - grouped["auc"]["ci_low"] > 1.5 * (rows["auc"]["ci_high"] - rows["auc"]["ci_low"])
    assert grouped["n_groups"] == 50
    sets = p >= 0.2
    plain = set_metrics(sets, y, CLASSES, n_bootstrap=300)
    by_group = set_metrics(sets, y, CLASSES, n_bootstrap=300, groups=groups)
    assert by_group["coverage"]["value"] == pytest.approx(plain["coverage"]["value"])
    assert plain["coverage"]["ci_method"] == "clopper-pearson"
    assert by_group["coverage"]["ci_method"] == "group bootstrap"
    lo, hi = by_group["per_class"]["glioma"]["coverage_ci"]
    assert lo <= by_group["per_class"]["glioma"]["coverage"] <= hi
