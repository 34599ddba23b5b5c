"""Split-conformal prediction sets: finite-sample quantile, set construction, empirical coverage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from brainmri.calibrate.conformal import ConformalPredictor, conformal_quantile, format_set
from brainmri.calibrate.probabilities import softmax
from brainmri.errors import NotFittedError
from brainmri.evaluate.coverage import set_metrics

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def exchangeable(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A mis-specified model: labels drawn from softmax(z), the model reports softmax(2 z)."""
    z = rng.normal(0, 1.5, (n, 4))
    y = (softmax(z).cumsum(1) > rng.random((n, 1))).argmax(1)
    return softmax(2 * z), y


def test_finite_sample_quantile() -> None:
    scores = np.arange(1, 10, dtype=float)[::-1]  # n = 9
    assert conformal_quantile(scores, 0.1) == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert conformal_quantile(scores, 0.2) == 8.0  # ceil(10 * 0.8) = 8th
    assert math.isinf(conformal_quantile(scores, 0.05))  # ceil(9.5) = 10 > n


def test_lac_and_aps_sets_by_hand() -> None:
    p = np.array([[0.6, 0.3, 0.08, 0.02]])
    lac = ConformalPredictor(0.1, "lac")
    lac.qhat_ = 0.75  # keep classes with p >= 0.25
    assert lac.predict_sets(p).tolist() == [[True, True, False, False]]
    aps = ConformalPredictor(0.1, "aps")
    aps.qhat_ = 0.95  # cumulative masses 0.6, 0.9, 0.98, 1.0
    assert aps.predict_sets(p).tolist() == [[True, True, False, False]]
    aps.qhat_ = 0.5  # even the top class exceeds it: the arg-max is still returned (sets are never empty) ...
    assert format_set(aps.predict_sets(p)[0], CLASSES) == "glioma"
    raw = ConformalPredictor(0.1, "aps", allow_empty=True)
    raw.qhat_ = 0.5  # ... unless empty sets are allowed
    assert format_set(raw.predict_sets(p)[0], CLASSES) == ""


@pytest.mark.parametrize("method", ["lac", "aps"])
@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_coverage_within_two_points(method: str, alpha: float) -> None:
    rng = np.random.default_rng(0)
    cal_p, cal_y = exchangeable(4000, rng)
    test_p, test_y = exchangeable(20000, rng)
    cp = ConformalPredictor(alpha, method).fit(cal_p, cal_y)
    res = set_metrics(cp.predict_sets(test_p), test_y, CLASSES, n_bootstrap=100)
    assert abs(res["coverage"]["value"] - (1 - alpha)) <= 0.02
    assert res["empty_rate"]["value"] == 0.0
    exact = ConformalPredictor(alpha, method, allow_empty=True).fit(cal_p, cal_y)
    cov = exact.predict_sets(test_p)[np.arange(len(test_y)), test_y].mean()
    assert abs(cov - (1 - alpha)) <= 0.02
    assert 1.0 <= res["mean_set_size"]["value"] < 4.0
    assert sum(res["set_size_counts"].values()) == 20000
    assert set(res["per_class"]) == set(CLASSES)


def test_too_few_calibration_samples_give_full_sets_and_round_trip() -> None:
    rng = np.random.default_rng(1)
    p, y = exchangeable(10, rng)
    cp = ConformalPredictor(0.05, "aps").fit(p, y)  # ceil(11 * 0.95) = 11 > 10
    assert cp.predict_sets(p).all()
    d = json.loads(json.dumps(cp.to_dict()))
    assert d["qhat"] is None
    back = ConformalPredictor.from_dict(d)
    assert back.predict_sets(p).all()
    with pytest.raises(NotFittedError, match="ConformalPredictor"):
        ConformalPredictor(0.1).predict_sets(p)
    with pytest.raises(ValueError, match="alpha"):
        ConformalPredictor(1.5)


# ----------------------------------------------------------------------------- RAPS, Mondrian, serialisation


