"""A model bundle on disk: read it only after every byte has been checked.

Layout (``bundles/<name>/``): ``model.onnx``, ``model.safetensors``, ``README.md``, ``configs/metadata.json``
(format version 2; version 1 bundles have no ``configs/``) and ``card.json``.
``card.json`` lists the sha256 and size of every other file and seals itself: its ``card_sha256`` field
is the sha256 of the card's own bytes with that field's value replaced by 64 zeros. So a changed
byte anywhere in the folder (including the card) is refused, with a :class:`BundleError` naming the
file. Hidden files and folders (``.DS_Store``, ``.gitattributes``, a hub ``.cache/``) are ignored;
any other file the card does not list is named in a :class:`BundleWarning`, not refused (it is never read).
This protects integrity (corruption, accidental edits), not authenticity: someone who can
rewrite the card can rewrite its seal too. Pin a bundle by its ``card_sha256`` (every prediction
reports it) when provenance matters.

Nothing here unpickles: the card is JSON, weights are safetensors, the graph is ONNX (protobuf).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainmri.errors import BundleError

FORMAT = "brainmri-bundle"
FORMAT_VERSION = 2
CARD_FILE = "card.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
README_FILE = "README.md"
METADATA_FILE = "configs/metadata.json"
BUNDLE_FILES = (ONNX_FILE, WEIGHTS_FILE, README_FILE, METADATA_FILE)
"""Files the card hashes; with ``card.json`` itself these are exactly the files of a bundle."""
FILES_BY_VERSION = {1: (ONNX_FILE, WEIGHTS_FILE, README_FILE), 2: BUNDLE_FILES}
"""Format 2 added ``configs/metadata.json`` (MONAI-style); version 1 bundles still load."""
ONNX_OPSET = 18
SEAL_FIELD = "card_sha256"
_ZERO_SEAL = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REQUIRED_CARD_KEYS = ("format", "format_version", "classes", "input", "preprocessing", "model", "calibration", "files")


class BundleWarning(UserWarning):
    """A bundle loaded, but something beside it deserves attention (an unexpected, unread file)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seal_card(card: dict[str, Any]) -> bytes:
    """Serialise ``card`` to JSON bytes carrying its own checksum (see module docstring)."""
    from brainmri.utils import _json_default

    body = {k: v for k, v in card.items() if k != SEAL_FIELD}
    text = json.dumps({**body, SEAL_FIELD: _ZERO_SEAL}, indent=2, default=_json_default) + "\n"
    placeholder = f'"{SEAL_FIELD}": "{_ZERO_SEAL}"'
    if text.count(placeholder) != 1:
        raise ValueError("card contains the seal placeholder more than once")
    digest = sha256_bytes(text.encode("utf-8"))
    return text.replace(placeholder, f'"{SEAL_FIELD}": "{digest}"').encode("utf-8")


def _check_seal(raw: bytes, where: Path) -> tuple[dict[str, Any], str]:
    try:
        card = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc}); the bundle was modified or is damaged") from None
    if not isinstance(card, dict):
        raise BundleError(f"{where}: expected a JSON object")
    digest = card.get(SEAL_FIELD)
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise BundleError(f"{where}: no valid '{SEAL_FIELD}' field; not a sealed bundle card (modified?)")
    needle = f'"{SEAL_FIELD}": "{digest}"'.encode()
    if raw.count(needle) != 1:
        raise BundleError(f"{where}: '{SEAL_FIELD}' field was modified")
    actual = sha256_bytes(raw.replace(needle, f'"{SEAL_FIELD}": "{_ZERO_SEAL}"'.encode()))
    if actual != digest:
        raise BundleError(f"{where}: modified after export (checksum mismatch); re-export the bundle")
    return card, digest


def unexpected_files(folder: Path, listed: tuple[str, ...]) -> list[str]:
    """Files under ``folder`` (relative, ``/``-separated) that are not ``listed`` and not hidden.

    Hidden means any path part starting with ``.``: ``.DS_Store``, ``.gitattributes``, ``.cache/`` (hub
    download caches), ``.git/``. Those are what file managers and model hubs put beside a bundle.
    """
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir() or rel in listed or any(part.startswith(".") for part in rel.split("/")):
            continue
        out.append(rel)
    return out


