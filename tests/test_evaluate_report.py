"""``brainmri evaluate`` end to end on a tiny run, and the k-fold helpers.

The run folder is real (``write_run`` + timm's ``test_efficientnet``); its images come from phantoms
through ``Run.load_images`` / ``Run.load_external`` patched to return them, so this test exercises the
whole evaluation without depending on the data and preprocessing stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainmri.config import EvaluateConfig, ModelConfig, load_config
from brainmri.evaluate.assess import assess
from brainmri.evaluate.kfold import cross_fit, summarise_folds

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
SIZE = 64


class _FakePreprocessor:
    def save(self, path: Path) -> Path:
        Path(path).write_text('{"fake": true}')
        return Path(path)


def _images(n: int, seed: int, labels: list[str] | None = None):
    from brainmri.data.phantoms import make_phantom
    from brainmri.runs import SplitImages

    names = labels or [CLASSES[i % 4] for i in range(n)]
    imgs = np.stack(
        [np.round(make_phantom(c if c in CLASSES else "glioma", SIZE, seed + i).image * 255).astype(np.uint8)
         for i, c in enumerate(names)]
    )  # fmt: skip
    idx = {c: i for i, c in enumerate(CLASSES)}
    ids = [f"ph/{seed + i}.png" for i in range(n)]
    return SplitImages(ids, [f"/data/{i}" for i in ids], imgs, np.array([idx.get(c, -1) for c in names]), names)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    import torch

    from brainmri.models import create_model
    from brainmri.runs import write_run

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("run")
    cfg = load_config(None, ["model.backbone=test_efficientnet", "model.weights=none", f"preprocess.size={SIZE}"])
    model = create_model(ModelConfig(backbone="test_efficientnet", weights="none"), 4)
    split = root / "split.json"
    split.write_text("{}")
    write_run(root / "tiny", cfg, model, _FakePreprocessor(), classes=CLASSES, split_file=split, preprocess_dir=root)
    return root / "tiny"


@pytest.fixture()
def patched(monkeypatch):
    from brainmri.runs import Run

    parts = {"train": _images(64, 3000), "val": _images(48, 0), "test": _images(40, 1000)}
    monkeypatch.setattr(Run, "load_images", lambda self, which: parts[which])
    binary = ["tumor"] * 12 + ["no_tumor"] * 8
    monkeypatch.setattr(Run, "load_external", lambda self, path: _images(20, 5000, binary))
    monkeypatch.setattr(Run, "split", lambda self: {})  # a split file without recorded groups


def test_evaluate_writes_full_reports(tiny_run: Path, patched, capsys) -> None:
    from brainmri.cli import main

    rc = main(["evaluate", str(tiny_run), "--set", "evaluate.bootstrap=100", "--set", "evaluate.gallery_max=4",
               "--set", "evaluate.conformal_alphas=[0.1,0.05]"])  # fmt: skip
    assert rc == 0
    out = tiny_run / "reports"
    for f in ("metrics.json", "predictions.csv", "classification_report.txt", "summary.json", "config.yaml",
              "confusion_matrix.png", "roc_pr.png", "reliability.png", "confidence_hist.png", "tumour_roc.png",
              "error_gallery.png"):  # fmt: skip
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f

    cal = json.loads((tiny_run / "calibration.json").read_text())
    assert cal["fitted_on"] == "val" and cal["n"] == 48
    ood = json.loads((tiny_run / "ood.json").read_text())  # the out-of-domain gate: fitted on train, 95% of val pass
    blocks = json.loads((tiny_run / "ood_blocks.json").read_text())  # its low-level score (early-stage statistics)
    assert ood["kind"] == blocks["kind"] == "mahalanobis" and ood["threshold"] > 0 and blocks["threshold"] > 0
    assert 0.95 <= ood["quantile"] == blocks["quantile"] <= 1.0  # thresholds raised together (both pass 95%)
    assert ood["n_threshold"] == blocks["n_threshold"] == 48
    assert cal["temperature"] > 0 and 0 <= cal["threshold"] <= 1
    assert set(cal["conformal"]) == {"0.1", "0.05"} and cal["conformal"]["0.1"]["method"] == "lac"

    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test" and m["n"] == 40 and not m["optimistic"]
    for view in ("uncalibrated", "calibrated"):
        for k in ("accuracy", "f1_macro", "auc_macro_ovr", "nll", "brier", "ece", "mce", "ece_adaptive",
                  "ece_classwise", "balanced_accuracy", "precision_weighted"):  # fmt: skip
            assert set(m["multiclass"][view][k]) == {"value", "ci_low", "ci_high", "ci_method"}, (view, k)
            assert m["multiclass"][view][k]["ci_method"] == "bootstrap", (view, k)
        assert set(m["multiclass"][view]["per_class"]) == set(CLASSES)
    # temperature never changes the arg-max
    assert m["multiclass"]["calibrated"]["accuracy"] == m["multiclass"]["uncalibrated"]["accuracy"]
    assert m["conformal"]["lac"]["0.1"]["coverage"]["value"] is not None
    assert m["conformal"]["lac"]["0.1"]["coverage"]["ci_method"] == "clopper-pearson"
    for a in ("0.1", "0.05"):  # the reported sets are those of the saved (deployed) predictors
        assert m["conformal"]["lac"][a]["qhat"] == cal["conformal"][a]["qhat"]
    assert m["tumour_vs_no_tumour"]["calibrated"]["sensitivity"]["ci_method"] == "clopper-pearson"
    assert m["tumour_vs_no_tumour"]["calibrated"]["threshold"] == pytest.approx(cal["threshold"])

    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(pred) == 40
    assert {"path", "label", "prediction", "p_glioma", "p_no_tumor", "set_alpha_0.1", "set_alpha_0.05"} <= set(pred)
    np.testing.assert_allclose(pred[[f"p_{c}" for c in CLASSES]].sum(1), 1.0, atol=1e-6)

    s = json.loads((out / "summary.json").read_text())
    for k in ("accuracy", "f1_macro", "auc_macro_ovr", "ece_before", "ece_after", "temperature", "conformal",
              "tumour_sensitivity", "tumour_specificity"):  # fmt: skip
        assert k in s, k
    assert s["temperature"] == pytest.approx(cal["temperature"])
    assert "test" in capsys.readouterr().out or True


def test_evaluate_val_is_flagged_and_external_binary(tiny_run: Path, patched) -> None:
    from brainmri.config import Config
    from brainmri.evaluate.evaluation import evaluate_run

    cfg = Config(evaluate=EvaluateConfig(bootstrap=50, gallery_max=2))
    out = evaluate_run(tiny_run, cfg, split="val")
    assert out == tiny_run / "reports" / "val"
    s = json.loads((out / "summary.json").read_text())
    assert s["optimistic"] is True and "optimistic" in s["note"]
    assert "optimistic" in (out / "classification_report.txt").read_text()

    manifest = tiny_run.parent / "navoneel" / "manifest.csv"
    manifest.parent.mkdir(exist_ok=True)
    manifest.write_text("id,path,label\n")
    out = evaluate_run(tiny_run, cfg, split=str(manifest))
    assert out == tiny_run / "reports" / "navoneel"
    m = json.loads((out / "metrics.json").read_text())
    assert m["binary_labels_only"] and m["multiclass"] is None
    tv = m["tumour_vs_no_tumour"]["calibrated"]
    assert tv["n_tumour"] == 12 and tv["n_no_tumour"] == 8
    assert (out / "tumour_roc.png").is_file() and (out / "error_gallery.png").is_file()
    assert not (out / "confusion_matrix.png").exists()


def test_evaluate_unknown_split_is_a_clear_error(tiny_run: Path, capsys) -> None:
    from brainmri.cli import main

    assert main(["evaluate", str(tiny_run), "--split", "nope.csv"]) == 2
    assert "neither test, val nor an existing manifest CSV" in capsys.readouterr().err


def test_cross_fit_is_out_of_sample() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    z = rng.normal(0, 1, (400, 4))
    z[np.arange(400), y] += 2
    z *= 3
    ecfg = EvaluateConfig(bootstrap=50)
    cf = cross_fit(z, y, CLASSES, ecfg, seed=0)
    h0, h1 = cf["halves"]
    assert len(np.intersect1d(h0, h1)) == 0 and len(h0) + len(h1) == 400
    # half 0 must be calibrated with the temperature fitted on half 1 only
    from brainmri.calibrate.temperature import TemperatureScaler

    t1 = TemperatureScaler().fit(z[h1], y[h1]).temperature_
    assert cf["temperatures"][0] == pytest.approx(t1)
    np.testing.assert_allclose(cf["probs"][h0], TemperatureScaler.from_dict({"temperature": t1}).predict_proba(z[h0]))
    res = assess(z, cf["probs"], [CLASSES[i] for i in y], CLASSES, ecfg, thresholds=cf["thresholds"], sets=cf["sets"])
    for method in ("lac", "aps"):  # valid (>= 1 - alpha up to sampling error); never-empty sets can over-cover
        assert res["conformal"][method]["0.1"]["coverage"]["value"] > 0.86


def test_summarise_folds_t_interval() -> None:
    from scipy import stats

    folds = [{"accuracy": v, "ece_after": None} for v in (0.80, 0.82, 0.85, 0.79, 0.84)]
    s = summarise_folds(folds)
    vals = np.array([0.80, 0.82, 0.85, 0.79, 0.84])
    half = stats.t.ppf(0.975, 4) * vals.std(ddof=1) / np.sqrt(5)
    assert s["accuracy"]["mean"] == pytest.approx(vals.mean())
    assert s["accuracy"]["sd"] == pytest.approx(vals.std(ddof=1))
    assert s["accuracy"]["ci_low"] == pytest.approx(vals.mean() - half)
    assert s["accuracy"]["ci_high"] == pytest.approx(vals.mean() + half)
    assert "ece_after" not in s


def test_kfold_trains_each_fold_and_summarises(tmp_path, monkeypatch, capsys) -> None:
    """Orchestration of ``brainmri kfold`` with ``train_run`` replaced by a tiny untrained run."""
    import torch

    import brainmri.data.split as split_mod
    import brainmri.train.trainer as trainer_mod
    from brainmri.cli import main
    from brainmri.models import create_model
    from brainmri.runs import Run, write_run

    calls = []

    def fake_train_run(cfg, split_file, run_dir=None, fold=None, resume=False, overwrite=False):
        calls.append(fold)
        torch.manual_seed(fold)
        model = create_model(ModelConfig(backbone="test_efficientnet", weights="none"), 4)
        run = write_run(run_dir, cfg, model, _FakePreprocessor(), classes=CLASSES, split_file=split_file,
                        preprocess_dir=tmp_path, extra={"fold": fold})  # fmt: skip
        return run.dir

    parts = {f"fold{k}:val": _images(24, 100 * k) for k in range(3)}
    monkeypatch.setattr(trainer_mod, "train_run", fake_train_run)
    monkeypatch.setattr(split_mod, "read_split", lambda path: {"folds": [{}, {}, {}]})
    monkeypatch.setattr(Run, "load_images", lambda self, which: parts[which])
    split = tmp_path / "split.json"
    split.write_text("{}")
    overrides = [f"paths.runs_dir={tmp_path / 'runs'}", "model.backbone=test_efficientnet", "model.weights=none",
                 "evaluate.bootstrap=20"]  # fmt: skip
    args = ["kfold", "--split", str(split), "--name", "tiny"] + [a for o in overrides for a in ("--set", o)]

    assert main([*args, "--folds", "5"]) == 2  # the split file has 3 folds
    assert "has 3 folds but split.folds=5" in capsys.readouterr().err
    assert main([*args, "--folds", "3"]) == 0
    assert calls == [0, 1, 2]
    out = tmp_path / "runs" / "tiny-kfold"
    summary = json.loads((out / "kfold_summary.json").read_text())
    assert summary["k"] == 3 and len(summary["per_fold"]) == 3
    acc = summary["metrics"]["accuracy"]
    assert len(acc["values"]) == 3 and acc["ci_low"] <= acc["mean"] <= acc["ci_high"]
    assert "optimistic" in summary["note"]
    assert (out / "kfold_summary.md").read_text().startswith("# k-fold")
    fold_metrics = json.loads((out / "fold1" / "reports" / "metrics.json").read_text())
    assert fold_metrics["split"] == "fold1:val" and "cross-fitted" in fold_metrics["calibration"]
    assert len(fold_metrics["temperatures"]) == 2
    assert main([*args, "--folds", "3", "--reuse"]) == 0  # finished folds are not retrained
    assert calls == [0, 1, 2]
