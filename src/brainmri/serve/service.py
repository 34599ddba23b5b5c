"""The inference behind the HTTP API: one verified Predictor, a bounded worker pool, JSON payloads.

Uploads are held in memory only (nothing is written to disk). Each request is checked before it
takes a worker (empty file, magic bytes), then decoded with the reader's pixel limit (the
decompression-bomb guard reads the size from the header before any pixel is allocated),
preprocessed with the bundle's own preprocessor, and run through the bundle's ONNX model.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.config import PredictConfig
from brainmri.errors import BrainMRIError, ImageReadError
from brainmri.infer import Prediction, Predictor
from brainmri.io.reader import read_image, sniff_format
from brainmri.serve.errors import ApiError
from brainmri.serve.settings import ServeSettings

SUPPORTED = "JPEG, PNG, BMP, TIFF, GIF, WebP, DICOM, NIfTI"
# shown when the Prediction carries them (the out-of-domain gate)
OPTIONAL_FIELDS = ("in_domain", "ood_score", "ood_block_score", "ood_reasons")
INPUT_KEYS = ("format", "height", "width", "mode")  # what a payload's ``input`` reports of the reader's metadata
SIGNAL_KEYS = ("colourfulness", "border_brightness")  # also kept: the out-of-domain input checks read them


@dataclass(frozen=True)
class Options:
    """Per-request options (query parameters)."""

    threshold: float | None = None
    tta: bool = False
    gradcam: bool = False
    preview: bool = False
    mc_dropout: int = 0


def png_base64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def clean_name(name: str | None, index: int = 0) -> str:
    """The upload's file name for messages (client-supplied: printable, at most 120 characters)."""
    text = "".join(ch for ch in (name or "") if ch.isprintable()).strip()
    return (text or f"upload-{index}")[:120]


