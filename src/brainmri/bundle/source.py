"""A sealed bundle in the place of a run, for ``brainmri validate BUNDLE DATA``.

Why: a radiology team that tries the model on its own scanner receives a bundle, not a training run, and
still needs the external-validation protocol (clinical thresholds chosen on its own calibration part,
metrics on the rest). Everything the protocol needs is in the bundle (model, preprocessor, temperature and
threshold), except the training images: removing copies of them from the site's set needs the training
split, which the card names. When that split (and its manifest) is on this machine and unchanged (same
SHA-256 as the card records), overlap is removed exactly as for a run; otherwise it is reported as not
checked, never silently assumed absent.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.bundle.sealed import CARD_FILE, Bundle


class BundleSource:
    """The parts of :class:`brainmri.runs.Run` that external validation reads, served by a bundle."""

    def __init__(self, bundle: Bundle, near_threshold: int) -> None:
        self.bundle, self.near_threshold = bundle, near_threshold
        self.dir = Path(bundle.dir)
        self.name = bundle.name
        self.classes = bundle.classes
        # A bundle made by ``brainmri adapt BUNDLE`` names the external split whose ``adapt_train`` ids it was
        # fitted on (validation then fits thresholds on the held-out ids only and refuses a leak); others none.
        adaptation = bundle.card.get("adaptation") or {}
        self.info: dict[str, Any] = {"external": adaptation["external"]} if adaptation.get("external") else {}

    @staticmethod
    def is_bundle(path: str | Path) -> bool:
        return (Path(path) / CARD_FILE).is_file()

    @classmethod
    def load(cls, path: str | Path, near_threshold: int) -> BundleSource:
        return cls(Bundle.load(path), near_threshold)

    def preprocessor(self):  # -> brainmri.preprocess.Preprocessor
        return self.bundle.preprocessor()

    def build_model(self):  # -> BrainClassifier (eval mode)
        return self.bundle.build_torch_model()

    def calibration(self) -> tuple[float, float, str]:
        """(temperature, threshold, source), as the bundle serves them."""
        t = self.bundle.threshold
        return self.bundle.temperature, (0.5 if t is None else t), f"{self.dir / CARD_FILE} (calibration)"

    def training_split(self) -> tuple[dict[str, Any] | None, str]:
        """The card's training split when it is readable here and unchanged, else None and why not."""
        from brainmri.data.split import read_split

        data = self.bundle.card.get("data") or {}
        path = data.get("split_file")
        if not path or not Path(path).is_file():
            return None, f"the training split named by the card ({path}) is not on this machine"
        if hashlib.sha256(Path(path).read_bytes()).hexdigest() != data.get("split_sha256"):
            return None, f"{path} differs from the split the bundle was trained on (SHA-256 mismatch)"
        split = read_split(path)
        if not Path(split["manifest"]).is_file():
            return None, f"the training manifest {split['manifest']} is not on this machine"
        return split, ""

    def without_training_overlap(self, frame, name: str) -> tuple[np.ndarray, dict[str, Any]]:
        from brainmri.runs import training_overlap

        split, why = self.training_split()
        if split is not None:
            return training_overlap(frame, split, self.bundle.card["data"]["split_file"], self.near_threshold, name)
        print(f"warning: {name}: overlap with the bundle's training images NOT checked: {why}")
        overlap = {
            "checked": False,
            "why_not": why,
            "n_readable": len(frame),
            "n_removed": 0,
            "n_exact": 0,
            "n_near_only": 0,
            "n_evaluated": len(frame),
            "removed_ids": [],
        }
        return np.ones(len(frame), bool), overlap


def load_source(path: str | Path, cfg: Any) -> Any:  # -> brainmri.runs.Run | BundleSource
    """A run folder, or a bundle folder (``card.json``) standing in for one (``validate`` and ``adapt`` take both)."""
    if BundleSource.is_bundle(path):
        return BundleSource.load(path, cfg.audit.near_threshold)
    from brainmri.runs import Run

    return Run.load(path)
