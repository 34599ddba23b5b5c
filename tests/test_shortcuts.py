"""bench/shortcuts.py: where external images land among the look-alike groups, and the linear probe."""

from __future__ import annotations

import numpy as np

from bench_support import load_bench
from brainmri.train.balance import GroupBalancer


def looks(n: int, look: int, rng: np.random.Generator) -> np.ndarray:
    return np.eye(8)[look] * 10 + rng.normal(0, 0.3, (n, 8))


def test_look_only_accuracy_and_landing_expose_a_shortcut():
    """Class 2 ('no_tumor') only ever has look B in training: an external tumour with look B lands among them."""
    bench = load_bench("shortcuts")
    rng = np.random.default_rng(0)
    f_train = np.concatenate([looks(40, 0, rng), looks(40, 1, rng)])
    y_train = np.array([0] * 40 + [2] * 40)
    f_val = np.concatenate([looks(10, 0, rng), looks(10, 1, rng)])
    y_val = np.array([0] * 10 + [2] * 10)
    f_ext = looks(6, 1, rng)  # tumours that look like the training set's normals
    b = GroupBalancer(2).fit(f_train, y_train, 4)
    f = {"train": f_train, "val": f_val, "lgg-flair": f_ext, "navoneel": f_ext}
    y = {"train": y_train, "val": y_val, "lgg-flair": np.ones(6, bool), "navoneel": np.ones(6, bool)}
    table = bench.group_table(b, f, y, 2)
    assert table["group_only_val_accuracy"] == 1.0  # the look alone gives the class away
    assert table["largest_class_share_val"] == 0.5
    normals_group = int(b.groups_[-1])
    assert table["lgg-flair_tumour_no_tumour"][normals_group] == [6, 0]
    assert table["lgg-flair_tumour_no_tumour"][1 - normals_group] == [0, 0]


def test_probe_reports_validation_accuracy_and_external_aucs():
    bench = load_bench("shortcuts")
    rng = np.random.default_rng(1)
    f_train = np.concatenate([looks(30, c, rng) for c in range(4)])
    y_train = np.repeat(np.arange(4), 30)
    f_ext = np.concatenate([looks(10, 0, rng), looks(10, 2, rng)])  # glioma-like vs no_tumor-like
    y_ext = np.array([True] * 10 + [False] * 10)
    f = {"train": f_train, "val": f_train, "lgg-flair": f_ext, "navoneel": f_ext}
    y = {"train": y_train, "val": y_train, "lgg-flair": y_ext, "navoneel": y_ext}
    out = bench.probe(f, y, np.ones(len(y_train)), no_tumor=2)
    assert out["val_accuracy"] == 1.0
    assert out["lgg-flair_auc"] == 1.0 and out["navoneel_auc"] == 1.0