def class_imbalanced(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Exchangeable data where class 3 is much harder than the others (its logits are damped), so marginal
    calibration under-covers it and Mondrian calibration has to widen its sets."""
    y = rng.integers(0, 4, n)
    z = rng.normal(0, 1.0, (n, 4))
    z[np.arange(n), y] += np.where(y == 3, 0.6, 3.0)
    return softmax(1.5 * z), y


def peaked(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A very confident, ~90%-accurate model: where deterministic APS swells."""
    y = rng.integers(0, 4, n)
    z = rng.normal(0, 1.0, (n, 4))
    right = rng.random(n) < 0.9
    top = np.where(right, y, (y + rng.integers(1, 4, n)) % 4)
    z[np.arange(n), top] += 6.0
    z[np.arange(n), y] += 2.0
    return softmax(z), y


@pytest.mark.parametrize("method", ["lac", "aps", "raps"])
@pytest.mark.parametrize("mondrian", [False, True])
@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.02])
def test_coverage_guarantee_every_variant(method: str, mondrian: bool, alpha: float) -> None:
    rng = np.random.default_rng(7)
    cal_p, cal_y = exchangeable(4000, rng)
    test_p, test_y = exchangeable(20000, rng)
    cp = ConformalPredictor(alpha, method, allow_empty=True, mondrian=mondrian).fit(cal_p, cal_y)
    cov = cp.predict_sets(test_p)[np.arange(len(test_y)), test_y].mean()
    assert cov >= 1 - alpha - 0.02
    if method == "lac":  # continuous scores: exact, neither below nor far above target. APS / RAPS scores
        assert cov <= 1 - alpha + 0.02  # have an atom (the last rank's cumulative mass is exactly 1): conservative
    forced = ConformalPredictor(alpha, method, mondrian=mondrian).fit(cal_p, cal_y)
    s = forced.predict_sets(test_p)
    assert s.any(1).all() and s[np.arange(len(test_y)), test_y].mean() >= 1 - alpha - 0.02


@pytest.mark.parametrize("method", ["lac", "aps", "raps"])
def test_mondrian_covers_every_class(method: str) -> None:
    rng = np.random.default_rng(3)
    cal_p, cal_y = class_imbalanced(8000, rng)
    test_p, test_y = class_imbalanced(20000, rng)
    alpha = 0.1
    marginal = ConformalPredictor(alpha, method, allow_empty=True).fit(cal_p, cal_y)
    mondrian = ConformalPredictor(alpha, method, allow_empty=True, mondrian=True).fit(cal_p, cal_y)
    res_m = set_metrics(marginal.predict_sets(test_p), test_y, CLASSES, n_bootstrap=0)
    res_c = set_metrics(mondrian.predict_sets(test_p), test_y, CLASSES, n_bootstrap=0)
    for c in CLASSES:
        cov = res_c["per_class"][c]["coverage"]
        assert cov >= 1 - alpha - 0.025 and (method != "lac" or cov <= 1 - alpha + 0.025), (c, cov)
    # marginal calibration pays for the easy classes with the hard one
    assert res_m["per_class"]["pituitary"]["coverage"] < 1 - alpha - 0.03
    assert len(mondrian.qhat_per_class_) == 4 and mondrian.qhat_per_class_[3] > mondrian.qhat_per_class_[0]


def test_raps_sets_no_larger_than_aps_for_a_peaked_model() -> None:
    rng = np.random.default_rng(11)
    cal_p, cal_y = peaked(3000, rng)
    test_p, test_y = peaked(10000, rng)
    for alpha in (0.1, 0.05):
        aps = ConformalPredictor(alpha, "aps").fit(cal_p, cal_y).predict_sets(test_p)
        raps = ConformalPredictor(alpha, "raps").fit(cal_p, cal_y).predict_sets(test_p)
        assert raps.sum(1).mean() <= aps.sum(1).mean()
        assert raps[np.arange(len(test_y)), test_y].mean() >= 1 - alpha - 0.02


def test_raps_scores_and_fitted_k_reg_by_hand() -> None:
    from brainmri.calibrate.conformal import class_scores, fit_k_reg

    p = np.array([[0.6, 0.3, 0.08, 0.02]])
    s = class_scores(p, "raps", lam=0.1, k_reg=1)  # APS 0.6, 0.9, 0.98, 1.0 + 0, 0.1, 0.2, 0.3
    np.testing.assert_allclose(s, [[0.6, 1.0, 1.18, 1.3]])
    raps = ConformalPredictor(0.1, "raps", lam=0.1, k_reg=1)
    raps.qhat_, raps.k_reg_ = 1.0, 1
    assert raps.predict_sets(p).tolist() == [[True, True, False, False]]
    probs = np.array([[0.7, 0.2, 0.1, 0.0]] * 10)
    labels = np.array([0] * 8 + [1, 2])  # top-1 accuracy 0.8, top-2 0.9, top-3 1.0
    assert fit_k_reg(probs, labels, 0.2) == 1
    assert fit_k_reg(probs, labels, 0.1) == 2
    assert fit_k_reg(probs, labels, 0.05) == 3
    fitted = ConformalPredictor(0.1, "raps", k_reg=None).fit(probs, labels)
    assert fitted.k_reg_ == 2 and fitted.to_dict()["k_reg_fitted"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "lac"},
        {"method": "aps", "mondrian": True},
        {"method": "raps", "lam": 0.05, "k_reg": 2},
        {"method": "raps", "mondrian": True, "k_reg": None},
    ],
)
def test_round_trip_every_variant(kwargs: dict) -> None:
    rng = np.random.default_rng(5)
    p, y = exchangeable(500, rng)
    # alpha 0.005 with ~125 samples per class: some per-class quantiles are +inf (null in JSON)
    for alpha in (0.1, 0.005):
        cp = ConformalPredictor(alpha, **kwargs).fit(p, y)
        d = json.loads(json.dumps(cp.to_dict()))
        back = ConformalPredictor.from_dict(d)
        assert back.to_dict() == d
        np.testing.assert_array_equal(back.predict_sets(p), cp.predict_sets(p))


