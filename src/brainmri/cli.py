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
from typing import Any

from brainmri import __version__
from brainmri.config import Config, config_to_yaml, load_config
from brainmri.errors import BrainMRIError

STAGE_CLI_MODULES = (
    "brainmri.data.cli",
    "brainmri.preprocess.cli",
    "brainmri.train.cli",
    "brainmri.evaluate.cli",
    "brainmri.bundle.cli",
    "brainmri.infer.cli",
    "brainmri.workflow",
)

_FLAG_PREFIX = "cfgflag__"

Handler = Callable[[Config, argparse.Namespace], int | None]


def common_parser() -> argparse.ArgumentParser:
    """Options every command takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", "-c", default=None, help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.stage2.epochs=3 (repeatable)",
    )
    return p


def add_config_flag(parser: argparse.ArgumentParser, flag: str, key: str, **kwargs: Any) -> None:
    """Add ``flag`` as a shortcut for ``--set key=VALUE`` (the value is validated by the config schema)."""
    dest = _FLAG_PREFIX + key.replace(".", "__")
    help_text = kwargs.pop("help", "")
    kwargs.setdefault("default", None)
    parser.add_argument(flag, dest=dest, help=f"{help_text} [config: {key}]".strip(), **kwargs)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    import json

    out = []
    for name, value in vars(args).items():
        if name.startswith(_FLAG_PREFIX) and value is not None:
            key = name[len(_FLAG_PREFIX) :].replace("__", ".")
            if isinstance(value, bool | int | float | list):
                out.append(f"{key}={json.dumps(value)}")
            else:
                out.append(f"{key}={value}")
    return out


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
    return parser


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
