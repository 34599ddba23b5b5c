"""The headless browser the browser tests drive: Debian's chromium, found once for every test module."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def chromium_path() -> str:
    """$BRAINMRI_CHROMIUM, chromium on PATH, else /usr/bin/chromium; skips the test when none exists."""
    path = os.environ.get("BRAINMRI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.skip(f"no chromium at {path} (apt-get install -y chromium, or set BRAINMRI_CHROMIUM)")
    return path
