"""``brainmri export RUN [--out bundles/NAME]``; ``brainmri bundle info|verify BUNDLE``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
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


def _load_noting_warnings(path: str):  # -> (Bundle, list of warning lines)
    from brainmri.bundle import Bundle

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = Bundle.load(path)
    return bundle, [str(w.message) for w in caught]


def _info(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.bundle.interop import bundle_info

    bundle, notes = _load_noting_warnings(args.bundle)
    for line in notes:
        print(f"warning: {line}", file=sys.stderr)
    sys.stdout.write(json.dumps(bundle_info(bundle), indent=2) + "\n")
    return 0


def _verify(cfg: Config, args: argparse.Namespace) -> int:
    """Check every hash, the seal, and that the ONNX metadata names the bundle's weights; exit 1 if not."""
    from brainmri.bundle.interop import model_identity, read_onnx_metadata
    from brainmri.errors import BundleError

    try:
        bundle, notes = _load_noting_warnings(args.bundle)
    except BundleError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    for line in notes:
        print(f"warning: {line}", file=sys.stderr)
    identity = read_onnx_metadata(bundle.read("model.onnx")).get("model_identity")
    if identity is not None and identity != model_identity(bundle.card):
        print(f"FAILED: {bundle.dir}/model.onnx: metadata model_identity {identity} is not this bundle's weights",
              file=sys.stderr)  # fmt: skip
        return 1
    files = ", ".join(bundle.card["files"])
    print(f"ok: {bundle.dir} (format {bundle.card['format_version']}; {files}; card_sha256 {bundle.card_sha256})")
    if identity is None:
        print("note: model.onnx has no metadata_props (a format-1 bundle)")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``brainmri export`` and ``brainmri bundle info|verify``."""
    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a training run to a verifiable bundle (model.onnx, model.safetensors, card.json, README.md)",
    )
    p.add_argument("run", help="training run folder (runs/NAME)")
    p.add_argument("--out", default=None, help="bundle folder (default: <paths.bundles_dir>/<run name>)")
    p.set_defaults(handler=_export)

    group = sub.add_parser("bundle", help="inspect or verify an exported bundle")
    gsub = group.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    p = gsub.add_parser(
        "info",
        parents=[common],
        help="print what a bundle is (identity, input, outputs, calibration, ONNX/Hugging Face/MONAI metadata) "
        "as JSON, after verifying it",
    )
    p.add_argument("bundle", help="bundle folder")
    p.set_defaults(handler=_info)
    p = gsub.add_parser(
        "verify",
        parents=[common],
        help="check the seal and every file's sha256; unexpected files are named as warnings. Exit 1 if it fails",
    )
    p.add_argument("bundle", help="bundle folder")
    p.set_defaults(handler=_verify)
