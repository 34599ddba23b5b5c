"""Command-line entry point: ``brainmri <command> ...``.

A thin layer: parse, resolve the config, call one function per stage, print a summary. Each stage
package owns its commands in its ``cli.py`` (a ``register(subparsers)`` function), so this file only
wires them together.

Every command accepts ``--config FILE`` and ``--set key=value`` (repeatable). Command flags that
correspond to a config key are declared with :func:`add_config_flag`; a flag given on the command
line becomes a ``--set`` override, so the saved resolved config always records what was used.
User mistakes (:class:`BrainMRIError`) print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from brainmri import __version__
from brainmri.cliargs import common_parser, flag_overrides
from brainmri.config import Config, config_to_yaml, load_config
from brainmri.errors import BrainMRIError

STAGE_CLI_MODULES = (
    "brainmri.data.cli",
    "brainmri.preprocess.cli",
    "brainmri.train.cli",
    "brainmri.evaluate.cli",
    "brainmri.evaluate.external_cli",
    "brainmri.bundle.cli",
    "brainmri.infer.cli",
    "brainmri.serve.cli",
    "brainmri.report.cli",
    "brainmri.workflow",
)

# One usage example block per command, shown at the end of its --help (kept here, beside the wiring, so
# every command has one and they read alike).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "config show": ("brainmri config show --config configs/cpu-fast.yaml > resolved.yaml",),
    "data import": (
        "brainmri data import ../shared/data/brain-tumor-mri",
        "brainmri data import navoneel=../shared/data/navoneel --out work/external/navoneel/manifest.csv",
    ),
    "data download": ("brainmri data download --dataset masoudnickparvar/brain-tumor-mri-dataset",),
    "data audit": (
        "brainmri data audit work/data/manifest.csv",
        "brainmri data audit work/external/navoneel/manifest.csv --against work/data/manifest.csv",
    ),
    "data split": ("brainmri data split --folds 5 --seed 42",),
    "preprocess": (
        "brainmri preprocess --config configs/cpu-fast.yaml",
        "brainmri preprocess show scan.jpg --out steps.png",
    ),
    "train": (
        "brainmri train --config configs/cpu-fast.yaml",
        "brainmri train --config configs/gpu-full.yaml --devices 4 --name gpu-run",
        "brainmri train --config configs/cpu-fast.yaml --resume",
    ),
    "ensemble": ("brainmri ensemble runs/cpu-fast runs/cpu-fast-seed7 --out runs/cpu-fast-ens2",),
    "evaluate": (
        "brainmri evaluate runs/cpu-fast",
        "brainmri evaluate runs/cpu-fast --split work/external/navoneel/manifest.csv",
    ),
    "kfold": ("brainmri kfold --folds 5 --config configs/cpu-fast.yaml",),
    "export": ("brainmri export runs/cpu-fast --out bundles/cpu-fast",),
    "bundle info": ("brainmri bundle info bundles/cpu-fast",),
    "bundle verify": ("brainmri bundle verify bundles/cpu-fast",),
    "predict": (
        "brainmri predict bundles/cpu-fast scan.jpg",
        "brainmri predict bundles/cpu-fast scans/ --format csv --out predictions.csv --tta --gradcam overlays/",
    ),
    "serve": (
        "brainmri serve bundles/cpu-fast",
        "BRAINMRI_API_KEY=secret brainmri serve bundles/cpu-fast --host 0.0.0.0 --port 8080 --workers 2",
    ),
    "report": ("brainmri report runs/cpu-fast", "brainmri report runs/cpu-fast --out report.html --work-dir work"),
    "pipeline": ("brainmri pipeline --config configs/cpu-fast.yaml --data ../shared/data/brain-tumor-mri",),
}

Handler = Callable[[Config, argparse.Namespace], int | None]


def _config_show(cfg: Config, args: argparse.Namespace) -> int:
    sys.stdout.write(config_to_yaml(cfg))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="brainmri",
        description="Brain MRI slice classification: import, audit, split, preprocess, train, "
        "evaluate, export, predict.",
    )
    parser.add_argument("--version", action="version", version=f"brainmri {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    config_p = sub.add_parser("config", help="show the resolved config")
    config_sub = config_p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", parents=[common], help="print the resolved config as YAML")
    show.set_defaults(handler=_config_show)

    for module_name in STAGE_CLI_MODULES:
        module = importlib.import_module(module_name)
        module.register(sub, common)
    _add_examples(sub, "")
    return parser


def _add_examples(sub: argparse._SubParsersAction, prefix: str) -> None:
    """Append the ``EXAMPLES`` of every (nested) command to its help text."""
    for name, parser in sub.choices.items():
        path = f"{prefix}{name}"
        lines = EXAMPLES.get(path)
        if lines:
            parser.formatter_class = argparse.RawDescriptionHelpFormatter
            parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_examples(action, f"{path} ")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        cfg = load_config(args.config, list(args.overrides) + flag_overrides(args))
        rc = handler(cfg, args)
        return int(rc or 0)
    except BrainMRIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
