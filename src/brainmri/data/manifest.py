"""Import image folders into a manifest: one row per file with label, source, hashes and decode status.

Why a manifest: every later stage (audit, split, preprocess, train, evaluate) works from this one table,
so what was imported, which files failed and why, and the hashes the duplicate audit relies on are
recorded once and can be checked later.

Layouts found under each root (folder names are matched lower-cased through ``cfg.data.class_map``):

- Kaggle: ``ROOT/Training/<class>/`` and ``ROOT/Testing/<class>/`` (``source_split`` train / test);
- plain class folders: ``ROOT/<class>/``;
- binary sets: ``ROOT/yes/`` and ``ROOT/no/`` (``yes`` maps to the label ``tumor``);
- any of these nested one level deeper (``ROOT/brain_tumor_dataset/{yes,no}``).

A file that cannot be decoded, or decodes to no usable picture (blank, all NaN, a few pixels, a strip,
a 4-D series: ``degenerate: ...``), gets ``readable=false`` and a one-line ``error``; the import goes on.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmri.config import AuditConfig, DataConfig
from brainmri.errors import DataError, ImageReadError
from brainmri.io.pixels import to_uint8
from brainmri.io.reader import is_image_file
from brainmri.utils import atomic_path, one_line, progress

MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "path",
    "label",
    "source",
    "source_split",
    "md5",
    "phash",
    "width",
    "height",
    "mode",
    "format",
    "readable",
    "error",
)

SPLIT_FOLDERS: dict[str, str] = {
    "training": "train",
    "train": "train",
    "testing": "test",
    "test": "test",
}

_IGNORED_DIRS = {"__macosx"}


@dataclass(frozen=True)
class ClassFolder:
    """A folder whose image files all carry one label."""

    path: Path
    label: str
    source_split: str


@dataclass(frozen=True)
class ImportItem:
    """One file to import (what a worker process receives)."""

    id: str
    path: str
    label: str
    source: str
    source_split: str


# --------------------------------------------------------------------------------------------- layout


def default_roots(data: DataConfig, repo_root: Path | None = None) -> list[str]:
    """Roots to import when none are given on the command line.

    Order: ``data.roots`` (``cfg.data``), then ``$BRAINMRI_DATA`` (``os.pathsep``-separated), then
    ``../shared/data/brain-tumor-mri`` when it exists.
    """
    if data.roots:
        return list(data.roots)
    env = os.environ.get("BRAINMRI_DATA", "")
    roots = [p for p in env.split(os.pathsep) if p.strip()]
    if roots:
        return roots
    base = Path.cwd() if repo_root is None else repo_root
    shared = base.parent / "shared" / "data" / "brain-tumor-mri"
    if shared.is_dir():
        return [str(shared)]
    raise DataError(
        "no data roots given: pass folders to `brainmri data import ROOT ...`, set data.roots in the config, "
        f"set BRAINMRI_DATA (paths separated by '{os.pathsep}'), or fetch a set with `brainmri data download`"
    )


def parse_root(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` -> (source name, resolved path). The name defaults to the folder name."""
    name = ""
    raw = spec
    if "=" in spec:
        left, right = spec.split("=", 1)
        if left and "/" not in left and os.sep not in left and not Path(spec).exists():
            name, raw = left, right
    path = Path(raw).expanduser()
    if not path.exists():
        raise DataError(f"{path}: data root not found")
    if not path.is_dir():
        raise DataError(f"{path}: data root is not a folder")
    path = path.resolve()
    return (name or path.name), path


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name.lower() not in _IGNORED_DIRS
    )


def _direct_images(folder: Path, extensions: Sequence[str]) -> bool:
    return any(p.is_file() and is_image_file(p, extensions) for p in folder.iterdir())


def _contains_images(folder: Path, extensions: Sequence[str]) -> bool:
    return any(any(is_image_file(Path(d) / f, extensions) for f in files) for d, _, files in os.walk(folder))


def _report_left_out(left_out: list[Path]) -> None:
    """One stderr line naming the files of class folders that are not imported, instead of skipping them."""
    if not left_out:
        return
    shown = ", ".join(str(p) for p in left_out[:5])
    more = f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
    why = "not images by content, or an extension outside data.extensions"
    print(f"data import: left out {len(left_out)} file(s) ({why}): {shown}{more}", file=sys.stderr)


def _class_folders(dirs: Iterable[Path], data: DataConfig, source_split: str) -> list[ClassFolder]:
    """Every image-holding folder in ``dirs`` must have a known class name."""
    out = []
    for d in dirs:
        if not _contains_images(d, data.extensions):
            continue
        key = d.name.lower()
        if key not in data.class_map:
            raise DataError(
                f"{d}: unknown class folder '{d.name}'; known folder names: {', '.join(sorted(data.class_map))} "
                "(add it to data.class_map in the config)"
            )
        out.append(ClassFolder(d, data.class_map[key], source_split))
    return out


