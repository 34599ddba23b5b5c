"""Series and volumes: a DICOM series folder or a NIfTI volume -> an ordered stack of 2D slices with provenance.

Why not SimpleITK's ``ImageSeriesReader``: it builds one 3-D image, so it needs every slice of a series to
have the same size and it sorts (GDCM) without telling what it found. Here a series must stay a list of
slices that are predicted one by one, with each slice's UIDs, and anything odd (missing slices, mixed sizes,
duplicated positions, mixed orientations) must be *reported*, never resampled away. So the headers are read
with pydicom (``stop_before_pixels``) and grouped by ``SeriesInstanceUID``; pixels are decoded later, per
slice, by :func:`brainmri.io.read_image` — exactly as a single DICOM file is decoded.

- DICOM order: by the position along the slice normal, ``ImagePositionPatient · (row × column)`` of
  ``ImageOrientationPatient``; without positions, by ``InstanceNumber`` (gaps then cannot be checked: said so).
- Gaps: a step between neighbours above 1.5× the median step is a gap (``~n`` slices missing).
- Multi-frame DICOM (``NumberOfFrames`` > 1, e.g. enhanced MR): each frame is a slice, positioned from the
  per-frame ``PlanePositionSequence`` when present; colour multi-frame files are refused.
- NIfTI: reoriented to the closest canonical (RAS) orientation; slices along the acquisition axis (header
  ``slice_dim`` when set, else the voxel axis with the largest spacing, else the axial one) or a chosen
  axis (``axial``/``coronal``/``sagittal`` or canonical 0/1/2). Axial slices are displayed exactly as
  :func:`brainmri.io.read_image` shows the middle slice. A 4-D file with several volumes needs ``volume=``.
- Blank slices (e.g. air above the head in a volume) are kept in the series but marked ``skip`` with the
  reason (they are never given to the model).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brainmri.errors import BrainMRIError, DegenerateImageError, ImageReadError, UnreadableImageError
from brainmri.io.reader import LoadedImage, check_usable, extension_of, read_image, sniff_format

GAP_FACTOR = 1.5
"""A step between neighbouring slices larger than this times the median step is reported as a gap."""
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


class SeriesError(BrainMRIError):
    """A series or volume that cannot be turned into slices (the message names the file and the problem)."""


@dataclass
class SliceInfo:
    """One slice of a series: where it came from and its place in the stack."""

    index: int
    """Position in the ordered stack (0 = lowest position along the normal)."""
    source: str
    """File path, with ``[frame k]`` or ``[axis a, slice k]`` for slices of one multi-slice file."""
    position_mm: float | None = None
    """Position along the slice normal (DICOM) or the slice axis in world coordinates (NIfTI)."""
    uids: dict[str, str | None] = field(default_factory=dict)
    """``study_instance_uid``, ``series_instance_uid``, ``sop_instance_uid`` (DICOM; empty for NIfTI)."""
    instance_number: int | None = None
    frame: int | None = None
    rows: int | None = None
    columns: int | None = None
    skip: str | None = None
    """Why the slice is not predicted (blank, unreadable), or None."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Series:
    """An ordered stack of slices. Pixels come from :meth:`load` (float32 (H, W), file scale)."""

    source: str
    kind: Literal["dicom", "dicom-multiframe", "nifti"]
    slices: list[SliceInfo]
    uids: dict[str, str | None] = field(default_factory=dict)
    """``study_instance_uid`` and ``series_instance_uid`` of the series (DICOM)."""
    description: str | None = None
    axis: str | None = None
    spacing_mm: float | None = None
    """Median step between neighbouring slice positions."""
    problems: list[str] = field(default_factory=list)
    """Missing slices, mixed sizes, duplicated positions...: reported, never repaired."""
    _pixels: Any = None  # the volume (NIfTI) or frame stack (multi-frame DICOM) in display orientation

    @property
    def label(self) -> str:
        """How the series is named in outputs: its SeriesInstanceUID, else the file."""
        return self.uids.get("series_instance_uid") or self.source

    def load(self, index: int) -> LoadedImage:
        """Pixels of slice ``index``, decoded as a single slice of this format would be."""
        info = self.slices[index]
        if self._pixels is None:
            return read_image(info.source)
        loaded = LoadedImage(np.ascontiguousarray(self._pixels[index], dtype=np.float32), {"format": self.kind})
        check_usable(loaded, info.source)
        loaded.meta.update({"height": loaded.height, "width": loaded.width})
        return loaded

    def payload(self, index: int) -> Any:
        """What a predictor decodes for slice ``index``: the file (single-frame DICOM) or the array."""
        return Path(self.slices[index].source) if self._pixels is None else self.load(index).array

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "uids": self.uids,
            "description": self.description,
            "axis": self.axis,
            "spacing_mm": self.spacing_mm,
            "n_slices": len(self.slices),
            "problems": list(self.problems),
        }


