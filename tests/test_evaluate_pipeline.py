"""``brainmri evaluate`` on a tiny run built through the real stages (no patching).

Phantom PNGs -> manifest (data import) -> split -> preprocessing cache -> ``write_run`` with an untrained
timm ``test_efficientnet`` -> ``brainmri evaluate`` on test and on an external binary (yes/no) set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from external_support import tiny_run


def _binary_set(root: Path, n: int = 6) -> Path:
    from PIL import Image

    from brainmri.data.phantoms import make_phantom

    for folder, label in (("yes", "glioma"), ("no", "no_tumor")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ph = make_phantom(label, size=80, seed=90_000 + i)
            Image.fromarray(np.round(ph.image * 255).astype(np.uint8)).save(root / folder / f"{i}.png")
    return root


def test_evaluate_real_stages(tmp_path: Path) -> None:
    from brainmri.cli import main
    from brainmri.data.manifest import build_manifest, write_manifest

    run = tiny_run(tmp_path)  # phantoms -> manifest -> split -> cache -> untrained run, through the real stages
    cfg, split_file = run.cfg, Path(run.info["split_file"])
    manifest = json.loads(split_file.read_text())["manifest"]

    common = ["--set", "evaluate.bootstrap=50", "--set", "evaluate.gallery_max=3"]
    assert main(["evaluate", str(run.dir), *common]) == 0
    out = run.dir / "reports"
    expected = ["metrics.json", "predictions.csv", "classification_report.txt", "summary.json", "config.yaml",
                "confusion_matrix.png", "roc_pr.png", "reliability.png", "confidence_hist.png", "tumour_roc.png",
                "error_gallery.png"]  # fmt: skip
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(expected)
    cal = json.loads(run.calibration_path.read_text())
    n_val = len(json.loads(split_file.read_text())["val"])
    assert cal["fitted_on"] == "val" and cal["n"] == n_val
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == len(json.loads(split_file.read_text())["test"])

    ext_dir = _binary_set(tmp_path / "navoneel")
    train_ids = json.loads(split_file.read_text())["train"]
    leaked = next(
        Path(p) for p in pd.read_csv(manifest)["path"] if any(p.endswith(i.split("/", 1)[1]) for i in train_ids)
    )
    (ext_dir / "no" / "leaked_copy.png").write_bytes(leaked.read_bytes())  # a training image inside the "external" set
    ext_df = build_manifest([str(ext_dir)], cfg.data, cfg.audit, workers=1)
    ext_manifest = write_manifest(ext_df, tmp_path / "nav/manifest.csv")
    assert main(["evaluate", str(run.dir), "--split", str(ext_manifest), *common]) == 0
    m = json.loads((run.dir / "reports" / "nav" / "metrics.json").read_text())
    assert m["binary_labels_only"] and m["tumour_vs_no_tumour"]["calibrated"]["n_tumour"] == 6
    removed = m["overlap_removed"]
    assert removed["n_exact"] == 1 and any(i.endswith("leaked_copy.png") for i in removed["removed_ids"])
    assert removed["n_evaluated"] == removed["n_readable"] - removed["n_removed"]
    assert m["bootstrap"]["resampling"] == "images (a manifest CSV carries no groups)"
    assert m["bootstrap"]["note"].startswith("95% CIs: exact Clopper–Pearson")
    on_test = json.loads((out / "metrics.json").read_text())["bootstrap"]["resampling"]
    assert on_test.startswith(("whole groups of the split file", "images (no two of them share"))


def test_resampling_groups_follow_the_split_file() -> None:
    from types import SimpleNamespace

    from brainmri.evaluate.assess import resampling_groups

    split = {"groups": [["a", "b", "c"], ["x", "y"]]}
    run = SimpleNamespace(split=lambda: split)
    groups, said = resampling_groups(run, ["a", "q", "b", "y", "c"], from_split=True)
    assert groups[0] == groups[2] == groups[4] and len({groups[1], groups[3], groups[0]}) == 3
    assert said == "whole groups of the split file: 3 groups for 5 images"
    assert resampling_groups(run, ["a", "q", "y"], from_split=True)[0] is None  # nothing shared: exact CIs
    from brainmri.evaluate.assess import ci_note

    assert "for every metric" in ci_note(True, said, 1000) and said in ci_note(True, said, 1000)
    assert "Clopper–Pearson" in ci_note(False, "images", 1000)
    older = SimpleNamespace(split=lambda: {})
    groups, said = resampling_groups(older, ["a", "b"], from_split=True)
    assert groups is None and "re-run `brainmri data split`" in said
