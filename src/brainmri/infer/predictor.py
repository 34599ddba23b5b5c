"""``Predictor``: decode -> preprocess (the bundle's own) -> model -> temperature -> decide.

>>> import brainmri
>>> predictor = brainmri.load_bundle("bundles/default")        # verifies every file's sha256
>>> [p.label for p in predictor.predict(["a.jpg", "scans/"])]  # files, folders, arrays, bytes

Every number a prediction reports comes from the bundle: the preprocessing state it was trained with,
its temperature, its conformal quantile and its decision threshold (``threshold`` overrides the last).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brainmri.bundle.sealed import Bundle
from brainmri.calibrate.ood import InputChecks
from brainmri.calibrate.probabilities import normalised_entropy, softmax, tumour_call, tumour_probability
from brainmri.config import PredictConfig
from brainmri.errors import (
    BrainMRIError,
    ConfigError,
    EmptyImageError,
    ImageReadError,
    ImageTooLargeError,
    TruncatedImageError,
    UnreadableImageError,
)
from brainmri.infer.inputs import Failure, Item, Loaded, Loader, expand_inputs
from brainmri.infer.runtime import Runtime, create_runtime
from brainmri.labels import NO_TUMOR

META_KEYS = ("format", "height", "width", "colourfulness", "border_brightness")
"""What a Prediction's ``meta`` keeps of the reader's: the input's format and size, the input-check signals."""

_ERRORS: dict[str, type[ImageReadError]] = {
    e.kind: e for e in (UnreadableImageError, TruncatedImageError, EmptyImageError, ImageTooLargeError)
}


@dataclass(frozen=True)
class GateScore:
    """One out-of-domain score of a batch: per image the score and whether it passes the bundle's threshold."""

    name: str
    """``features`` (pooled last-layer features) or ``block_stats`` (early-stage statistics)."""
    passes: np.ndarray
    scores: np.ndarray
    threshold: float

    def reason(self, i: int) -> str:
        what = "out-of-domain score" if self.name == "features" else "low-level image statistics score"
        return f"unlike the training images ({what} {self.scores[i]:.1f} > {self.threshold:.1f})"


