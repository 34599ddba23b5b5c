"""Commands of the data stage: ``brainmri data import | download | audit | split``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainmri.cliargs import add_config_flag
from brainmri.config import Config, save_config
from brainmri.layout import Layout


def _layout(cfg: Config) -> Layout:
    return Layout.from_config(cfg.paths)


def _import(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.data.manifest import build_manifest, default_roots, summary_text, write_manifest

    roots = list(args.roots) or default_roots(cfg.data)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"roots": roots})})  # saved config names them
    out = Path(args.out) if args.out else _layout(cfg).manifest_file
    df = build_manifest(roots, cfg.data, cfg.audit)
    write_manifest(df, out)
    save_config(cfg, out.parent / f"{out.stem}.config.yaml")
    print(summary_text(df))
    print(f"manifest: {out}")
    return 0


def _download(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.data.download import download_dataset

    handles = [args.dataset] if args.dataset else list(cfg.data.kaggle_datasets)
    for handle in handles:
        out = None
        if args.out:
            out = str(Path(args.out) / handle.replace("/", "__")) if len(handles) > 1 else args.out
        path = download_dataset(handle, out)
        print(f"{handle}: {path}")
        print(f"  next: brainmri data import {path}")
    return 0


def _audit(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.data.audit import run_audit

    manifest = Path(args.manifest)
    out = Path(args.out) if args.out else manifest.parent / "audit"
    result = run_audit(manifest, cfg.audit, out, against_path=args.against)
    save_config(cfg, out / "config.yaml")
    sys.stdout.write((out / "audit.txt").read_text(encoding="utf-8"))
    print(
        f"audit: {out / 'audit.json'}, {out / 'audit.txt'}" + (", near_duplicates.png" if "montage" in result else "")
    )
    return 0


def _split(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.data.split import run_split

    manifest = Path(args.manifest) if args.manifest else _layout(cfg).manifest_file
    out = Path(args.out) if args.out else _layout(cfg).split_file
    split = run_split(manifest, out, cfg.split, cfg.audit, cfg.data.classes)
    save_config(cfg, out.parent / f"{out.stem}.config.yaml")
    counts = ", ".join(f"{k} {len(split[k])}" for k in ("train", "val", "test"))
    print(f"split: {counts}; {len(split['folds'])} folds; {len(split['excluded'])} excluded (see data_card.md)")
    print(f"wrote {out}, {out.parent / 'splits_final.json'}, {out.parent / 'data_card.md'}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add this stage's commands to the top-level parser."""
    data = sub.add_parser("data", help="import, download, audit and split image data")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = dsub.add_parser(
        "import",
        parents=[common],
        help="scan image folders into a manifest (labels, hashes, decode status)",
        description="Scan data roots (Kaggle Training/Testing, class folders, yes/no sets; NAME=PATH names a "
        "source) into manifest.csv. Default roots: data.roots, $BRAINMRI_DATA, ../shared/data/brain-tumor-mri.",
    )
    p.add_argument("roots", nargs="*", metavar="ROOT", help="data folder, or NAME=FOLDER")
    p.add_argument("--out", default=None, help="manifest path (default: <work_dir>/data/manifest.csv)")
    add_config_flag(p, "--workers", "data.workers", type=int, metavar="N", help="worker processes")
    p.set_defaults(handler=_import)

    p = dsub.add_parser("download", parents=[common], help="download data sets from Kaggle (kagglehub)")
    p.add_argument("--dataset", default=None, metavar="OWNER/NAME", help="one data set (default: data.kaggle_datasets)")
    p.add_argument("--out", default=None, help="folder to place the files in (default: kagglehub's cache)")
    p.set_defaults(handler=_download)

    p = dsub.add_parser(
        "audit",
        parents=[common],
        help="exact and near duplicates, label conflicts, unreadable files (and overlap with another manifest)",
        description="Audit a manifest: clusters of exact (md5) and near (perceptual hash within --threshold bits) "
        "duplicates, clusters whose copies carry different labels, unreadable files; with --against, how many "
        "images of MANIFEST already occur in OTHER_MANIFEST (run this before using a set for external "
        "validation). Writes audit.json, audit.txt and near_duplicates.png.",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="manifest CSV written by brainmri data import")
    p.add_argument("--against", default=None, metavar="OTHER_MANIFEST", help="count images already in OTHER")
    p.add_argument("--out", default=None, help="output folder (default: MANIFEST's folder/audit)")
    add_config_flag(
        p, "--threshold", "audit.near_threshold", type=int, metavar="N", help="pHash Hamming distance for near dups"
    )
    p.set_defaults(handler=_audit)

    p = dsub.add_parser("split", parents=[common], help="leakage-free train/val/test split and k folds")
    p.add_argument(
        "manifest", nargs="?", default=None, metavar="MANIFEST", help="default: <work_dir>/data/manifest.csv"
    )
    p.add_argument("--out", default=None, help="split.json path (default: <work_dir>/data/split.json)")
    add_config_flag(p, "--folds", "split.folds", type=int, metavar="K", help="number of folds")
    add_config_flag(p, "--seed", "split.seed", type=int, metavar="N", help="random seed")
    add_config_flag(
        p, "--keep-source-test", "split.keep_source_test", action="store_true", help="use the source's Testing/"
    )
    p.set_defaults(handler=_split)