def detect_layout(root: Path, data: DataConfig, _depth: int = 0) -> list[ClassFolder]:
    """Class folders under ``root`` (Kaggle Training/Testing, plain class folders, yes/no; nested once)."""
    subdirs = _subdirs(root)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_FOLDERS]
    if split_dirs:
        folders: list[ClassFolder] = []
        for d in split_dirs:
            folders.extend(_class_folders(_subdirs(d), data, SPLIT_FOLDERS[d.name.lower()]))
        folders.extend(_class_folders([d for d in subdirs if d not in split_dirs], data, ""))
        return folders
    if any(_direct_images(d, data.extensions) for d in subdirs):
        return _class_folders(subdirs, data, "")
    if _depth == 0:
        folders = []
        for d in subdirs:
            folders.extend(detect_layout(d, data, _depth + 1))
        return folders
    return []


def collect_items(roots: Sequence[str], data: DataConfig) -> list[ImportItem]:
    """All files to import under ``roots``, sorted by id. Raises DataError for layout problems."""
    items: dict[str, ImportItem] = {}
    seen_sources: dict[str, Path] = {}
    left_out: list[Path] = []
    for spec in roots:
        source, root = parse_root(spec)
        if source in seen_sources and seen_sources[source] != root:
            raise DataError(
                f"{root}: source name '{source}' is already used by {seen_sources[source]}; "
                f"name the roots, e.g. other_{source}={root}"
            )
        seen_sources[source] = root
        folders = detect_layout(root, data)
        if not folders:
            raise DataError(
                f"{root}: no class folders with images found (expected Training/<class>/, <class>/ or yes/ and no/, "
                f"with extensions {', '.join(data.extensions)})"
            )
        count = 0
        for folder in folders:
            for dirpath, dirnames, filenames in os.walk(folder.path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fname in sorted(filenames):
                    fpath = Path(dirpath) / fname
                    if not is_image_file(fpath, data.extensions):
                        if not fname.startswith("."):  # hidden files (.DS_Store) are not worth a word
                            left_out.append(fpath)
                        continue
                    rel = fpath.relative_to(root).as_posix()
                    item_id = f"{source}/{rel}"
                    items[item_id] = ImportItem(item_id, str(fpath), folder.label, source, folder.source_split)
                    count += 1
        if count == 0:
            raise DataError(f"{root}: class folders found but no files with extensions {', '.join(data.extensions)}")
    _report_left_out(left_out)
    return [items[k] for k in sorted(items)]


# --------------------------------------------------------------------------------------------- per file


def phash_hex(array: np.ndarray, hash_size: int = 8) -> str:
    """imagehash pHash of a decoded float image, as hex (16 chars for hash_size 8)."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(to_uint8(array)), hash_size=hash_size))


def process_file(item: ImportItem, hash_size: int, max_pixels: int, max_bytes: int, nifti_slice: Any) -> dict:
    """Hash and decode one file; never raises (errors become ``readable=False`` rows)."""
    from brainmri.io.reader import read_image, sniff_format

    row: dict[str, Any] = {
        "id": item.id,
        "path": item.path,
        "label": item.label,
        "source": item.source,
        "source_split": item.source_split,
        "md5": "",
        "phash": "",
        "width": None,
        "height": None,
        "mode": "",
        "format": "",
        "readable": False,
        "error": "",
    }
    path = Path(item.path)
    try:
        size = path.stat().st_size
        if size <= max_bytes:
            data = path.read_bytes()
            row["md5"] = hashlib.md5(data).hexdigest()
            row["format"] = sniff_format(data[:512], path.name) or ""
            source: bytes | Path = data
        else:
            h = hashlib.md5()
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
                    if not row["format"]:
                        row["format"] = sniff_format(block[:512], path.name) or ""
            row["md5"] = h.hexdigest()
            source = path
        loaded = read_image(source, name=item.path, max_pixels=max_pixels, max_bytes=max_bytes, nifti_slice=nifti_slice)
        row["phash"] = phash_hex(loaded.array, hash_size)
        row["width"], row["height"] = loaded.width, loaded.height
        row["mode"] = str(loaded.meta.get("mode", ""))
        row["format"] = str(loaded.meta.get("format", row["format"]))
        row["readable"] = True
    except ImageReadError as exc:
        row["error"] = one_line(f"{exc.kind}: {exc.reason}")
    except Exception as exc:  # any other failure of one file must not stop the import
        row["error"] = one_line(f"unreadable: {type(exc).__name__}: {exc}")
    return row


def _process_chunk(args: tuple[list[ImportItem], int, int, int, Any]) -> list[dict]:
    items, hash_size, max_pixels, max_bytes, nifti_slice = args
    return [process_file(it, hash_size, max_pixels, max_bytes, nifti_slice) for it in items]


def _report_error(row: dict) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"{row['path']}: {row['error']}", file=sys.stderr)


def import_files(
    items: Sequence[ImportItem],
    data: DataConfig,
    audit: AuditConfig,
    workers: int | None = None,
    chunk_size: int = 64,
) -> pd.DataFrame:
    """Hash and decode every item (process pool when workers > 1); rows sorted by id.

    ``data`` gives the decode limits and default worker count, ``audit`` the pHash size. Each
    unreadable file prints one ``path: reason`` line on stderr as it is found.
    """
    workers = data.workers if workers is None else workers
    extra = (audit.hash_size, data.max_pixels, data.max_file_bytes, data.nifti_slice)
    rows: list[dict] = []
    bar = progress(range(len(items)), desc="import", total=len(items))
    bar_iter = iter(bar)

    def _consume(chunk_rows: list[dict]) -> None:
        for row in chunk_rows:
            rows.append(row)
            if not row["readable"]:
                _report_error(row)
            next(bar_iter, None)

    chunks = [list(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            _consume(_process_chunk((chunk, *extra)))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx) as pool:
            for chunk_rows in pool.map(_process_chunk, [(c, *extra) for c in chunks]):
                _consume(chunk_rows)
    close = getattr(bar, "close", None)
    if close:
        close()
    return manifest_frame(rows)


def manifest_frame(rows: Iterable[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=list(MANIFEST_COLUMNS))
    df = df.sort_values("id", kind="stable").reset_index(drop=True)
    return _normalise_types(df)


def _normalise_types(df: pd.DataFrame) -> pd.DataFrame:
    for col in ("width", "height"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    df["readable"] = df["readable"].astype(bool)
    for col in MANIFEST_COLUMNS:
        if col not in ("width", "height", "readable"):
            df[col] = df[col].fillna("").astype(str)
    return df


def build_manifest(
    roots: Sequence[str], data: DataConfig, audit: AuditConfig, workers: int | None = None
) -> pd.DataFrame:
    """Discover files under ``roots`` and import them (see :func:`import_files`)."""
    return import_files(collect_items(roots, data), data, audit, workers=workers)


# --------------------------------------------------------------------------------------------- read / write


def write_manifest(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the manifest CSV atomically (columns in the documented order, ``readable`` as true/false)."""
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: manifest frame lacks columns {missing}")
    out = df.loc[:, list(MANIFEST_COLUMNS)].copy()
    out["readable"] = out["readable"].map(lambda v: "true" if bool(v) else "false")
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, lineterminator="\n")
    return Path(path)


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate ``manifest.csv``; DataError naming the file and the problem otherwise."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: manifest not found (create it with `brainmri data import`)")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not a valid manifest CSV ({one_line(str(exc))})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{p}: manifest lacks columns {', '.join(missing)} (expected {', '.join(MANIFEST_COLUMNS)})")
    bad = ~df["readable"].str.lower().isin(["true", "false"])
    if bad.any():
        raise DataError(
            f"{p}: column 'readable' must be true/false (row {int(bad.idxmax()) + 2}: {df['readable'][bad].iloc[0]!r})"
        )
    df["readable"] = df["readable"].str.lower() == "true"
    dup = df["id"].duplicated()
    if dup.any():
        raise DataError(f"{p}: duplicate id {df['id'][dup].iloc[0]!r}")
    if (df["id"] == "").any():
        raise DataError(f"{p}: empty id in row {int((df['id'] == '').idxmax()) + 2}")
    for col in ("width", "height"):
        num = pd.to_numeric(df[col].replace("", None), errors="coerce")
        if (num.isna() & (df[col] != "")).any():
            raise DataError(f"{p}: column '{col}' must be integers")
        df[col] = num.astype("Int64")
    return df.loc[:, list(MANIFEST_COLUMNS) + [c for c in df.columns if c not in MANIFEST_COLUMNS]]


def summary_text(df: pd.DataFrame) -> str:
    """Files per source / class / source split, and the unreadable count."""
    lines = [f"{len(df)} files, {int((~df['readable']).sum())} unreadable"]
    if len(df):
        table = (
            df.assign(source_split=df["source_split"].replace("", "-"))
            .groupby(["source", "source_split", "label"])
            .agg(files=("id", "size"), unreadable=("readable", lambda s: int((~s).sum())))
        )
        lines.append(table.to_string())
    return "\n".join(lines)
