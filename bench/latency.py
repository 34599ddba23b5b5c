"""Benchmark: end-to-end inference latency and folder throughput, ONNX Runtime vs torch eager.

Usage: ``.venv/bin/python bench/latency.py [BUNDLE ...] [--sizes 224,192] [--data DIR]
[--single 60] [--folder 256] [--out bench/results/latency.json]``

- single image: ``Predictor.predict(path)`` on one real file at a time (decode -> preprocess -> model ->
  calibrated output and decision), ONNX Runtime and torch alternating file by file (both see the same
  machine load); p50/p95 over 3 rounds of ``--single`` files (each round's p50 is kept too); plus the
  p50 of each stage (decode, preprocess, model batch 1, calibration + decision) measured alone, per
  image in ``stages_per_image_ms`` (with the preprocessing thread's CPU ms, which other jobs on the
  cores do not inflate), and ``ratios``: preprocess / model, single p50 / model and folder ms per image /
  model, model = ONNX batch-1 p50 (issue 12: preprocessing should cost at most half of the model);
- folder: ``Predictor.predict(folder)`` on ``--folder`` real files (batch 32, decode + preprocess in
  ``--workers`` threads, and with none), images/s over the whole call; one folder run per round, after
  each single-image round; the best of the 3 is reported (all are kept): other jobs on the shared cores
  can only lower a throughput.

Images: ``brain-tumor-mri/Training`` under ``$BRAINMRI_SHARED_DATA`` or ``../shared/data``, taken evenly
across the four class folders (mixed sizes 150-1920 px, JPEG/PNG, gray/RGB). Without a BUNDLE argument
it exports a bundle of an *untrained* ``efficientnet_lite0`` (weights=offline) with a default-config
Preprocessor fitted on 20 of the images, once per ``--sizes`` entry (default: the default input size and
the CPU recipe's, from ``configs/cpu-fast.yaml``): latency does not depend on the weights' values; given
bundles are measured at their own size (plus the ``--sizes`` defaults only when ``--sizes`` is given).
Writes ``brainmri.utils.machine_facts()``, the load average and the git commit with the numbers.
Run it alone: it is a timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
AIM_SINGLE_P50_MS = 15.0
AIM_FOLDER_IMAGES_PER_S = 100.0
AIM_PREPROCESS_TO_MODEL = 0.5
RUNTIMES = ("onnx", "torch")
ROUNDS = 3


def git_state() -> dict[str, Any]:
    """Commit of the code measured, and which source files differed from it (other work in progress)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    changed = [line[3:] for line in git("status", "--porcelain", "src").splitlines() if line[:2].strip()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "uncommitted_changes_in": changed}


