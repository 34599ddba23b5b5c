"""Temperature scaling, the tumour threshold and the combined calibration.json object."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from brainmri.calibrate.posthoc import PostHocCalibration
from brainmri.calibrate.probabilities import softmax
from brainmri.calibrate.temperature import TemperatureScaler
from brainmri.calibrate.threshold import ThresholdSelector
from brainmri.config import EvaluateConfig
from brainmri.errors import DataError, NotFittedError
from brainmri.evaluate.metrics import expected_calibration_error, negative_log_likelihood

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def overconfident(n: int, seed: int, factor: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is calibrated, labels drawn from it, then logits multiplied by ``factor``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, 4))
    p = softmax(z)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z * factor, y


def test_temperature_scaling_fixes_overconfidence() -> None:
    val_z, val_y = overconfident(3000, seed=0)
    test_z, test_y = overconfident(3000, seed=1)
    ts = TemperatureScaler().fit(val_z, val_y)
    assert ts.temperature_ == pytest.approx(3.0, rel=0.15)
    assert ts.nll_after_ < ts.nll_before_
    before, after = softmax(test_z), ts.predict_proba(test_z)
    assert negative_log_likelihood(after, test_y) < negative_log_likelihood(before, test_y) - 0.1
    assert expected_calibration_error(after, test_y) < 0.5 * expected_calibration_error(before, test_y)
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))


def test_temperature_matches_grid_search_optimum() -> None:
    z, y = overconfident(500, seed=2, factor=0.5)  # under-confident: T < 1
    ts = TemperatureScaler().fit(z, y)
    from scipy.special import logsumexp

    grid = np.exp(np.linspace(np.log(0.05), np.log(5), 2001))
    s = z[None] / grid[:, None, None]  # independent brute force: NLL at every grid temperature
    nll = (logsumexp(s, axis=2) - s[:, np.arange(len(y)), y]).mean(1)
    assert ts.temperature_ == pytest.approx(grid[int(np.argmin(nll))], rel=0.01)
    assert ts.temperature_ < 1


def test_temperature_round_trip_and_unfitted_error() -> None:
    with pytest.raises(NotFittedError, match="TemperatureScaler is not fitted"):
        TemperatureScaler().predict_proba(np.zeros((1, 4)))
    z, y = overconfident(200, seed=3)
    ts = TemperatureScaler().fit(z, y)
    back = TemperatureScaler.from_dict(json.loads(json.dumps(ts.to_dict())))
    np.testing.assert_allclose(back.predict_proba(z), ts.predict_proba(z))
    with pytest.raises(ValueError, match="positive"):
        TemperatureScaler.from_dict({"temperature": -1})


def test_threshold_is_largest_reaching_target_sensitivity() -> None:
    rng = np.random.default_rng(4)
    pos = rng.uniform(0.3, 1.0, 40)
    neg = rng.uniform(0.0, 0.6, 60)
    s = np.r_[pos, neg]
    y = np.r_[np.ones(40, int), np.zeros(60, int)]
    sel = ThresholdSelector(0.95).fit(s, y)
    t = sel.threshold_
    assert (s[y == 1] >= t).mean() >= 0.95
    larger = np.sort(np.unique(s))
    nxt = larger[larger > t][0]
    assert (s[y == 1] >= nxt).mean() < 0.95  # any larger threshold misses the target
    assert sel.sensitivity_ == pytest.approx(0.95)  # 38 of 40
    assert sel.predict(s).tolist() == (s >= t).tolist()
    assert ThresholdSelector.from_dict(sel.to_dict()).threshold_ == t
    with pytest.raises(NotFittedError):
        ThresholdSelector().predict(s)
    with pytest.raises(ValueError, match="no tumour"):
        ThresholdSelector().fit(neg, np.zeros(60, int))


def test_posthoc_fit_save_load(tmp_path) -> None:
    z, y = overconfident(600, seed=5)
    ecfg = EvaluateConfig(conformal_alphas=[0.1, 0.05], conformal_method="lac")
    cal = PostHocCalibration.from_config(CLASSES, ecfg)
    with pytest.raises(NotFittedError):
        cal.probabilities(z)
    cal.fit(z, y, fitted_on="val")
    path = cal.save(tmp_path / "calibration.json")
    d = json.loads(path.read_text())
    assert d["fitted_on"] == "val" and d["n"] == 600
    assert d["temperature"] == pytest.approx(cal.temperature)
    assert set(d["conformal"]) == {"0.1", "0.05"} and d["conformal"]["0.1"]["method"] == "lac"
    assert 0 <= d["threshold"] <= 1
    back = PostHocCalibration.load(path)
    np.testing.assert_allclose(back.probabilities(z), cal.probabilities(z))
    p = back.probabilities(z)
    np.testing.assert_array_equal(back.prediction_sets(p), cal.prediction_sets(p))
    np.testing.assert_array_equal(back.prediction_sets(p, alpha=0.05), cal.prediction_sets(p, alpha=0.05))
    np.testing.assert_array_equal(back.tumour_call(p), 1 - p[:, 2] >= d["threshold"])
    assert back.default_alpha == 0.1
    with pytest.raises(DataError, match="alpha"):
        back.prediction_sets(p, alpha=0.2)
    (tmp_path / "bad.json").write_text('{"version": 1, "classes": []}')
    with pytest.raises(DataError, match=r"bad\.json.*malformed"):
        PostHocCalibration.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="no calibration"):
        PostHocCalibration.load(tmp_path / "missing.json")
    assert math.isfinite(back.temperature)


def test_threshold_is_capped_so_it_never_costs_sensitivity():

    # confident validation: 95% of tumours score >= 0.99, so the uncapped rule would pick ~0.99
    p = np.r_[np.linspace(0.99, 1.0, 95), np.linspace(0.6, 0.9, 5), np.linspace(0.0, 0.3, 50)]
    y = np.r_[np.ones(100, int), np.zeros(50, int)]
    uncapped = ThresholdSelector(0.95, max_threshold=1.0).fit(p, y)
    capped = ThresholdSelector(0.95).fit(p, y)
    assert uncapped.threshold_ > 0.98 and not uncapped.capped_
    assert capped.threshold_ == 0.5 and capped.capped_
    assert capped.sensitivity_ == 1.0 and capped.specificity_ == 1.0
    again = ThresholdSelector.from_dict(capped.to_dict())
    assert again.threshold_ == 0.5 and again.max_threshold == 0.5
