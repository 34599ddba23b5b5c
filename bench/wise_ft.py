"""WiSE-FT: a run whose weights lie between its linear probe (stage 1) and its fine-tuned weights.

Usage::

    .venv/bin/python bench/wise_ft.py runs/a runs/a-wise75 --alpha 0.75
    .venv/bin/python bench/paired.py --arm single=runs/a,runs/b --arm wise75=runs/a-wise75,runs/b-wise75 ...

Why: interpolating the weights of a fine-tuned network with those of its starting point (WiSE-FT,
Wortsman et al. 2022) keeps much of the fine-tuned accuracy and recovers out-of-distribution robustness
of the start when the start is robust. Our two-stage recipe has that start: stage 1 trains the head on
the frozen ImageNet backbone (``checkpoints/stage1.safetensors``), stage 2 fine-tunes everything. Every
floating-point tensor, BatchNorm statistics included, becomes ``(1 - alpha) * stage1 + alpha * final``;
``alpha = 1`` is the fine-tuned run. The result is a new run folder (no calibration yet: run
``brainmri evaluate`` on it, or score it with ``bench/paired.py``, which uses T = 1 without one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def interpolate(start: dict, final: dict, alpha: float) -> dict:
    """``(1 - alpha) * start + alpha * final`` for floating-point tensors; others (counters) from ``final``."""
    if set(start) != set(final):
        raise SystemExit(f"stage-1 and final weights hold different tensors ({sorted(set(start) ^ set(final))[:3]})")
    return {
        k: ((1 - alpha) * start[k].float() + alpha * v.float()).to(v.dtype) if v.is_floating_point() else v
        for k, v in final.items()
    }


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO / "src"))
    from safetensors.torch import load_file

    from brainmri.runs import WEIGHTS_FILE, Run, write_run
    from brainmri.utils import replace_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a finished two-stage run folder")
    ap.add_argument("out", help="new run folder")
    ap.add_argument("--alpha", type=float, default=0.75, help="weight of the fine-tuned weights (0..1]")
    args = ap.parse_args(argv)
    if not 0 < args.alpha <= 1:
        raise SystemExit(f"--alpha {args.alpha}: must lie in (0, 1]")
    run = Run.load(args.run)
    start_file = run.dir / "checkpoints" / "stage1.safetensors"
    if not start_file.is_file():
        raise SystemExit(f"{start_file}: missing (a run without stage 1 has no linear-probe weights to start from)")
    mixed = interpolate(load_file(str(start_file)), load_file(str(run.dir / WEIGHTS_FILE)), args.alpha)
    model = run.build_model()
    model.load_state_dict(mixed)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    write_run(tmp, run.cfg, model, run.preprocessor(), classes=run.classes, split_file=run.info["split_file"],
              preprocess_dir=run.info["preprocess_dir"],
              extra={"wise_ft": {"of": str(run.dir.resolve()), "alpha": args.alpha}})  # fmt: skip
    replace_dir(tmp, out)
    print(f"wrote {out} (alpha {args.alpha} between {start_file.name} and {WEIGHTS_FILE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