@dataclass
class Bundle:
    """A verified bundle folder. Build with :meth:`Bundle.load`; file bytes via :meth:`read` (re-verified)."""

    dir: Path
    card: dict[str, Any]
    card_sha256: str
    unexpected: list[str] = field(default_factory=list)
    """Files beside the bundle that the card does not list (not hidden; never read), relative paths."""

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Open ``path`` and verify the card's seal and the size and sha256 of every file it lists.

        Raises :class:`BundleError` naming the file for: a missing folder or file, a changed byte in
        any file, or a bundle format newer than this version reads. Hidden files are ignored; any other
        file the card does not list is named in a :class:`BundleWarning` and in ``unexpected``.
        """
        d = Path(path)
        if not d.is_dir():
            raise BundleError(f"{d}: bundle folder not found (export one with `brainmri export RUN`)")
        card_path = d / CARD_FILE
        if not card_path.is_file():
            raise BundleError(f"{d}: not a bundle (no {CARD_FILE})")
        card, digest = _check_seal(card_path.read_bytes(), card_path)
        if card.get("format") != FORMAT:
            raise BundleError(f"{card_path}: not a {FORMAT} card (format={card.get('format')!r})")
        version = card.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(
                f"{card_path}: bundle format version {version!r}; this brainmri reads up to {FORMAT_VERSION} (upgrade)"
            )
        missing = [k for k in _REQUIRED_CARD_KEYS if k not in card]
        if missing:
            raise BundleError(f"{card_path}: missing fields {missing}")
        files, expected = card["files"], FILES_BY_VERSION.get(version, BUNDLE_FILES)
        if not isinstance(files, dict) or sorted(files) != sorted(expected):
            raise BundleError(f"{card_path}: 'files' must list exactly {list(expected)} (format version {version})")
        bundle = cls(d, card, digest)
        for name in expected:
            bundle._verify_file(name)
        bundle.unexpected = unexpected_files(d, (*expected, CARD_FILE))
        for name in bundle.unexpected:
            warnings.warn(f"{d / name}: unexpected file in bundle (not listed in {CARD_FILE}; ignored)",
                          BundleWarning, stacklevel=2)  # fmt: skip
        return bundle

    def _expected(self, name: str) -> dict[str, Any]:
        entry = self.card["files"].get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"{self.dir / CARD_FILE}: no checksum for {name}")
        return entry

    def _verify_file(self, name: str) -> None:
        path = self.dir / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        entry = self._expected(name)
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise BundleError(f"{path}: modified after export (size {size}, card says {entry.get('bytes')})")
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        if h.hexdigest() != entry["sha256"]:
            raise BundleError(f"{path}: modified after export (sha256 mismatch)")

    def read(self, name: str) -> bytes:
        """Bytes of a bundle file, checked against the card again (what is used is what was verified)."""
        path = self.dir / name
        entry = self._expected(name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{path}: cannot read ({exc})") from None
        if sha256_bytes(data) != entry["sha256"]:
            raise BundleError(f"{path}: modified after export (sha256 mismatch)")
        return data

    # ------------------------------------------------------------------ card accessors

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.dir.name))

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def input_size(self) -> int:
        return int(self.card["input"]["size"])

    @property
    def calibration(self) -> dict[str, Any]:
        """The card's calibration section (``calibrated`` false: temperature 1, threshold 0.5, no sets)."""
        return self.card["calibration"]

    @property
    def temperature(self) -> float:
        return float(self.calibration["temperature"])

    @property
    def threshold(self) -> float | None:
        """Tumour-probability threshold; None when the classes have no ``no_tumor``."""
        t = self.calibration.get("threshold")
        return None if t is None else float(t)

    def posthoc(self):  # -> brainmri.calibrate.posthoc.PostHocCalibration | None
        """The fitted calibration (temperature, threshold, conformal), or None for an uncalibrated bundle."""
        if not self.calibration.get("calibrated"):
            return None
        from brainmri.calibrate.posthoc import PostHocCalibration

        return PostHocCalibration.from_dict(self.calibration)

    def ood(self):  # -> brainmri.calibrate.ood.OODScore | None
        """The fitted out-of-domain score on the pooled features, or None for a bundle exported without one."""
        return self._score("ood")

    def ood_blocks(self):  # -> brainmri.calibrate.ood.OODScore | None
        """The fitted low-level out-of-domain score (early-stage statistics, the graph's ``block_stats``), or None
        for a bundle exported without one (older bundles, backbones without timm's ``forward_intermediates``)."""
        return self._score("ood_blocks")

    def _score(self, key: str):
        d = self.card.get(key)
        if not d:
            return None
        from brainmri.calibrate.ood import ood_from_dict

        return ood_from_dict(d)

    def preprocessor(self):  # -> brainmri.preprocess.Preprocessor
        from brainmri.preprocess import Preprocessor

        return Preprocessor.from_dict(self.card["preprocessing"]["state"])

    def model_config(self):  # -> brainmri.config.ModelConfig
        from brainmri.config import ModelConfig

        return ModelConfig.model_validate({**self.card["model"]["config"], "weights": "none"})

    def build_torch_model(self):  # -> BrainClassifier (eval mode)
        """The torch model from ``model.safetensors`` (architecture from the card, no download, no pickle)."""
        from safetensors.torch import load as load_safetensors

        from brainmri.models import create_model

        model = create_model(self.model_config(), len(self.classes))
        try:
            model.load_state_dict(load_safetensors(self.read(WEIGHTS_FILE)), strict=True)
        except RuntimeError as exc:
            raise BundleError(f"{self.dir / WEIGHTS_FILE}: does not fit the card's model ({exc})") from None
        return model.eval()
