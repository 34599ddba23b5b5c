"""The out-of-domain input checks on real data: where their thresholds come from and what they flag.

Decodes every file of the real sets with the project's reader (``brainmri.io.read_image``, as prediction
does; no preprocessing, no model) and reports the distribution of the two input-level signals it measures
(``brainmri.io.signals``: colourfulness before the grayscale conversion, border brightness) and the share
of each set the default thresholds (``PredictConfig.ood_max_colourfulness``, ``ood_max_border_brightness``)
flag:
- brain-tumor-mri: all 5,712 files of the training source (in-domain; the thresholds must pass > 99%);
- lgg-flair and navoneel: real MRI of other sources (should pass too);
- the photographs and generated noise/texture images of ``bench/ood_check.py`` (should be flagged).

    python bench/input_checks.py -> bench/results/input_checks.json
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(REPO.parent / "shared" / "data")
SIGNALS = ("colourfulness", "border_brightness")
SETS = {"brain-tumor-mri (in-domain)": "brain-tumor-mri", "lgg-flair": "lgg-flair", "navoneel": "navoneel"}


def real_files(folder: str) -> list[Path]:
    return sorted(p for p in (SHARED / folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def measure(sources: list, names: list[str]) -> list[dict]:
    """The reader's signals for each source (a path, JPEG bytes or a 2D array) and what flags it."""
    from brainmri.calibrate.ood import InputChecks
    from brainmri.config import PredictConfig
    from brainmri.io import read_image
    from brainmri.io.signals import border_brightness
    from brainmri.utils import progress

    cfg = PredictConfig()
    checks = InputChecks(cfg.ood_max_colourfulness, cfg.ood_max_border_brightness)
    rows = []
    for src, name in progress(list(zip(sources, names, strict=True)), desc="decode"):
        if isinstance(src, np.ndarray):  # what Predictor does with an array input: no colour channels
            meta = {"border_brightness": border_brightness(src), "mode": "array"}
        else:
            meta = read_image(src, name=name).meta
        row = {"file": name, "mode": meta.get("mode"), **{k: meta.get(k) for k in SIGNALS}}
        rows.append({**row, "reasons": checks.reasons(meta)})
    return rows


def summarise(rows: list[dict], top: int = 5) -> dict:
    """Quantiles of each signal, flag rates per check and overall, the files with the highest values."""
    out: dict = {"n": len(rows), "modes": {}}
    for r in rows:
        out["modes"][r["mode"]] = out["modes"].get(r["mode"], 0) + 1
    for k in SIGNALS:
        v = np.array([r[k] for r in rows if r[k] is not None], dtype=np.float64)
        if v.size == 0:
            out[k] = None
            continue
        q = {f"p{p:g}": float(np.percentile(v, p)) for p in (1, 50, 99, 99.9)}
        worst = sorted((r for r in rows if r[k] is not None), key=lambda r: -r[k])[:top]
        out[k] = {"n": int(v.size), "min": float(v.min()), **q, "max": float(v.max()),
                  "highest": [[r["file"], round(float(r[k]), 4)] for r in worst]}  # fmt: skip
    for label, prefix in (("flagged_colour", "colour image"), ("flagged_border", "no dark background")):
        hits = sum(any(s.startswith(prefix) for s in r["reasons"]) for r in rows)
        out[label] = {"count": int(hits), "share": hits / max(1, len(rows))}
    hits = sum(bool(r["reasons"]) for r in rows)
    out["flagged_any"] = {"count": int(hits), "share": hits / max(1, len(rows))}
    return out


def non_mri() -> dict[str, tuple[list, list[str]]]:
    """The photographs (as JPEG bytes, colour kept) and generated images (arrays) of bench/ood_check.py."""
    from PIL import Image

    sys.path.insert(0, str(REPO / "bench"))
    from ood_check import generated_images, photographs

    photos = photographs()
    jpegs = []
    for _, img in photos:
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG")
        jpegs.append(buf.getvalue())
    gen = generated_images()
    return {
        "photographs (pip sample images)": (jpegs, [name for name, _ in photos]),
        "generated noise/texture/pattern images": (gen, [f"generated {i} (kind {i % 6})" for i in range(len(gen))]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="files per real set (0: all)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "input_checks.json"))
    args = ap.parse_args()

    from brainmri.config import PredictConfig
    from brainmri.utils import atomic_write_json, machine_facts

    start = time.perf_counter()
    sets = {}
    for label, folder in SETS.items():
        files = real_files(folder)
        files = files[:: max(1, len(files) // args.limit)][: args.limit] if args.limit else files
        sets[label] = summarise(measure(files, [str(p.relative_to(SHARED)) for p in files]))
    for label, (sources, names) in non_mri().items():
        sets[label] = summarise(measure(sources, names))
    cfg = PredictConfig()
    result = {
        "benchmark": "input_checks (bench/input_checks.py)",
        "command": "python " + " ".join(["bench/input_checks.py", *sys.argv[1:]]),
        "thresholds": {
            "ood_max_colourfulness": cfg.ood_max_colourfulness,
            "ood_max_border_brightness": cfg.ood_max_border_brightness,
        },
        "sets": sets,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": machine_facts(),
    }
    atomic_write_json(args.out, result)
    for label, r in sets.items():
        c, b = r["colourfulness"], r["border_brightness"]
        cmax = "-" if c is None else f"{c['max']:.1f}"
        print(f"{label:42s} n={r['n']:5d} colour max {cmax:>6s} border p99.9 {b['p99.9']:.3f} max {b['max']:.3f} "
              f"flagged colour {r['flagged_colour']['count']} border {r['flagged_border']['count']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
