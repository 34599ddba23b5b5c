"""A training run folder, read back by evaluation, k-fold and export.

``runs/<name>/`` holds everything needed to rebuild the trained model and its inputs without the
training code: ``config.yaml`` (resolved), ``run.json`` (classes, split file + hash, preprocessing
cache, best epoch/score), ``preprocessor.json`` (fitted state), ``model.safetensors`` (best weights),
``calibration.json`` (written by evaluation: temperature, conformal quantiles, threshold).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.config import Config, load_config
from brainmri.errors import DataError

RUN_JSON = "run.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor.json"
CALIBRATION_FILE = "calibration.json"
OOD_FILE = "ood.json"
OOD_BLOCKS_FILE = "ood_blocks.json"


@dataclass
class SplitImages:
    """Preprocessed images of one split, in split-file order."""

    ids: list[str]
    paths: list[str]
    images: np.ndarray  # uint8 (N, S, S): the Preprocessor output, exactly what the model sees / 255
    labels: np.ndarray  # int64 (N,), index into classes; -1 when unknown (e.g. binary 'tumor' rows)
    label_names: list[str]
    overlap: dict[str, Any] | None = None  # external sets: what was removed because training data holds it


@dataclass
class Run:
    dir: Path
    info: dict[str, Any]
    cfg: Config

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        d = Path(run_dir)
        if not (d / RUN_JSON).is_file():
            raise DataError(f"{d}: not a training run (no {RUN_JSON}); train one with `brainmri train`")
        info = json.loads((d / RUN_JSON).read_text())
        cfg = load_config(d / "config.yaml")
        return cls(d, info, cfg)

    @property
    def name(self) -> str:
        return str(self.info.get("name", self.dir.name))

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def reports_dir(self) -> Path:
        return self.dir / "reports"

    @property
    def calibration_path(self) -> Path:
        return self.dir / CALIBRATION_FILE

    @property
    def ood_path(self) -> Path:
        """The out-of-domain score fitted by evaluation (``brainmri.calibrate.ood``)."""
        return self.dir / OOD_FILE

    @property
    def ood_blocks_path(self) -> Path:
        """The low-level out-of-domain score (early-stage statistics) fitted by evaluation, if the backbone has one."""
        return self.dir / OOD_BLOCKS_FILE

    def build_model(self):  # -> BrainClassifier
        """The trained model (best checkpoint) in eval mode, on CPU."""
        from safetensors.torch import load_file

        from brainmri.models import create_model

        weights = self.dir / WEIGHTS_FILE
        if not weights.is_file():
            raise DataError(f"{self.dir}: no {WEIGHTS_FILE}; did training finish?")
        model_cfg = self.cfg.model.model_copy(update={"weights": "none"})
        model = create_model(model_cfg, len(self.classes))
        model.load_state_dict(load_file(str(weights)), strict=True)
        return model.eval()

    def preprocessor(self):  # -> Preprocessor
        from brainmri.preprocess import Preprocessor

        return Preprocessor.load(self.dir / PREPROCESSOR_FILE)

    def split(self) -> dict[str, Any]:
        from brainmri.data.split import read_split

        return read_split(self.info["split_file"])

    def cache(self):  # -> PreprocessedCache
        from brainmri.preprocess.cache import PreprocessedCache

        return PreprocessedCache(self.info["preprocess_dir"])

    def load_images(self, which: str) -> SplitImages:
        """Images of ``which`` (``train``/``val``/``test`` or ``fold<k>:train|val``) from the cache."""
        from brainmri.data.manifest import read_manifest
        from brainmri.data.split import split_frame

        split = self.split()
        manifest = read_manifest(split["manifest"])
        frame = split_frame(manifest, split, which)
        return images_from_cache(frame, self.cache(), self.classes)

    def load_external(self, manifest_path: str | Path) -> SplitImages:
        """Readable images of another manifest, minus those the model (or its calibration) has seen.

        Public sets share images: an external image whose md5 equals, or whose perceptual hash lies
        within ``audit.near_threshold`` of, an image of this run's train or val split is removed before
        evaluation, and ``SplitImages.overlap`` says how many and which.
        """
        from brainmri.data.manifest import read_manifest

        frame = read_manifest(manifest_path)
        frame = frame[frame["readable"].astype(str).str.lower() == "true"]
        keep, overlap = self.without_training_overlap(frame, str(manifest_path))
        data = images_from_files(frame[keep], self.preprocessor(), self.classes)
        data.overlap = overlap
        return data

    def without_training_overlap(self, frame, name: str) -> tuple[np.ndarray, dict[str, Any]]:
        """Boolean mask of ``frame`` rows that are neither exact nor near duplicates of train + val images."""
        return training_overlap(frame, self.split(), self.info["split_file"], self.cfg.audit.near_threshold, name)


def training_overlap(
    frame, split: dict[str, Any], split_file: str, threshold: int, name: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """Keep-mask of ``frame`` rows that are neither exact (md5) nor near (pHash within ``threshold``) copies
    of the train + val images of ``split``, and what was removed. Shared by runs and bundles whose training
    split is at hand."""
    from brainmri.data.duplicates import hash_words, nearest
    from brainmri.data.manifest import read_manifest
    from brainmri.data.split import split_frame

    seen = split_frame(read_manifest(split["manifest"]), split, "trainval")
    exact = frame["md5"].isin(set(seen["md5"])).to_numpy()
    near = np.zeros(len(frame), bool)
    if len(frame) and len(seen):
        try:
            _, dist = nearest(hash_words(list(frame["phash"])), hash_words(list(seen["phash"])))
        except ValueError as exc:
            raise DataError(f"{name}: cannot compare with the training manifest: {exc}") from None
        near = dist <= threshold
    drop = exact | near
    overlap = {
        "against": f"train + val of {split_file}",
        "near_threshold": threshold,
        "n_readable": len(frame),
        "n_removed": int(drop.sum()),
        "n_exact": int(exact.sum()),
        "n_near_only": int((near & ~exact).sum()),
        "n_evaluated": int((~drop).sum()),
        "removed_ids": [str(i) for i in frame["id"][drop]],
    }
    print(
        f"{name}: removed {overlap['n_removed']} of {len(frame)} images already in the training data "
        f"({overlap['n_exact']} exact, {overlap['n_near_only']} near); evaluating {overlap['n_evaluated']}"
    )
    return ~drop, overlap


def _labels(frame, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    names = [str(v) for v in frame["label"]]
    idx = {c: i for i, c in enumerate(classes)}
    return np.array([idx.get(n, -1) for n in names], dtype=np.int64), names


def images_from_cache(frame, cache, classes: list[str]) -> SplitImages:
    index = cache.index()
    ok = index[index["ok"].astype(str).str.lower() == "true"]
    available = set(ok["md5"])
    missing = [i for i, m in zip(frame["id"], frame["md5"], strict=True) if m not in available]
    if missing:
        raise DataError(
            f"{len(missing)} images are not in the preprocessing cache {cache.dir} (e.g. {missing[0]}); "
            "run `brainmri preprocess` first"
        )
    images = np.stack([cache.load(m) for m in frame["md5"]]) if len(frame) else np.zeros((0, 1, 1), np.uint8)
    labels, names = _labels(frame, classes)
    return SplitImages(list(frame["id"]), list(frame["path"]), images, labels, names)


def images_from_files(frame, preprocessor, classes: list[str]) -> SplitImages:
    from brainmri.io import read_image
    from brainmri.utils import progress

    images = [preprocessor(read_image(p).array) for p in progress(list(frame["path"]), desc="preprocess")]
    stacked = np.stack(images) if images else np.zeros((0, 1, 1), np.uint8)
    labels, names = _labels(frame, classes)
    return SplitImages(list(frame["id"]), list(frame["path"]), stacked, labels, names)


def _batched(fn, images: np.ndarray, batch_size: int, desc: str | None, width: int) -> np.ndarray:
    """``fn`` (a torch module call) over uint8 (N, S, S) images in batches, as float (B, 1, S, S) in [0, 1]."""
    if len(images) == 0:
        return np.zeros((0, width), np.float32)
    return _batched_outputs(lambda x: (fn(x),), images, batch_size, desc)[0]


def _batched_outputs(fn, images: np.ndarray, batch_size: int, desc: str | None) -> list[np.ndarray]:
    """Like :func:`_batched` for a call that returns a tuple of tensors: one array per tensor, batches joined."""
    import torch

    from brainmri.utils import progress

    starts = range(0, len(images), batch_size)
    if desc is not None:
        starts = progress(starts, desc=desc, total=len(starts), leave=True)
    out = []
    with torch.inference_mode():
        for start in starts:
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).float().div_(255.0)
            out.append([t.float().cpu().numpy() for t in fn(x.unsqueeze(1))])
    return [np.concatenate(parts) for parts in zip(*out, strict=True)]


def predict_outputs(model, images: np.ndarray, batch_size: int = 64, desc: str | None = None) -> dict[str, np.ndarray]:
    """Every output a bundle's graph computes (``DeployedHeads``: ``logits``, ``features``, ``cams`` and
    ``block_stats`` where the backbone has them) in one pass over uint8 (N, S, S) images, by name.

    Why: the out-of-domain gate reads the features and the early-stage statistics next to the logits; one pass
    instead of one per output (external validation and fitting the gate used to run the network three times).
    """
    from brainmri.models.classifier import DeployedHeads

    heads = DeployedHeads(model)
    if len(images) == 0:  # shapes from one blank image, so that empty parts still have their widths
        return {k: v[:0] for k, v in predict_outputs(model, np.zeros((1, *images.shape[1:]), np.uint8)).items()}
    return dict(zip(heads.output_names, _batched_outputs(heads, images, batch_size, desc), strict=True))


def predict_logits(model, images: np.ndarray, batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    """Logits (N, C) of a torch model for uint8 (N, S, S) images; no gradients, eval mode kept as is.

    ``desc``: show a progress bar over the batches under that name (it stays on screen when done).
    """
    return _batched(model, images, batch_size, desc, getattr(model, "num_classes", 0))


def predict_features(model, images: np.ndarray, batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    """Pooled pre-logit features (N, F) of uint8 (N, S, S) images: what the out-of-domain score is fitted on."""
    return _batched(model.forward_features, images, batch_size, desc, 0)


def predict_block_stats(model, images: np.ndarray, batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    """Early-stage statistics (N, D) of uint8 (N, S, S) images: the low-level out-of-domain score's input."""
    return _batched(model.forward_block_stats, images, batch_size, desc, 0)


def write_run(
    run_dir: str | Path,
    cfg: Config,
    model,
    preprocessor,
    *,
    classes: list[str],
    split_file: str | Path,
    preprocess_dir: str | Path,
    extra: dict[str, Any] | None = None,
) -> Run:
    """Write (or refresh) a run folder's model-independent files; used by training and by tests."""
    from safetensors.torch import save_file

    from brainmri.config import save_config
    from brainmri.utils import atomic_path, atomic_write_json, file_digest

    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    save_config(cfg, d / "config.yaml")
    preprocessor.save(d / PREPROCESSOR_FILE)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(d / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    split_file = Path(split_file).resolve()
    info = {
        "name": d.name,
        "classes": list(classes),
        "split_file": str(split_file),
        "split_sha256": file_digest(split_file, "sha256") if split_file.is_file() else None,
        "preprocess_dir": str(Path(preprocess_dir).resolve()),
        "img_size": cfg.preprocess.size,
        "backbone": cfg.model.backbone,
        **(extra or {}),
    }
    atomic_write_json(d / RUN_JSON, info)
    return Run(d, info, cfg)
