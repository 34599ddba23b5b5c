"""``python -m brainmri.serve BUNDLE [options]``: the same as ``brainmri serve BUNDLE [options]``.

Used by the Docker image's default command; works whether or not the ``serve`` command is registered
in the main CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brainmri.cliargs import common_parser
from brainmri.config import load_config
from brainmri.errors import BrainMRIError
from brainmri.serve.cli import register


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainmri.serve")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub, common_parser())
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.handler(load_config(args.config, list(args.overrides)), args) or 0)
    except BrainMRIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
