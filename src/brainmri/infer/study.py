"""Study-level prediction: every slice of a DICOM series or NIfTI volume, then one answer for the study.

>>> predictor = brainmri.load_bundle("bundles/cpu-robust")
>>> study = predictor.predict_study("patient01/series/")        # or a .nii.gz volume
>>> study.is_tumor, study.label, study.driving_slices, study.montage

Each slice is decoded, preprocessed and classified exactly as a single image is (``Predictor.run``). The study
tumour probability aggregates the slice tumour probabilities p_i (``AGGREGATES``):

- ``max``: max_i p_i — one confident slice decides;
- ``topk_mean``: the mean of the k largest p_i — a lesion spans several adjacent slices, so needing k of them
  damps a single spurious slice while a real lesion still scores like its slices;
- ``noisy_or``: 1 - prod_i (1 - p_i) — treats slices as independent detectors; with tens of slices it
  saturates towards 1 whenever many slices have small p_i, so it is not on the slice scale.

``max`` and ``topk_mean`` stay on the slice probability scale, so the bundle's slice threshold is applied to
them unchanged; the default (``DEFAULT_AGGREGATE``, ``DEFAULT_TOP_K``) was chosen by measurement on
lgg-flair (``bench/study_level.py``, docs/inference.md "Studies"). The predicted class of a tumour study is
the tumour class with the highest mean probability over the driving slices (the top-k by p_i).

Nothing is resampled: gaps, mixed sizes and other problems of the series (``brainmri.io.series``) are copied
into the result and send the study to review.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.errors import BrainMRIError, ImageReadError
from brainmri.infer.inputs import Failure, Item, load_item
from brainmri.io.series import Series, find_series
from brainmri.labels import NO_TUMOR

AGGREGATES = ("topk_mean", "max", "noisy_or")
DEFAULT_AGGREGATE = "topk_mean"
DEFAULT_TOP_K = 3


def aggregate(p_tumour: np.ndarray, method: str = DEFAULT_AGGREGATE, k: int = DEFAULT_TOP_K) -> float:
    """Study tumour probability from slice tumour probabilities (see the module docstring)."""
    p = np.asarray(p_tumour, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("no slice probabilities to aggregate")
    if method == "max":
        return float(p.max())
    if method == "topk_mean":
        return float(np.sort(p)[-min(k, p.size) :].mean())
    if method == "noisy_or":
        return float(1.0 - np.exp(np.log1p(-np.clip(p, 0.0, 1.0 - 1e-12)).sum()))
    raise ValueError(f"unknown aggregate '{method}'; choose from {AGGREGATES}")


@dataclass
class StudyPrediction:
    """One series' answer. ``slices``: every slice, ordered along the normal, with its prediction or skip reason."""

    source: str
    series: dict[str, Any]
    """``Series.summary()``: kind, UIDs, description, axis, spacing, slice count, problems."""
    uids: dict[str, str | None]
    aggregate: str
    top_k: int
    tumor_probability: float | None
    is_tumor: bool | None
    threshold: float | None
    label: str | None
    """``no_tumor``, or the tumour class with the highest mean probability over the driving slices."""
    probabilities: dict[str, float] | None
    """Mean calibrated probabilities over the driving slices."""
    driving_slices: list[int]
    """Indices (into ``slices``) of the top-k slices by tumour probability, highest first."""
    slices: list[dict[str, Any]]
    n_predicted: int
    review: bool
    review_reasons: list[str]
    montage: str | None = None
    time_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(
    p_tumour: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float | None, method: str, k: int
) -> dict[str, Any]:
    """Aggregate, decision, label and driving slices from per-slice p_tumour (N,) and probabilities (N, C)."""
    order = np.argsort(-np.asarray(p_tumour), kind="stable")[: max(1, k)]
    agg = aggregate(p_tumour, method, k)
    is_tumor = None if threshold is None else bool(agg >= threshold)
    mean = np.asarray(probs)[order].mean(axis=0)
    tumour_classes = [i for i, c in enumerate(classes) if c != NO_TUMOR]
    if is_tumor is None:
        label = classes[int(mean.argmax())]
    elif is_tumor:
        label = classes[max(tumour_classes, key=lambda i: mean[i])]
    else:
        label = NO_TUMOR
    return {
        "tumor_probability": agg,
        "is_tumor": is_tumor,
        "label": label,
        "probabilities": dict(zip(classes, map(float, mean), strict=True)),
        "driving_slices": [int(i) for i in order],
    }


def _items(series: Series) -> tuple[list[Item], list[int]]:
    """Model inputs of the slices that can be read (the others get ``skip``), and their slice indices."""
    items, index = [], []
    for i, info in enumerate(series.slices):
        try:
            payload = series.payload(i)
        except ImageReadError as exc:
            info.skip = f"{exc.kind}: {exc.reason}"
            continue
        items.append(Item(info.source, payload))
        index.append(i)
    return items, index


