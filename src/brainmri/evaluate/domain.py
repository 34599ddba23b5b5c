"""Fit the out-of-domain score of a run: features of the training split, threshold on validation.

Why here and not in training: like the temperature, the score is fitted after training on fixed
weights, and its threshold needs the validation split (the fraction ``evaluate.ood_quantile`` of
in-domain validation images pass). The fitted object is saved as ``runs/<name>/ood.json`` and copied
into the bundle card by export, so prediction flags images unlike the training data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from brainmri.calibrate.ood import MahalanobisOOD
from brainmri.runs import predict_features
from brainmri.utils import atomic_write_json


def fit_ood(run: Any, model: Any, val_part: str, *, quantile: float = 0.95, batch_size: int = 64) -> MahalanobisOOD:
    """Mahalanobis score on the run's training features, threshold on its validation features; saved."""
    train = run.load_images("train" if val_part == "val" else val_part.replace(":val", ":train"))
    keep = train.labels >= 0
    train_features = predict_features(model, train.images[keep], batch_size, desc="features train")
    val = run.load_images(val_part)
    val_features = predict_features(model, val.images, batch_size, desc=f"features {val_part}")
    ood = MahalanobisOOD().fit(train_features, train.labels[keep])
    ood.fit_threshold(ood.score(val_features), quantile)
    atomic_write_json(run.ood_path, ood.to_dict())
    passed = float(np.mean(ood.predict(val_features)[0])) if len(val_features) else float("nan")
    print(f"out-of-domain score: fitted on {int(keep.sum())} training images; {passed:.1%} of {val_part} pass")
    return ood