# ------------------------------------------------------------------------------------------- checks


def check_positions(positions: list[float | None]) -> tuple[float | None, list[str]]:
    """(median step, problems) of ordered slice positions: gaps, duplicated positions, missing positions."""
    if any(p is None for p in positions):
        return None, ["no ImagePositionPatient on every slice: ordered by InstanceNumber; gaps cannot be checked"]
    if len(positions) < 2:
        return None, []
    steps = np.diff(np.asarray(positions, dtype=np.float64))
    problems = []
    dup = int((np.abs(steps) < 1e-3).sum())
    if dup:
        problems.append(f"{dup} slice(s) share a position with a neighbour (two acquisitions in one series?)")
    moving = np.abs(steps[np.abs(steps) >= 1e-3])
    if moving.size == 0:
        return None, problems
    spacing = float(np.median(moving))
    for i, step in enumerate(np.abs(steps)):
        if step > GAP_FACTOR * spacing:
            missing = round(step / spacing) - 1
            problems.append(
                f"gap between slices {i} and {i + 1}: {step:.2f} mm vs median spacing {spacing:.2f} mm "
                f"(about {max(missing, 1)} slice(s) missing)"
            )
    return spacing, problems


def size_problems(slices: list[SliceInfo]) -> list[str]:
    """One line when the slices do not all have the same rows x columns (each slice is kept as it is)."""
    sizes = Counter((s.columns, s.rows) for s in slices if s.rows is not None)
    if len(sizes) <= 1:
        return []
    parts = ", ".join(f"{w}x{h} ({n} slices)" for (w, h), n in sizes.most_common())
    return [f"mixed slice sizes: {parts}; each slice is predicted at its own size, nothing is resampled"]


# ------------------------------------------------------------------------------------------- DICOM


def _header(path: Path) -> Any:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception as exc:
        raise UnreadableImageError(str(path), f"cannot read DICOM header: {type(exc).__name__}: {exc}") from None
    if "Rows" not in ds or ("SeriesInstanceUID" not in ds and "SOPInstanceUID" not in ds):
        raise UnreadableImageError(str(path), "DICOM file without an image (no Rows or UIDs): not a slice")
    return ds


def _normal(ds: Any) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    r, c = np.asarray(iop[:3], dtype=np.float64), np.asarray(iop[3:], dtype=np.float64)
    n = np.cross(r, c)
    return n / np.linalg.norm(n) if np.linalg.norm(n) > 0 else None


def _position(ds: Any, normal: np.ndarray | None) -> float | None:
    ipp = ds.get("ImagePositionPatient")
    if ipp is None or normal is None or len(ipp) != 3:
        return None
    return float(np.dot(np.asarray(ipp, dtype=np.float64), normal))


def _uids(ds: Any) -> dict[str, str | None]:
    get = lambda k: str(ds.get(k)) if ds.get(k) is not None else None  # noqa: E731
    return {
        "study_instance_uid": get("StudyInstanceUID"),
        "series_instance_uid": get("SeriesInstanceUID"),
        "sop_instance_uid": get("SOPInstanceUID"),
    }


