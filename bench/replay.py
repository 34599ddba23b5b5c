"""Does a retrain replay a recorded run? Epoch by epoch, where do two trainings with one seed part?

Usage::

    .venv/bin/python bench/replay.py --reference bench/results/train_cpu.json \\
        --run today=runs/crop-s42 --run at-2668c3a=runs/replay-2668c3a --out bench/results/replay_seed42.json

The reference is a ``bench/train.py`` result (its ``epochs``: stage, epoch, train and validation loss and
accuracy per epoch) or another run directory (two same-seed runs on one machine: is training deterministic
there?); each ``--run NAME=DIR`` is a run directory, complete or stopped early, read from the
CSV logs Lightning writes per stage (``logs/csv/stage{1,2}/metrics.csv``). Floats are compared exactly:
training is deterministic on one machine and commit, so any difference at all says the arithmetic changed
(code, library or CPU kernels), and the first epoch that differs says in which stage. Why it exists: a
retrain of the released recipe scored a few hundredths away from the released numbers, and the question
"code or machine?" needs an artefact, not a scratch check. (``bench/rerun_summary.py --same-seed`` compares two
finished runs' weights byte for byte; this one also says where they part, and works on a stopped run.)
Each run's ``model.safetensors``, where it has one, is hashed, so "same weights" is in the record too::

    .venv/bin/python bench/replay.py --reference runs/det-a --run det-b=runs/det-b \\
        --out bench/results/replay_same_seed.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

FIELDS = ("train_loss", "val_loss", "val_acc")


def run_epochs(run_dir: Path) -> list[dict[str, Any]]:
    """(stage, epoch, train_loss, val_loss, val_acc) per logged epoch (Lightning logs train and val on two rows)."""
    epochs: dict[tuple[int, int], dict[str, Any]] = {}
    for stage in (1, 2):
        path = run_dir / "logs" / "csv" / f"stage{stage}" / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                rec = epochs.setdefault((stage, int(row["epoch"])), {"stage": stage, "epoch": int(row["epoch"])})
                rec.update({k: float(row[k]) for k in FIELDS if row.get(k)})
    if not epochs:
        raise SystemExit(f"{run_dir}: no logs/csv/stage*/metrics.csv (is it a brainmri run directory?)")
    return [epochs[k] for k in sorted(epochs)]


def reference_epochs(reference: Path) -> list[dict[str, Any]]:
    """The reference's epochs: a run directory's CSV logs, or a ``bench/train.py`` result's ``epochs``."""
    if reference.is_dir():
        return run_epochs(reference)
    return json.loads(reference.read_text())["epochs"]


def weights_sha256(run_dir: Path) -> str | None:
    """SHA-256 of the run's final weights (None for a run stopped before it wrote them)."""
    from brainmri.data.audit import file_sha256

    path = run_dir / "model.safetensors"
    return file_sha256(path) if path.is_file() else None


def compare(reference: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """How many leading epochs are identical to the reference in every field both logged, and the first that is not."""
    ref = {(r["stage"], r["epoch"]): r for r in reference}
    identical, first = 0, None
    for rec in epochs:
        other = ref.get((rec["stage"], rec["epoch"]))
        if other is None:
            break
        shared = [k for k in FIELDS if k in rec and k in other]
        if all(rec[k] == other[k] for k in shared):
            identical += 1
            continue
        pairs = {k: {"run": rec[k], "reference": other[k]} for k in shared}
        first = {"stage": rec["stage"], "epoch": rec["epoch"], **pairs}
        break
    return {"identical_leading_epochs": identical, "compared_epochs": len(epochs), "first_difference": first}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--reference", required=True, help="a bench/train.py result JSON (bench/results/train_cpu.json) or a run dir"
    )
    p.add_argument("--run", action="append", default=[], required=True, help="NAME=RUN_DIR (repeatable)")
    p.add_argument("--out", required=True, help="result JSON (bench/results/replay_<name>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from brainmri.utils import atomic_write_json, machine_facts

    reference = reference_epochs(Path(args.reference))
    runs = {}
    for spec in args.run:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--run {spec!r}: expected NAME=RUN_DIR")
        run_dir = Path(path)
        run_json = run_dir / "run.json"
        epochs = run_epochs(run_dir)
        runs[name] = {
            "run_dir": str(run_dir),
            "machine": json.loads(run_json.read_text()).get("machine") if run_json.is_file() else None,
            "weights_sha256": weights_sha256(run_dir),
            **compare(reference, epochs),
            "epochs": epochs,
        }
    result = {
        "benchmark": "replay of a recorded training, epoch by epoch (bench/replay.py)",
        "command": f"python bench/replay.py --reference {args.reference} " + " ".join(f"--run {r}" for r in args.run),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reference": args.reference,
        "reference_weights_sha256": weights_sha256(Path(args.reference)) if Path(args.reference).is_dir() else None,
        "runs": runs,
        "machine": machine_facts(),
    }
    atomic_write_json(Path(args.out), result)
    for name, r in runs.items():
        print(f"{name}: {r['identical_leading_epochs']} leading epochs identical; first difference:")
        print(f"  {r['first_difference']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
