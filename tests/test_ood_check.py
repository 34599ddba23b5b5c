"""bench/ood_check.py: the non-MRI image sets that pip packages ship or that are generated."""

from __future__ import annotations

import numpy as np
import pytest

from bench_support import load_bench


def test_skimage_photos_come_in_colour_and_all_in_grayscale():
    pytest.importorskip("skimage")
    bench = load_bench("ood_check")
    colour, grey = bench.skimage_photos()
    assert len(grey) == len(bench.SKIMAGE_PHOTOS) and 0 < len(colour) < len(grey)
    assert all(img.ndim == 3 and img.shape[2] == 3 for _, img in colour)
    for name, img in grey:
        assert img.ndim == 2 and img.min() >= 0 and img.max() <= 255 and img.std() > 5, name


def test_ct_phantoms_are_head_shaped_with_reconstruction_streaks():
    pytest.importorskip("skimage")
    bench = load_bench("ood_check")
    phantoms = bench.ct_phantoms()
    assert len(phantoms) == 7
    clean = phantoms[0][1]
    assert clean.shape == (256, 256) and clean.max() == pytest.approx(255)
    corners = np.r_[clean[:20, :20].ravel(), clean[-20:, -20:].ravel()]
    assert corners.max() == 0  # dark background, a bright skull ring: the look of a head slice
    streaky = dict(phantoms)["FBP 30 projections, noise 0.0"]
    assert np.abs(streaky - clean).mean() > 1  # few projections: visible streaks