def _dicom_series(uid: str, entries: list[tuple[Path, Any]]) -> Series:
    """One single-frame series from its (path, header) pairs, ordered along the normal."""
    normals = [_normal(ds) for _, ds in entries]
    ref = next((n for n in normals if n is not None), None)
    problems = []
    if ref is not None and any(n is None or abs(float(np.dot(n, ref))) < 0.999 for n in normals):
        problems.append("slices with different orientations (ImageOrientationPatient) in one series")
    rows = []
    for path, ds in entries:
        number = ds.get("InstanceNumber")
        rows.append((path, ds, _position(ds, ref), int(number) if number is not None else None))
    if all(r[2] is not None for r in rows):
        rows.sort(key=lambda r: (r[2], r[3] or 0, str(r[0])))
    else:
        rows.sort(key=lambda r: (r[3] if r[3] is not None else 1 << 30, str(r[0])))
    slices = [
        SliceInfo(i, str(p), pos, _uids(ds), num, None, int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))
        for i, (p, ds, pos, num) in enumerate(rows)
    ]
    spacing, pos_problems = check_positions([s.position_mm for s in slices])
    first = rows[0][1]
    return Series(
        source=str(Path(rows[0][0]).parent),
        kind="dicom",
        slices=slices,
        uids={k: v for k, v in _uids(first).items() if k != "sop_instance_uid"} | {"series_instance_uid": uid},
        description=str(first.get("SeriesDescription")) if first.get("SeriesDescription") else None,
        spacing_mm=spacing,
        problems=problems + pos_problems + size_problems(slices),
    )


def _frame_positions(ds: Any, n: int) -> list[float | None]:
    normal = _normal(ds)
    if normal is None:
        shared = ds.get("SharedFunctionalGroupsSequence")
        orient = shared[0].get("PlaneOrientationSequence") if shared else None
        normal = _normal(orient[0]) if orient else None
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    if normal is None or not groups or len(groups) != n:
        return [None] * n
    out = []
    for g in groups:
        plane = g.get("PlanePositionSequence")
        out.append(_position(plane[0], normal) if plane else None)
    return out


def read_multiframe(path: str | Path) -> Series:
    """A multi-frame DICOM file as a series of its frames (ordered by frame position when known)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    ds = pydicom.dcmread(str(path), force=True)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = np.asarray(ds.pixel_array)
    if pixels.ndim != 3 or pixels.shape[0] != n:
        raise SeriesError(f"{path}: multi-frame DICOM with pixel shape {pixels.shape}: colour frames are not supported")
    try:
        frames = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    except Exception:  # enhanced objects keep the rescale per frame; the stored values are still ordered
        frames = pixels.astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        frames = frames.max() + frames.min() - frames
    positions = _frame_positions(ds, n)
    order = list(range(n))
    if all(p is not None for p in positions):
        order.sort(key=lambda i: positions[i])
    uids = _uids(ds)
    slices = [
        SliceInfo(k, f"{path}[frame {i}]", positions[i], dict(uids), None, i, frames.shape[1], frames.shape[2])
        for k, i in enumerate(order)
    ]
    spacing, problems = check_positions([s.position_mm for s in slices])
    series_uids = {k: v for k, v in uids.items() if k != "sop_instance_uid"}
    return Series(str(path), "dicom-multiframe", slices, series_uids, None, None, spacing, problems, frames[order])


# ------------------------------------------------------------------------------------------- NIfTI


def _acquisition_axis(img: Any) -> int:
    """The voxel axis the slices were acquired along: header slice_dim, else the thickest, else axial."""
    import nibabel as nib

    _, _, slice_dim = img.header.get_dim_info()
    if slice_dim is not None:
        return int(slice_dim)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if zooms.max() > 1.2 * np.sort(zooms)[-2]:
        return int(zooms.argmax())
    ornt = nib.io_orientation(img.affine)
    return int(np.flatnonzero(ornt[:, 0] == 2)[0])  # the voxel axis that maps to inferior-superior


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A canonical (RAS) slice in display orientation (superior/anterior up), as read_image shows axial ones."""
    plane = np.take(volume, index, axis=axis)
    return np.flipud(np.asarray(plane, dtype=np.float32).T)


