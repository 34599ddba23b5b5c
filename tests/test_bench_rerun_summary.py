"""bench/rerun_summary.py: the kept epoch's validation accuracy, and the byte comparison of two trainings."""

from __future__ import annotations

import json

from bench_support import load_bench

rerun = load_bench("rerun_summary")


def test_best_epoch_accuracy_reads_the_kept_epoch_not_the_best_accuracy(tmp_path):
    history = [
        {"stage": 1, "epoch": 0, "val_acc": 0.99},
        {"stage": 2, "epoch": 3, "val_acc": 0.91},
        {"stage": 2, "epoch": 4, "val_acc": 0.95},
    ]
    (tmp_path / "history.json").write_text(json.dumps(history))
    assert rerun.best_epoch_accuracy(tmp_path, {"best_epoch": "stage2:3"}) == 0.91


def test_same_seed_compares_weight_bytes(tmp_path):
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for name, d in runs.items():
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"weights-c" if name == "c" else b"weights")
    assert rerun.same_seed(runs["a"], runs["b"], "again")["weights_identical"] is True
    different = rerun.same_seed(runs["a"], runs["c"], "again")
    assert different["weights_identical"] is False and different["sha256"] != different["sha256_again"]
