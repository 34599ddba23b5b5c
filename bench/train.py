"""Benchmark: train a recipe on the shared data and record wall time, images/s and per-epoch metrics.

    python bench/train.py                                   # CPU recipe -> bench/results/train_cpu.json
    python bench/train.py --recipe configs/gpu-full.yaml --tag gpu --set model.weights=offline ...
    python bench/train.py --from-run runs/x --set KEY=VALUE ... --out bench/results/train_x.json  # record only

Data preparation (import, split, preprocess) runs first through the pipeline's stages and is timed
separately; the training wall time is what the recipe's 30-minute aim refers to.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(ROOT / "configs" / "cpu-fast.yaml"))
    ap.add_argument("--data", default=os.environ.get("BRAINMRI_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--work", default=str(ROOT / "work" / "bench"))
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=None)
    ap.add_argument("--prep-only", action="store_true", help="import, split and preprocess, then stop")
    ap.add_argument("--skip-prep", action="store_true", help="use the prepared work folder as it is")
    ap.add_argument("--from-run", metavar="RUN", help="record a run trained already (its run.json time), train nothing")
    args = ap.parse_args()
    if args.from_run:
        from brainmri.runs import Run

        run_dir = Path(args.from_run)
        result = record(run_dir, args.recipe, args.overrides, None, Run.load(run_dir).info["wall_seconds"])
        result["recorded_from"] = str(run_dir.resolve())
        return write(result, args)

    from brainmri.cli import main as cli_main
    from brainmri.config import load_config, save_config
    from brainmri.train.trainer import train_run

    work = Path(args.work)
    overrides = [f"paths.work_dir={work}", f"paths.runs_dir={work / 'runs'}", *args.overrides]
    cfg = load_config(args.recipe, overrides)
    conf = work / "config.yaml"
    save_config(cfg, conf)
    data_root = str(Path(args.data) / "brain-tumor-mri")
    manifest, split = work / "data" / "manifest.csv", work / "data" / "split.json"
    t0 = time.perf_counter()
    stages = (
        ()
        if args.skip_prep
        else (
            (["data", "import", data_root, "--out", str(manifest)], manifest),
            (["data", "split", str(manifest), "--out", str(split)], split),
            (["preprocess", "--manifest", str(manifest), "--split", str(split)], None),
        )
    )
    for argv, done in stages:
        if (done is None or not done.exists()) and cli_main([*argv, "--config", str(conf)]) != 0:
            return 1
    prep_seconds = time.perf_counter() - t0
    if args.prep_only:
        print(f"prepared {work} in {prep_seconds:.0f} s")
        return 0

    t1 = time.perf_counter()
    run_dir = train_run(cfg, split, overwrite=True)
    return write(record(run_dir, args.recipe, args.overrides, prep_seconds, time.perf_counter() - t1), args)


def record(run_dir: Path, recipe: str, overrides: list[str], prep_seconds: float | None, train_seconds: float) -> dict:
    """The benchmark record of a trained run: time, sizes, the best epoch and every epoch's metrics."""
    from brainmri.runs import Run
    from brainmri.utils import machine_facts

    run = Run.load(run_dir)
    info, cfg = run.info, run.cfg
    history = json.loads((run_dir / "history.json").read_text())
    result = {
        "benchmark": "train",
        "recipe": Path(recipe).name,
        "overrides": overrides,
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "img_size": cfg.preprocess.size,
        "n_train": info["n_train"],
        "n_val": info["n_val"],
        "data_prep_seconds": None if prep_seconds is None else round(prep_seconds, 1),
        "train_wall_seconds": round(train_seconds, 1),
        "train_wall_minutes": round(train_seconds / 60, 2),
        "best": {"monitor": info["monitor"], "score": info["best_score"], "epoch": info["best_epoch"]},
        "best_val_acc": max(h.get("val_acc", 0.0) for h in history),
        "best_val_macro_f1": max(h.get("val_macro_f1", 0.0) for h in history),
        "epochs": history,
        "machine": machine_facts(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            result["machine"]["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return result


def write(result: dict, args: argparse.Namespace) -> int:
    from brainmri.utils import atomic_write_json

    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"train_{args.tag}.json"
    atomic_write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("epochs", "machine")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
