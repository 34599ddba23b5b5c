"""bench/robustness.py (MRI-C) on a tiny run built through the real stages, with phantom external sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench_support import load_bench

pytest.importorskip("brainmri.preprocess.cache")

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
SIZE = 64


def _binary_set(root: Path, n: int, with_patients: bool) -> Path:
    from PIL import Image

    from brainmri.data.phantoms import make_phantom

    rows = ["file,label,patient,slice"]
    for folder, label in (("tumor", "glioma"), ("no_tumor", "no_tumor")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ph = make_phantom(label, size=80, seed=70_000 + 100 * (folder == "tumor") + i)
            Image.fromarray(np.round(ph.image * 255).astype(np.uint8)).save(root / folder / f"p{i % 3}_{i}.png")
            rows.append(f"{folder}/p{i % 3}_{i}.png,{folder},patient{i % 3},{i}")
    if with_patients:
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    import torch

    from brainmri.config import load_config
    from brainmri.data.manifest import build_manifest, write_manifest
    from brainmri.data.phantoms import write_phantom_dataset
    from brainmri.data.split import run_split
    from brainmri.models import create_model
    from brainmri.preprocess.cache import PreprocessedCache, build_cache
    from brainmri.runs import write_run

    tmp = tmp_path_factory.mktemp("robust")
    overrides = [f"paths.work_dir={tmp / 'work'}", f"paths.runs_dir={tmp / 'runs'}", "preprocess.preset=raw",
                 f"preprocess.size={SIZE}", "preprocess.workers=1", "data.workers=1", "split.folds=2",
                 "model.backbone=test_efficientnet", "model.weights=none"]  # fmt: skip
    cfg = load_config(None, overrides)
    data = write_phantom_dataset(tmp / "data", n_per_class=10, size=SIZE, seed=3)
    manifest = write_manifest(build_manifest([str(data)], cfg.data, cfg.audit, workers=1), tmp / "work/manifest.csv")
    split_file = tmp / "work/split.json"
    run_split(manifest, split_file, cfg.split, cfg.audit, cfg.data.classes)
    report = build_cache(cfg.preprocess, cfg.data, manifest, split_file, tmp / "work/preprocess", workers=1,
                         log=lambda msg: None)  # fmt: skip
    cache = PreprocessedCache(report.dir)
    torch.manual_seed(0)
    model = create_model(cfg.model, len(CLASSES))
    run = write_run(tmp / "runs/tiny", cfg, model, cache.preprocessor(), classes=CLASSES, split_file=split_file,
                    preprocess_dir=cache.dir)  # fmt: skip
    _binary_set(tmp / "lgg", 6, with_patients=True)
    _binary_set(tmp / "nav", 4, with_patients=False)
    return run.dir


def test_corruptions_are_deterministic_and_keep_uint8():
    bench = load_bench("robustness")
    rng = np.random.default_rng(0)
    images = np.zeros((3, 48, 48), np.uint8)
    images[:, 8:40, 8:40] = rng.integers(60, 220, (3, 32, 32))
    assert len(bench.CORRUPTIONS) >= 8 and all(len(v) == 3 for v in bench.CORRUPTIONS.values())
    for name in bench.CORRUPTIONS:
        for level in (1, 3):
            a = bench.corrupt_images(images, name, level)
            assert a.dtype == np.uint8 and a.shape == images.shape
            assert np.array_equal(a, bench.corrupt_images(images, name, level)), name
            assert not np.array_equal(a, images), (name, level)
        mild = np.abs(bench.corrupt_images(images, name, 1).astype(int) - images).mean()
        strong = np.abs(bench.corrupt_images(images, name, 3).astype(int) - images).mean()
        assert strong >= mild * 0.9, name  # severity 3 changes at least about as much as severity 1


def test_patient_bootstrap_and_summary():
    bench = load_bench("robustness")
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    p = np.clip(y * 0.6 + rng.uniform(0, 0.5, 80), 0, 1)
    ci = bench.bootstrap_ci(y, p, 0.5, [f"pt{i % 8}" for i in range(80)], 200)
    full = bench.tumour_scores(y, p, 0.5)
    assert ci["auc"][0] <= full["auc"] <= ci["auc"][1] <= 1.0
    rows = lambda drops: {"severities": [{"severity": i + 1, "drop": d, "auc_drop": 0.0} for i, d in enumerate(drops)],  # noqa: E731
                          "mean_drop": float(np.mean(drops))}  # fmt: skip
    s = bench.summarise({"a": rows([1, 2, 3]), "b": rows([0, 10, 2])})
    assert s["worst_corruption"] == "b" and s["worst_cell"] == {"corruption": "b", "severity": 2, "drop": 10}
    assert s["mean_drop"] == pytest.approx(3.0) and s["n_conditions"] == 6


def test_benchmark_end_to_end_on_tiny_run(tiny_run: Path, tmp_path: Path):
    bench = load_bench("robustness")
    out = tmp_path / "robustness.json"
    root = tiny_run.parents[1]
    corruptions = "jpeg,contrast_inversion,rician_noise"
    argv = ["--run", str(tiny_run), "--out", str(out), "--runtime", "torch", "--bootstrap", "20",
            "--lgg", str(root / "lgg"), "--navoneel", str(root / "nav"),
            "--cache-dir", str(tmp_path / "cache"), "--corruptions", corruptions]  # fmt: skip
    _fit_gate(tiny_run)
    assert bench.main(argv) == 0
    r = json.loads(out.read_text())
    assert r["run"] == "tiny" and r["machine"] and "git_commit" in r
    assert set(r["corruptions"]) == {"jpeg", "contrast_inversion", "rician_noise"}
    for c in r["corruptions"].values():
        assert [s["severity"] for s in c["severities"]] == [1, 2, 3]
        for s in c["severities"]:
            assert 0 <= s["accuracy"] <= 1 and set(s["ood_flagged"]) == {"gate", "features", "block_stats"}
            assert s["ood_flagged"]["gate"] >= max(s["ood_flagged"]["features"], s["ood_flagged"]["block_stats"])
    assert r["summary"]["n_conditions"] == 9 and 0 <= r["summary"]["answered"]["mean_share"] <= 1
    a, a_clean = r["clean"]["answered"], r["clean"]["accuracy"]
    assert 0 < a["share"] <= 1 and 0 <= a["accuracy"] <= 1
    lgg, nav = r["external"]["lgg-flair"], r["external"]["navoneel"]
    assert lgg["n"] == 12 and lgg["n_groups"] == 3 and lgg["groups"].startswith("patients")
    assert lgg["overlap"]["kept"] is True
    assert nav["groups"] == "images" and nav["overlap"]["n_readable"] == 8
    assert set(r["ood"]["scores"]) == {"features", "block_stats"} and 0 < r["ood"]["val_passed"] <= 1
    # cached external sets and manifests are reused
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()).count(".npz") == 2
    assert bench.main(argv) == 0
    assert json.loads(out.read_text())["external"]["lgg-flair"]["auc"] == lgg["auc"]
    assert sum(row["n"] for row in lgg["by_level"]) == lgg["n"] and "by_level" not in nav
    assert 0 <= lgg["answered"]["share"] <= 1 and lgg["answered"]["n"] == round(lgg["answered"]["share"] * lgg["n"])
    stripped = r["site_variations"]["skull_stripped"]
    assert 0 <= stripped["accuracy"] <= 1 and stripped["drop"] == round(100 * (a_clean - stripped["accuracy"]), 2)
    assert lgg["site"]["skull_stripped"]["n"] == lgg["n"] and "site" in nav
    md = bench.render_markdown(r)
    assert "| contrast_inversion |" in md and "| lgg-flair | 12 (6) | 3 patients |" in md
    assert "| lower third (skull base) |" in md and "OOD flagged (gate)" in md
    assert "| skull_stripped |" in md and "lgg-flair AUC [95% CI] (clean)" in md
    assert "| skull_stripped |" not in bench.render_markdown({**r, "site_variations": {}})  # results before it


def _fit_gate(run_dir: Path) -> None:
    """The run's two-score gate, as ``brainmri evaluate`` fits it (the benchmark reads it, fits nothing)."""
    from brainmri.evaluate.domain import fit_ood
    from brainmri.runs import Run

    run = Run.load(run_dir)
    fit_ood(run, run.build_model(), "val", quantile=0.95)