class InferenceService:
    """Loads and verifies the bundle once, runs predictions in a pool of ``settings.workers`` threads."""

    def __init__(self, bundle_path: str | Path, settings: ServeSettings) -> None:
        self.settings = settings
        config = PredictConfig(workers=0, threads=settings.threads, batch_size=settings.max_batch_files)
        self.predictor = Predictor.from_bundle(bundle_path, config=config, threads=settings.threads)
        self.bundle = self.predictor.bundle
        self.classes = self.predictor.classes
        self.model_info = {
            "name": self.bundle.name,
            "card_sha256": self.bundle.card_sha256,
            "runtime": self.predictor.runtime.name,
        }
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="brainmri-serve")
        self._lock = threading.Lock()
        self._torch_lock = threading.Lock()  # one shared torch model: Grad-CAM hooks, MC-dropout mode
        self._pending = 0
        self.ready = False
        self._warm_up()

    def _warm_up(self) -> None:
        """One prediction on a blank image: the model runs end to end before /ready says so."""
        size = self.predictor.size
        self.predictor.predict_images(np.zeros((1, size, size), dtype=np.uint8), ["<warm-up>"])
        self.ready = True

    @property
    def capacity(self) -> int:
        return self.settings.workers + self.settings.queue_limit

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        self.ready = False
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.predictor.close()

    # ------------------------------------------------------------------ admission

    async def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the pool: 503 when the queue is full, 504 after ``timeout_s``."""
        with self._lock:
            if self._pending >= self.capacity:
                raise ApiError(
                    503,
                    "overloaded",
                    f"server busy: {self._pending} requests in progress or queued (limit {self.capacity}); retry",
                    {"Retry-After": str(self.settings.retry_after_s)},
                )
            self._pending += 1
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.timeout_s)
        except TimeoutError:
            raise ApiError(504, "timeout", f"inference took longer than {self.settings.timeout_s:g} s") from None

    def _release(self, _future: Any) -> None:
        with self._lock:
            self._pending -= 1

    # ------------------------------------------------------------------ one image

    def check_upload(self, data: bytes, name: str) -> str:
        """The sniffed format of an upload, or 400 (empty) / 415 (not an image), before it takes a worker."""
        if not data:
            raise ApiError(400, "empty_file", f"{name}: file is empty (0 bytes)")
        fmt = sniff_format(data[:512], name)
        if fmt is None:
            head = data[:8].hex(" ")
            raise ApiError(
                415,
                "unsupported_media_type",
                f"{name}: not a recognised image format (first bytes {head}); send one of {SUPPORTED}",
            )
        return fmt

    def load(self, data: bytes, name: str, timings: dict[str, float]) -> tuple[np.ndarray, dict[str, Any]]:
        """Decode (pixel limit from the header) + preprocess -> uint8 (S, S) and the input's metadata."""
        t0 = time.perf_counter()
        try:
            loaded = read_image(
                data, name=name, max_pixels=self.settings.max_pixels, max_bytes=self.settings.max_upload_bytes
            )
        except ImageReadError as exc:
            raise ApiError.from_image_error(exc) from None
        t1 = time.perf_counter()
        try:
            image = self.predictor.preprocessor(loaded.array)
        except (BrainMRIError, ValueError, ArithmeticError) as exc:
            raise ApiError(422, "preprocess_failed", f"{name}: preprocessing failed: {exc}") from None
        timings["decode"] = timings.get("decode", 0.0) + (t1 - t0) * 1000.0
        timings["preprocess"] = timings.get("preprocess", 0.0) + (time.perf_counter() - t1) * 1000.0
        meta = {k: loaded.meta[k] for k in INPUT_KEYS + SIGNAL_KEYS if k in loaded.meta}
        return image, meta

    def predict_one(self, data: bytes, name: str, options: Options) -> dict[str, Any]:
        """Decode, preprocess, model, decide (+ Grad-CAM, preview) for one upload; raises ApiError."""
        start = time.perf_counter()
        timings: dict[str, float] = {}
        image, meta = self.load(data, name, timings)
        payload = self._predict_images(image[None], [name], [meta], options, timings)[0]
        timings["total"] = (time.perf_counter() - start) * 1000.0
        return {"prediction": payload, "timings_ms": {k: round(v, 3) for k, v in timings.items()}}

    def predict_many(self, uploads: list[tuple[bytes, str]], options: Options) -> dict[str, Any]:
        """Every upload of a batch: a prediction, or a per-file error naming the problem."""
        start = time.perf_counter()
        timings: dict[str, float] = {}
        results: list[dict[str, Any]] = [{} for _ in uploads]
        ok: list[tuple[int, np.ndarray, dict[str, Any]]] = []
        for i, (data, name) in enumerate(uploads):
            try:
                self.check_upload(data, name)
                image, meta = self.load(data, name, timings)
                ok.append((i, image, meta))
            except ApiError as exc:
                results[i] = {"filename": name, "ok": False, "status": exc.status, "error": exc.to_dict()}
        if ok:
            images = np.stack([image for _, image, _ in ok])
            names = [uploads[i][1] for i, _, _ in ok]
            payloads = self._predict_images(images, names, [m for _, _, m in ok], options, timings)
            for (i, _, _), payload in zip(ok, payloads, strict=True):
                results[i] = {"filename": uploads[i][1], "ok": True, "prediction": payload}
        timings["total"] = (time.perf_counter() - start) * 1000.0
        return {"results": results, "timings_ms": {k: round(v, 3) for k, v in timings.items()}}

    def _predict_images(
        self, images: np.ndarray, names: list[str], metas: list[dict], options: Options, timings: dict[str, float]
    ) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        preds = self._predictions(images, names, options, metas)
        timings["model"] = (time.perf_counter() - t0) * 1000.0
        cams: list[str | None] = [None] * len(preds)
        if options.gradcam:
            t1 = time.perf_counter()
            cams = self.gradcam_overlays(images, [self.classes.index(p.label) for p in preds])
            timings["gradcam"] = (time.perf_counter() - t1) * 1000.0
        out = []
        for i, pred in enumerate(preds):
            payload = self.payload(pred, options.threshold)
            payload["input"] = {k: metas[i][k] for k in INPUT_KEYS if k in metas[i]}
            payload["gradcam_png_base64"] = cams[i]
            if options.preview:
                payload["preview_png_base64"] = png_base64(images[i])
            out.append(payload)
        return out

    def _predictions(
        self, images: np.ndarray, names: list[str], options: Options, metas: list[dict] | None = None
    ) -> list[Prediction]:
        if not options.mc_dropout:
            return self.predictor.predict_images(images, names, tta=options.tta, mc_dropout=0, input_meta=metas)
        if options.mc_dropout < 2:
            raise ApiError(422, "invalid_request", "mc_dropout: at least 2 passes (or 0 for none)")
        try:
            with self._torch_lock:
                return self.predictor.predict_images(
                    images, names, tta=options.tta, mc_dropout=options.mc_dropout, input_meta=metas
                )
        except ImportError as exc:
            raise ApiError(
                501,
                "mc_dropout_unavailable",
                f"mc_dropout needs the torch runtime (torch and timm installed); {exc.name} is missing on this"
                " server. Ask without mc_dropout.",
            ) from None

    # ------------------------------------------------------------------ Grad-CAM

    def gradcam_overlays(self, images: np.ndarray, targets: list[int]) -> list[str | None]:
        """Grad-CAM overlays (RGB PNG, base64) on the model input; 501 where this install cannot draw them.

        Uses ``Predictor.gradcam_maps`` when the inference layer has it (class activation maps from the
        ONNX graph when the bundle exports them, no torch), else pytorch-grad-cam on the bundle's torch model.
        """
        if not self.settings.gradcam:
            raise ApiError(501, "gradcam_disabled", "gradcam is switched off on this server (ServeSettings.gradcam)")
        try:
            from brainmri.models.cam import overlay

            with self._torch_lock:
                maps = self._gradcam_maps(images, targets)
        except (ImportError, BrainMRIError) as exc:
            reason = f"{exc.name} is missing" if isinstance(exc, ImportError) else str(exc)
            raise ApiError(
                501,
                "gradcam_unavailable",
                f"gradcam needs the torch runtime (torch and grad-cam installed) or a bundle exported with class"
                f" activation maps; this server cannot draw it ({reason}). Ask without gradcam=true.",
            ) from None
        return [png_base64(overlay(image, cam)) for image, cam in zip(images, maps, strict=True)]

    def _gradcam_maps(self, images: np.ndarray, targets: list[int]) -> np.ndarray:
        maps_fn = getattr(self.predictor, "gradcam_maps", None)
        if maps_fn is not None:
            return maps_fn(images, np.asarray(targets))
        import pytorch_grad_cam  # noqa: F401
        import torch  # noqa: F401

        from brainmri.models.cam import compute_cams

        model = self.predictor.torch_runtime().model
        return compute_cams(model, images, targets=targets, method=self.predictor.config.gradcam_method)

    # ------------------------------------------------------------------ payloads

    def payload(self, pred: Prediction, threshold: float | None = None) -> dict[str, Any]:
        """The JSON of one prediction; ``threshold`` (the request's) re-decides the tumour call."""
        is_tumor, used = pred.is_tumor, pred.threshold
        if threshold is not None and pred.tumor_probability is not None:
            is_tumor, used = bool(pred.tumor_probability >= threshold), threshold
        out: dict[str, Any] = {
            "filename": pred.source,
            "label": pred.label,
            "confidence": max(pred.probabilities.values()),
            "probabilities": pred.probabilities,
            "tumor_probability": pred.tumor_probability,
            "is_tumor": is_tumor,
            "threshold": used,
            "threshold_source": "request" if threshold is not None else "bundle",
            "conformal_set": pred.conformal_set,
            "conformal_alpha": pred.conformal_alpha,
            "uncertainty": {
                "entropy": pred.entropy,
                "review": pred.review,
                "review_reasons": pred.review_reasons,
                "mc_dropout": pred.mc_dropout,
            },
        }
        for field in OPTIONAL_FIELDS:
            if hasattr(pred, field):
                out[field] = getattr(pred, field)
        return out
