"""bench/train.py --from-run: the record of a run trained already (no training in the test)."""

from __future__ import annotations

import json
import sys

import pytest

from bench_support import load_bench
from brainmri.config import Config, save_config


def fake_run(path, history):
    path.mkdir()
    cfg = Config()
    cfg.preprocess.size = 160
    save_config(cfg, path / "config.yaml")
    info = {"n_train": 10, "n_val": 4, "monitor": "val_macro_f1", "best_score": 0.8, "best_epoch": "stage2:1",
            "wall_seconds": 123.4}  # fmt: skip
    (path / "run.json").write_text(json.dumps(info))
    (path / "history.json").write_text(json.dumps(history))
    return path


def test_from_run_records_the_run_without_training(tmp_path, monkeypatch):
    bench = load_bench("train")
    history = [{"stage": 2, "epoch": 0, "val_acc": 0.7, "val_macro_f1": 0.6},
               {"stage": 2, "epoch": 1, "val_acc": 0.9, "val_macro_f1": 0.8, "train_size": 128}]  # fmt: skip
    run = fake_run(tmp_path / "run", history)
    out = tmp_path / "train_x.json"
    argv = ["train.py", "--from-run", str(run), "--set", "train.stage2.epochs=2", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    r = json.loads(out.read_text())
    assert r["train_wall_seconds"] == pytest.approx(123.4) and r["data_prep_seconds"] is None
    assert r["img_size"] == 160 and r["best_val_acc"] == pytest.approx(0.9) and r["epochs"] == history
    assert r["overrides"] == ["train.stage2.epochs=2"] and r["recorded_from"] == str(run.resolve())
