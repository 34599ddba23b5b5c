"""The one preprocessing pipeline every path runs: cache building, training, evaluation, predict, API.

``Preprocessor(array) -> uint8 (size, size)``. That uint8 image is exactly what the cache stores and
what inference feeds the model, so training and deployed inputs are identical bit for bit (the
reference project skipped preprocessing at inference, so deployed predictions saw other inputs than
training). The only learnt state is the Nyúl standard histogram, fitted on the training split and
saved with the configuration in one JSON file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.config import PreprocessConfig
from brainmri.errors import BrainMRIError, NotFittedError
from brainmri.io.pixels import to_uint8
from brainmri.preprocess.base import Slice, Step
from brainmri.preprocess.bias import FastBiasCorrection, N4BiasCorrection
from brainmri.preprocess.clahe import Clahe
from brainmri.preprocess.crop import BrainCrop
from brainmri.preprocess.intensity import ToUnitRange
from brainmri.preprocess.nyul import NyulStandardizer
from brainmri.preprocess.presets import resolve_preset
from brainmri.preprocess.resize import LimitSize, ResizePad
from brainmri.preprocess.skull import SkullStrip
from brainmri.utils import atomic_write_json

#: Bump when any step's algorithm changes output pixels: it is part of the config hash (cache key) and
#: a saved preprocessor from another version is refused rather than silently producing other inputs.
PIPELINE_VERSION = 1
FORMAT = "brainmri-preprocessor"


class Preprocessor:
    """Compose the steps of a (preset-resolved) :class:`PreprocessConfig`.

    Order: grayscale float in [0, 1] -> brain-region crop -> working-size cap -> bias correction
    (``n4`` | ``n4_fast``) -> skull strip -> Nyúl standardisation -> CLAHE -> resize + pad -> uint8.
    Disabled steps are skipped. Deterministic (single-threaded N4, no randomness).
    """

    def __init__(self, config: PreprocessConfig, nyul_state: dict[str, Any] | None = None) -> None:
        self.preset = config.preset
        self.config = resolve_preset(config)
        c = self.config
        steps: list[Step] = [ToUnitRange(c.scale_method, *c.scale_percentiles)]
        if c.crop.enabled:
            steps.append(BrainCrop(c.crop.threshold, c.crop.margin))
        intensity_steps = c.bias.method != "none" or c.skull.enabled or c.nyul.enabled or c.clahe.enabled
        if intensity_steps and c.work_size > 0:
            steps.append(LimitSize(max(c.work_size, c.size)))
        if c.bias.method == "n4":
            b = c.bias
            steps.append(
                N4BiasCorrection(
                    b.shrink, b.iterations, b.fitting_levels, b.control_points, b.convergence, c.crop.threshold
                )
            )
        elif c.bias.method == "n4_fast":
            steps.append(FastBiasCorrection(c.bias.sigma, c.bias.grid, c.crop.threshold))
        if c.skull.enabled:
            k = c.skull
            steps.append(SkullStrip(k.min_fraction, k.erode, k.margin, k.zero_outside, c.crop.threshold))
        self.nyul: NyulStandardizer | None = None
        if c.nyul.enabled:
            self.nyul = NyulStandardizer(c.nyul.percentiles, c.nyul.scale_min, c.nyul.scale_max)
            if nyul_state is not None:
                self.nyul = NyulStandardizer.from_dict(nyul_state)
            steps.append(self.nyul)
        if c.clahe.enabled:
            steps.append(Clahe(c.clahe.clip_limit, c.clahe.tiles))
        steps.append(ResizePad(c.size))
        self.steps = steps

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, cfg: PreprocessConfig) -> Preprocessor:
        """From the ``preprocess`` section of the config (``cfg.preprocess``)."""
        return cls(cfg)

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def needs_fit(self) -> bool:
        """True when a step learns from training data (Nyúl standardisation is enabled)."""
        return self.nyul is not None

    @property
    def is_fitted(self) -> bool:
        return self.nyul is None or self.nyul.is_fitted

    def config_hash(self) -> str:
        """16 hex chars identifying what changes output pixels (resolved steps + pipeline version)."""
        return config_hash(self.config)

    # ------------------------------------------------------------------------------------- fit
    def _prefix(self) -> list[Step]:
        """The steps before Nyúl (their output is what the landmarks are measured on)."""
        if self.nyul is None:
            return self.steps
        return self.steps[: self.steps.index(self.nyul)]

    def landmarks(self, array: np.ndarray) -> np.ndarray:
        """Nyúl landmarks of one raw image (runs the steps before Nyúl); for parallel fitting."""
        if self.nyul is None:
            raise ValueError("Nyúl standardisation is disabled in this preprocessor")
        s = Slice(array)
        for step in self._prefix():
            s = step(s)
        return self.nyul.landmarks(s.image, s.region())

    def fit_landmarks(self, landmarks: Iterable[np.ndarray]) -> Preprocessor:
        if self.nyul is not None:
            self.nyul.fit_landmarks(landmarks)
        return self

    def fit(self, images: Iterable[np.ndarray]) -> Preprocessor:
        """Learn the Nyúl standard landmarks from raw training images (float32 2D); a no-op otherwise."""
        if self.nyul is None:
            return self
        return self.fit_landmarks(self.landmarks(a) for a in images)

    # ------------------------------------------------------------------------------------- apply
    def run(
        self, array: np.ndarray, trace: bool = False, final_masks: bool = True
    ) -> tuple[np.ndarray, Slice, list[tuple[str, np.ndarray]]]:
        """(uint8 output, final slice with per-step info, [(step name, image after it)] when tracing).

        ``final_masks=False`` drops the masks before the last step (resize + pad), which only maps them
        to the output grid: ``__call__`` does not return them, so it skips that work (same pixels).
        """
        if not self.is_fitted:
            raise NotFittedError(
                "this preprocessor uses Nyúl standardisation and is not fitted: call fit() on the training "
                "images or load a fitted one (Preprocessor.load)"
            )
        s = Slice(np.asarray(array), trace=trace)
        stages: list[tuple[str, np.ndarray]] = []
        last = self.steps[-1]
        for step in self.steps:
            if step is last and not final_masks and not trace:
                s.foreground = s.brain = None
            s = step(s)
            if trace:
                stages.append((step.name, s.image.copy()))
        return to_uint8(s.image, (0.0, 1.0), rounding="half_up"), s, stages

    def __call__(self, array: np.ndarray) -> np.ndarray:
        """Raw decoded image (any scale, 2D or colour) -> uint8 (size, size)."""
        return self.run(array, final_masks=False)[0]

    # ----------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "pipeline_version": PIPELINE_VERSION,
            "preset": self.preset,
            "config_hash": self.config_hash(),
            "config": self.config.model_dump(mode="json"),
            "nyul": None if self.nyul is None else self.nyul.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "preprocessor") -> Preprocessor:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BrainMRIError(f"{source}: not a brainmri preprocessor (missing format '{FORMAT}')")
        if d.get("pipeline_version") != PIPELINE_VERSION:
            raise BrainMRIError(
                f"{source}: written by preprocessing pipeline version {d.get('pipeline_version')}, this brainmri "
                f"implements version {PIPELINE_VERSION}; re-run `brainmri preprocess` (and retrain) so training "
                "and inference inputs match"
            )
        try:
            cfg = PreprocessConfig.model_validate(d["config"])
            obj = cls(cfg, nyul_state=d.get("nyul"))
        except (KeyError, ValueError, TypeError) as exc:
            raise BrainMRIError(f"{source}: invalid preprocessor state ({exc})") from None
        obj.preset = d.get("preset", obj.preset)
        if d.get("config_hash") not in (None, obj.config_hash()):
            raise BrainMRIError(f"{source}: config_hash does not match its config (file edited or corrupt)")
        return obj

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Preprocessor:
        p = Path(path)
        if not p.is_file():
            raise BrainMRIError(f"{p}: preprocessor file not found")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BrainMRIError(f"{p}: not a readable JSON preprocessor ({exc})") from None
        return cls.from_dict(d, source=str(p))

    def __repr__(self) -> str:
        names = " -> ".join(s.name for s in self.steps)
        return f"Preprocessor(preset={self.preset!r}, hash={self.config_hash()}, steps={names})"


def config_hash(cfg: PreprocessConfig) -> str:
    """Hash of the preset-resolved preprocessing config (``workers`` excluded) and the pipeline version."""
    resolved = resolve_preset(cfg)
    blob = json.dumps(
        {"pipeline_version": PIPELINE_VERSION, "config": resolved.model_dump(mode="json")}, sort_keys=True
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
