"""Versions: what the run and its bundle recorded, and what is installed where the report was made."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from brainmri.report.html import esc, scalar_html, table
from brainmri.report.sources import Inputs

PACKAGES = ("brainmri", "numpy", "torch", "timm", "lightning", "onnxruntime", "onnx", "opencv-python-headless",
            "SimpleITK", "scikit-learn", "safetensors", "pillow", "matplotlib")  # fmt: skip


def installed_versions(names: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        if name == "python":
            continue
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def recorded_versions(inp: Inputs) -> dict[str, dict[str, Any]]:
    """``{label: {package: version}}`` from run.json (training) and the bundle card (export)."""
    out: dict[str, dict[str, Any]] = {}
    if isinstance(inp.run.get("versions"), dict):
        out["recorded at training (run.json)"] = inp.run["versions"]
    path = inp.bundle_card_file
    card = inp.json(path) if path is not None else None
    if isinstance(card, dict) and isinstance(card.get("versions"), dict):
        out["recorded at export (bundle card.json)"] = card["versions"]
    return out


def versions_table(inp: Inputs) -> str:
    recorded = recorded_versions(inp)
    names: list[str] = ["python"]
    for versions in recorded.values():
        names += [k for k in versions if k not in names]
    names += [k for k in PACKAGES if k not in names]
    now = installed_versions(names)
    columns = {**recorded, "installed where this report was made (importlib.metadata)": now}
    rows = [[esc(n), *(scalar_html(v.get(n)) for v in columns.values())] for n in names]
    note = "" if recorded else '<p class="note">Neither the run nor a bundle recorded versions.</p>'
    return note + table(["package", *columns], rows)
