"""bench/ood_lowlevel.py: low-level feature statistics and the non-MRI sets it scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench_support import load_bench
from brainmri.config import ModelConfig
from brainmri.models import create_model


def test_block_statistics_are_channel_means_and_stds_of_the_named_blocks():
    bench = load_bench("ood_lowlevel")
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone="efficientnet_lite0", weights="none"), 4).eval()
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    stats = bench.block_statistics(model, images, (1, 2), batch_size=2)
    channels = [model.backbone.blocks[i][-1].conv_pwl.out_channels for i in (1, 2)]
    assert stats.shape == (3, 2 * sum(channels))
    stds = stats[:, channels[0] : 2 * channels[0]]  # block 1: means, then stds
    assert (stds >= 0).all() and stds.max() > 0
    same = bench.block_statistics(model, images[:1], (1, 2))
    assert np.allclose(same, stats[:1], atol=1e-5)  # batching does not change an image's statistics


def test_non_mri_sets_go_through_the_given_preprocessor():
    pytest.importorskip("skimage")
    bench = load_bench("ood_lowlevel")
    seen = []

    def preprocessor(img):
        seen.append(img.dtype)
        return np.zeros((32, 32), np.uint8)

    sets = bench.non_mri_sets(preprocessor)
    assert len(sets) == 4 and all(v.shape[1:] == (32, 32) and len(v) > 0 for v in sets.values())
    assert set(seen) == {np.dtype(np.uint8)}  # what a decoded upload is


def test_joint_thresholds_pass_the_target_share_of_validation_images_through_both_scores():
    bench = load_bench("ood_lowlevel")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(size=2000)  # independent: each must pass ~97.5%
    ta, tb, q = bench.joint_thresholds(a, b, target=0.95)
    passed = np.mean((a <= ta) & (b <= tb))
    assert 0.95 <= passed < 0.955 and 0.97 < q < 0.98
    ta, tb, q = bench.joint_thresholds(a, a.copy(), target=0.95)  # the same score twice: no price for the union
    assert q == pytest.approx(0.95) and np.mean(a <= ta) >= 0.95
