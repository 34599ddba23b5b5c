"""k-fold cross-validation on the real data (``brainmri kfold``) -> bench/results/kfold.json.

Runs :func:`brainmri.evaluate.kfold.run_kfold` over the folds of a real split file, with the
preprocessing (Nyúl landmarks) fitted inside each fold on that fold's training part, and records the
summary (mean, sd, 95% t-interval over folds), each fold's numbers, how each fold's preprocessing was
fitted, the recipe and the machine. Default recipe: the CPU recipe's stage 1 only (frozen backbone,
head on cached features; ``--set train.stage2.epochs=0``) because five fine-tunings do not fit a
2-core budget; pass ``--set train.stage2.epochs=14`` (or the GPU recipe) for the full one.

    python bench/kfold.py --split ../pipe/work/data/split.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from ablation import project_of  # noqa: E402
from robustness import git_commit  # noqa: E402

STAGE1_ONLY = ["train.stage2.epochs=0"]


def fold_fit_records(out: Path, k: int) -> list[dict]:
    """How each fold's preprocessing was fitted (from the fold cache's state.json named in its run.json)."""
    records = []
    for fold in range(k):
        info = json.loads((out / f"fold{fold}" / "run.json").read_text())
        state = json.loads((Path(info["preprocess_dir"]) / "state.json").read_text())
        records.append({"fold": fold, "preprocess_dir": info["preprocess_dir"], "fit": state.get("fit")})
    return records


def main(argv: list[str] | None = None) -> int:
    from brainmri.config import load_config
    from brainmri.evaluate.kfold import run_kfold
    from brainmri.utils import atomic_write_json, machine_facts, setup_torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=REPO / "configs/cpu-fast.yaml")
    ap.add_argument("--work", type=Path, default=Path("/tmp/brainmri-kfold"))
    ap.add_argument("--set", action="append", default=None, metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/kfold.json")
    args = ap.parse_args(argv)
    split, work = args.split.resolve(), args.work.resolve()
    overrides = [*(args.set if args.set is not None else STAGE1_ONLY), f"paths.work_dir={work}"]
    overrides += [f"paths.runs_dir={work / 'runs'}", "train.run_name=kfold"]
    cfg = load_config(args.config.resolve(), overrides)
    setup_torch()
    t0 = time.perf_counter()
    os.chdir(project_of(split))
    out = run_kfold(cfg, split, reuse=True)
    summary = json.loads((out / "kfold_summary.json").read_text())
    result = {
        "benchmark": "k-fold on the real data (bench/kfold.py -> brainmri kfold)",
        "command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])]),
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": os.path.relpath(args.config.resolve(), REPO),
        "overrides": overrides[: len(overrides) - 3],
        "preprocessing": "fitted inside each fold on its training part (Nyúl landmarks never see the fold's val)",
        "fold_fits": fold_fit_records(out, summary["k"]),
        **summary,
        "seconds": round(time.perf_counter() - t0, 1),
        "load_avg": list(os.getloadavg()),
        "machine": machine_facts(),
    }
    atomic_write_json(args.out, result)
    print((out / "kfold_summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
