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
