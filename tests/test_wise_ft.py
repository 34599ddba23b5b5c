"""bench/wise_ft.py: a run between its linear-probe (stage 1) and fine-tuned weights."""

from __future__ import annotations

import json

import pytest
import torch

from bench_support import load_bench


def test_interpolate_mixes_float_tensors_and_keeps_counters():
    bench = load_bench("wise_ft")
    start = {"w": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(0)}
    final = {"w": torch.full((3,), 4.0), "bn.num_batches_tracked": torch.tensor(7)}
    mixed = bench.interpolate(start, final, 0.75)
    assert torch.allclose(mixed["w"], torch.full((3,), 3.0))
    assert mixed["bn.num_batches_tracked"].item() == 7
    with pytest.raises(SystemExit, match="different tensors"):
        bench.interpolate({"w": torch.zeros(3)}, final, 0.5)


def test_a_run_gets_the_interpolated_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    from external_support import tiny_run

    bench = load_bench("wise_ft")
    run = tiny_run(tmp_path)
    final = load_file(str(run.dir / "model.safetensors"))
    start = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in final.items()}
    with pytest.raises(SystemExit, match=r"stage1\.safetensors: missing"):
        bench.main([str(run.dir), str(tmp_path / "wise")])
    (run.dir / "checkpoints").mkdir()
    save_file(start, str(run.dir / "checkpoints" / "stage1.safetensors"))
    with pytest.raises(SystemExit, match="must lie in"):
        bench.main([str(run.dir), str(tmp_path / "wise"), "--alpha", "1.5"])
    assert bench.main([str(run.dir), str(tmp_path / "wise"), "--alpha", "0.5"]) == 0
    mixed = load_file(str(tmp_path / "wise" / "model.safetensors"))
    key = next(k for k, v in final.items() if v.is_floating_point() and v.abs().sum() > 0)
    assert torch.allclose(mixed[key], 0.5 * final[key])
    info = json.loads((tmp_path / "wise" / "run.json").read_text())
    assert info["wise_ft"]["alpha"] == 0.5
