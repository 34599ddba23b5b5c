"""A second run of the released recipe against the published one: docs/results/summary_rerun.json.

    python bench/rerun_summary.py RUN BUNDLE --what "how RUN was trained" \\
        [--same-seed RELEASED_RUN AGAIN_RUN --same-seed-what "how AGAIN_RUN was trained"]

RUN is trained and evaluated (``brainmri evaluate``), BUNDLE exported from it; the bundle is run through
ONNX Runtime on the whole test split (the pipeline's own check). With ``--same-seed`` the weights of two
trainings with the released seed are compared byte for byte: whether the recipe reproduces, not only how
far two seeds land apart. The README's ``rerun`` block renders the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "summary_rerun.json"


def best_epoch_accuracy(run: Path, info: dict) -> float:
    """Validation accuracy of the epoch the run kept (``run.json`` stores only the monitored score)."""
    stage, epoch = info["best_epoch"].removeprefix("stage").split(":")
    history = json.loads((run / "history.json").read_text())
    return next(h["val_acc"] for h in history if h["stage"] == int(stage) and h["epoch"] == int(epoch))


def same_seed(released: Path, again: Path, what: str) -> dict:
    from brainmri.utils import file_digest

    a, b = (file_digest(d / "model.safetensors", "sha256") for d in (released, again))
    return {"what": what, "released": released.name, "again": again.name, "sha256": a, "sha256_again": b,
            "weights_identical": a == b}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--what", required=True, help="how RUN was trained (quoted in the README)")
    ap.add_argument("--same-seed", nargs=2, type=Path, metavar=("RELEASED", "AGAIN"))
    ap.add_argument("--same-seed-what", default="a second training with the released seed")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    from brainmri.utils import atomic_write_json
    from brainmri.workflow import verify_bundle

    info = json.loads((args.run / "run.json").read_text())
    check_file = args.out.with_name("bundle_check_rerun.json")
    check = verify_bundle(args.bundle, Path(info["split_file"]), args.run, check_file)
    keys = ("wall_seconds", "stage1_seconds", "best_epoch", "best_score", "monitor", "n_train", "n_val")
    result = {
        "what": args.what,
        "train": {k: info[k] for k in keys} | {"best_val_acc": best_epoch_accuracy(args.run, info)},
        "bundle_check": check["bundle_accuracy"],
        "test": json.loads((args.run / "reports" / "summary.json").read_text()),
    }
    if args.same_seed:
        result["reproduction"] = same_seed(*args.same_seed, args.same_seed_what)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
