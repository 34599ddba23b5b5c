"""The main job end to end on phantoms: every stage through the CLI, then a bundle check, then a resume."""

from __future__ import annotations

import json
import os

import torch
import yaml

from brainmri.cli import main
from brainmri.data.phantoms import write_phantom_dataset


def test_pipeline_end_to_end_on_phantoms(tmp_path, capsys):
    data = write_phantom_dataset(tmp_path / "data", n_per_class=24, size=96, seed=3)
    cfg = {
        "paths": {
            "work_dir": str(tmp_path / "work"),
            "runs_dir": str(tmp_path / "runs"),
            "bundles_dir": str(tmp_path / "bundles"),
        },
        "preprocess": {"size": 48},
        "model": {"backbone": "test_efficientnet", "weights": "none"},
        "train": {
            "run_name": "tiny",
            "num_workers": 0,
            "batch_size": 16,
            "loggers": ["csv"],
            "stage1": {"epochs": 1, "lr": 0.003},
            "stage2": {"epochs": 2, "lr": 0.003},
        },
        "evaluate": {"bootstrap": 50, "gallery_max": 4},
    }
    conf = tmp_path / "cfg.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    assert main(["pipeline", "-c", str(conf), "--data", str(data), "--n-predict", "4"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n") :])
    for stage in ("import", "audit", "split", "preprocess", "train", "evaluate", "export", "predict", "report"):
        assert stage in summary["stage_seconds"]
    check = summary["bundle_check"]
    assert check["n_test"] > 0
    assert check["predictions_differing_from_evaluation"] == 0
    assert abs(check["bundle_accuracy"] - check["evaluation_accuracy"]) < 1e-9
    preds = json.loads((tmp_path / "work" / "pipeline" / "predictions.json").read_text())
    assert len(preds["predictions"] if isinstance(preds, dict) else preds) == 4
    assert (tmp_path / "runs" / "tiny" / "config.yaml").is_file()
    # the run records the machine it trained on: a retrain elsewhere may not replay it bit for bit
    machine = json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())["machine"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["cores"] == os.cpu_count() and machine["versions"]["torch"] == torch.__version__.split("+")[0]
    assert (tmp_path / "bundles" / "tiny" / "card.json").is_file()
    report = (tmp_path / "runs" / "tiny" / "report.html").read_text()  # the last stage: brainmri report
    assert summary["report"].endswith("report.html") and "Confusion matrices" in report and "<img" in report

    # a second run skips finished stages instead of recomputing them
    assert main(["pipeline", "-c", str(conf), "--data", str(data), "--n-predict", "2"]) == 0
    assert "train: done already" in capsys.readouterr().out
