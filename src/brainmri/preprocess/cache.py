"""On-disk cache of preprocessed images: ``<out>/<config_hash>/{state.json,index.csv,images/<md5>.png}``.

Why a content-addressed cache: the key is the image's md5 (file bytes) and the hash of the resolved
preprocessing config, so re-running skips finished images, an interrupted run resumes where it
stopped (every PNG is written atomically, so a file that exists is complete), duplicates are
processed once, and changing any setting that alters pixels writes to a new folder instead of mixing
outputs. ``state.json`` is the fitted :class:`Preprocessor` (Nyúl landmarks learnt on the training
split), i.e. exactly what training stores in its run and inference applies.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.config import DataConfig, PreprocessConfig
from brainmri.errors import BrainMRIError, DataError
from brainmri.preprocess.preprocessor import Preprocessor, config_hash
from brainmri.utils import atomic_path, atomic_write_json, atomic_write_text, one_line, progress

STATE_FILE = "state.json"
INDEX_FILE = "index.csv"
IMAGES_DIR = "images"
INDEX_COLUMNS = ("id", "md5", "file", "ok", "error")


def preprocess_dir_for(cfg: PreprocessConfig, root: str | os.PathLike[str]) -> Path:
    """Cache folder of a preprocessing config: ``<root>/<config_hash>``.

    ``root`` is usually ``Layout.from_config(cfg.paths).preprocess_root`` (``<work_dir>/preprocess``).
    """
    return Path(root) / config_hash(cfg)


class PreprocessedCache:
    """Read access to one cache folder (written by :func:`build_cache` / ``brainmri preprocess``)."""

    def __init__(self, dir: str | os.PathLike[str]) -> None:
        self.dir = Path(dir)

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def index_path(self) -> Path:
        return self.dir / INDEX_FILE

    def image_path(self, md5: str) -> Path:
        return self.dir / IMAGES_DIR / f"{md5}.png"

    def has(self, md5: str) -> bool:
        return bool(md5) and self.image_path(md5).is_file()

    def index(self) -> Any:
        """index.csv as a DataFrame: ``id, md5, file, ok (bool), error``."""
        import pandas as pd

        if not self.index_path.is_file():
            raise DataError(f"{self.index_path}: no cache index; run `brainmri preprocess` first")
        df = pd.read_csv(self.index_path, dtype=str, keep_default_na=False, na_filter=False)
        missing = [c for c in INDEX_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"{self.index_path}: cache index lacks columns {', '.join(missing)}")
        df["ok"] = df["ok"].str.lower() == "true"
        return df

    def load(self, md5: str) -> np.ndarray:
        """The cached uint8 (size, size) image of a file with this md5."""
        import cv2

        path = self.image_path(md5)
        if not path.is_file():
            raise DataError(f"{path}: image {md5} is not in the preprocessing cache {self.dir}")
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.dtype != np.uint8 or image.ndim != 2:
            raise DataError(f"{path}: cached image is unreadable or not 8-bit grayscale; delete it and re-run")
        return image

    def preprocessor(self) -> Preprocessor:
        """The fitted preprocessor that produced these images."""
        return Preprocessor.load(self.state_path)


# ------------------------------------------------------------------------------------------- building


@dataclass
class CacheReport:
    dir: Path
    total: int = 0
    skipped: int = 0
    processed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    fitted_on: int = 0
    refit: bool = False


_WORKER: dict[str, Any] = {}


def _init_worker(
    state: dict[str, Any], max_pixels: int, max_bytes: int, nifti_slice: Any, single_thread: bool = True
) -> None:
    if single_thread:  # worker processes: one process per core already
        import cv2

        cv2.setNumThreads(1)
        try:  # only the n4 step uses SimpleITK; a bare machine without it can still run n4_fast chains
            import SimpleITK as sitk

            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        except ImportError:
            pass
    _WORKER["pre"] = Preprocessor.from_dict(state)
    _WORKER["read"] = {"max_pixels": max_pixels, "max_bytes": max_bytes, "nifti_slice": nifti_slice}


def _decode(path: str, md5: str) -> np.ndarray:
    """Read the file, check it still has the manifest's md5, decode it."""
    from brainmri.io.reader import read_image

    p = Path(path)
    if not p.is_file():
        raise BrainMRIError(f"{path}: file not found")
    data = p.read_bytes()
    if md5 and hashlib.md5(data).hexdigest() != md5:
        raise BrainMRIError(f"{path}: file changed since import (md5 differs from the manifest); re-run data import")
    return read_image(data, name=path, **_WORKER["read"]).array


