"""Small shared helpers: atomic writes, hashing, progress bars, torch runtime setup."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    Why: an interrupted run must never leave a half-written manifest, cache image or bundle file
    that a later run would trust.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def replace_dir(tmp: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Move the finished folder ``tmp`` to ``out``, replacing what is there only once ``tmp`` is complete.

    The old folder is renamed aside first and removed last, so an interruption leaves either the old or
    the new folder in place (plus at most a hidden ``.<name>.old-<pid>`` to delete), never a half-written one.
    """
    import shutil

    tmp, out = Path(tmp), Path(out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space), cut to ``limit`` chars.

    Why: error reasons go into CSV cells, JSON fields and one-line CLI messages.
    """
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def file_digest(path: str | os.PathLike[str], algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, disable: bool | None = None, leave: bool = False
) -> Iterable[T]:
    """tqdm progress bar on stderr; quiet when BRAINMRI_NO_PROGRESS=1 (tests). ``leave=True`` keeps the
    finished bar on screen (long steps: its rate and duration stay readable)."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = os.environ.get("BRAINMRI_NO_PROGRESS") == "1"
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, leave=leave)


def setup_torch(threads: int | None = None) -> None:
    """Process-wide torch settings every entry point needs.

    ``set_flush_denormal(True)``: without it EfficientNet(V2) inference is ~35x slower on these CPUs
    because denormal floats hit a microcode slow path.
    """
    import torch

    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


def machine_facts() -> dict[str, Any]:
    """Cores, platform and library versions, stored with every benchmark result."""
    import platform
    from importlib import metadata

    versions = {}
    for pkg in (
        "brainmri",
        "numpy",
        "torch",
        "timm",
        "lightning",
        "onnxruntime",
        "opencv-python-headless",
        "SimpleITK",
        "scikit-learn",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": _cpu_model(),
        "cpu_capability": _torch_cpu_capability(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _cpu_model() -> str | None:
    """The CPU's model name (Linux ``/proc/cpuinfo``; None elsewhere): timings differ by CPU, not only by cores."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _torch_cpu_capability() -> str | None:
    """The vector instruction set torch's CPU kernels dispatch to (e.g. AVX2, AVX512).

    Why it is recorded: training with one seed on one commit repeats bit for bit on one machine, while kernels
    for another instruction set may round differently, one suspect when a retrain elsewhere does not replay
    (docs/robustness.md). None where torch is not installed (the inference-only install)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.backends.cpu.get_cpu_capability()
