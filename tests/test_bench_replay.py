"""bench/replay.py: where two trainings with one seed part, read from Lightning's CSV logs."""

from __future__ import annotations

import hashlib

import pytest

from bench_support import load_bench

replay = load_bench("replay")


def _write_run(run_dir, stage, rows):
    """rows: (epoch, train_loss, val_loss, val_acc); Lightning logs validation and training on separate rows."""
    path = run_dir / "logs" / "csv" / f"stage{stage}" / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,step,train_loss,val_acc,val_loss,val_macro_f1"]
    for epoch, train_loss, val_loss, val_acc in rows:
        step = epoch * 10 + 9
        lines += [f"{epoch},{step},,{val_acc!r},{val_loss!r},0.5", f"{epoch},{step},{train_loss!r},,,"]
    path.write_text("\n".join(lines) + "\n")


def test_reports_the_identical_leading_epochs_and_the_first_that_differs(tmp_path):
    reference = [
        {"stage": 1, "epoch": 0, "train_loss": 0.7172214593982247, "val_loss": 0.536, "val_acc": 0.80},
        {"stage": 1, "epoch": 1, "train_loss": 0.5896, "val_loss": 0.503, "val_acc": 0.83},
        {"stage": 2, "epoch": 0, "train_loss": 0.9233708381652832, "val_loss": 0.3268, "val_acc": 0.89},
        {"stage": 2, "epoch": 1, "train_loss": 0.5, "val_loss": 0.3, "val_acc": 0.91},
    ]
    _write_run(tmp_path, 1, [(0, 0.7172214593982247, 0.536, 0.80), (1, 0.5896, 0.503, 0.83)])
    _write_run(tmp_path, 2, [(0, 0.9271688461303711, 0.3903, 0.86)])  # stopped after one stage-2 epoch
    epochs = replay.run_epochs(tmp_path)
    assert [(e["stage"], e["epoch"]) for e in epochs] == [(1, 0), (1, 1), (2, 0)]
    result = replay.compare(reference, epochs)
    assert result["identical_leading_epochs"] == 2 and result["compared_epochs"] == 3
    first = result["first_difference"]
    assert (first["stage"], first["epoch"]) == (2, 0)
    assert first["train_loss"] == {"run": 0.9271688461303711, "reference": 0.9233708381652832}


def test_an_identical_replay_has_no_first_difference(tmp_path):
    reference = [{"stage": 1, "epoch": 0, "train_loss": 0.25, "val_loss": 0.5, "val_acc": 0.75}]
    _write_run(tmp_path, 1, [(0, 0.25, 0.5, 0.75)])
    result = replay.compare(reference, replay.run_epochs(tmp_path))
    assert result == {"identical_leading_epochs": 1, "compared_epochs": 1, "first_difference": None}


def test_a_directory_without_logs_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path)):
        replay.run_epochs(tmp_path)


def test_a_run_directory_is_a_reference_and_its_weights_are_hashed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        _write_run(run, 1, [(0, 0.25, 0.5, 0.75)])
    (a / "model.safetensors").write_bytes(b"weights")
    result = replay.compare(replay.reference_epochs(a), replay.run_epochs(b))
    assert result["first_difference"] is None and result["identical_leading_epochs"] == 1
    assert replay.weights_sha256(a) == hashlib.sha256(b"weights").hexdigest()
    assert replay.weights_sha256(b) is None
