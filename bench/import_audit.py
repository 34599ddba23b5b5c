"""Benchmark: import + audit (+ split) of the 5,712-file brain-tumor-mri set on this machine.

Usage: ``.venv/bin/python bench/import_audit.py [--data DIR] [--workers N] [--out bench/results/import_audit.json]``

Writes wall times, files/s, the duplicate counts, a near-threshold study (clusters and label conflicts at
pHash distances 2..8), the split counts, the overlap of navoneel with brain-tumor-mri, and
``brainmri.utils.machine_facts()``. Run it alone: it is a timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu_seconds() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("BRAINMRI_NO_PROGRESS", "1")
    from brainmri.config import load_config
    from brainmri.data.audit import audit_manifest, run_audit
    from brainmri.data.manifest import build_manifest, read_manifest, write_manifest
    from brainmri.data.split import reason_category, run_split
    from brainmri.utils import atomic_write_json, machine_facts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("BRAINMRI_SHARED_DATA") or str(REPO.parent / "shared" / "data")
    ap.add_argument("--data", default=default_data, help="shared data folder (holds brain-tumor-mri/, navoneel/)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "import_audit.json"))
    args = ap.parse_args(argv)

    data = Path(args.data)
    root = data / "brain-tumor-mri"
    if not (root / "Training").is_dir():
        print(f"error: {root}/Training not found (pass --data)", file=sys.stderr)
        return 2
    cfg = load_config(None, [f"data.workers={args.workers}"])
    result: dict = {"benchmark": "import_audit", "data": str(root), "workers": args.workers}
    result["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    cpu0 = _cpu_seconds()

    with tempfile.TemporaryDirectory(prefix="brainmri-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        df = build_manifest([str(root)], cfg.data, cfg.audit)
        manifest = write_manifest(df, work / "manifest.csv")
        t_import = time.perf_counter() - t0

        t0 = time.perf_counter()
        audit = run_audit(manifest, cfg.audit, work / "audit", montage=False)
        t_audit = time.perf_counter() - t0

        t0 = time.perf_counter()
        run_audit(manifest, cfg.audit, work / "audit_montage", montage=True)
        t_audit_montage = time.perf_counter() - t0

        t0 = time.perf_counter()
        split = run_split(manifest, work / "split.json", cfg.split, cfg.audit, cfg.data.classes)
        t_split = time.perf_counter() - t0

        n = len(df)
        result["timing_s"] = {
            "import": round(t_import, 2),
            "audit_without_montage": round(t_audit, 2),
            "audit_with_montage": round(t_audit_montage, 2),
            "import_plus_audit": round(t_import + t_audit_montage, 2),
            "split": round(t_split, 2),
        }
        result["files_per_s"] = {
            "import": round(n / t_import, 1),
            "import_plus_audit": round(n / (t_import + t_audit_montage), 1),
        }
        result["pairs_compared"] = n * (n - 1) // 2
        result["counts"] = {
            "files": n,
            "unreadable": audit["unreadable"]["count"],
            "per_label": audit["per_label"],
            "formats": dict(Counter(df["format"])),
            "modes": dict(Counter(df["mode"])),
            "distinct_sizes": int(df.groupby(["width", "height"]).ngroups),
            "exact_clusters": audit["exact"]["clusters"],
            "exact_files_in_clusters": audit["exact"]["files_in_clusters"],
            "exact_redundant_files": audit["exact"]["redundant_files"],
            "near_threshold": audit["near_threshold"],
            "near_pairs": audit["near"]["pairs"],
            "near_pairs_by_distance": audit["near"]["pairs_by_distance"],
            "files_in_near_pairs": audit["near"]["files_in_pairs"],
            "duplicate_clusters": audit["clusters"]["count"],
            "files_in_duplicate_clusters": audit["clusters"]["files"],
            "largest_cluster": audit["clusters"]["largest"],
            "label_conflict_clusters": audit["label_conflicts"]["count"],
            "label_conflict_files": audit["label_conflicts"]["files"],
        }
        result["distance_histogram"] = audit["distance_histogram"]

        study = {}
        frame = read_manifest(manifest)
        for thr in (2, 4, 6, 8):
            c = load_config(None, [f"audit.near_threshold={thr}"])
            r = audit_manifest(frame, c.audit)
            r.pop("_graph")
            study[str(thr)] = {
                "near_pairs": r["near"]["pairs"],
                "clusters": r["clusters"]["count"],
                "files_in_clusters": r["clusters"]["files"],
                "largest_cluster": r["clusters"]["largest"],
                "label_conflict_clusters": r["label_conflicts"]["count"],
                "label_conflict_files": r["label_conflicts"]["files"],
            }
        result["threshold_study"] = study

        result["split"] = {
            "train": len(split["train"]),
            "val": len(split["val"]),
            "test": len(split["test"]),
            "folds": len(split["folds"]),
            "excluded": dict(Counter(reason_category(e["reason"]) for e in split["excluded"])),
        }

        nav = data / "navoneel"
        if nav.is_dir():
            t0 = time.perf_counter()
            nav_df = build_manifest([str(nav)], cfg.data, cfg.audit)
            nav_manifest = write_manifest(nav_df, work / "navoneel.csv")
            nav_audit = run_audit(nav_manifest, cfg.audit, work / "nav_audit", against_path=manifest, montage=False)
            ag = nav_audit["against"]
            result["navoneel_against_brain_tumor_mri"] = {
                "files": ag["files"],
                "already_in_brain_tumor_mri": ag["total"],
                "exact": ag["exact"],
                "near": ag["near"],
                "fraction": ag["fraction"],
                "label_conflicts": ag["label_conflicts"],
                "by_label": ag["by_label"],
                "navoneel_exact_clusters": nav_audit["exact"]["clusters"],
                "navoneel_exact_redundant_files": nav_audit["exact"]["redundant_files"],
                "wall_s": round(time.perf_counter() - t0, 2),
            }

    result["cpu_s_all_steps"] = round(_cpu_seconds() - cpu0, 2)
    result["note"] = (
        "wall times depend on other load on the machine (load_average_at_start: 1, 5, 15 min); cpu_s_all_steps "
        "is user+sys CPU of this process and its workers over every step (import, audits, split, navoneel)"
    )
    result["machine"] = machine_facts()
    atomic_write_json(args.out, result)
    t = result["timing_s"]
    print(
        f"import {t['import']} s ({result['files_per_s']['import']} files/s), audit {t['audit_with_montage']} s "
        f"(without montage {t['audit_without_montage']} s), split {t['split']} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
