"""bench/ood_lowlevel.py: the deployed gate score by score, and the non-MRI sets it scores."""

from __future__ import annotations

import numpy as np
import pytest

from bench_support import load_bench


def test_gate_rows_count_each_score_and_the_gate_as_either_failing():
    bench = load_bench("ood_lowlevel")
    feat, blocks = np.array([1.0, 5.0, 1.0, 5.0]), np.array([1.0, 1.0, 9.0, 9.0])

    def scores(images):
        return (feat[: len(images)], 2.0), (blocks[: len(images)], 3.0)

    rows = bench.gate_rows({"set": np.zeros((4, 8, 8), np.uint8)}, scores, features_alone=0.5)
    assert rows["set"] == {"n": 4, "features_alone": 1.0, "features": 0.5, "block_stats": 0.5, "gate": 0.75}


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