def test_slice_levels_and_by_level_bands(tmp_path: Path):
    bench = load_bench("robustness")
    rows = ["file,label,patient,slice"] + [f"t/a{i}.png,tumor,A,{10 + i}" for i in range(7)]
    rows += [f"t/b{i}.png,tumor,B,{i}" for i in range(4)] + ["t/c.png,tumor,C,5"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ids = ["x/t/a0.png", "x/t/a3.png", "x/t/a6.png", "x/t/b1.png", "x/t/c.png", "x/unknown.png"]
    levels = bench.slice_levels(ids, tmp_path)
    np.testing.assert_allclose(levels[:5], [0.0, 0.5, 1.0, 1 / 3, 0.0])
    assert np.isnan(levels[5])
    assert bench.slice_levels(ids, tmp_path / "missing") is None
    # a model that calls every low slice a tumour: specificity 0 at the bottom, 1 above
    classes = ["glioma", "meningioma", "no_tumor", "pituitary"]
    scorer = bench.Scorer(classes, 1.0, 0.5, [])
    lv = np.repeat([0.1, 0.5, 0.9], 4)
    y = np.tile([1, 1, 0, 0], 3)
    logits = np.zeros((12, 4))
    logits[:, 2] = np.where((y == 0) & (lv > 0.3), 5.0, -5.0)
    rows = bench.by_level(scorer, {"logits": logits}, y, [f"p{i % 2}" for i in range(12)], lv, n_boot=0)
    assert [r["n"] for r in rows] == [4, 4, 4]
    assert [r["specificity"] for r in rows] == [0.0, 1.0, 1.0] and rows[0]["sensitivity"] == 1.0
    assert rows[0]["calls"]["no_tumour"]["glioma"] == 2 and rows[1]["calls"]["no_tumour"]["no_tumor"] == 2


def test_figures(tiny_run: Path, tmp_path: Path):
    bench = load_bench("robustness")
    assert bench.main(["--run", str(tiny_run), "--figures", "--figures-dir", str(tmp_path)]) == 0
    assert (tmp_path / "augment_examples.png").stat().st_size > 1000
    assert (tmp_path / "robustness_corruptions.png").stat().st_size > 1000


def test_answered_scores_only_the_images_the_gate_passes():
    bench = load_bench("robustness")

    class Score:  # passes images whose first feature is below 1
        def predict(self, feats):
            return feats[:, 0] < 1, feats[:, 0]

    classes = ["glioma", "meningioma", "no_tumor", "pituitary"]
    y = np.array([1, 1, 0, 0, 1, 0])
    logits = np.zeros((6, 4))
    logits[:, 2] = [-5, -5, 5, 5, 5, -5]  # the last two are wrong, and the gate flags them
    feats = np.array([[0.0], [0.0], [0.0], [0.0], [2.0], [2.0]])
    outputs = {"logits": logits, "features": feats}
    r = bench.Scorer(classes, 1.0, 0.5, [("features", Score())]).binary(outputs, y, list("aabbcc"), 0)
    assert r["auc"] < 1.0 and r["ood_flagged"] == {"gate": pytest.approx(2 / 6), "features": pytest.approx(2 / 6)}
    a = r["answered"]
    assert a["share"] == pytest.approx(4 / 6) and a["n"] == 4 and a["n_tumour"] == 2 and a["gate"] == "features"
    assert a["auc"] == 1.0 and a["sensitivity"] == 1.0 and a["specificity"] == 1.0
    assert "(67%)" in bench._answered(a)


def test_answered_accuracy_and_its_summary():
    bench = load_bench("robustness")
    a = bench.Scorer.answered_accuracy(np.array([1, 0, 1, 1], bool), np.array([1, 1, 0, 0], bool))
    assert a == {"share": 0.5, "accuracy": 0.5}
    assert bench.Scorer.answered_accuracy(np.ones(2, bool), np.zeros(2, bool))["accuracy"] is None
    cells = [{"answered": {"share": 0.5, "accuracy": 0.9, "drop": 2.0}},
             {"answered": {"share": 0.1, "accuracy": 0.7, "drop": 6.0}},
             {"answered": {"share": 0.0, "accuracy": None}}]  # fmt: skip
    s = bench.answered_summary(cells)
    assert s == {"mean_share": 0.2, "mean_drop": 4.0, "worst_drop": 6.0, "cells_with_nothing_answered": 1}
    assert bench.answered_summary([{"accuracy": 0.9}]) is None


def test_older_results_render_their_own_scores():
    bench = load_bench("robustness")
    assert bench._flags({"mahalanobis": 0.25, "energy": 0.5}) == "0.25 / 0.50"
    assert bench._flags({"gate": 0.125, "features": 0.1}) == "0.12" and bench._flags({}) == "–"
    assert bench._flags_label({"mahalanobis": 0.1}) == "Mahalanobis / energy"


def test_onnx_graph_gives_the_torch_outputs(tiny_run: Path, tmp_path: Path):
    """The benchmark's ONNX model is the bundle's graph (export_onnx), read by name like the torch one."""
    from brainmri.runs import Run

    bench = load_bench("robustness")
    model = bench.FeatureModel(Run.load(tiny_run), "onnx", tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)
    onnx, torch_ = model.outputs(images), model.outputs(images, "torch")
    assert set(onnx) == {"logits", "features", "block_stats"} == set(torch_)
    for name in onnx:
        np.testing.assert_allclose(onnx[name], torch_[name], atol=1e-3, rtol=1e-3)
    assert bench.runtime_parity(model, images) < 1e-3
