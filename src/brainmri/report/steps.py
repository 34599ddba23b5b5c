"""The preprocessing-steps figure, rendered from one real test image with the run's saved preprocessor.

Used only when the run carries no ``preprocess_steps.png``. It reads the run's ``preprocessor.json`` and
one image named by the split (the first test image in manifest order), runs
:func:`brainmri.preprocess.show.save_steps_figure` into a temporary file and inlines it; nothing is
written to the run folder. Needs matplotlib (the ``train`` extra); any failure becomes a note.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Any

from brainmri.report.html import esc, figure, not_run
from brainmri.report.sources import Inputs


def first_test_image(inp: Inputs, split: dict[str, Any]) -> tuple[str, Path] | None:
    """(id, path) of the first readable test image in manifest order, or ``None``."""
    manifest = inp.manifest_file(split)
    test = set(split.get("test") or [])
    if manifest is None or not test:
        return None
    with manifest.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("id") in test and str(row.get("readable", "true")).lower() == "true":
                path = Path(row.get("path", ""))
                if path.is_file():
                    return row["id"], path
    return None


def render_steps(inp: Inputs, max_width: int = 0) -> str:
    split = inp.json(inp.split_file)
    if not inp.preprocessor_file.is_file():
        return not_run("preprocessing figure", inp.preprocessor_file)
    found = first_test_image(inp, split) if isinstance(split, dict) else None
    if found is None:
        return not_run("preprocessing figure: no readable test image found through the split and manifest")
    image_id, path = found
    try:
        from brainmri.io import read_image
        from brainmri.preprocess import Preprocessor
        from brainmri.preprocess.show import save_steps_figure

        pre = Preprocessor.load(inp.preprocessor_file)
        array = read_image(path).array
        with tempfile.TemporaryDirectory() as tmp:
            out = save_steps_figure(pre, array, Path(tmp) / "steps.png", title=image_id)
            html = figure(out, f"every preprocessing step on one test image ({image_id}), rendered at report time "
                          "with the run's preprocessor.json", max_width)  # fmt: skip
    except Exception as exc:  # optional figure: say why it is missing, keep the report
        return (
            f'<p class="missing">Preprocessing figure could not be rendered: {esc(type(exc).__name__)}: {esc(exc)}</p>'
        )
    inp.read.append(str(path))
    return html
