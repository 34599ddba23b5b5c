"""Helpers of tests/test_external.py and tests/test_adapt.py: a tiny run and phantom external sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
SIZE = 64


def tiny_cfg(tmp_path: Path, *extra: str):
    from brainmri.config import load_config

    overrides = [
        f"paths.work_dir={tmp_path / 'work'}",
        f"paths.runs_dir={tmp_path / 'runs'}",
        "preprocess.preset=raw",
        f"preprocess.size={SIZE}",
        "preprocess.workers=1",
        "data.workers=1",
        "split.folds=2",
        "model.backbone=test_efficientnet",
        "model.weights=none",
        *extra,
    ]
    return load_config(None, overrides)


def tiny_run(tmp_path: Path):
    """Phantoms -> manifest -> split -> cache -> an untrained ``test_efficientnet`` run (runs/tiny)."""
    import torch

    from brainmri.data.manifest import build_manifest, write_manifest
    from brainmri.data.phantoms import write_phantom_dataset
    from brainmri.data.split import run_split
    from brainmri.models import create_model
    from brainmri.preprocess.cache import PreprocessedCache, build_cache
    from brainmri.runs import write_run

    cfg = tiny_cfg(tmp_path)
    data = write_phantom_dataset(tmp_path / "data", n_per_class=10, size=SIZE, seed=3)
    frame = build_manifest([str(data)], cfg.data, cfg.audit, workers=1)
    manifest = write_manifest(frame, tmp_path / "work/data/manifest.csv")
    split_file = tmp_path / "work/data/split.json"
    run_split(manifest, split_file, cfg.split, cfg.audit, cfg.data.classes)
    report = build_cache(
        cfg.preprocess, cfg.data, manifest, split_file, tmp_path / "work/preprocess", workers=1, log=lambda msg: None
    )
    cache = PreprocessedCache(report.dir)
    torch.manual_seed(0)
    model = create_model(cfg.model, len(CLASSES))
    return write_run(
        tmp_path / "runs/tiny",
        cfg,
        model,
        cache.preprocessor(),
        classes=CLASSES,
        split_file=split_file,
        preprocess_dir=cache.dir,
    )


def phantom_csv_set(
    root: Path,
    n_patients: int = 12,
    per_class: int = 2,
    seed: int = 70_000,
    patients: bool = True,
    classes: tuple[str, str] = ("tumor", "no_tumor"),
) -> Path:
    """A ``file,label[,patient]`` CSV set: every patient has ``per_class`` tumour and no-tumour slices."""
    from PIL import Image

    from brainmri.data.phantoms import make_phantom

    rows = ["file,label,patient" if patients else "file,label"]
    for p in range(n_patients):
        for label in classes:
            folder = root / label
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                s = seed + p * 100 + k * 10 + (label == "no_tumor")
                ph = make_phantom("glioma" if label != "no_tumor" else "no_tumor", size=80, seed=s, noise=0.05)
                name = f"{label}/p{p:02d}_{k}.png"
                Image.fromarray(np.round(ph.image * 255).astype(np.uint8)).save(root / name)
                rows.append(f"{name},{label},P{p:02d}" if patients else f"{name},{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"
