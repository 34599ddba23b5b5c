"""Arguments every command shares: ``--config``, ``--set``, and flags that are shortcuts for config keys.

Kept apart from ``cli.py`` so that each stage's command module can declare its flags without importing the
top-level parser that imports it (an import cycle, and an upward import).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

_FLAG_PREFIX = "cfgflag__"


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
    if kwargs.get("action") not in ("store_true", "store_false") and "choices" not in kwargs:
        # argparse would show the internal dest (CFGFLAG__TRAIN__RUN_NAME); name the value after its key
        kwargs.setdefault("metavar", key.rsplit(".", 1)[-1].upper())
    parser.add_argument(flag, dest=dest, help=f"{help_text} [config: {key}]".strip(), **kwargs)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """``--set``-style overrides for every config flag given on the command line."""
    out = []
    for name, value in vars(args).items():
        if name.startswith(_FLAG_PREFIX) and value is not None:
            key = name[len(_FLAG_PREFIX) :].replace("__", ".")
            if isinstance(value, bool | int | float | list):
                out.append(f"{key}={json.dumps(value)}")
            else:
                out.append(f"{key}={value}")
    return out