def test_old_calibration_entries_load_as_marginal(tmp_path) -> None:
    """calibration.json written before RAPS / Mondrian existed: no mondrian, lam, k_reg, qhat_per_class keys."""
    from brainmri.calibrate.posthoc import PostHocCalibration

    old = ConformalPredictor.from_dict({"alpha": 0.1, "method": "lac", "qhat": 0.6, "allow_empty": False})
    assert not old.mondrian and old.qhat_per_class_ is None
    p = np.array([[0.6, 0.3, 0.08, 0.02], [0.45, 0.5, 0.05, 0.0]])
    assert old.predict_sets(p).tolist() == [[True, False, False, False], [True, True, False, False]]
    legacy = {
        "version": 1, "classes": CLASSES, "fitted_on": "val", "n": 100, "temperature": 1.2, "threshold": 0.3,
        "conformal": {"0.1": {"method": "aps", "qhat": 0.8, "allow_empty": False},
                      "0.05": {"method": "aps", "qhat": None, "allow_empty": False}},
        "default_alpha": 0.1,
        "details": {"temperature": {"temperature": 1.2}, "conformal": {}, "source": {}},
    }  # fmt: skip
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(legacy))
    cal = PostHocCalibration.load(path)
    assert cal.default_alpha == 0.1 and cal.conformal_method == "aps" and not cal.conformal_options["mondrian"]
    assert cal.prediction_sets(p, 0.05).all()
    d = cal.to_dict()
    assert d["conformal"]["0.1"]["qhat"] == 0.8 and d["conformal"]["0.1"]["mondrian"] is False


def test_posthoc_carries_mondrian_raps_to_the_bundle_file(tmp_path) -> None:
    from brainmri.calibrate.posthoc import PostHocCalibration
    from brainmri.config import EvaluateConfig

    rng = np.random.default_rng(2)
    p, y = exchangeable(800, rng)
    z = np.log(np.clip(p, 1e-12, None))
    ecfg = EvaluateConfig(conformal_alphas=[0.05, 0.1], conformal_method="raps", conformal_mondrian=True,
                          conformal_raps_lambda=0.2, conformal_raps_k_reg=2)  # fmt: skip
    cal = PostHocCalibration.from_config(CLASSES, ecfg).fit(z, y)
    back = PostHocCalibration.load(cal.save(tmp_path / "calibration.json"))
    entry = json.loads((tmp_path / "calibration.json").read_text())["conformal"]["0.05"]
    assert entry["mondrian"] and len(entry["qhat_per_class"]) == 4 and (entry["lam"], entry["k_reg"]) == (0.2, 2)
    pred = back.predictor()
    assert (pred.alpha, pred.method, pred.mondrian, pred.lam, pred.k_reg_) == (0.05, "raps", True, 0.2, 2)
    probs = cal.probabilities(z)
    np.testing.assert_array_equal(back.prediction_sets(probs), cal.prediction_sets(probs))


def test_conformal_sets_report_every_variant() -> None:
    from brainmri.calibrate.posthoc import PostHocCalibration
    from brainmri.config import EvaluateConfig
    from brainmri.evaluate.assess import conformal_sets, primary_variant

    rng = np.random.default_rng(4)
    p, y = exchangeable(600, rng)
    z = np.log(np.clip(p, 1e-12, None))
    ecfg = EvaluateConfig(conformal_alphas=[0.02, 0.1], conformal_mondrian=True)
    cal = PostHocCalibration.from_config(CLASSES, ecfg).fit(z, y)
    sets, qhat = conformal_sets(cal, cal.probabilities(z), y, cal.probabilities(z[:50]))
    assert set(sets) == {"lac", "aps", "raps", "lac_mondrian", "aps_mondrian", "raps_mondrian"}
    assert primary_variant(ecfg) == "lac_mondrian"
    assert set(sets["raps"]) == {"0.02", "0.1"} and sets["raps"]["0.1"].shape == (50, 4)
    assert qhat["lac_mondrian"]["0.02"] == cal.predictor(0.02).to_dict()["qhat_per_class"]
