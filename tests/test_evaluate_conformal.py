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
