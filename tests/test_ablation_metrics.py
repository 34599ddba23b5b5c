"""bench/ablation.py scores each preset's logits: the tumour metrics must read the test split's 4-class labels
as tumour / no tumour (an earlier version read them as "not glioma" and reported a test tumour AUC of 0.28)."""

from __future__ import annotations

import numpy as np
import pytest

from bench_support import load_bench

ablation = load_bench("ablation")
CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
NO = CLASSES.index("no_tumor")


def _separable_test_part(n_per_class: int = 5) -> tuple[dict, np.ndarray]:
    """A test part whose logits call every slice's own class with a clear margin."""
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    logits = np.full((len(labels), len(CLASSES)), -2.0)
    logits[np.arange(len(labels)), labels] = 3.0
    return {"labels_test": labels}, logits


def test_test_split_tumour_labels_are_binarised_against_no_tumour():
    z, _ = _separable_test_part()
    y = ablation.part_labels(z, "test", "auc", NO)
    np.testing.assert_array_equal(y, (z["labels_test"] != NO).astype(int))
    np.testing.assert_array_equal(ablation.part_labels(z, "test", "accuracy4", NO), z["labels_test"])


@pytest.mark.parametrize("kind", ["auc", "tumour_accuracy", "accuracy4"])
def test_perfect_logits_score_one_on_the_test_split(kind):
    z, logits = _separable_test_part()
    y = ablation.part_labels(z, "test", kind, NO)
    weights = np.ones((3, len(y)))
    draws = ablation.metric_draws(kind, weights, logits, y, NO)
    assert draws.shape == (4,)
    np.testing.assert_allclose(draws, 1.0)


def test_external_parts_read_folder_names():
    z = {"names_navoneel": np.array(["tumor", "no_tumor", "tumor"])}
    np.testing.assert_array_equal(ablation.part_labels(z, "navoneel", "auc", NO), [1, 0, 1])


def test_test_split_resamples_its_recorded_scan_groups():
    """Two slices of one recorded scan group are drawn together in every resample; without groups, images."""
    z = {"labels_test": np.array([0, 1, 2, 3]), "ids_test": np.array(["a", "b", "c", "d"])}
    split = {"groups": [["a", "b"]]}
    w = ablation.weights_for(z, "test", "scan groups", None, split)
    assert w.shape == (ablation.N_BOOT, 4)
    np.testing.assert_array_equal(w[:, 0], w[:, 1])
    assert not np.array_equal(w[:, 2], w[:, 3])
    w_images = ablation.weights_for(z, "test", "scan groups", None, {"version": 1})  # a split without groups
    assert not np.array_equal(w_images[:, 0], w_images[:, 1])
