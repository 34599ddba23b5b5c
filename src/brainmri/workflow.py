"""The main job: import -> audit -> split -> preprocess -> train -> evaluate -> export -> predict -> report.

Each stage is the same command a user would type (so the pipeline proves the CLI works end to end),
run with one resolved config saved to ``<work_dir>/pipeline/config.yaml``. Stages whose stable output
file already exists are skipped, and an interrupted training resumes, so re-running ``./run.sh``
after a crash continues where it stopped. ``--fresh`` recomputes everything.

Data: ``--data PATH`` (repeatable), else ``$BRAINMRI_DATA``, else ``../shared/data/brain-tumor-mri``
beside the repository, else the Kaggle set downloaded with ``kagglehub`` (online users).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from brainmri.config import Config, save_config
from brainmri.errors import BrainMRIError, DataError
from brainmri.layout import Layout

SHARED_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "brain-tumor-mri"


def resolve_data_roots(cfg: Config, given: list[str] | None) -> list[str]:
    if given:
        return list(given)
    if cfg.data.roots:
        return list(cfg.data.roots)
    env = os.environ.get("BRAINMRI_DATA")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    if SHARED_DEFAULT.is_dir():
        return [str(SHARED_DEFAULT)]
    from brainmri.data.download import download_dataset

    print("[pipeline] no --data, BRAINMRI_DATA or ../shared/data: downloading the Kaggle set with kagglehub")
    return [str(download_dataset(cfg.data.kaggle_datasets[0]))]


def _stage(name: str, argv: list[str], skip_if: Path | None = None) -> float:
    from brainmri.cli import main as cli_main

    if skip_if is not None and skip_if.exists():
        print(f"[pipeline] {name}: done already ({skip_if}); --fresh recomputes")
        return 0.0
    print(f"[pipeline] {name}: brainmri {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    rc = cli_main(argv)
    if rc != 0:
        raise BrainMRIError(f"pipeline stopped: stage '{name}' exited with status {rc}")
    return time.perf_counter() - t0


def run_pipeline(cfg: Config, data: list[str] | None, fresh: bool, n_predict: int) -> dict:
    layout = Layout.from_config(cfg.paths)
    work = layout.work_dir
    run_dir = layout.run_dir(cfg.train.run_name)
    bundle_dir = layout.bundle_dir(cfg.train.run_name)
    if fresh:
        for p in (work, run_dir, bundle_dir):
            shutil.rmtree(p, ignore_errors=True)
    conf = layout.workflow_dir / "config.yaml"
    roots = resolve_data_roots(cfg, data)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"roots": roots})})
    save_config(cfg, conf)
    common = ["--config", str(conf)]
    manifest = layout.manifest_file
    split = layout.split_file
    timings: dict[str, float] = {}
    timings["import"] = _stage("import", ["data", "import", *roots, "--out", str(manifest), *common], manifest)
    timings["audit"] = _stage("audit", ["data", "audit", str(manifest), *common], layout.audit_dir / "audit.json")
    timings["split"] = _stage("split", ["data", "split", str(manifest), "--out", str(split), *common], split)
    timings["preprocess"] = _stage(
        "preprocess", ["preprocess", "--manifest", str(manifest), "--split", str(split), *common]
    )
    finished = (run_dir / "run.json").is_file()
    timings["train"] = _stage(
        "train",
        ["train", "--split", str(split), *(["--resume"] if run_dir.exists() else []), *common],
        run_dir / "run.json" if finished else None,
    )
    timings["evaluate"] = _stage(
        "evaluate", ["evaluate", str(run_dir), "--split", "test", *common], run_dir / "reports" / "summary.json"
    )
    timings["export"] = _stage(
        "export", ["export", str(run_dir), "--out", str(bundle_dir), *common], bundle_dir / "card.json"
    )
    examples = held_out_examples(split, n_predict)
    out = layout.workflow_dir / "predictions.json"
    timings["predict"] = _stage(
        "predict", ["predict", str(bundle_dir), *examples, "--format", "json", "--out", str(out), *common]
    )
    t0 = time.perf_counter()
    check = verify_bundle(bundle_dir, split, run_dir, layout.workflow_dir / "bundle_check.json")
    timings["verify"] = time.perf_counter() - t0
    report_file = run_dir / "report.html"
    timings["report"] = _stage(
        "report", ["report", str(run_dir), "--bundle", str(bundle_dir), "--out", str(report_file), *common]
    )
    summary = {
        "run": str(run_dir),
        "bundle": str(bundle_dir),
        "predictions": str(out),
        "bundle_check": check,
        "report": str(report_file),
        "stage_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    report = run_dir / "reports" / "summary.json"
    if report.is_file():
        summary["evaluation"] = json.loads(report.read_text())
    return summary


def verify_bundle(bundle_dir: Path, split_file: Path, run_dir: Path, out: Path) -> dict:
    """Run the exported bundle (ONNX Runtime, the deployed path) on the whole test split and compare its
    accuracy and per-image predictions with what ``brainmri evaluate`` reported from the run."""
    import pandas as pd

    from brainmri import load_bundle
    from brainmri.data.manifest import read_manifest
    from brainmri.data.split import read_split, split_frame
    from brainmri.utils import atomic_write_json

    split = read_split(split_file)
    test = split_frame(read_manifest(split["manifest"]), split, "test")
    with load_bundle(bundle_dir) as predictor:
        preds = predictor.predict(list(test["path"]))
    bundle_labels = [p.label for p in preds]
    evaluated = pd.read_csv(run_dir / "reports" / "predictions.csv").set_index("path")["prediction"]
    disagree = [path for path, lab in zip(test["path"], bundle_labels, strict=True) if evaluated.get(path) != lab]
    summary = json.loads((run_dir / "reports" / "summary.json").read_text())
    reported = summary.get("accuracy")
    reported = reported.get("value") if isinstance(reported, dict) else reported
    check = {
        "bundle": bundle_dir.name,
        "bundle_card_sha256": predictor.bundle.card_sha256,
        "n_test": len(test),
        "bundle_accuracy": float((test["label"].to_numpy() == pd.Series(bundle_labels).to_numpy()).mean()),
        "evaluation_accuracy": reported,
        "predictions_differing_from_evaluation": len(disagree),
        "examples_differing": disagree[:10],
        "runtime": "onnxruntime",
    }
    atomic_write_json(out, check)
    print(
        f"[pipeline] bundle check: accuracy {check['bundle_accuracy']:.4f} on {len(test)} test images "
        f"(evaluation reported {reported}); {len(disagree)} predictions differ -> {out}"
    )
    return check


def held_out_examples(split_file: Path, n: int) -> list[str]:
    """A few test-split images (one per class first), by path."""
    from brainmri.data.manifest import read_manifest
    from brainmri.data.split import read_split, split_frame

    split = read_split(split_file)
    test = split_frame(read_manifest(split["manifest"]), split, "test")
    if test.empty:
        raise DataError(f"{split_file}: the test split is empty; nothing to predict")
    picked = test.groupby("label", sort=True).head(max(1, n // max(1, test["label"].nunique())))
    return list(picked["path"].head(n))


def _pipeline(cfg: Config, args: argparse.Namespace) -> int:
    summary = run_pipeline(cfg, args.data, args.fresh, args.n_predict)
    print(json.dumps(summary, indent=2))
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("pipeline", parents=[common], help="the whole chain on real data (the README's main job)")
    p.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="PATH",
        help="data root (repeatable); default $BRAINMRI_DATA, ../shared/data/brain-tumor-mri, kagglehub",
    )
    p.add_argument("--fresh", action="store_true", help="recompute every stage")
    p.add_argument("--n-predict", type=int, default=8, help="held-out test images to predict at the end")
    p.set_defaults(handler=_pipeline)