def read_volume(
    path: str | Path, *, axis: int | str | None = None, volume: int | None = None, max_voxels: int = 400_000_000
) -> Series:
    """A NIfTI file as a series of 2-D slices along ``axis`` (default: the acquisition axis)."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise UnreadableImageError(str(path), f"not a valid NIfTI file: {exc}") from None
    shape = img.shape
    if len(shape) < 3 or int(np.prod(shape[:3])) == 0:
        raise SeriesError(f"{path}: NIfTI of shape {shape} is not a volume (predict it as a single image)")
    if int(np.prod(shape)) > max_voxels:
        raise SeriesError(f"{path}: {int(np.prod(shape)):,} voxels, over the {max_voxels:,}-voxel limit")
    extra = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    if extra > 1 and volume is None:
        raise DegenerateImageError(
            str(path), f"{len(shape)}-D NIfTI with {extra} volumes (time series, DTI?); choose one with volume=K"
        )
    if volume is not None and not 0 <= volume < extra:
        raise SeriesError(f"{path}: volume {volume} out of range: the file has {extra} volume(s)")
    data = np.asanyarray(img.dataobj)
    data = data.reshape(*shape[:3], extra)[..., volume or 0]
    vol3 = nib.Nifti1Image(data, img.affine, img.header) if data.ndim == 3 else img
    canonical = nib.as_closest_canonical(vol3)
    if axis is None:
        acq = _acquisition_axis(vol3)
        canon_axis = int(nib.io_orientation(vol3.affine)[acq, 0])
    else:
        canon_axis = AXES[axis] if isinstance(axis, str) else int(axis)
        if canon_axis not in (0, 1, 2):
            raise SeriesError(f"{path}: axis must be axial, coronal, sagittal or 0..2, not {axis!r}")
    vox = np.asarray(canonical.dataobj, dtype=np.float32)
    name = {v: k for k, v in AXES.items()}[canon_axis]
    depth = vox.shape[canon_axis]
    step = canonical.affine[:3, canon_axis]
    unit = step / max(float(np.linalg.norm(step)), 1e-12)
    world = float(unit @ canonical.affine[:3, 3]) + float(np.linalg.norm(step)) * np.arange(depth)
    planes = np.stack([_plane(vox, canon_axis, k) for k in range(depth)])
    slices = [
        SliceInfo(k, f"{path}[{name} {k}]", float(world[k]), {}, None, None, planes.shape[1], planes.shape[2])
        for k in range(depth)
    ]
    zoom = float(abs(canonical.header.get_zooms()[canon_axis]))
    series = Series(str(path), "nifti", slices, {}, None, name, zoom, [], planes)
    if extra > 1:
        series.problems.append(f"volume {volume} of {extra} in a {len(shape)}-D file")
    return series


# ------------------------------------------------------------------------------------------- entry


def _scan(folder: Path) -> tuple[list[Path], list[Path], list[str]]:
    """(DICOM files, NIfTI files, skipped lines) under ``folder``, recursively, hidden files skipped."""
    dicoms, niftis, skipped = [], [], []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if not p.is_file() or any(part.startswith(".") for part in rel):
            continue
        try:
            with open(p, "rb") as fh:
                fmt = sniff_format(fh.read(512), p.name)
        except OSError as exc:
            skipped.append(f"{p}: {exc}")
            continue
        if fmt == "dicom":
            dicoms.append(p)
        elif fmt == "nifti" or extension_of(p.name) in (".nii", ".nii.gz"):
            niftis.append(p)
        elif fmt is not None:
            skipped.append(f"{p}: a {fmt} file is not part of a DICOM series or NIfTI volume")
        else:
            skipped.append(f"{p}: not an image file (neither DICOM nor NIfTI by content)")
    return dicoms, niftis, skipped


def find_series(
    source: str | Path, *, axis: int | str | None = None, volume: int | None = None
) -> tuple[list[Series], list[str]]:
    """Every series in ``source`` (a folder, a DICOM file, or a NIfTI file) and the files skipped, with reasons.

    A folder may hold several DICOM series (one :class:`Series` each, in SeriesInstanceUID order), multi-frame
    DICOM files and NIfTI volumes. Raises :class:`SeriesError` when there is no series at all.
    """
    source = Path(source)
    if not source.exists():
        raise SeriesError(f"{source}: not found")
    if source.is_file():
        dicoms, niftis, skipped = ([source], [], []) if _is_dicom(source) else ([], [source], [])
    else:
        dicoms, niftis, skipped = _scan(source)
    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    series: list[Series] = []
    for p in dicoms:
        try:
            ds = _header(p)
        except ImageReadError as exc:
            skipped.append(f"{exc.path}: {exc.reason}")
            continue
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            series.append(read_multiframe(p))
        else:
            groups[str(ds.get("SeriesInstanceUID") or f"<no SeriesInstanceUID: {p.parent}>")].append((p, ds))
    series[:0] = [_dicom_series(uid, entries) for uid, entries in sorted(groups.items())]
    series += [read_volume(p, axis=axis, volume=volume) for p in niftis]
    if not series:
        raise SeriesError(f"{source}: no DICOM series or NIfTI volume found" + (f" ({skipped[0]})" if skipped else ""))
    return series, skipped


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        return sniff_format(fh.read(512), path.name) == "dicom"
