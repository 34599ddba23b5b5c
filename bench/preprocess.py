"""Benchmark: preprocessing throughput, true-N4 cost, skull-strip reliability and bias correction on phantoms.

Usage: ``.venv/bin/python bench/preprocess.py [--data DIR] [--n 300] [--workers 2] [--skull 200]
[--out bench/results/preprocess.json]``

- ``default_chain``: images/s of decode -> default preprocessing (preset ``full``, ``n4_fast``) -> uint8 over
  ``--n`` real files (fixed seed, all four class folders) in ``--workers`` spawned processes (the same
  worker code as ``brainmri preprocess``; pool start-up and Nyúl fitting excluded and reported apart),
  plus single-process per-step milliseconds (mean wall, and median thread-CPU ms per image, which other
  jobs on shared cores do not inflate);
- ``n4``: milliseconds per 512x512 real image for the true N4 step alone (default settings), and the
  ``n4_fast`` step on the same images;
- ``skull_strip``: on ``--skull`` random real files, the fallback rate and how often the raw mask (before
  the fallback rule) covers < 30% of the head, per class;
- ``phantom_bias``: how much of the white-matter bias each method removes on the phantoms used by
  ``tests/test_preprocess_steps.py`` (and a zeroth-order Gaussian division, the reference's "N4", for scale).

Writes ``brainmri.utils.machine_facts()`` and the load average with the numbers. Run it alone: it is a timing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
AIM_IMAGES_PER_S = 80.0
AIM_N4_MS = 300.0
CLASS_DIRS = ("glioma", "meningioma", "notumor", "pituitary")


def real_files(data: Path, n: int, seed: int) -> list[Path]:
    files = sorted(p for c in CLASS_DIRS for p in (data / "brain-tumor-mri" / "Training" / c).iterdir())
    return random.Random(seed).sample(files, n)


def _run_chunk(paths: list[str]) -> list[tuple[bool, float]]:
    """Worker: decode + preprocess each file (no writing), return (ok, seconds)."""
    from brainmri.io.reader import read_image
    from brainmri.preprocess.cache import _WORKER

    out = []
    for p in paths:
        t = time.perf_counter()
        try:
            image = _WORKER["pre"](read_image(p).array)
            ok = image.dtype == np.uint8
        except Exception:
            ok = False
        out.append((ok, time.perf_counter() - t))
    return out


def _noop(_: int) -> int:
    return 0


def bench_default_chain(files: list[Path], fit_files: list[Path], workers: int) -> dict[str, Any]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from brainmri.config import PreprocessConfig
    from brainmri.io.reader import read_image
    from brainmri.preprocess import Preprocessor, Slice
    from brainmri.preprocess.cache import _init_worker

    t = time.perf_counter()
    pre = Preprocessor.from_config(PreprocessConfig()).fit(read_image(f).array for f in fit_files)
    fit_s = time.perf_counter() - t

    # single process, per step
    per_step = {s.name: 0.0 for s in pre.steps}
    cpu_ms: dict[str, list[float]] = {name: [] for name in ["decode", *per_step, "chain"]}
    decode = 0.0
    for f in files[:100]:
        t, c = time.perf_counter(), time.thread_time()
        array = read_image(f).array
        s = Slice(array)
        decode += time.perf_counter() - t
        cpu_ms["decode"].append((time.thread_time() - c) * 1000)
        for step in pre.steps:
            t, c = time.perf_counter(), time.thread_time()
            s = step(s)
            per_step[step.name] += time.perf_counter() - t
            cpu_ms[step.name].append((time.thread_time() - c) * 1000)
        c = time.thread_time()
        pre(array)  # the whole chain as the cache and inference call it
        cpu_ms["chain"].append((time.thread_time() - c) * 1000)
    k = min(100, len(files))

    ctx = mp.get_context("spawn")
    args = (pre.to_dict(), 40_000_000, 64 * 1024 * 1024, "middle")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=args) as pool:
        t = time.perf_counter()
        list(pool.map(_noop, range(workers * 4)))  # start the workers (imports) before timing
        startup = time.perf_counter() - t
        chunks = [[str(p) for p in files[i : i + 8]] for i in range(0, len(files), 8)]
        t = time.perf_counter()
        results = [r for chunk in pool.map(_run_chunk, chunks) for r in chunk]
        wall = time.perf_counter() - t
    ok = sum(r[0] for r in results)
    return {
        "files": len(files),
        "ok": ok,
        "workers": workers,
        "wall_s": round(wall, 3),
        "images_per_s": round(len(files) / wall, 1),
        "aim_images_per_s": AIM_IMAGES_PER_S,
        "meets_aim": len(files) / wall >= AIM_IMAGES_PER_S,
        "pool_startup_s": round(startup, 2),
        "nyul_fit_images": len(fit_files),
        "nyul_fit_s": round(fit_s, 2),
        "single_process_ms_per_image": {
            "decode": round(decode / k * 1000, 2),
            **{name: round(v / k * 1000, 2) for name, v in per_step.items()},
            "total": round((decode + sum(per_step.values())) / k * 1000, 2),
        },
        "single_process_cpu_ms_median": {name: round(statistics.median(v), 3) for name, v in cpu_ms.items()},
    }


def bench_n4(data: Path, n: int, seed: int) -> dict[str, Any]:
    from PIL import Image

    from brainmri.io.reader import read_image
    from brainmri.preprocess import FastBiasCorrection, N4BiasCorrection, Slice, ToUnitRange

    candidates = real_files(data, 400, seed)
    images = []
    for f in candidates:
        with Image.open(f) as im:
            if im.size != (512, 512):
                continue
        images.append(ToUnitRange()(Slice(read_image(f).array)).image)
        if len(images) == n:
            break
    out: dict[str, Any] = {"images": len(images), "shape": [512, 512]}
    for name, step in (("n4", N4BiasCorrection()), ("n4_fast", FastBiasCorrection())):
        step(Slice(images[0].copy()))  # warm-up
        times = []
        for img in images:
            t = time.perf_counter()
            step(Slice(img.copy()))
            times.append((time.perf_counter() - t) * 1000)
        out[name] = {
            "params": {k: v for k, v in vars(step).items() if not k.startswith("_")},
            "ms_median": round(statistics.median(times), 1),
            "ms_mean": round(statistics.fmean(times), 1),
            "ms_p90": round(float(np.percentile(times, 90)), 1),
            "ms_max": round(max(times), 1),
        }
    out["n4"]["aim_ms"] = AIM_N4_MS
    out["n4"]["meets_aim"] = out["n4"]["ms_median"] <= AIM_N4_MS
    return out


def bench_skull(files: list[Path]) -> dict[str, Any]:
    from brainmri.config import PreprocessConfig
    from brainmri.io.reader import read_image
    from brainmri.preprocess import Preprocessor, SkullStrip, Slice

    cfg = PreprocessConfig()
    pre = Preprocessor.from_config(cfg)
    before = pre.steps[: [s.name for s in pre.steps].index("skull")]
    default = next(s for s in pre.steps if s.name == "skull")
    raw = SkullStrip(min_fraction=0.0, erode=default.erode, margin=default.margin)
    per_class: dict[str, dict[str, int]] = {}
    fractions, fallbacks, small, empty = [], 0, 0, 0
    reasons: dict[str, int] = {}
    for f in files:
        s = Slice(read_image(f).array)
        for step in before:
            s = step(s)
        mask, _ = raw.brain_mask(s.image, s.foreground)
        frac = float(mask.sum() / max(1, s.foreground.sum()))
        final = default(Slice(s.image, foreground=s.foreground))
        fb = final.info["skull"]["fallback"]
        empty += int(not final.brain.any())
        c = per_class.setdefault(f.parent.name, {"n": 0, "fallback": 0, "raw_below_30pct": 0})
        c["n"] += 1
        c["fallback"] += int(fb)
        c["raw_below_30pct"] += int(frac < 0.3)
        fractions.append(frac)
        fallbacks += int(fb)
        small += int(frac < 0.3)
        if fb:
            key = final.info["skull"]["reason"].split(" (")[0]
            key = "mask below min_fraction" if key.startswith("mask covers") else key
            reasons[key] = reasons.get(key, 0) + 1
    q = np.percentile(fractions, [5, 25, 50, 75, 95])
    return {
        "files": len(files),
        "min_fraction": default.min_fraction,
        "fallback_rate": round(fallbacks / len(files), 4),
        "fallback_reasons": reasons,
        "raw_mask_below_30pct_of_head_rate": round(small / len(files), 4),
        "empty_masks": empty,
        "raw_mask_fraction_quantiles": dict(
            zip(["p5", "p25", "p50", "p75", "p95"], [round(float(v), 3) for v in q], strict=True)
        ),
        "per_class": per_class,
    }


def bench_phantoms() -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from brainmri.preprocess import FastBiasCorrection, N4BiasCorrection, Slice
    from test_preprocess_steps import _bias_cases, _cov

    class Gaussian0(FastBiasCorrection):
        """Zeroth-order Gaussian division (classic flat-field), for comparison only."""

        def estimate_log_field(self, image, mask):
            import cv2

            from brainmri.preprocess.resize import resize_image

            h, w = image.shape
            f = max(1, round(max(h, w) / self.grid))
            shape = (h // f, w // f)
            small = np.log(np.maximum(resize_image(image, shape), 1e-3)).astype(np.float32)
            m = resize_image(mask.astype(np.float32), shape)
            sig = self.sigma * max(shape)
            num = cv2.GaussianBlur(small * m, (0, 0), sig, borderType=cv2.BORDER_CONSTANT)
            den = cv2.GaussianBlur(m, (0, 0), sig, borderType=cv2.BORDER_CONSTANT)
            lf = np.where(den > 1e-3, num / np.maximum(den, 1e-6), 0).astype(np.float32)
            lf -= lf[m > 0.5].mean()
            return cv2.resize(lf, (w, h), interpolation=cv2.INTER_LINEAR)

    cases = _bias_cases()
    out: dict[str, Any] = {"phantoms": len(cases), "size": 256, "bias_strength": 0.4}
    for name, step in (
        ("n4", N4BiasCorrection()),
        ("n4_fast", FastBiasCorrection()),
        ("gaussian_division_order0_sigma0.15", Gaussian0(sigma=0.15)),
    ):
        ratios, before, after = [], [], []
        for biased, clean, wm in cases:
            corrected = step(Slice(biased.image.copy())).image
            b = _cov(biased.image / np.maximum(clean.image, 1e-3), wm)
            a = _cov(corrected / np.maximum(clean.image, 1e-3), wm)
            before.append(b)
            after.append(a)
            ratios.append(a / b)
        out[name] = {
            "wm_bias_cov_before_mean": round(float(np.mean(before)), 4),
            "wm_bias_cov_after_mean": round(float(np.mean(after)), 4),
            "removed_fraction_mean": round(1 - float(np.mean(after) / np.mean(before)), 3),
            "per_phantom_ratio": [round(float(r), 3) for r in ratios],
            "phantoms_halved": int(sum(r <= 0.5 for r in ratios)),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("BRAINMRI_NO_PROGRESS", "1")
    from brainmri.preprocess import PIPELINE_VERSION, config_hash
    from brainmri.utils import atomic_write_json, machine_facts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("BRAINMRI_SHARED_DATA") or str(REPO.parent / "shared" / "data")
    ap.add_argument("--data", default=default_data, help="shared data folder (with brain-tumor-mri/Training)")
    ap.add_argument("--n", type=int, default=300, help="files for the throughput run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n4-images", type=int, default=20)
    ap.add_argument("--skull", type=int, default=200, help="files for the skull-strip reliability check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "preprocess.json"))
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "brain-tumor-mri" / "Training").is_dir():
        print(f"error: {data}/brain-tumor-mri/Training not found (set --data or BRAINMRI_SHARED_DATA)", file=sys.stderr)
        return 2

    from brainmri.config import PreprocessConfig

    pool = real_files(data, args.n + 50, args.seed)
    result: dict[str, Any] = {
        "benchmark": "preprocess",
        "pipeline_version": PIPELINE_VERSION,
        "default_config_hash": config_hash(PreprocessConfig()),
        "data": str(data / "brain-tumor-mri" / "Training"),
        "seed": args.seed,
        "load_average_before": list(os.getloadavg()),
    }
    t0 = time.perf_counter()
    result["default_chain"] = bench_default_chain(pool[: args.n], pool[args.n :], args.workers)
    print(f"default chain: {result['default_chain']['images_per_s']} images/s", file=sys.stderr)
    result["n4"] = bench_n4(data, args.n4_images, args.seed + 1)
    print(f"n4: {result['n4']['n4']['ms_median']} ms/image (512x512)", file=sys.stderr)
    result["skull_strip"] = bench_skull(real_files(data, args.skull, args.seed + 2))
    print(f"skull fallback rate: {result['skull_strip']['fallback_rate']}", file=sys.stderr)
    result["phantom_bias"] = bench_phantoms()
    result["load_average_after"] = list(os.getloadavg())
    result["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    result["machine"] = machine_facts()
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
