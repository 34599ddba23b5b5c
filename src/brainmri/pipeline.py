"""The main job: import -> audit -> split -> preprocess -> train -> evaluate -> export -> predict."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``pipeline`` command (implemented once every stage exists)."""
