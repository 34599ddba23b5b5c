"""``brainmri export RUN [--out bundles/NAME]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainmri.config import Config
from brainmri.layout import Layout


def _export(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.bundle import Bundle, export_bundle
    from brainmri.runs import Run

    run = Run.load(args.run)
    out = Path(args.out) if args.out else Layout.from_config(cfg.paths).bundle_dir(run.name)
    export_bundle(run, out)
    bundle = Bundle.load(out)
    cal = bundle.calibration
    print(f"bundle: {out}")
    print(f"card_sha256: {bundle.card_sha256}")
    if not cal["calibrated"]:
        print(f"warning: {cal['note']}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``brainmri export``."""
    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a training run to a verifiable bundle (model.onnx, model.safetensors, card.json, README.md)",
    )
    p.add_argument("run", help="training run folder (runs/NAME)")
    p.add_argument("--out", default=None, help="bundle folder (default: <paths.bundles_dir>/<run name>)")
    p.set_defaults(handler=_export)
