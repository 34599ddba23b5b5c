"""Where the report's inputs live, and reading them without ever failing the whole report.

The run folder is required (``run.json``); everything else is optional: a missing or unreadable file
makes its section say so. Default locations come from :class:`brainmri.layout.Layout`; the split file is
the one the run recorded in ``run.json`` when it still exists (that is the split the model was trained
on), else the layout's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainmri.errors import BrainMRIError
from brainmri.layout import BENCH_RESULTS_DIR, Layout
from brainmri.runs import CALIBRATION_FILE, PREPROCESSOR_FILE, RUN_JSON

DATA_CARD_FILE = "data_card.json"  # written by `brainmri data split` beside split.json
AUDIT_FILE = "audit.json"
NEAR_DUPLICATES_FIGURE = "near_duplicates.png"
BUNDLE_CARD_FILE = "card.json"
STEPS_FIGURE = "preprocess_steps.png"  # used when a run carries one (in the run folder or reports/)


@dataclass
class Inputs:
    """Resolved paths of everything the report may read, and the files it did read."""

    run_dir: Path
    run: dict[str, Any]
    layout: Layout
    results_dir: Path
    bundle_dir: Path | None
    split_file: Path
    read: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def reports_dir(self) -> Path:
        return self.run_dir / "reports"

    @property
    def name(self) -> str:
        return str(self.run.get("name", self.run_dir.name))

    def json(self, path: Path) -> Any | None:
        """Parsed JSON of ``path``, or ``None`` when missing; an unreadable file is noted, not raised."""
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.problems.append(f"{path}: could not be read as JSON ({exc})")
            return None
        self.read.append(str(path))
        return value

    def text(self, path: Path) -> str | None:
        if not path.is_file():
            return None
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(f"{path}: could not be read ({exc})")
            return None
        self.read.append(str(path))
        return value

    def run_file(self, name: str) -> Path:
        return self.run_dir / name

    @property
    def calibration_file(self) -> Path:
        return self.run_dir / CALIBRATION_FILE

    @property
    def preprocessor_file(self) -> Path:
        return self.run_dir / PREPROCESSOR_FILE

    @property
    def audit_file(self) -> Path:
        return self.layout.audit_dir / AUDIT_FILE

    @property
    def near_duplicates_figure(self) -> Path:
        return self.layout.audit_dir / NEAR_DUPLICATES_FIGURE

    @property
    def data_card_file(self) -> Path:
        return self.split_file.parent / DATA_CARD_FILE

    @property
    def bundle_card_file(self) -> Path | None:
        return self.bundle_dir / BUNDLE_CARD_FILE if self.bundle_dir is not None else None

    def manifest_file(self, split: dict[str, Any] | None) -> Path | None:
        """The manifest behind the split: the layout's when present, else the one the split names."""
        if self.layout.manifest_file.is_file():
            return self.layout.manifest_file
        named = Path(str((split or {}).get("manifest", "")))
        return named if named.name and named.is_file() else None

    def split_sha_matches(self) -> bool | None:
        """Whether the split file is the one the run was trained on (``run.json`` ``split_sha256``)."""
        expected = self.run.get("split_sha256")
        if not expected or not self.split_file.is_file():
            return None
        return hashlib.sha256(self.split_file.read_bytes()).hexdigest() == expected


def resolve_inputs(
    run_dir: str | Path,
    layout: Layout,
    results_dir: str | Path | None = None,
    bundle_dir: str | Path | None = None,
) -> Inputs:
    """Check ``run_dir`` is a run folder and find the other inputs; :class:`BrainMRIError` otherwise."""
    run = Path(run_dir)
    if not run.is_dir():
        raise BrainMRIError(f"{run}: no such folder; give a run folder (runs/<name>, written by `brainmri train`)")
    if not (run / RUN_JSON).is_file():
        raise BrainMRIError(
            f"{run}: not a run folder (no {RUN_JSON}); give the folder `brainmri train` wrote, e.g. runs/<name>"
        )
    try:
        info = json.loads((run / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BrainMRIError(f"{run / RUN_JSON}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise BrainMRIError(f"{run / RUN_JSON}: top level must be an object")
    split_file = _split_file(info, layout)
    if bundle_dir is not None:
        bundle: Path | None = Path(bundle_dir)
        if not (bundle / BUNDLE_CARD_FILE).is_file():
            raise BrainMRIError(f"{bundle}: not a bundle folder (no {BUNDLE_CARD_FILE}); see `brainmri export`")
    else:
        default = layout.bundle_dir(str(info.get("name", run.name)))
        bundle = default if (default / BUNDLE_CARD_FILE).is_file() else None
    results = Path(results_dir) if results_dir is not None else BENCH_RESULTS_DIR
    inputs = Inputs(run, info, layout, results, bundle, split_file)
    inputs.read.append(str(run / RUN_JSON))
    return inputs


def _split_file(info: dict[str, Any], layout: Layout) -> Path:
    """The layout's split file when it is the run's (same sha256), else the one ``run.json`` recorded when it
    exists, else the layout's."""
    recorded = Path(str(info.get("split_file", "")))
    candidates = [p for p in (layout.split_file, recorded) if p.name and p.is_file()]
    expected = info.get("split_sha256")
    for p in candidates:
        if expected and hashlib.sha256(p.read_bytes()).hexdigest() == expected:
            return p
    return candidates[0] if candidates else layout.split_file
