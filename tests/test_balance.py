"""Appearance-group balancing: groups found, cells balanced within groups, classes overall, cap, run record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainmri.errors import DataError
from brainmri.models import create_model
from brainmri.train.balance import GroupBalancer
from brainmri.train.trainer import BALANCE_FILE, fit_stages
from test_train import phantom_split, tiny_cfg


def confounded(n_major: int = 90, n_minor: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two look-alike groups in feature space; class 0 dominates group A, class 1 group B (a shortcut)."""
    rng = np.random.default_rng(seed)
    centre_a, centre_b = np.eye(16)[0] * 10, np.eye(16)[1] * 10
    feats, labels, groups = [], [], []
    for centre, group, counts in ((centre_a, 0, (n_major, n_minor)), (centre_b, 1, (n_minor, n_major))):
        for cls, n in enumerate(counts):
            feats.append(centre + rng.normal(0, 0.3, (n, 16)))
            labels += [cls] * n
            groups += [group] * n
    return np.concatenate(feats), np.array(labels), np.array(groups)


def test_groups_are_found_and_cells_balanced_within_them():
    feats, labels, truth = confounded()
    b = GroupBalancer(2, max_weight=100).fit(feats, labels, num_classes=2)
    same = (b.groups_ == truth).mean()
    assert same in (0.0, 1.0)  # the two look-alike groups, whatever their numbering
    assert b.table_.sum() == len(labels)
    assert sorted(b.table_.ravel().tolist()) == [10, 10, 90, 90]
    for g in range(2):
        in_group = b.groups_ == g
        mass = [b.weights_[in_group & (labels == c)].sum() for c in range(2)]
        assert mass[0] == pytest.approx(mass[1], rel=1e-9)  # the shortcut is gone inside each group
    assert b.weights_[labels == 0].sum() == pytest.approx(b.weights_[labels == 1].sum(), rel=1e-9)
    assert b.weights_.mean() == pytest.approx(1.0)
    minority = (labels == 1) & (truth == 0)
    assert b.weights_[minority].min() == pytest.approx(9 * b.weights_[(labels == 0) & (truth == 0)].max())


def test_cap_limits_how_often_a_few_images_repeat():
    feats, labels, _ = confounded(n_major=95, n_minor=5)
    free = GroupBalancer(2, max_weight=1000).fit(feats, labels, 2).weights_
    capped = GroupBalancer(2, max_weight=3).fit(feats, labels, 2).weights_
    assert free.max() / np.median(free) > 10
    assert capped.max() / np.median(capped) < free.max() / np.median(free)
    assert np.isfinite(capped).all() and (capped > 0).all()


def test_one_group_is_plain_class_balancing():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 30 + [1] * 10)
    w = GroupBalancer(1).fit(rng.normal(size=(40, 8)), labels, 2).weights_
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())
    assert len(set(np.round(w[labels == 1], 9))) == 1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="n_groups"):
        GroupBalancer(0)
    with pytest.raises(ValueError, match="max_weight"):
        GroupBalancer(2, max_weight=1.0)
    with pytest.raises(ValueError, match="cannot form 5 groups"):
        GroupBalancer(5).fit(np.zeros((3, 4)), np.zeros(3, int), 2)


def test_training_records_the_groups_and_a_resume_reads_them_back(tmp_path):
    cfg = tiny_cfg(cache_frozen_features=True)
    cfg.train.balance.groups = 2
    cfg.train.stage1.epochs, cfg.train.stage2.epochs = 2, 1
    data = phantom_split(6)
    fit_stages(cfg, create_model(cfg.model, 4), data, data, tmp_path)
    record = json.loads((tmp_path / BALANCE_FILE).read_text())
    assert np.array(record["table"]).sum() == len(data.ids)
    assert len(record["weights"]) == len(data.ids)
    assert record["classes"] == cfg.data.classes
    # a resumed run's backbone is no longer the pretrained one: the recorded weights are reused, not refitted
    record["weights"] = [1.0] * len(data.ids)
    (tmp_path / BALANCE_FILE).write_text(json.dumps(record))
    from brainmri.train.trainer import balance_weights

    draws = balance_weights(cfg, create_model(cfg.model, 4), data, tmp_path, resume=True)
    assert draws.weights is not None and np.all(draws.weights == 1.0)
    assert draws.features is None
    record["weights"] = [1.0] * 3  # a record from another training set is refused, not silently misapplied
    (tmp_path / BALANCE_FILE).write_text(json.dumps(record))
    with pytest.raises(DataError, match="3 weights for 24 training images"):
        balance_weights(cfg, create_model(cfg.model, 4), data, tmp_path, resume=True)


def test_balancing_changes_what_stage1_draws(tmp_path):
    """Same seed, balancing on vs off: the head sees a different stream of images, so it ends elsewhere."""
    data = phantom_split(6)
    heads = []
    for groups in (0, 2):
        cfg = tiny_cfg(cache_frozen_features=True)
        cfg.train.balance.groups = groups
        cfg.train.stage1.epochs, cfg.train.stage2.epochs = 2, 0
        torch.manual_seed(0)
        model = create_model(cfg.model, 4)
        fit_stages(cfg, model, data, data, tmp_path / str(groups))
        heads.append(model.backbone.get_classifier().weight.detach().clone())
    assert not torch.allclose(heads[0], heads[1])


def test_predict_puts_new_images_in_their_look_alike_group():
    feats, labels, truth = confounded()
    b = GroupBalancer(2).fit(feats, labels, 2)
    new, _, new_truth = confounded(seed=5)
    same_as_fit = {int(t): int(g) for t, g in zip(truth, b.groups_, strict=True)}
    assert all(g == same_as_fit[int(t)] for t, g in zip(new_truth, b.predict(new), strict=True))
