"""An external set for validation and adaptation: import, usability checks, groups, calibration/evaluation split.

Input (``brainmri validate RUN DATA...``, ``brainmri adapt RUN --external DATA``), each DATA one of:

- a folder in any layout ``brainmri data import`` understands (binary ``yes/no`` or ``tumor/no_tumor``, 3- or
  4-class folders); when the folder holds a ``labels.csv`` with ``file,label`` columns, that file is used;
- a CSV ``file,label[,patient]`` (files relative to the CSV's folder, labels through ``data.class_map``).

Patients come from the CSV's ``patient`` column or from ``external.patients`` (a CSV ``file,patient``).

Why groups: slices of one patient, and near copies of one image, are not independent. The split keeps every
*group* (connected component of "same patient" and "exact or near duplicate (pHash distance <=
audit.near_threshold)") on one side, so a threshold chosen or a model adapted on the calibration part is judged
on patients (or images) it never saw. The split is stratified on tumour / no tumour and seeded, and saved to a
split file so that validation of the original and of the adapted model use the same evaluation part.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmri.config import Config, DataConfig
from brainmri.data.duplicates import connected_components, duplicate_graph
from brainmri.data.manifest import ImportItem, collect_items, import_files
from brainmri.errors import DataError
from brainmri.labels import NO_TUMOR, TUMOR
from brainmri.utils import atomic_write_json, one_line

SPLIT_VERSION = 1
LABELS_CSV = "labels.csv"

OverlapFn = Callable[[pd.DataFrame, str], tuple[np.ndarray, dict[str, Any]]]


@dataclass
class ExternalSet:
    """Usable external images (readable, not in the training data) with their groups and split."""

    name: str
    specs: list[str]
    frame: pd.DataFrame  # manifest columns + patient + group
    group_by: str  # "patient + near-duplicate cluster" | "near-duplicate cluster"
    overlap: dict[str, Any]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)

    def part(self, name: str) -> pd.DataFrame:
        """Rows of ``calibration``/``evaluation`` (or any id list in the split file), in split-file order."""
        ids = self.split[name]
        return self.frame.set_index("id", drop=False).loc[ids].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ reading


def set_name(specs: Sequence[str]) -> str:
    p = Path(specs[0])
    return p.parent.name if p.suffix.lower() == ".csv" else p.name


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a valid CSV ({one_line(str(exc))})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(required)}[,patient])")
    if df.empty:
        raise DataError(f"{path}: no rows")
    return df


def _canonical_label(raw: str, data: DataConfig) -> str | None:
    key = raw.strip().lower()
    if key in data.classes or key == TUMOR:
        return key
    return data.class_map.get(key)


def items_from_csv(path: Path, data: DataConfig) -> tuple[list[ImportItem], dict[str, str]]:
    """Import items of a ``file,label[,patient]`` CSV and their patients (id -> patient)."""
    df = _read_csv(path, ("file", "label"))
    source, base = path.parent.name, path.parent
    items, patients = [], {}
    for row, rec in enumerate(df.itertuples(index=False), start=2):
        label = _canonical_label(rec.label, data)
        if label is None:
            known = sorted(set(data.class_map) | set(data.classes))
            raise DataError(f"{path}: row {row}: unknown label '{rec.label}' (known: {', '.join(known)})")
        fpath = (base / rec.file).resolve() if not Path(rec.file).is_absolute() else Path(rec.file)
        if not fpath.is_file():
            raise DataError(f"{path}: row {row}: file '{rec.file}' not found ({fpath})")
        item_id = f"{source}/{Path(rec.file).as_posix()}" if not Path(rec.file).is_absolute() else str(fpath)
        items.append(ImportItem(item_id, str(fpath), label, source, ""))
        patients[item_id] = str(getattr(rec, "patient", "") or "")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise DataError(f"{path}: file '{dup}' is listed twice")
    return items, patients


def _items_of(spec: str, data: DataConfig) -> tuple[list[ImportItem], dict[str, str]]:
    p = Path(spec)
    if p.is_file() and p.suffix.lower() == ".csv":
        return items_from_csv(p.resolve(), data)
    if p.is_dir() and (p / LABELS_CSV).is_file():
        head = (p / LABELS_CSV).read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        cols = [c.strip().lower() for c in head[0].split(",")] if head else []
        if "file" in cols and "label" in cols:
            return items_from_csv((p / LABELS_CSV).resolve(), data)
    if not p.exists():
        raise DataError(f"{p}: external data not found")
    if p.is_file():
        raise DataError(f"{p}: expected a folder of images or a CSV file,label[,patient]")
    return collect_items([str(p)], data), {}


def apply_patients_csv(frame: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Set ``patient`` from a CSV ``file,patient`` (file: absolute, relative to the CSV's folder, or a file name)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: patients file not found")
    df = _read_csv(p, ("file", "patient"))
    by_path = {str((p.parent / f).resolve()): pt for f, pt in zip(df["file"], df["patient"], strict=True)}
    by_name = {Path(f).name: pt for f, pt in zip(df["file"], df["patient"], strict=True)}
    resolved = [str(Path(x).resolve()) for x in frame["path"]]
    out = frame.copy()
    out["patient"] = [
        by_path.get(r, by_name.get(Path(r).name, cur)) for r, cur in zip(resolved, frame["patient"], strict=True)
    ]
    return out


def read_external(specs: Sequence[str], cfg: Config, patients: str | None = None) -> tuple[pd.DataFrame, list]:
    """Import every file of ``specs`` (readable or not) -> (frame with ``patient``, unreadable rows)."""
    if not specs:
        raise DataError("no external data given")
    items: list[ImportItem] = []
    patient_of: dict[str, str] = {}
    for spec in specs:
        got, pts = _items_of(spec, cfg.data)
        items += got
        patient_of.update(pts)
    frame = import_files(items, cfg.data, cfg.audit)
    frame["patient"] = [patient_of.get(i, "") for i in frame["id"]]
    if patients:
        frame = apply_patients_csv(frame, patients)
    bad = frame[~frame["readable"].astype(bool)]
    unreadable = [
        {"id": i, "path": p, "error": e} for i, p, e in zip(bad["id"], bad["path"], bad["error"], strict=True)
    ]
    if unreadable and not cfg.external.skip_unreadable:
        first = unreadable[0]
        raise DataError(
            f"{first['path']}: {first['error'] or 'unreadable'} ({len(unreadable)} of {len(frame)} external files "
            "cannot be read; fix or remove them, or set external.skip_unreadable=true to leave them out)"
        )
    return frame[frame["readable"].astype(bool)].reset_index(drop=True), unreadable


# ------------------------------------------------------------------------------------------------ checks, groups


def tumour_of(labels: Sequence[str]) -> np.ndarray:
    """1 tumour (any tumour class or ``tumor``), 0 ``no_tumor``."""
    return np.array([0 if str(v) == NO_TUMOR else 1 for v in labels], dtype=np.int64)


def check_usable(frame: pd.DataFrame, name: str, min_images: int, what: str = "usable images") -> None:
    """One class only, or fewer than ``min_images`` rows: a DataError naming ``name`` (the data file or folder)."""
    n = len(frame)
    y = tumour_of(frame["label"])
    if n and y.min() == y.max():
        only = "tumour" if y[0] else "no-tumour"
        raise DataError(f"{name}: only {only} images ({n} {what}); an external validation needs both classes")
    if n < min_images:
        raise DataError(
            f"{name}: only {n} {what}; an external validation needs at least {min_images} "
            "(external.min_images) with both tumour and no-tumour slices"
        )


def group_ids(frame: pd.DataFrame, near_threshold: int) -> tuple[np.ndarray, str]:
    """Group label per row: the patient when every row has one, else components of 'same patient' plus
    exact/near-duplicate edges that touch a row without a patient.

    Patient ids are authoritative: on lgg-flair, near-black slices near the skull base of *different* patients
    lie within a few pHash bits of each other, and joining them would glue half the set into one group.
    """
    pts = frame["patient"].astype(str).to_numpy()
    known = pts != ""
    if known.all():
        return np.unique(pts, return_inverse=True)[1], "patient"
    g = duplicate_graph(frame, near_threshold)
    ii, jj = [], []
    for a, b in ((g.exact_i, g.exact_j), (g.near_i, g.near_j)):
        loose = ~known[a] | ~known[b]
        ii.append(a[loose])
        jj.append(b[loose])
    for _, idx in pd.Series(np.flatnonzero(known)).groupby(pts[known]):
        rows = idx.to_numpy()
        ii.append(rows[:-1])
        jj.append(rows[1:])
    comp = connected_components(len(frame), np.concatenate(ii), np.concatenate(jj))
    return comp, ("patient + near-duplicate cluster" if known.any() else "near-duplicate cluster")


def grouped_split(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool mask of a part holding about ``fraction`` of the rows, whole groups only, stratified on ``y``."""
    from sklearn.model_selection import StratifiedGroupKFold

    small = min(fraction, 1.0 - fraction)
    k = max(2, round(1.0 / small))
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise DataError(f"only {n_groups} independent groups (patients or duplicate clusters): cannot split them")
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    _, test_idx = next(iter(cv.split(np.zeros(len(y)), y, groups)))
    mask = np.zeros(len(y), bool)
    mask[test_idx] = True
    return mask if fraction <= 0.5 else ~mask