def predict_series(
    predictor: Any,
    series: Series,
    *,
    method: str = DEFAULT_AGGREGATE,
    top_k: int = DEFAULT_TOP_K,
    montage_dir: str | Path | None = None,
) -> StudyPrediction:
    """Predict every slice of ``series`` and aggregate (see the module docstring)."""
    if NO_TUMOR not in predictor.classes:
        raise BrainMRIError(f"study mode needs a bundle with a '{NO_TUMOR}' class; this one has {predictor.classes}")
    aggregate(np.zeros(1), method, top_k)  # an unknown method fails before any work
    start = time.perf_counter()
    items, index = _items(series)
    rows: list[dict[str, Any]] = [info.to_dict() for info in series.slices]
    predicted: list[int] = []
    for i, result in zip(index, predictor.run(items), strict=True):
        if isinstance(result, Failure):
            series.slices[i].skip = rows[i]["skip"] = f"{result.kind}: {result.reason}"
            continue
        rows[i]["prediction"] = {k: v for k, v in result.to_dict().items() if k != "source"}
        predicted.append(i)
    reasons = [f"series: {p}" for p in series.problems]
    skipped = [r for r in rows if r["skip"] and "blank" not in r["skip"]]  # blank slices: air outside the head
    if skipped:
        reasons.append(f"{len(skipped)} of {len(rows)} slices not predicted (first: slice {skipped[0]['index']}: "
                       f"{skipped[0]['skip']})")  # fmt: skip
    out = StudyPrediction(
        source=series.source,
        series=series.summary(),
        uids=dict(series.uids),
        aggregate=method,
        top_k=top_k,
        tumor_probability=None,
        is_tumor=None,
        threshold=predictor.threshold,
        label=None,
        probabilities=None,
        driving_slices=[],
        slices=rows,
        n_predicted=len(predicted),
        review=True,
        review_reasons=reasons,
    )
    if predicted:
        _decide(out, predictor, predicted, rows, method, top_k)
        if montage_dir is not None:
            out.montage = _montage(predictor, series, out, Path(montage_dir))
    else:
        out.review_reasons.append("no slice could be predicted")
    out.review = bool(out.review_reasons)
    out.time_ms = (time.perf_counter() - start) * 1000.0
    return out


def _decide(out: StudyPrediction, predictor: Any, predicted: list[int], rows: list[dict], method: str, k: int) -> None:
    classes = predictor.classes
    preds = [rows[i]["prediction"] for i in predicted]
    p = np.array([r["tumor_probability"] for r in preds], dtype=np.float64)
    probs = np.array([[r["probabilities"][c] for c in classes] for r in preds], dtype=np.float64)
    s = summarise(p, probs, classes, predictor.threshold, method, k)
    out.tumor_probability, out.is_tumor, out.label = s["tumor_probability"], s["is_tumor"], s["label"]
    out.probabilities = s["probabilities"]
    out.driving_slices = [predicted[i] for i in s["driving_slices"]]
    flagged = [i for i in out.driving_slices if rows[i]["prediction"]["review"]]
    if flagged:
        out.review_reasons.append(f"driving slice(s) {flagged} flagged for review")
    outside = sum(1 for r in preds if r.get("in_domain") is False)
    if outside * 2 > len(preds):
        out.review_reasons.append(f"{outside} of {len(preds)} slices unlike the training images (out of domain)")


def _montage(predictor: Any, series: Series, study: StudyPrediction, out_dir: Path) -> str:
    """A PNG of the driving slices side by side, Grad-CAM of the study's class over each, captioned."""
    import cv2
    from PIL import Image

    from brainmri.models.cam import overlay
    from brainmri.utils import atomic_path

    images = []
    for i in study.driving_slices:
        loaded = load_item(Item(series.slices[i].source, series.payload(i)), predictor.preprocessor, predictor.size)
        images.append(loaded.image)
    target = predictor.classes.index(study.label)
    maps = predictor.gradcam_maps(np.stack(images), np.full(len(images), target))
    tiles = []
    for i, image, cam in zip(study.driving_slices, images, maps, strict=True):
        tile = np.ascontiguousarray(overlay(image, cam))
        tile = cv2.resize(tile, (max(tile.shape[1], 192), max(tile.shape[0], 192)), interpolation=cv2.INTER_NEAREST)
        text = f"slice {i}  p={study.slices[i]['prediction']['tumor_probability']:.2f}"
        cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    montage = np.concatenate(tiles, axis=1)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(study.uids.get("series_instance_uid") or Path(study.source).name))
    path = out_dir / f"study_{stem[-80:]}_{study.label}.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(montage).save(tmp, format="PNG")
    return str(path)


def predict_studies(
    predictor: Any,
    source: str | Path,
    *,
    axis: int | str | None = None,
    volume: int | None = None,
    **kwargs: Any,
) -> tuple[list[StudyPrediction], list[str]]:
    """Every series in ``source`` (a folder with one or several series, a DICOM file, a NIfTI volume), each
    predicted and labelled by its SeriesInstanceUID (or file), and the files skipped with reasons."""
    series, skipped = find_series(source, axis=axis, volume=volume)
    return [predict_series(predictor, s, **kwargs) for s in series], skipped


def predict_study(
    predictor: Any, source: str | Path, *, series_uid: str | None = None, **kwargs: Any
) -> StudyPrediction:
    """The one series in ``source`` (or the one with ``series_uid``); several series without a choice is an error
    that lists them (use :func:`predict_studies` to predict each)."""
    series, _ = find_series(source, axis=kwargs.pop("axis", None), volume=kwargs.pop("volume", None))
    if series_uid is not None:
        series = [s for s in series if s.uids.get("series_instance_uid") == series_uid]
        if not series:
            raise BrainMRIError(f"{source}: no series with SeriesInstanceUID {series_uid}")
    if len(series) > 1:
        names = "; ".join(f"{s.label} ({len(s.slices)} slices)" for s in series)
        raise BrainMRIError(f"{source}: {len(series)} series ({names}); choose one with series_uid= or use "
                            "predict_studies / `brainmri predict --study` to predict each")  # fmt: skip
    return predict_series(predictor, series[0], **kwargs)
