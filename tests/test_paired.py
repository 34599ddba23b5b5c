"""bench/paired.py: paired, seed-averaged differences between training variants on shared resamples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench_support import load_bench


def _scores(p: np.ndarray, y: np.ndarray, groups: list[str]) -> dict:
    ids = [f"img{i}" for i in range(len(y))]
    hit = ((p >= 0.5) == y).astype(float)
    return {"sets": {"test": {"ids": ids, "y": y, "p": p, "hit": hit, "groups": ids},
                     "lgg-flair": {"ids": ids, "y": y, "p": p, "groups": groups}}}  # fmt: skip


def test_a_better_arm_gets_a_positive_difference_whose_interval_excludes_zero():
    bench = load_bench("paired")
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    groups = [f"patient{i // 10}" for i in range(len(y))]
    noise = rng.normal(0, 1, (4, len(y)))
    weak = [_scores(1 / (1 + np.exp(-(0.5 * (2 * y - 1) + n))), y, groups) for n in noise[:2]]
    strong = [_scores(1 / (1 + np.exp(-(2.0 * (2 * y - 1) + n))), y, groups) for n in noise[2:]]
    out = bench.compare({"weak": weak, "strong": strong}, n_boot=200)
    lgg = out["lgg-flair"]
    assert lgg["n_groups"] == 20
    d = lgg["arms"]["strong"]["minus_weak"]["tumour_auc"]
    assert d["diff"] > 0.1 and d["ci95"][0] > 0
    assert lgg["arms"]["weak"]["minus_weak"] is None
    assert len(lgg["arms"]["strong"]["per_seed"]) == 2
    assert np.isclose(lgg["arms"]["strong"]["mean"]["tumour_auc"],
                      np.mean([m["tumour_auc"] for m in lgg["arms"]["strong"]["per_seed"]]))  # fmt: skip
    assert "accuracy" in out["test"]["arms"]["strong"]["mean"]
    ece = [m["tumour_ece"] for m in lgg["arms"]["strong"]["per_seed"]]
    assert all(0 <= e <= 1 for e in ece)
    table = bench.render_markdown({"reference": "weak", "arms": {"weak": [1, 2], "strong": [1, 2]}, "sets": out})
    assert "| strong | 2 |" in table and "lgg-flair tumour ECE" in table


def test_runs_scored_on_different_images_are_refused():
    bench = load_bench("paired")
    y = np.array([0, 1, 0, 1])
    a = _scores(np.array([0.1, 0.9, 0.2, 0.8]), y, ["a", "a", "b", "b"])
    b = _scores(np.array([0.1, 0.9, 0.2, 0.8]), y, ["a", "a", "b", "b"])
    b["sets"]["lgg-flair"]["ids"] = ["x", "y", "z", "w"]
    with pytest.raises(SystemExit, match="different lgg-flair images"):
        bench.compare({"a": [a], "b": [b]}, n_boot=10)


def test_arm_specs_are_parsed_and_bad_ones_named():
    bench = load_bench("paired")
    arms = bench.parse_arms(["base=runs/a,runs/b", "mirror=runs/c"])
    assert list(arms) == ["base", "mirror"] and len(arms["base"]) == 2 and len(arms["base"][0]) == 1
    assert len(bench.parse_arms(["ens=runs/a+runs/b"])["ens"][0]) == 2
    with pytest.raises(SystemExit, match="NAME=RUN"):
        bench.parse_arms(["runs/a"])


def test_an_ensemble_averages_the_members_calibrated_probabilities():
    bench = load_bench("paired")
    labels = np.array([0, 2, 2, 1])
    ids = ["a", "b", "c", "d"]

    def member(probs):
        return {"no_tumor": 2, "sets": {"test": {"ids": ids, "groups": ids, "labels": labels,
                                                 "probs": np.array(probs, dtype=float)}}}  # fmt: skip

    one = member([[0.6, 0.1, 0.3, 0.0], [0.2, 0.0, 0.8, 0.0], [0.7, 0.0, 0.3, 0.0], [0.0, 0.4, 0.6, 0.0]])
    two = member([[0.2, 0.1, 0.7, 0.0], [0.1, 0.1, 0.8, 0.0], [0.1, 0.0, 0.9, 0.0], [0.0, 0.9, 0.1, 0.0]])
    ens = bench.combine([one, two])["sets"]["test"]
    np.testing.assert_allclose(ens["p"], [0.5, 0.2, 0.4, 0.65])
    np.testing.assert_array_equal(ens["y"], [1, 0, 0, 1])
    np.testing.assert_array_equal(ens["hit"], [0.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(bench.combine([one])["sets"]["test"]["hit"], [1.0, 1.0, 0.0, 0.0])


def test_runs_of_another_split_are_refused_before_scoring(monkeypatch):
    from types import SimpleNamespace

    from brainmri.runs import Run

    bench = load_bench("paired")
    tests = {"a": ["x.png", "y.png"], "b": ["x.png", "y.png"], "c": ["Training/x.png", "Training/y.png"]}
    monkeypatch.setattr(Run, "load", lambda d: SimpleNamespace(split=lambda: {"test": tests[Path(d).name]}))
    bench.same_test_split({"one": [[Path("a")]], "two": [[Path("b")]]})
    with pytest.raises(SystemExit, match="other test images"):
        bench.same_test_split({"one": [[Path("a")]], "two": [[Path("b"), Path("c")]]})
