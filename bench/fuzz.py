"""Fuzz: 10,000 generated bad inputs through the HTTP API and through ``brainmri predict``.

Usage: ``.venv/bin/python bench/fuzz.py [BUNDLE] [--n 10000] [--cli 300] [--seed 0]
[--out bench/results/fuzz.json]``

Inputs (``tests/serve_inputs.py``): the named malformed uploads (empty, text, truncated, header-only
decompression bombs in PNG/GIF/BMP/gzip-NIfTI, NIfTI without slices, DICOM without or with short pixel
data...), odd but valid images (16-bit, float TIFF, CMYK, palette, 1-bit, a PNG named .dcm), and
generated ones: random bytes, image magic numbers followed by garbage, truncations and bit flips of
valid files in every format, random header dimensions, header-only prefixes.

- API: every input as ``POST /v1/predict`` through Starlette's TestClient (in process, server exceptions
  re-raised so a crash cannot hide behind a 500); ``/health`` is asked every 500 requests.
- Python API: every input as bytes through ``Predictor.predict(..., errors="return")`` (what the
  predict command runs), in batches of 100.
- CLI: ``--cli`` of them written to a temporary folder and passed as files to ``brainmri predict`` in
  chunks of 100 (a real subprocess): exit status, no traceback, one ``error:`` line per bad file.

Counts: crashes (an exception that is not a user-facing BrainMRIError), 5xx, 4xx by status, inputs
accepted (a bit flip can leave a file valid), and errors whose message does not name the file and the
problem (``serve_inputs.names_problem``), with examples. Bundle: the argument, else the tiny test bundle
(timm test_efficientnet, 32 px) exported into a temporary folder: decoding is what is fuzzed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

import serve_inputs as si  # noqa: E402


def make_cases(n: int, seed: int) -> list[si.Case]:
    rng = np.random.default_rng(seed)
    valid = si.valid_cases(rng)
    cases = si.fixed_bad_cases(rng) + valid
    cases += [si.random_bad_case(rng, i, valid) for i in range(n - len(cases))]
    return cases[:n]


def fuzz_api(bundle: Path, cases: list[si.Case]) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from brainmri.serve.app import create_app
    from brainmri.serve.settings import ServeSettings

    client = TestClient(create_app(bundle, ServeSettings(access_log=False)), raise_server_exceptions=True)
    status: Counter = Counter()
    crashes, unnamed, valid_refused, health_failures = [], [], [], 0
    start = time.perf_counter()
    for i, case in enumerate(cases):
        try:
            r = client.post("/v1/predict", files={"file": (case.name, case.data, case.content_type)})
        except Exception as exc:  # a crash: the app raised instead of answering
            crashes.append(f"{case.kind} {case.name}: {type(exc).__name__}: {exc}"[:300])
            continue
        status[r.status_code] += 1
        if r.status_code >= 400:
            message = r.json().get("error", {}).get("message", "")
            if not si.names_problem(message, case.name):
                unnamed.append(f"{case.kind} {case.name}: {r.status_code} {message}"[:300])
            if case.valid:
                valid_refused.append(f"{case.kind}: {message}"[:300])
        if i % 500 == 499 and client.get("/health").status_code != 200:
            health_failures += 1
    return {
        "inputs": len(cases),
        "seconds": round(time.perf_counter() - start, 1),
        "status_counts": {str(k): v for k, v in sorted(status.items())},
        "crashes": len(crashes),
        "crash_examples": crashes[:10],
        "5xx": sum(v for k, v in status.items() if k >= 500),
        "accepted_200": status.get(200, 0),
        "errors_not_naming_the_problem": len(unnamed),
        "unnamed_examples": unnamed[:10],
        "valid_inputs_refused": valid_refused[:10],
        "health_failures": health_failures,
        "still_answering": client.get("/ready").status_code == 200,
    }


def fuzz_python_api(bundle: Path, cases: list[si.Case]) -> dict[str, Any]:
    from brainmri.errors import BrainMRIError
    from brainmri.infer import Failure, Predictor

    kinds: Counter = Counter()
    crashes, unnamed = [], []
    start = time.perf_counter()
    with Predictor.from_bundle(bundle) as predictor:
        for s in range(0, len(cases), 100):
            chunk = cases[s : s + 100]
            try:
                results = predictor.predict([c.data for c in chunk], errors="return")
            except BrainMRIError as exc:  # a user-facing error for the whole batch is no crash, but count it
                kinds["batch_error"] += 1
                unnamed.append(f"batch {s}: {exc}"[:300])
                continue
            except Exception as exc:
                crashes.append(f"batch {s}: {type(exc).__name__}: {exc}"[:300])
                continue
            for case, result in zip(chunk, results, strict=True):
                if isinstance(result, Failure):
                    kinds[result.kind] += 1
                    if not si.names_problem(str(result), result.source):
                        unnamed.append(f"{case.kind}: {result}"[:300])
                else:
                    kinds["predicted"] += 1
    return {
        "inputs": len(cases),
        "seconds": round(time.perf_counter() - start, 1),
        "results": dict(sorted(kinds.items())),
        "crashes": len(crashes),
        "crash_examples": crashes[:10],
        "errors_not_naming_the_problem": len(unnamed),
        "unnamed_examples": unnamed[:10],
    }


def fuzz_cli(bundle: Path, cases: list[si.Case], work: Path) -> dict[str, Any]:
    cli = Path(sys.executable).with_name("brainmri")
    folder = work / "cli-inputs"
    folder.mkdir()
    paths = []
    for i, case in enumerate(cases):
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", case.name)[:60]
        path = folder / f"{i:04d}_{stem}"
        path.write_bytes(case.data)
        paths.append(path)
    exit_codes: Counter = Counter()
    tracebacks, missing_lines, unnamed, n_errors, n_predicted = 0, [], [], 0, 0
    start = time.perf_counter()
    for s in range(0, len(paths), 100):
        chunk = paths[s : s + 100]
        out = work / f"cli-{s}.json"
        proc = subprocess.run(
            [str(cli), "predict", str(bundle), *map(str, chunk), "--out", str(out)],
            capture_output=True,
            text=True,
            env={**os.environ, "BRAINMRI_NO_PROGRESS": "1"},
            timeout=600,
        )
        exit_codes[proc.returncode] += 1
        tracebacks += "Traceback" in proc.stderr
        if not out.is_file():
            missing_lines.append(f"chunk {s}: no output (exit {proc.returncode}): {proc.stderr[-300:]}")
            continue
        doc = json.loads(out.read_text())
        n_predicted += len(doc["predictions"])
        for err in doc["errors"]:
            n_errors += 1
            if f"error: {err['source']}: " not in proc.stderr:
                missing_lines.append(err["source"])
            if not si.names_problem(f"{err['source']}: {err['error']}", Path(err["source"]).name):
                unnamed.append(f"{err['source']}: {err['error']}"[:300])
    return {
        "inputs": len(paths),
        "invocations": sum(exit_codes.values()),
        "seconds": round(time.perf_counter() - start, 1),
        "exit_codes": {str(k): v for k, v in sorted(exit_codes.items())},
        "tracebacks": tracebacks,
        "predicted": n_predicted,
        "errors": n_errors,
        "errors_without_stderr_line": len(missing_lines),
        "errors_not_naming_the_problem": len(unnamed),
        "unnamed_examples": unnamed[:10],
    }


def tiny_bundle(work: Path) -> Path:
    from brainmri.bundle import export_bundle
    from test_bundle_support import build_run

    return export_bundle(build_run(work).dir, work / "bundles" / "tiny")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("BRAINMRI_NO_PROGRESS", "1")
    from brainmri.utils import atomic_write_json, machine_facts
    from latency import git_state

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", help="bundle folder (default: a tiny test bundle, exported here)")
    ap.add_argument("--n", type=int, default=10_000, help="inputs through the API and the Python API")
    ap.add_argument("--cli", type=int, default=300, help="inputs through the brainmri predict command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "fuzz.json"))
    args = ap.parse_args(argv)

    cases = make_cases(args.n, args.seed)
    with tempfile.TemporaryDirectory(prefix="brainmri-fuzz-") as tmp:
        work = Path(tmp)
        bundle = Path(args.bundle) if args.bundle else tiny_bundle(work)
        note = f"given: {args.bundle}" if args.bundle else "tiny test bundle (timm test_efficientnet, 32 px, crop)"
        print(f"{len(cases)} inputs; bundle: {note}", file=sys.stderr)
        api = fuzz_api(bundle, cases)
        print(f"API: {api}", file=sys.stderr)
        python_api = fuzz_python_api(bundle, cases)
        print(f"Python API: {python_api}", file=sys.stderr)
        cli = fuzz_cli(bundle, cases[: args.cli], work) if args.cli else None
        print(f"CLI: {cli}", file=sys.stderr)
    kinds = Counter(re.sub(r"_(png|jpeg|jpg|dicom|nifti|gif|bmp|tiff|webp).*", "", c.kind) for c in cases)
    result = {
        "benchmark": "fuzz",
        "bundle": note,
        "seed": args.seed,
        "inputs": len(cases),
        "input_kinds": dict(kinds.most_common()),
        "valid_odd_inputs": sum(c.valid for c in cases),
        "api": api,
        "python_api": python_api,
        "cli": cli,
        "summary": {
            "crashes": api["crashes"] + python_api["crashes"] + (cli["tracebacks"] if cli else 0),
            "5xx": api["5xx"],
            "every_error_names_the_problem": api["errors_not_naming_the_problem"] == 0
            and python_api["errors_not_naming_the_problem"] == 0
            and (cli is None or cli["errors_not_naming_the_problem"] == 0),
        },
        "machine": machine_facts(),
        "git": git_state(),
    }
    atomic_write_json(args.out, result)
    print(f"{result['summary']} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
