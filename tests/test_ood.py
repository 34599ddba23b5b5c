"""Out-of-domain scores on synthetic Gaussian features: 95% of in-domain pass, shifted data flagged, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainmri.calibrate.ood import EnergyOOD, MahalanobisOOD, decode_array, ood_from_dict
from brainmri.errors import NotFittedError

D, C = 160, 4


def gaussian_features(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Class means on a fixed random frame, correlated noise shared by classes; ``shift`` moves every point."""
    frame = np.random.default_rng(0)
    means = frame.normal(0, 3, (C, D))
    mix = frame.normal(0, 1, (D, D)) / np.sqrt(D)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    x = means[y] + rng.normal(0, 1, (n, D)) @ mix + rng.normal(0, 0.3, (n, D))
    if shift:
        x = x + shift * frame.normal(0, 1, D)  # a random direction, mostly off the principal subspace
    return x, y


@pytest.mark.parametrize("n_components", [32, None])
def test_mahalanobis_passes_95_percent_flags_shift(n_components):
    xt, yt = gaussian_features(3000, 1)
    xv, _ = gaussian_features(2000, 2)
    xh, _ = gaussian_features(3000, 3)
    ood = MahalanobisOOD(n_components=n_components).fit(xt, yt)
    ood.fit_threshold(ood.score(xv), quantile=0.95)
    inside, score = ood.predict(xh)
    assert score.shape == (3000,) and inside.dtype == bool
    assert 0.93 <= inside.mean() <= 0.97
    xs, _ = gaussian_features(500, 4, shift=1.0)
    assert (~ood.predict(xs)[0]).mean() > 0.9
    assert (~ood.predict(np.random.default_rng(5).normal(0, 3, (200, D)))[0]).mean() > 0.9  # not near any class
    if n_components:
        without = MahalanobisOOD(n_components=n_components, residual=False).fit(xt, yt)
        without.fit_threshold(without.score(xv))
        assert (~without.predict(xs)[0]).mean() < (~ood.predict(xs)[0]).mean()  # the residual term matters
        assert ood.components_.shape == (n_components, D) and ood.precision_.shape == (n_components,) * 2


def test_mahalanobis_round_trip_and_state_size():
    xt, yt = gaussian_features(1000, 1)
    ood = MahalanobisOOD(n_components=16, normalize=True).fit(xt, yt).fit_threshold(np.arange(10.0))
    d = json.loads(json.dumps(ood.to_dict()))
    back = ood_from_dict(d)
    assert isinstance(back, MahalanobisOOD) and back.threshold_ == ood.threshold_
    xh, _ = gaussian_features(200, 7)
    assert np.allclose(back.score(xh), ood.score(xh))
    assert np.array_equal(back.predict(xh)[0], ood.predict(xh)[0])
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in (back.precision_, back.components_))
    assert np.array_equal(back.components_, ood.components_) and np.array_equal(back.precision_, ood.precision_)
    listed = {**d, **{k: decode_array(d[k]).tolist() for k in ("pca_mean", "components", "class_means", "precision")}}
    assert np.allclose(ood_from_dict(listed).score(xh), ood.score(xh))  # plain float lists are accepted too


def test_unfitted_and_bad_inputs_are_clear_errors():
    with pytest.raises(NotFittedError, match="not fitted"):
        MahalanobisOOD().score(np.zeros((2, D)))
    xt, yt = gaussian_features(300, 1)
    ood = MahalanobisOOD(n_components=8).fit(xt, yt)
    with pytest.raises(NotFittedError, match="fit_threshold"):
        ood.predict(xt[:3])
    with pytest.raises(ValueError, match="columns"):
        ood.score(np.zeros((2, D + 1)))
    with pytest.raises(ValueError, match="at least 2"):
        MahalanobisOOD().fit(xt[:3], [0, 0, 1])
    with pytest.raises(ValueError, match="finite"):
        ood.score(np.full((1, D), np.nan))
    with pytest.raises(ValueError, match="unknown"):
        ood_from_dict({"kind": "knn"})


def test_energy_score_threshold_and_round_trip():
    rng = np.random.default_rng(0)
    confident = rng.normal(0, 1, (2000, C))
    confident[np.arange(2000), rng.integers(0, C, 2000)] += 8.0
    energy = EnergyOOD(temperature=1.0).fit()
    energy.fit_threshold(energy.score(confident[:1000]), quantile=0.95)
    assert 0.93 <= energy.predict(confident[1000:])[0].mean() <= 0.97
    flat = rng.normal(0, 0.1, (300, C))  # no class stands out: high energy
    assert (~energy.predict(flat)[0]).mean() > 0.95
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert energy.score(x)[0] == pytest.approx(-np.log(np.exp(x).sum()))
    back = ood_from_dict(json.loads(json.dumps(energy.to_dict())))
    assert np.allclose(back.score(confident), energy.score(confident)) and back.threshold_ == energy.threshold_
    with pytest.raises(NotFittedError):
        EnergyOOD().score(x)


@pytest.mark.parametrize("n_components", [32, None])
def test_mahalanobis_samples_look_like_its_training_features(n_components):
    """Draws from the fitted Gaussian (the site head's stand-ins for source features) pass the gate like held-out
    in-domain features do, reproduce the class means, and are refused for a score on normalised features."""
    xt, yt = gaussian_features(3000, 1)
    ood = MahalanobisOOD(n_components=n_components).fit(xt, yt)
    held_out = ood.score(gaussian_features(2000, 2)[0])
    ood.fit_threshold(held_out)
    draws = ood.sample(4000, seed=0)
    assert draws.shape == (4000, D)
    assert ood.predict(draws)[0].mean() >= 0.9
    assert 0.8 < np.median(ood.score(draws)) / np.median(held_out) < 1.2
    assert np.allclose(draws.mean(0), xt.mean(0), atol=0.35)  # classes drawn uniformly, as balanced as yt
    assert np.allclose(ood.sample(10, seed=3), ood.sample(10, seed=3))
    with pytest.raises(ValueError, match="normalised"):
        MahalanobisOOD(normalize=True).fit(xt, yt).sample(5)


def test_joint_thresholds_pass_the_target_share_of_validation_through_both_scores():
    from brainmri.calibrate.ood import fit_joint_thresholds

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(size=2000)  # independent: each at its 0.95 quantile passes ~90%
    scores = [EnergyOOD().fit(), EnergyOOD().fit()]
    q = fit_joint_thresholds(scores, [a, b], target=0.95)
    passed = (a <= scores[0].threshold_) & (b <= scores[1].threshold_)
    assert 0.95 <= passed.mean() < 0.955  # the smallest common quantile that reaches the target
    assert 0.97 < q < 0.98 and scores[0].quantile_ == scores[1].quantile_ == pytest.approx(q)
    assert scores[0].threshold_ > np.quantile(a, 0.95) and scores[1].threshold_ > np.quantile(b, 0.95)
    same = [EnergyOOD().fit(), EnergyOOD().fit()]
    assert fit_joint_thresholds(same, [a, a]) == pytest.approx(0.95)  # identical scores: nothing to raise
    with pytest.raises(ValueError, match="one validation score array per score"):
        fit_joint_thresholds(scores, [a])