def _process(task: tuple[str, str, str]) -> tuple[str, bool, str]:
    """(md5, ok, error): decode + preprocess + write images/<md5>.png atomically."""
    import cv2

    md5, path, out = task
    try:
        image = _WORKER["pre"](_decode(path, md5))
        with atomic_path(out) as tmp:
            if not cv2.imwrite(str(tmp), image, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
                raise OSError(f"cannot write {out}")
        return md5, True, ""
    except BrainMRIError as exc:
        return md5, False, one_line(str(exc))
    except Exception as exc:  # one bad image must not stop the run; it is listed with the reason
        return md5, False, one_line(f"preprocessing failed: {type(exc).__name__}: {exc}")


def _landmarks(task: tuple[str, str]) -> tuple[str, list[float] | None, str]:
    md5, path = task
    try:
        return md5, _WORKER["pre"].landmarks(_decode(path, md5)).tolist(), ""
    except BrainMRIError as exc:
        return md5, None, one_line(str(exc))
    except Exception as exc:
        return md5, None, one_line(f"preprocessing failed: {type(exc).__name__}: {exc}")


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _run_chunk(chunk: list[Any]) -> list[Any]:
    fn = _process if len(chunk[0]) == 3 else _landmarks
    return [fn(t) for t in chunk]


class _Runner:
    """Inline (workers <= 1) or a spawned process pool, yielding results as chunks complete."""

    def __init__(self, pre: Preprocessor, data: DataConfig, workers: int) -> None:
        self.args = (pre.to_dict(), data.max_pixels, data.max_file_bytes, data.nifti_slice)
        self.workers = workers

    def map(self, tasks: Sequence[Any], desc: str) -> Iterator[Any]:
        if not tasks:
            return
        bar = progress(range(len(tasks)), desc=desc, total=len(tasks))
        bar_iter = iter(bar)
        if self.workers <= 1:
            _init_worker(*self.args, single_thread=False)  # inline: leave this process's thread settings alone
            for t in tasks:
                yield _run_chunk([t])[0]
                next(bar_iter, None)
            return
        size = max(1, min(32, len(tasks) // (self.workers * 8) or 1))
        from concurrent.futures import as_completed

        # spawn, not fork: the parent may hold thread pools (OpenMP, ITK) that fork cannot copy safely
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=self.args) as pool:
            futures = [pool.submit(_run_chunk, c) for c in _chunks(tasks, size)]
            try:
                for fut in as_completed(futures):
                    for r in fut.result():
                        next(bar_iter, None)
                        yield r
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        if hasattr(bar, "close"):
            bar.close()


def _fit_sample(train: Any, max_images: int) -> Any:
    """Deterministic sample of at most ``max_images`` training rows (sorted by id, seeded choice)."""
    rows = train.sort_values("id", kind="stable").reset_index(drop=True)
    if len(rows) <= max_images:
        return rows
    pick = np.sort(np.random.default_rng(0).choice(len(rows), size=max_images, replace=False))
    return rows.iloc[pick].reset_index(drop=True)


def _fingerprint(md5s: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(md5s)).encode()).hexdigest()[:16]


def build_cache(
    preprocess: PreprocessConfig,
    data: DataConfig,
    manifest_path: str | os.PathLike[str],
    split_path: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    workers: int | None = None,
    log: Any = None,
    parts: Sequence[str] = ("train", "val", "test"),
) -> CacheReport:
    """Fit on the first of ``parts`` (capped), then preprocess every id of ``parts`` into the cache folder.

    ``preprocess`` is ``cfg.preprocess``; ``data`` (``cfg.data``) gives the decode limits. The folder
    is ``preprocess_dir_for(preprocess, out_root)``; the command layer saves the resolved config there.
    ``parts`` are split-part names (``train``, ``fold2:train`` ...): k-fold passes one fold's
    ``("foldK:train", "foldK:val")`` with its own ``out_root``, so Nyúl never sees the fold's validation images.
    """
    import pandas as pd

    from brainmri.data.manifest import read_manifest
    from brainmri.data.split import read_split, split_frame

    say = log or (lambda msg: print(msg, file=sys.stderr))
    manifest = read_manifest(manifest_path)
    split = read_split(split_path)
    frames = [split_frame(manifest, split, part) for part in parts]
    rows = pd.concat(frames, ignore_index=True).drop_duplicates("id").reset_index(drop=True)
    cache = PreprocessedCache(preprocess_dir_for(preprocess, out_root))
    (cache.dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    workers = preprocess.workers if workers is None else workers
    report = CacheReport(dir=cache.dir, total=len(rows))
    pre = Preprocessor.from_config(preprocess)
    fit_info: dict[str, Any] = {"needs_fit": pre.needs_fit}
    if pre.needs_fit:
        runner = _Runner(pre, data, workers)
        pre, fit_info = _fitted(pre, cache, frames[0], runner, preprocess, (split_path, parts[0]), say, report)
        report.fitted_on = int(fit_info.get("n_images", 0))
    state = pre.to_dict()
    state["fit"] = fit_info
    atomic_write_json(cache.state_path, state)
    _process_all(rows, cache, _Runner(pre, data, workers), report)
    for id_, reason in report.failed:
        say(f"failed: {id_}: {reason}")
    return report


def _fitted(
    pre: Preprocessor,
    cache: PreprocessedCache,
    train: Any,
    runner: _Runner,
    preprocess: PreprocessConfig,
    fitted_on: tuple[str | os.PathLike[str], str],
    say: Any,
    report: CacheReport,
) -> tuple[Preprocessor, dict[str, Any]]:
    """(fitted preprocessor, fit record): the cache's state when it was fitted on the same training images,
    else Nyúl landmarks learnt from (a capped sample of) ``train``; a refit clears stale images.
    ``fitted_on``: (split file, part name) that ``train`` came from, recorded in the fit."""
    split_path, split_part = fitted_on
    sample = _fit_sample(train, preprocess.nyul.fit_max_images)
    sample = sample[sample["md5"] != ""]
    fingerprint = _fingerprint(list(sample["md5"]))
    previous = _read_state(cache)
    if previous is not None and previous.get("fit", {}).get("fingerprint") == fingerprint:
        return Preprocessor.from_dict(previous, source=str(cache.state_path)), previous["fit"]
    images = cache.dir / IMAGES_DIR
    if previous is not None or any(images.iterdir()):
        say(f"{cache.dir}: the training split changed since this cache was built: refitting, clearing images")
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(parents=True, exist_ok=True)
        report.refit = True
    landmarks, fit_failed = [], 0
    by_md5 = dict(zip(sample["md5"], sample["id"], strict=True))
    tasks = sorted(zip(sample["md5"], sample["path"], strict=True))
    results = {md5: (lm, err) for md5, lm, err in runner.map(tasks, desc="fit nyul")}
    for md5, _ in tasks:  # deterministic order, whatever order the pool finished in
        lm, err = results[md5]
        if lm is None:
            fit_failed += 1
            say(f"fit: skipped {by_md5[md5]}: {err}")
        else:
            landmarks.append(lm)
    if not landmarks:
        raise DataError(f"{split_path}: none of the {len(tasks)} training images could be read to fit Nyúl")
    pre.fit_landmarks(landmarks)
    fit_info = {
        "needs_fit": True,
        "fingerprint": fingerprint,
        "n_images": len(landmarks),
        "n_failed": fit_failed,
        "split": str(split_path),
        "split_part": split_part,
    }
    return pre, fit_info


def _process_all(rows: Any, cache: PreprocessedCache, runner: _Runner, report: CacheReport) -> None:
    """Preprocess every row's image once per md5, skipping cached ones; write index.csv even if interrupted."""
    failures: dict[str, str] = {}  # md5 or id -> reason
    todo: dict[str, str] = {}
    for id_, md5, path in zip(rows["id"], rows["md5"], rows["path"], strict=True):
        if not md5:
            failures[id_] = "no md5 in the manifest (file was unreadable at import)"
        elif cache.has(md5):
            report.skipped += 1
        elif md5 not in todo:
            todo[md5] = path
    tasks = [(md5, path, str(cache.image_path(md5))) for md5, path in sorted(todo.items())]
    try:
        for md5, ok, err in runner.map(tasks, desc="preprocess"):
            if ok:
                report.processed += 1
            else:
                failures[md5] = err
    finally:
        index_rows = []
        for id_, md5 in zip(rows["id"], rows["md5"], strict=True):
            if cache.has(md5):
                index_rows.append((id_, md5, f"{IMAGES_DIR}/{md5}.png", "true", ""))
            else:
                reason = failures.get(id_) or failures.get(md5) or "not processed (run interrupted)"
                index_rows.append((id_, md5, "", "false", reason))
                if reason != "not processed (run interrupted)":
                    report.failed.append((id_, reason))
        _write_index(cache.index_path, index_rows)


def _read_state(cache: PreprocessedCache) -> dict[str, Any] | None:
    import json

    if not cache.state_path.is_file():
        return None
    try:
        return json.loads(cache.state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_index(path: Path, rows: list[tuple[str, str, str, str, str]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(INDEX_COLUMNS)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