# ------------------------------------------------------------------------------------------------ split file


def new_split(ext: ExternalSet, cfg: Config, run_dir: str) -> dict[str, Any]:
    y = tumour_of(ext.frame["label"])
    groups = ext.frame["group"].to_numpy()
    cal = grouped_split(y, groups, cfg.external.calibration_fraction, cfg.external.seed)
    for part, mask in (("calibration", cal), ("evaluation", ~cal)):
        if len(set(y[mask])) < 2:
            raise DataError(f"{ext.name}: the {part} part has one class only; too few groups to split")
    ids = ext.frame["id"].to_numpy()
    return {
        "version": SPLIT_VERSION,
        "kind": "external",
        "name": ext.name,
        "data": list(ext.specs),
        "run": str(run_dir),
        "seed": cfg.external.seed,
        "calibration_fraction": cfg.external.calibration_fraction,
        "group_by": ext.group_by,
        "n_groups": len(np.unique(groups)),
        "near_threshold": cfg.audit.near_threshold,
        "calibration": [str(i) for i in ids[cal]],
        "evaluation": [str(i) for i in ids[~cal]],
        "overlap": ext.overlap,
        "unreadable": ext.unreadable,
    }


def read_split_file(path: str | Path, frame: pd.DataFrame) -> dict[str, Any]:
    """A saved external split, checked against the usable rows of the set it is applied to."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: external split file not found")
    try:
        split = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not a valid split file ({one_line(str(exc))})") from None
    if not isinstance(split, dict) or split.get("kind") != "external":
        raise DataError(f'{p}: not an external split file (no "kind": "external")')
    known = set(frame["id"])
    for part in ("calibration", "evaluation"):
        missing = [i for i in split.get(part, []) if i not in known]
        if missing or not split.get(part):
            raise DataError(
                f"{p}: {part} part names {len(missing)} ids this data set does not have, e.g. {missing[:1]}"
            )
    return split


def write_split_file(split: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_json(path, split)


def prepare_external(specs: Sequence[str], cfg: Config, remove_overlap: OverlapFn, run_dir: str = "") -> ExternalSet:
    """Import, drop what the training data holds, check, group and split (or reuse ``external.split_file``)."""
    frame, unreadable = read_external(specs, cfg, cfg.external.patients)
    name = set_name(specs)
    if frame.empty:
        raise DataError(f"{specs[0]}: no readable images")
    keep, overlap = remove_overlap(frame, name)
    if not keep.any():
        raise DataError(
            f"{specs[0]}: all {len(frame)} images are already in the run's training data "
            f"({overlap['n_exact']} exact, {overlap['n_near_only']} near copies); nothing external to validate on"
        )
    frame = frame[keep].reset_index(drop=True)
    check_usable(frame, str(specs[0]), cfg.external.min_images, "images left after removing the training overlap")
    groups, how = group_ids(frame, cfg.audit.near_threshold)
    frame["group"] = groups
    ext = ExternalSet(name, [str(s) for s in specs], frame, how, overlap, unreadable)
    if cfg.external.split_file:
        ext.split = read_split_file(cfg.external.split_file, frame)
    else:
        ext.split = new_split(ext, cfg, run_dir)
    return ext
