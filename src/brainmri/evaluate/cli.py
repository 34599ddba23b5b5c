"""Commands of the evaluate stage (placeholder until the stage is implemented)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add this stage's commands to the top-level parser."""
