"""Synthetic lesions (train/lesions.py): drawn inside the head, targets follow, off by default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainmri.config import load_config
from brainmri.errors import ConfigError
from brainmri.train.lesions import draw_lesion, head_mask, insert_lesions
from brainmri.train.trainer import lesion_settings


def _head(size: int = 96) -> np.ndarray:
    """A grey disc on black: a head-shaped slice."""
    yy, xx = np.mgrid[0:size, 0:size]
    return ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2).astype(np.float32) * 0.5


def test_a_lesion_changes_the_head_only():
    img = _head()
    changed = 0
    for seed in range(20):
        out = draw_lesion(img, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == img.dtype and out.min() >= 0 and out.max() <= 1
        diff = np.abs(out - img)
        assert diff[~head_mask(img)].max() == 0  # never outside the head
        changed += diff.max() > 0.1
    assert changed >= 18
    assert (draw_lesion(np.zeros((64, 64), np.float32), np.random.default_rng(0)) == 0).all()  # no head: unchanged


def test_insert_lesions_only_touches_the_source_class_and_sets_its_target():
    x = torch.from_numpy(np.stack([_head()] * 6))[:, None]
    labels = torch.tensor([2, 0, 2, 1, 2, 3])
    targets = torch.nn.functional.one_hot(labels, 4).float()
    target = torch.tensor([0.5, 0.5, 0.0, 0.0])
    out, t = insert_lesions(x, targets, labels, p=1.0, source=2, target=target, rng=np.random.default_rng(1))
    for i, lab in enumerate(labels.tolist()):
        if lab == 2:
            assert torch.equal(t[i], target) and not torch.equal(out[i], x[i])
        else:
            assert torch.equal(t[i], targets[i]) and torch.equal(out[i], x[i])
    assert torch.equal(x[0], torch.from_numpy(_head())[None])  # inputs untouched
    same, t0 = insert_lesions(x, targets, labels, p=0.0, source=2, target=target, rng=np.random.default_rng(1))
    assert same is x and t0 is targets


def test_lesion_settings_are_off_by_default_and_checked():
    assert lesion_settings(load_config()) is None
    source, target = lesion_settings(load_config(None, ["train.augment.synthetic_lesion=0.3"]))
    classes = load_config().data.classes
    assert classes[source] == "no_tumor"
    assert target[classes.index("glioma")] == pytest.approx(0.5) and target.sum() == pytest.approx(1.0)
    on = "train.augment.synthetic_lesion=0.3"
    bad = load_config(None, [on, 'train.augment.synthetic_lesion_target={"no_tumor": 1}'])
    with pytest.raises(ConfigError, match="synthetic_lesion_target"):
        lesion_settings(bad)
