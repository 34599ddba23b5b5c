"""Shared builders for the bundle and inference tests (no tests here).

``build_run`` trains timm's ``test_efficientnet`` for a few steps on 32 px phantoms (so BatchNorm
running statistics are not the defaults), with a ``crop`` Preprocessor, writes a ``calibration.json``
(the ``PostHocCalibration`` schema) and a metrics report; the ``tiny_run_dir`` / ``bundle_dir`` session
fixtures build it and export it once per test session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SIZE = 32
CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def make_preprocessor(cfg, fit_images):
    from brainmri.preprocess import Preprocessor

    return Preprocessor.from_config(cfg.preprocess).fit(fit_images)


def phantom_images(n_per_class: int, size: int = 64, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Phantoms in file scale (0..255 float32, as read_image returns 8-bit files) and their labels."""
    from brainmri.data.phantoms import make_phantom

    images, labels = [], []
    for ci, label in enumerate(CLASSES):
        for i in range(n_per_class):
            ph = make_phantom(label, size=size, seed=seed * 1000 + ci * 100 + i, bias_strength=0.2)
            images.append(np.round(ph.image * 255).astype(np.float32))
            labels.append(ci)
    return images, np.array(labels)


def write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return path


def build_run(root: Path, *, calibrate: bool = True, reports: bool = True):
    import torch

    from brainmri.config import load_config
    from brainmri.models import create_model
    from brainmri.runs import write_run
    from brainmri.utils import setup_torch

    setup_torch()
    torch.manual_seed(0)
    cfg = load_config(
        overrides=[
            "model.backbone=test_efficientnet",
            "model.weights=none",
            "model.drop_rate=0.3",
            f"preprocess.size={SIZE}",
            "preprocess.preset=crop",
            "train.run_name=tiny",
        ]
    )
    train_imgs, train_y = phantom_images(4, seed=1)
    pre = make_preprocessor(cfg, train_imgs)
    model = create_model(cfg.model, len(CLASSES))
    x = torch.from_numpy(np.stack([pre(a) for a in train_imgs])).float().div(255).unsqueeze(1)
    y = torch.from_numpy(train_y)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(6):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()

    manifest = root / "manifest.csv"
    manifest.write_text("id,path,label\nphantom/a.png,/x/a.png,glioma\n")
    split = root / "split.json"
    split.write_text(json.dumps({"manifest": str(manifest), "train": ["a"], "val": ["b"], "test": [], "excluded": []}))
    run = write_run(root / "tiny", cfg, model, pre, classes=CLASSES, split_file=split, preprocess_dir=root / "cache")
    if calibrate:  # the calibration.json schema of brainmri.calibrate.posthoc (version 1)
        calibration = {
            "version": 1,
            "classes": CLASSES,
            "fitted_on": "val",
            "n": 40,
            "temperature": 1.7,
            "threshold": 0.3,
            "conformal": {"0.1": {"method": "aps", "qhat": 0.8}, "0.05": {"method": "aps", "qhat": None}},
            "default_alpha": 0.1,
        }
        run.calibration_path.write_text(json.dumps(calibration))
    if reports:
        run.reports_dir.mkdir(exist_ok=True)
        metrics = {"n": 40, "accuracy": {"value": 0.625, "ci_low": 0.475, "ci_high": 0.775}, "confusion": [[1]]}
        (run.reports_dir / "metrics.json").write_text(json.dumps(metrics))
    return run


def fit_gate(run) -> np.ndarray:
    """Fit both out-of-domain scores of ``run`` on 24 phantoms (classes as labels, thresholds jointly on the same
    images) and write ``ood.json`` / ``ood_blocks.json``, as evaluation would; returns the preprocessed phantoms."""
    from brainmri.calibrate.ood import MahalanobisOOD, fit_joint_thresholds
    from brainmri.runs import predict_block_stats, predict_features

    model, pre = run.build_model(), run.preprocessor()
    images, labels = phantom_images(6, seed=3)
    x = np.stack([pre(a) for a in images])
    scores, val = [], []
    for predict in (predict_features, predict_block_stats):
        values = predict(model, x)
        scores.append(MahalanobisOOD(n_components=8).fit(values, labels))
        val.append(scores[-1].score(values))
    fit_joint_thresholds(scores, val)
    run.ood_path.write_text(json.dumps(scores[0].to_dict()))
    run.ood_blocks_path.write_text(json.dumps(scores[1].to_dict()))
    return x


_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """A calibrated tiny run folder, built once per session (shared: treat as read-only)."""
    if "run" not in _BUILT:
        _BUILT["run"] = build_run(tmp_path_factory.mktemp("tiny-run")).dir
    return _BUILT["run"]


@pytest.fixture(scope="session")
def bundle_dir(tiny_run_dir: Path) -> Path:
    """The bundle exported from ``tiny_run_dir``, once per session (shared: treat as read-only)."""
    from brainmri.bundle import export_bundle

    if "bundle" not in _BUILT:
        _BUILT["bundle"] = export_bundle(tiny_run_dir, tiny_run_dir.parent / "bundles" / "tiny")
    return _BUILT["bundle"]