def real_images(data: Path, n: int) -> list[Path]:
    """``n`` files spread evenly over the class folders (deterministic)."""
    root = data / "brain-tumor-mri" / "Training"
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    per_class = [sorted(p for p in c.iterdir() if p.is_file()) for c in classes]
    out: list[Path] = []
    k = 0
    while len(out) < n:
        files = per_class[k % len(per_class)]
        out.append(files[(k // len(per_class) * 37) % len(files)])
        k += 1
    return out


def default_sizes() -> list[int]:
    """The default input size and the CPU recipe's (``configs/cpu-fast.yaml``)."""
    from brainmri.config import PreprocessConfig, load_config

    sizes = [PreprocessConfig().size]
    recipe = REPO / "configs" / "cpu-fast.yaml"
    if recipe.is_file():
        sizes.append(load_config(recipe).preprocess.size)
    return sorted(set(sizes), reverse=True)


def build_default_bundle(work: Path, size: int, fit_files: list[Path]) -> Path:
    """Export an untrained efficientnet_lite0 (offline weights) + default Preprocessor fitted on ``fit_files``."""
    from brainmri.bundle import export_bundle
    from brainmri.config import load_config
    from brainmri.io import read_image
    from brainmri.models import create_model
    from brainmri.preprocess import Preprocessor
    from brainmri.runs import write_run

    cfg = load_config(None, [f"preprocess.size={size}", "model.backbone=efficientnet_lite0", "model.weights=offline"])
    pre = Preprocessor.from_config(cfg.preprocess).fit([read_image(p).array for p in fit_files])
    model = create_model(cfg.model, len(cfg.data.classes)).eval()
    run_dir = work / f"run{size}"
    run = write_run(
        run_dir, cfg, model, pre, classes=cfg.data.classes, split_file=run_dir / "none", preprocess_dir=run_dir
    )
    return export_bundle(run, work / f"bundle{size}")


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "n": len(a),
    }


def time_single(predictors: dict[str, Any], files: list[Path], warmup: int = 5) -> dict[str, list[float]]:
    """End-to-end ``predict(path)`` ms per file; the runtimes alternate file by file, so both see the same load."""
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for i, p in enumerate([*files[:warmup], *files]):
        for name, predictor in predictors.items():
            t0 = time.perf_counter()
            predictor.predict(p)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000)
    return times


def time_stages(predictors: dict[str, Any], files: list[Path]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Each stage alone, per image: decode, preprocess (wall and thread CPU ms), model (batch 1) per runtime,
    calibration + decision, and their sum with the ONNX model (``total_onnx``). Returns (p50 per stage, rows)."""
    from brainmri.io import read_image

    first = next(iter(predictors.values()))
    rows: list[dict[str, Any]] = []
    for p in files:
        t0 = time.perf_counter()
        arr = read_image(p).array
        t1 = time.perf_counter()
        c1 = time.thread_time()
        x = first.preprocessor(arr)[None, None].astype(np.float32) / 255
        c2 = time.thread_time()
        t2 = time.perf_counter()
        row: dict[str, Any] = {
            "file": p.name,
            "shape": list(arr.shape),
            "decode": (t1 - t0) * 1000,
            "preprocess": (t2 - t1) * 1000,
            "preprocess_cpu": (c2 - c1) * 1000,
        }
        for name, predictor in predictors.items():
            t3 = time.perf_counter()
            logits = predictor.runtime.logits(x)
            row[f"model_{name}"] = (time.perf_counter() - t3) * 1000
        t4 = time.perf_counter()
        first.decide(first.probabilities(logits), [str(p)])
        row["calibrate_decide"] = (time.perf_counter() - t4) * 1000
        if "model_onnx" in row:
            row["total_onnx"] = row["decode"] + row["preprocess"] + row["model_onnx"] + row["calibrate_decide"]
        rows.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    keys = [k for k in rows[0] if k not in ("file", "shape")] if rows else []
    return {k: percentiles([r[k] for r in rows])["p50_ms"] for k in keys}, rows


def ratios(out: dict[str, Any]) -> dict[str, float | None]:
    """Preprocessing, single-image p50 and folder time per image, each over the ONNX model-only p50 (batch 1)."""
    stages = out["stages_p50_ms"]
    model = stages.get("model_onnx")
    if not model:
        return {}
    folder_ms = {name: 1000 / v["images_per_s"] for name, v in out["folder"].items() if v["images_per_s"] > 0}
    return {
        "model_onnx_p50_ms": model,
        "preprocess_to_model": round(stages["preprocess"] / model, 3),
        "preprocess_cpu_to_model": round(stages["preprocess_cpu"] / model, 3),
        "decode_to_model": round(stages["decode"] / model, 3),
        "single_p50_to_model": round(out["single"]["onnx"]["p50_ms"] / model, 3),
        **{f"folder_{name}_ms_per_image_to_model": round(ms / model, 3) for name, ms in folder_ms.items()},
    }


def time_folder(predictor: Any, folder: Path, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    preds = predictor.predict(folder)
    seconds = time.perf_counter() - t0
    assert len(preds) == n
    return {
        "images_per_s": round(n / seconds, 1),
        "seconds": round(seconds, 2),
        "n": n,
        "batch_size": predictor.config.batch_size,
        "workers": predictor.config.workers,
    }


def bench_bundle(bundle: Path, single_files: list[Path], folder: Path, n_folder: int, workers: int) -> dict:
    from brainmri.bundle import Bundle
    from brainmri.config import PredictConfig
    from brainmri.infer import Predictor

    card = Bundle.load(bundle).card
    out: dict[str, Any] = {
        "bundle": str(bundle),
        "size": card["input"]["size"],
        "backbone": card["model"]["config"]["backbone"],
        "preprocess_preset": card["preprocessing"]["config"].get("preset"),
        "trained_run": (card.get("training") or {}).get("run", {}).get("name"),
        "calibrated": card["calibration"]["calibrated"],
    }
    config = PredictConfig(workers=workers)
    predictors = {rt: Predictor.from_bundle(bundle, runtime=rt, config=config) for rt in RUNTIMES}
    folder_predictors = {
        **predictors,
        "onnx_no_workers": Predictor.from_bundle(bundle, config=PredictConfig(workers=0)),
    }
    out["stages_p50_ms"], out["stages_per_image_ms"] = time_stages(predictors, single_files[:30])
    for predictor in folder_predictors.values():  # warm up: threads, first batch
        predictor.predict(sorted(folder.iterdir())[: predictor.config.batch_size + 1])
    singles, folders = [], []
    for r in range(ROUNDS):  # rounds spread each measurement over time (other jobs come and go)
        print(f"  round {r + 1}/{ROUNDS}: single image, folder ...", file=sys.stderr)
        singles.append(time_single(predictors, single_files, warmup=5 if r == 0 else 0))
        folders.append({name: time_folder(p, folder, n_folder) for name, p in folder_predictors.items()})
    out["single"] = {
        name: percentiles([t for s in singles for t in s[name]])
        | {"rounds_p50_ms": [percentiles(s[name])["p50_ms"] for s in singles]}
        for name in predictors
    }
    out["folder"] = {
        name: max((f[name] for f in folders), key=lambda v: v["images_per_s"]) for name in folder_predictors
    }
    out["folder_rounds_images_per_s"] = {name: [f[name]["images_per_s"] for f in folders] for name in folder_predictors}
    for predictor in folder_predictors.values():
        predictor.close()
    out["ratios"] = ratios(out)
    out["aims_met"] = {
        "preprocess_le_half_model": out["ratios"].get("preprocess_to_model", 1e9) <= AIM_PREPROCESS_TO_MODEL,
        "single_p50_le_15ms": out["single"]["onnx"]["p50_ms"] <= AIM_SINGLE_P50_MS,
        "folder_ge_100_images_per_s": max(v["images_per_s"] for v in out["folder"].values()) >= AIM_FOLDER_IMAGES_PER_S,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("BRAINMRI_NO_PROGRESS", "1")
    from brainmri.utils import atomic_write_json, machine_facts, setup_torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="*", help="bundle folders (default: export untrained efficientnet_lite0)")
    default_data = os.environ.get("BRAINMRI_SHARED_DATA") or str(REPO.parent / "shared" / "data")
    ap.add_argument("--data", default=default_data, help="shared data folder (holds brain-tumor-mri/)")
    ap.add_argument("--sizes", default=None, help="input sizes of default bundles, comma-separated (see above)")
    ap.add_argument("--single", type=int, default=60, help="files timed one at a time")
    ap.add_argument("--folder", type=int, default=256, help="files in the folder run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode/preprocess threads")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "latency.json"))
    args = ap.parse_args(argv)

    data = Path(args.data)
    if not (data / "brain-tumor-mri" / "Training").is_dir():
        print(f"error: {data}/brain-tumor-mri/Training not found (pass --data)", file=sys.stderr)
        return 2
    setup_torch()
    files = real_images(data, max(args.single, args.folder))
    result: dict[str, Any] = {
        "benchmark": "latency",
        "data": str(data / "brain-tumor-mri" / "Training"),
        "aims": {
            "single_p50_ms": AIM_SINGLE_P50_MS,
            "folder_images_per_s": AIM_FOLDER_IMAGES_PER_S,
            "preprocess_to_model": AIM_PREPROCESS_TO_MODEL,
        },
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_facts(),
        "git": git_state(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="brainmri-bench-") as tmp:
        work = Path(tmp)
        folder = work / "folder"
        folder.mkdir()
        for i, f in enumerate(files[: args.folder]):
            (folder / f"{i:04d}_{f.name}").symlink_to(f.resolve())
        sizes = default_sizes() if args.sizes is None and not args.bundles else []
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else sizes
        defaults = []
        for size in sizes:
            print(f"exporting default bundle at {size} px ...", file=sys.stderr)
            defaults.append(build_default_bundle(work, size, files[:20]))
        for bundle in [*defaults, *map(Path, args.bundles)]:
            print(f"bundle {bundle}", file=sys.stderr)
            entry = bench_bundle(bundle, files[: args.single], folder, args.folder, args.workers)
            if bundle in defaults:
                entry["bundle"] = f"default: untrained efficientnet_lite0 (weights=offline), {entry['size']} px"
            result["runs"].append(entry)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_json(args.out, result)
    for r in result["runs"]:
        single = ", ".join(f"{k} {v['p50_ms']} ms" for k, v in r["single"].items())
        folder = ", ".join(f"{k} {v['images_per_s']} img/s" for k, v in r["folder"].items())
        print(f"{r['size']} px: single p50 {single}; folder {folder}; stages p50 {r['stages_p50_ms']}")
        print(f"  ratios to the model-only time: {r['ratios']}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
