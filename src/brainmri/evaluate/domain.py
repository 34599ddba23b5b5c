"""Fit the out-of-domain gate of a run: scores on the training split, thresholds on validation.

Why here and not in training: like the temperature, the scores are fitted after training on fixed
weights, and their thresholds need the validation split (the fraction ``evaluate.ood_quantile`` of
in-domain validation images pass the gate). Two scores (``brainmri.calibrate.ood``): a Mahalanobis score on
the pooled features (``runs/<name>/ood.json``) and, when the backbone exposes early stages, one on their
per-channel statistics (``ood_blocks.json``); their thresholds are raised together so that the fraction is
that of the gate, not of each score. Export copies both into the bundle card.

The fit is reused while nothing it depends on changed (``ood_fit.json`` records the weights' digest, the split,
the validation part and the quantile): scoring the training split dominates an evaluation on CPU, and
``evaluate --split <manifest>`` of an external set would otherwise redo it for the same weights.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from brainmri.bundle.source import BundleSource
from brainmri.calibrate.ood import MahalanobisOOD, fit_joint_thresholds, ood_from_dict
from brainmri.runs import WEIGHTS_FILE, predict_outputs
from brainmri.utils import atomic_write_json, file_digest

GATE_FIT_FILE = "ood_fit.json"


def gate_fit_key(run: Any, val_part: str, quantile: float) -> dict[str, Any]:
    """What a fitted gate depends on: the weights, the split file, the validation part and the pass quantile."""
    return {
        "weights_sha256": file_digest(run.dir / WEIGHTS_FILE, "sha256"),
        "split_sha256": run.info.get("split_sha256"),
        "val_part": val_part,
        "quantile": float(quantile),
    }


def _reusable(run: Any, key: dict[str, Any]) -> MahalanobisOOD | None:
    """The saved pooled-feature score when ``ood_fit.json`` records the same ``key``; else None."""
    record = run.dir / GATE_FIT_FILE
    if not (record.is_file() and run.ood_path.is_file()):
        return None
    try:
        if json.loads(record.read_text()) != key:
            return None
        return MahalanobisOOD.from_dict(json.loads(run.ood_path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable record or score is refitted, not trusted


def fit_ood(run: Any, model: Any, val_part: str, *, quantile: float = 0.95, batch_size: int = 64) -> MahalanobisOOD:
    """Mahalanobis scores on the run's training features, joint thresholds on its validation features; saved.

    Returns the pooled-feature score; the block-statistics score is saved beside it (or a stale one removed).
    A fit recorded for the same weights, split, part and quantile (``ood_fit.json``) is returned unchanged.
    """
    key = gate_fit_key(run, val_part, quantile)
    if (saved := _reusable(run, key)) is not None:
        print(f"out-of-domain gate: reusing {run.ood_path.name} (fitted for these weights and {val_part})")
        return saved
    (run.dir / GATE_FIT_FILE).unlink(missing_ok=True)
    train = run.load_images("train" if val_part == "val" else val_part.replace(":val", ":train"))
    keep = train.labels >= 0
    val = run.load_images(val_part)
    x_train = predict_outputs(model, train.images[keep], batch_size, desc="gate: train")
    x_val = predict_outputs(model, val.images, batch_size, desc=f"gate: {val_part}")
    names = [n for n in ("features", "block_stats") if n in x_train]  # the graph has block_stats where it can
    scores = [MahalanobisOOD().fit(x_train[name], train.labels[keep]) for name in names]
    val_scores = [s.score(x_val[name]) for s, name in zip(scores, names, strict=True)]
    q = fit_joint_thresholds(scores, val_scores, quantile)
    atomic_write_json(run.ood_path, scores[0].to_dict())
    if len(scores) > 1:
        atomic_write_json(run.ood_blocks_path, scores[1].to_dict())
    else:
        run.ood_blocks_path.unlink(missing_ok=True)
    atomic_write_json(run.dir / GATE_FIT_FILE, key)
    passed = np.logical_and.reduce([v <= s.threshold_ for s, v in zip(scores, val_scores, strict=True)])
    print(f"out-of-domain gate ({' + '.join(names)}): fitted on {int(keep.sum())} training images; "
          f"{passed.mean():.1%} of {val_part} pass (thresholds at the {q:.3f} quantile)")  # fmt: skip
    return scores[0]


def load_gate(source: Any) -> list[tuple[str, Any]]:
    """The fitted scores of a run (its ``ood*.json``) or of a bundle source (its card), each with the model
    output it reads (``features``, ``block_stats``); empty when nothing was fitted."""
    if isinstance(source, BundleSource):
        found = [("features", source.bundle.ood()), ("block_stats", source.bundle.ood_blocks())]
    else:
        paths = [("features", source.ood_path), ("block_stats", source.ood_blocks_path)]
        found = [(name, ood_from_dict(json.loads(p.read_text())) if p.is_file() else None) for name, p in paths]
    return [(name, score) for name, score in found if score is not None]


def gate_passes(gate: list[tuple[str, Any]], outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """Per image: True when every fitted score passes its threshold on the model's ``outputs``
    (``runs.predict_outputs``), as prediction decides ``in_domain`` (input checks on the decoded file aside);
    None without a fitted gate."""
    if not gate:
        return None
    passes = np.ones(len(next(iter(outputs.values()))), dtype=bool)
    for name, score in gate:
        passes &= score.predict(outputs[name])[0]
    return passes