@dataclass
class Prediction:
    """One image's result. Probabilities are calibrated (softmax(logits / temperature))."""

    source: str
    label: str
    probabilities: dict[str, float]
    tumor_probability: float | None
    """1 - p(no_tumor); None when the bundle has no ``no_tumor`` class."""
    is_tumor: bool | None
    threshold: float | None
    conformal_set: list[str] | None
    """Classes the conformal predictor cannot rule out at ``conformal_alpha``; None when uncalibrated."""
    conformal_alpha: float | None
    entropy: float
    """Normalised entropy in [0, 1]."""
    review: bool
    review_reasons: list[str]
    time_ms: float
    """Decode + preprocess of this image plus its share of its batch's model and decision time."""
    mc_dropout: dict[str, Any] | None = None
    """``{"passes": N, "mean": {class: p}, "std": {class: p}}`` when MC dropout was asked for."""
    gradcam: str | None = None
    in_domain: bool | None = None
    """False when the image is unlike the training images: its out-of-domain score is above the bundle's
    threshold, its low-level score is above its own (the two thresholds are set so that 95% of in-domain validation
    images pass both) or an input check flags it (a colour image, no dark background; ``predict.ood_max_*``). None
    when the bundle has no score and no input check flagged it."""
    ood_score: float | None = None
    """Out-of-domain score (Mahalanobis distance of the model's features; larger = further from training)."""
    ood_block_score: float | None = None
    """Low-level out-of-domain score (Mahalanobis distance of early-stage channel statistics: texture, noise,
    edges); None for bundles without one."""
    ood_reasons: list[str] = field(default_factory=list)
    """Why ``in_domain`` is False, in words (each failed check); empty otherwise."""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Predictor:
    """Runs a verified bundle. Build with :meth:`from_bundle` (or ``brainmri.load_bundle``)."""

    def __init__(
        self,
        bundle: Bundle,
        runtime: str | None = None,
        config: PredictConfig | None = None,
        threads: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.config = config if config is not None else PredictConfig()
        self.threads = threads if threads is not None else self.config.threads
        self.runtime: Runtime = create_runtime(runtime or self.config.runtime, bundle, threads=self.threads)
        self.preprocessor = bundle.preprocessor()
        self.classes = bundle.classes
        self.size = bundle.input_size
        self.loader = Loader(self.preprocessor, self.size, self.config.workers)
        self.posthoc = bundle.posthoc()
        self.conformal = None  # ConformalPredictor at config.conformal_alpha (or the bundle's default alpha)
        if self.posthoc is not None and self.posthoc.conformal_:
            self.conformal = self.posthoc.predictor(self.config.conformal_alpha)
        elif self.config.conformal_alpha is not None:
            raise ConfigError(f"{bundle.dir}: not calibrated, so no conformal sets (predict.conformal_alpha is set)")
        self._torch: Runtime | None = self.runtime if self.runtime.name == "torch" else None
        self.ood = bundle.ood()
        self.ood_blocks = bundle.ood_blocks()
        self.input_checks = InputChecks(self.config.ood_max_colourfulness, self.config.ood_max_border_brightness)
        self.adaptation: dict[str, Any] | None = None
        """What :meth:`adapt` did (images, batches, layers), or None: the bundle's own statistics."""
        self._source_runtime: Runtime | None = None  # the unadapted runtime (out-of-domain score) after adapt
        self._adapt_images: np.ndarray | None = None

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        runtime: str | None = None,
        config: PredictConfig | None = None,
        threads: int | None = None,
    ) -> Predictor:
        """Verify the bundle at ``path`` and build a predictor on ``runtime`` (``onnx`` | ``torch``)."""
        return cls(Bundle.load(path), runtime=runtime, config=config, threads=threads)

    # ------------------------------------------------------------------ settings

    @property
    def threshold(self) -> float | None:
        """Decision threshold in use: ``config.threshold`` if set, else the bundle's."""
        return self.config.threshold if self.config.threshold is not None else self.bundle.threshold

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax(logits / T) with the bundle's temperature (T = 1 if uncalibrated)."""
        return self.posthoc.probabilities(logits) if self.posthoc is not None else softmax(logits)

    def settings(self) -> dict[str, Any]:
        """What a prediction run used, for the output header."""
        conformal = self.conformal
        return {
            "bundle": str(self.bundle.dir),
            "bundle_card_sha256": self.bundle.card_sha256,
            "runtime": self.runtime.name,
            "calibrated": bool(self.bundle.calibration["calibrated"]),
            "temperature": self.bundle.temperature,
            "threshold": self.threshold,
            "threshold_source": "config" if self.config.threshold is not None else "bundle",
            "conformal": None if conformal is None else conformal.to_dict(),
            "review_entropy": self.config.review_entropy,
            "tta": self.config.tta,
            "mc_dropout": self.config.mc_dropout,
            "adapt_bn": self.adaptation,
            "input_checks": self.input_checks.to_dict(),
        }

    def torch_runtime(self) -> Runtime:
        """The torch runtime (created on first use when the main runtime is ONNX)."""
        if self._torch is None:
            runtime = create_runtime("torch", self.bundle, threads=self.threads)
            if self._adapt_images is not None:  # adapted predictor on ONNX: MC dropout / Grad-CAM++ alike
                from brainmri.infer.adabn import adapt_runtime

                x = self._adapt_images[:, None].astype(np.float32) / np.float32(255.0)
                runtime, _ = adapt_runtime(runtime, x, self.config.batch_size)
            self._torch = runtime
        return self._torch

    def adapt(self, inputs: Any, *, min_images: int | None = None, source: str | None = None) -> Predictor:
        """A new Predictor with BatchNorm statistics re-estimated on ``inputs`` (AdaBN, ``infer.adabn``).

        ``inputs``: what :meth:`run` takes (paths, folders, arrays), or preprocessed uint8 (N, S, S). No labels
        are needed, so adapting on the images about to be predicted is legitimate (transductive). Fewer than
        ``min_images`` (default ``config.adapt_bn_min_images``) readable images is an error. ``self`` is
        left unchanged: a Predictor may serve other callers, and an in-place change would alter their answers
        silently. The new one shares the bundle, preprocessor and decode threads, reports the adaptation in
        :meth:`settings`, and computes the out-of-domain score with the *unadapted* network (the score was
        fitted on features under the training statistics; adapted features would look in-domain by
        construction).
        """
        from brainmri.infer.adabn import adapt_predictor

        return adapt_predictor(self, inputs, min_images=min_images, source=source)

    # ------------------------------------------------------------------ model

    def logits(self, x: np.ndarray, tta: bool | None = None) -> np.ndarray:
        """Logits (B, C) for float32 (B, 1, S, S) in [0, 1], with TTA when asked (see ``infer.tta``)."""
        from brainmri.infer.tta import tta_logits

        use_tta = self.config.tta if tta is None else tta
        if use_tta:
            return tta_logits(self.runtime.logits, x, self.config.tta_shift)
        return self.runtime.logits(x)

    def predict_images(
        self,
        images: np.ndarray,
        sources: list[str] | None = None,
        *,
        tta: bool | None = None,
        mc_dropout: int | None = None,
        gradcam_dir: str | Path | None = None,
        start_index: int = 0,
        input_meta: list[dict[str, Any]] | None = None,
    ) -> list[Prediction]:
        """Predictions for already preprocessed uint8 images (B, S, S) (the model, calibration and decision).

        ``input_meta``: per image, the reader's ``LoadedImage.meta`` of the decoded file (its colourfulness and
        border brightness feed the out-of-domain input checks); None: only the feature score decides ``in_domain``.
        """
        start = time.perf_counter()
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (self.size, self.size):
            raise ConfigError(f"expected uint8 images (B, {self.size}, {self.size}), got {images.dtype} {images.shape}")
        sources = sources or [f"<image {start_index + i}>" for i in range(len(images))]
        x = images[:, None].astype(np.float32) / np.float32(255.0)
        heads = self.runtime.outputs(x)
        use_tta = self.config.tta if tta is None else tta
        probs = self.probabilities(self.logits(x, True) if use_tta else heads["logits"])
        scored = self.ood is not None or self.ood_blocks is not None
        source_heads = self._source_runtime.outputs(x) if self._source_runtime and scored else heads
        domain = self.domain_scores(source_heads)
        passes = self.config.mc_dropout if mc_dropout is None else mc_dropout
        mc = None
        if passes:
            from brainmri.infer.mc_dropout import mc_dropout_probs

            mc = mc_dropout_probs(self.torch_runtime().model, x, passes, self.probabilities)
        cams = None
        out_dir = gradcam_dir if gradcam_dir is not None else self.config.gradcam_dir
        if out_dir:
            maps = self.gradcam_maps(images, probs.argmax(axis=1), heads)
            cams = self._save_overlays(images, maps, probs.argmax(axis=1), Path(out_dir), sources, start_index)
        checks = None if input_meta is None else [self.input_checks.reasons(m) for m in input_meta]
        preds = self.decide(probs, sources, mc, cams, domain, checks)
        share = (time.perf_counter() - start) * 1000.0 / max(1, len(images))
        for p in preds:
            p.time_ms = share
        return preds

    def decide(
        self,
        probs: np.ndarray,
        sources: list[str],
        mc: np.ndarray | None = None,
        cams: list[str] | None = None,
        domain: list[GateScore] | None = None,
        input_reasons: list[list[str]] | None = None,
    ) -> list[Prediction]:
        """Predictions from calibrated probabilities (N, C): label, tumour call, conformal set, entropy, review.

        ``domain``: the scores from :meth:`domain_scores`; ``input_reasons``: per image, the failed
        input checks (:class:`InputChecks`). An out-of-domain image is sent to review with its reasons.
        """
        member = self.conformal.predict_sets(probs) if self.conformal is not None else None
        entropy = normalised_entropy(probs)
        threshold = self.threshold
        p_tumour = tumour_probability(probs, self.classes) if NO_TUMOR in self.classes else None
        calls = tumour_call(p_tumour, threshold) if p_tumour is not None and threshold is not None else None
        named = {g.name: g.scores for g in domain or []}
        out = []
        for i, p in enumerate(probs):
            cset = [c for c, m in zip(self.classes, member[i], strict=True) if m] if member is not None else None
            reasons = []
            if cset is not None and len(cset) > 1:
                reasons.append(f"conformal set has {len(cset)} classes")
            if cset is not None and not cset:
                reasons.append("conformal set is empty (input unlike the calibration data)")
            if entropy[i] > self.config.review_entropy:
                reasons.append(f"entropy {entropy[i]:.3f} > {self.config.review_entropy}")
            in_domain, ood_reasons = self._domain_verdict(i, domain, input_reasons)
            reasons += ood_reasons
            out.append(
                Prediction(
                    source=sources[i],
                    label=self.classes[int(p.argmax())],
                    probabilities=dict(zip(self.classes, map(float, p), strict=True)),
                    tumor_probability=None if p_tumour is None else float(p_tumour[i]),
                    is_tumor=None if calls is None else bool(calls[i]),
                    threshold=threshold,
                    conformal_set=cset,
                    conformal_alpha=self.conformal.alpha if self.conformal is not None else None,
                    entropy=float(entropy[i]),
                    review=bool(reasons),
                    review_reasons=reasons,
                    time_ms=0.0,
                    mc_dropout=None if mc is None else self._mc_summary(mc[:, i]),
                    gradcam=cams[i] if cams else None,
                    in_domain=in_domain,
                    ood_score=float(named["features"][i]) if "features" in named else None,
                    ood_block_score=float(named["block_stats"][i]) if "block_stats" in named else None,
                    ood_reasons=ood_reasons,
                )
            )
        return out

    def _mc_summary(self, passes: np.ndarray) -> dict[str, Any]:
        """One image's MC dropout passes (P, C) as ``{"passes", "mean", "std"}`` by class name."""
        return {
            "passes": int(passes.shape[0]),
            "mean": dict(zip(self.classes, map(float, passes.mean(axis=0)), strict=True)),
            "std": dict(zip(self.classes, map(float, passes.std(axis=0)), strict=True)),
        }

    def _domain_verdict(
        self, i: int, domain: list[GateScore] | None, input_reasons: list[list[str]] | None
    ) -> tuple[bool | None, list[str]]:
        """``(in_domain, reasons)`` of image ``i``: every score passes and every input check passes.

        None when the bundle has no score and no input check flagged the image (not assessed).
        """
        reasons = list(input_reasons[i]) if input_reasons is not None else []
        reasons += [g.reason(i) for g in domain or [] if not g.passes[i]]
        if reasons:
            return False, reasons
        return (True if domain else None), reasons

    def domain_scores(self, heads: dict[str, np.ndarray]) -> list[GateScore] | None:
        """Each fitted out-of-domain score on the runtime output it reads (``features``, ``block_stats``);
        None when the bundle has none (or its graph lacks the outputs)."""
        fitted = [("features", self.ood), ("block_stats", self.ood_blocks)]
        gate = []
        for name, score in fitted:
            if score is not None and name in heads:
                passes, values = score.predict(heads[name])
                gate.append(GateScore(name, passes, values, float(score.threshold_)))
        return gate or None

    def gradcam_maps(self, images: np.ndarray, targets: np.ndarray, heads: dict[str, np.ndarray] | None = None):
        """Heat maps (N, S, S) in [0, 1] explaining ``targets``.

        From the graph's class activation maps when the bundle has them and plain Grad-CAM is asked for
        (CAM equals Grad-CAM at the last feature map; no torch needed), else pytorch-grad-cam on the torch model.
        """
        from brainmri.models.cam import cams_from_maps

        if self.config.gradcam_method == "gradcam":
            heads = heads if heads is not None else self.runtime.outputs(images[:, None].astype(np.float32) / 255.0)
            if "cams" in heads:
                return cams_from_maps(heads["cams"], targets, self.size)
        try:
            from brainmri.models.cam import compute_cams

            model = self.torch_runtime().model
        except ImportError:
            raise BrainMRIError(
                "Grad-CAM needs torch for this bundle (no class-activation output, or gradcam++ asked for); "
                "install brainmri[train]"
            ) from None
        return compute_cams(model, images, targets=[int(t) for t in targets], method=self.config.gradcam_method)

    def _save_overlays(
        self, images: np.ndarray, cams: np.ndarray, targets: np.ndarray, out_dir: Path, sources: list[str], start: int
    ) -> list[str]:
        from PIL import Image

        from brainmri.models.cam import overlay
        from brainmri.utils import atomic_path

        paths = []
        for i, (image, cam) in enumerate(zip(images, cams, strict=True)):
            stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(sources[i]).name.split(".")[0]) or "image"
            path = out_dir / f"{start + i:06d}_{stem}_{self.classes[int(targets[i])]}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(np.asarray(overlay(image, cam))).save(tmp, format="PNG")
            paths.append(str(path))
        return paths

    # ------------------------------------------------------------------ inputs

    def run(self, inputs: Any, **kwargs: Any) -> Iterator[Prediction | Failure]:
        """Stream results in input order: a :class:`Prediction`, or a :class:`Failure` for a bad input.

        ``inputs``: a path (file or folder, recursive), an array (H, W), bytes, or a list of these.
        Keyword arguments go to :meth:`predict_images` (``tta``, ``mc_dropout``, ``gradcam_dir``).
        """
        items = inputs if isinstance(inputs, list) and all(isinstance(i, Item) for i in inputs) else None
        items = items if items is not None else expand_inputs(inputs)
        batch: list[Loaded | Failure] = []
        n_loaded = 0
        done = 0
        for result in self.loader(items):
            batch.append(result)
            if isinstance(result, Loaded):
                n_loaded += 1
            if n_loaded >= self.config.batch_size:
                yield from self._flush(batch, done, kwargs)
                done += len(batch)
                batch, n_loaded = [], 0
        if batch:
            yield from self._flush(batch, done, kwargs)

    def _flush(self, batch: list[Loaded | Failure], offset: int, kwargs: dict[str, Any]) -> list[Prediction | Failure]:
        loaded = [(i, r) for i, r in enumerate(batch) if isinstance(r, Loaded)]
        out: list[Prediction | Failure] = list(batch)
        if loaded:
            images = np.stack([r.image for _, r in loaded])
            sources, metas = [r.source for _, r in loaded], [r.meta for _, r in loaded]
            preds = self.predict_images(images, sources, start_index=offset, input_meta=metas, **kwargs)
            for (i, r), pred in zip(loaded, preds, strict=True):
                pred.time_ms += r.ms
                pred.meta = {k: r.meta[k] for k in META_KEYS if k in r.meta}
                out[i] = pred
        return out

    def predict(
        self, inputs: Any, *, errors: Literal["raise", "return"] = "raise", **kwargs: Any
    ) -> list[Prediction | Failure]:
        """Predictions for ``inputs`` (see :meth:`run`), in input order.

        ``errors="raise"`` (default) raises an :class:`ImageReadError` naming the first bad input;
        ``errors="return"`` puts a :class:`Failure` in its place instead.
        """
        results = list(self.run(inputs, **kwargs))
        if errors == "raise":
            for r in results:
                if isinstance(r, Failure):
                    raise _ERRORS.get(r.kind, UnreadableImageError)(r.source, r.reason)
        return results

    def predict_study(self, source: str | Path, **kwargs: Any):  # -> brainmri.infer.study.StudyPrediction
        """Every slice of one DICOM series folder or NIfTI volume, and the study's answer (``infer.study``).

        Keyword arguments: ``series_uid``, ``axis``, ``volume``, ``method``, ``top_k``, ``montage_dir``.
        """
        from brainmri.infer.study import predict_study

        return predict_study(self, source, **kwargs)

    def predict_studies(self, source: str | Path, **kwargs: Any):  # -> (list[StudyPrediction], skipped files)
        """Each series in ``source`` (a folder may hold several), labelled by SeriesInstanceUID (``infer.study``)."""
        from brainmri.infer.study import predict_studies

        return predict_studies(self, source, **kwargs)

    def close(self) -> None:
        """Stop the decode/preprocess worker threads (if any were started)."""
        self.loader.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
