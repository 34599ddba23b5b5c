"""Every default location, derived from ``cfg.paths`` — the one place a path literal may appear.

Why one module: the manifest, split file, preprocessing cache, run and bundle folders are how stages talk
to each other. When each command spelled its own ``work/data/split.json``, a changed ``paths.work_dir``
reached some stages and not others. Commands take an explicit path when given one, else ask here.

    >>> layout = Layout.from_config(cfg.paths)
    >>> layout.split_file           # <work_dir>/data/split.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.csv"
SPLIT_FILE = "split.json"
BENCH_RESULTS_DIR = Path("bench") / "results"  # benchmark results (relative to the repository root / cwd)


@dataclass(frozen=True)
class Layout:
    """The folders of one configuration: ``work_dir`` (stage outputs), ``runs_dir``, ``bundles_dir``."""

    work_dir: Path
    runs_dir: Path
    bundles_dir: Path

    @classmethod
    def from_config(cls, paths: Any) -> Layout:
        """From ``cfg.paths`` (a ``PathsConfig``)."""
        return cls(Path(paths.work_dir), Path(paths.runs_dir), Path(paths.bundles_dir))

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def manifest_file(self) -> Path:
        return self.data_dir / MANIFEST_FILE

    @property
    def split_file(self) -> Path:
        return self.data_dir / SPLIT_FILE

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def preprocess_root(self) -> Path:
        """Parent of the per-config cache folders ``<config_hash>/``."""
        return self.work_dir / "preprocess"

    def fold_preprocess_root(self, fold: int) -> Path:
        """Per-fold caches: k-fold fits the preprocessing (Nyúl landmarks) on each fold's training part."""
        return self.preprocess_root / f"fold{fold}"

    @property
    def workflow_dir(self) -> Path:
        """Where the main job keeps its resolved config and stage log."""
        return self.work_dir / "pipeline"

    def run_dir(self, name: str) -> Path:
        return self.runs_dir / name

    def kfold_dir(self, name: str) -> Path:
        return self.runs_dir / f"{name}-kfold"

    def bundle_dir(self, name: str) -> Path:
        return self.bundles_dir / name

    def validation_dir(self, bundle_name: str) -> Path:
        """``brainmri validate BUNDLE``'s reports (a bundle has no run folder to write into)."""
        return self.work_dir / "validation" / bundle_name

    def external_dir(self, name: str) -> Path:
        """Imported external sets (manifests of data not used for training)."""
        return self.work_dir / "external" / name
