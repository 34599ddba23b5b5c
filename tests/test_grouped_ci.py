"""bench/grouped_ci.py: per-image vs scan-group intervals from a predictions.csv and a split with groups."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench_support import load_bench

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def _predictions(n_groups: int, size: int, seed: int) -> tuple[pd.DataFrame, list[list[str]]]:
    """Scans of ``size`` slices that share one prediction (right or wrong together)."""
    rng = np.random.default_rng(seed)
    rows, groups = [], []
    for g in range(n_groups):
        label = CLASSES[g % 4]
        p = rng.dirichlet(np.ones(4))
        if rng.random() < 0.8:
            p = 0.3 * p + 0.7 * np.eye(4)[CLASSES.index(label)]
        ids = [f"scan{g:03d}_{k}.png" for k in range(size)]
        groups.append(ids)
        for i in ids:
            rows.append({"id": i, "label": label, **{f"p_{c}": p[j] for j, c in enumerate(CLASSES)},
                         "p_tumour": 1 - p[2], "tumour_call": 1 - p[2] >= 0.5})  # fmt: skip
    return pd.DataFrame(rows), groups


def _split(test: list[str]) -> dict:
    """A split file holding only a test part."""
    return {"version": 1, "manifest": "m.csv", "manifest_sha256": "", "seed": 0, "classes": CLASSES,
            "train": [], "val": [], "test": test, "folds": [{"train": [], "val": []}], "excluded": []}  # fmt: skip


def test_group_intervals_are_wider_on_correlated_slices(tmp_path):
    bench = load_bench("grouped_ci")
    frame, groups = _predictions(80, 5, seed=1)
    csv = tmp_path / "predictions.csv"
    frame.to_csv(csv, index=False)
    ids = sorted(frame["id"])
    split = _split(ids) | {"groups": groups}
    (tmp_path / "split.json").write_text(json.dumps(split))
    out = tmp_path / "grouped.json"
    assert bench.main(["--split", str(tmp_path / "split.json"), "--run", f"a={csv}", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["test_groups"] == 80 and r["largest_group"] == 5 and r["images_in_groups_of_2_or_more"] == 400
    run = r["runs"]["a"]
    assert run["images"]["accuracy"]["value"] == pytest.approx(run["scan_groups"]["accuracy"]["value"])
    assert run["scan_groups"]["accuracy"]["method"] == "group bootstrap"
    assert run["width_ratio"]["accuracy"] > 1.6  # five copies per scan: about sqrt(5) wider


def test_a_split_without_groups_is_refused(tmp_path):
    bench = load_bench("grouped_ci")
    split = _split(["a.png"])
    (tmp_path / "split.json").write_text(json.dumps(split))
    with pytest.raises(SystemExit, match="records no groups"):
        bench.main(["--split", str(tmp_path / "split.json"), "--run", "a=x.csv"])
