"""Grad-CAM / Grad-CAM++ heat maps (pytorch-grad-cam) and their overlay on the slice.

Stable API, used through :class:`brainmri.infer.Predictor` (``brainmri predict``, ``brainmri serve``) and
by the error gallery of ``brainmri evaluate``:

- ``compute_cams(model, images_uint8, targets=None, method="gradcam") -> float32 (N, S, S)`` in [0, 1];
- ``overlay(image_uint8, cam) -> uint8 (S, S, 3)`` RGB.

Target layer: ``model.gradcam_target_layer()``, the deepest feature stage of the timm backbone (the last
layer that still has a spatial grid, as Selvaraju et al. 2017 recommend: the most class-specific
features that can still localise). Per family:

- EfficientNet / EfficientNet-Lite / EfficientNetV2: the last block stage (``blocks.6``, ``blocks.5`` for
  V2-B0), stride 32, i.e. a 7x7 grid at 224 px; the 1x1 ``conv_head`` after it adds no spatial
  information;
- ResNet: ``layer4`` (stride 32); ConvNeXt: ``stages.3`` (stride 32);
- backbones without timm ``feature_info``: the last ``Conv2d``.

The maps are therefore coarse (one cell = 32 px) and bilinearly upsampled: they say *which region*
drove the decision, not which pixels. Each map is min-max scaled per image by pytorch-grad-cam, so
intensities are comparable within an image, not across images; an all-zero map means no positive
evidence for the target class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METHODS = ("gradcam", "gradcam++")


def _cam_class(method: str):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    if method == "gradcam":
        return GradCAM
    if method in ("gradcam++", "gradcampp", "gradcam_plusplus"):
        return GradCAMPlusPlus
    raise ValueError(f"unknown Grad-CAM method '{method}'; choose from {METHODS}")


def compute_cams(
    model: Any,
    images_uint8: np.ndarray,
    targets: Sequence[int] | np.ndarray | None = None,
    method: str = "gradcam",
    batch_size: int = 16,
) -> np.ndarray:
    """Class activation maps of ``images_uint8`` (N, S, S) uint8 (a single (S, S) image is a batch of 1).

    Args:
        model: a ``BrainClassifier`` (input float (B, 1, S, S) in [0, 1], output logits), any device.
        targets: class index per image to explain; ``None`` explains the predicted class.
        method: ``gradcam`` or ``gradcam++``.

    Returns:
        float32 (N, S, S) in [0, 1] (per-image min-max scaled), same spatial size as the input.
    """
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    imgs = np.asarray(images_uint8)
    if imgs.ndim == 2:
        imgs = imgs[None]
    if imgs.ndim != 3:
        raise ValueError(f"expected uint8 images (N, S, S), got shape {imgs.shape}")
    if imgs.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (the preprocessor output), got {imgs.dtype}")
    if targets is not None:
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        if len(targets) != len(imgs):
            raise ValueError(f"{len(targets)} targets for {len(imgs)} images")
    cam_cls = _cam_class(method)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cam = cam_cls(model=model, target_layers=model.gradcam_target_layers())
    out = np.zeros(imgs.shape, dtype=np.float32)
    try:
        with torch.enable_grad():
            for s in range(0, len(imgs), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(imgs[s : s + batch_size])).to(device)
                x = batch.float().div(255.0).unsqueeze(1).requires_grad_(True)  # grads even if weights frozen
                tg = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets[s : s + batch_size]]
                maps = cam(input_tensor=x, targets=tg)
                out[s : s + len(batch)] = np.clip(np.nan_to_num(maps), 0.0, 1.0)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return out


def overlay(image_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Jet-coloured ``cam`` blended over the grayscale slice: RGB uint8 (H, W, 3).

    ``alpha`` is the heat-map weight (0: image only, 1: map only). A map of another size is resized.
    """
    import cv2

    img = np.asarray(image_uint8)
    if img.ndim == 3 and img.shape[-1] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {img.shape}")
    m = np.asarray(cam, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {m.shape}")
    if m.shape != img.shape:
        m = cv2.resize(m, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    m = np.clip(np.nan_to_num(m), 0.0, 1.0)
    heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.round(255 * m)), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    base = np.repeat(img.astype(np.float32)[..., None], 3, axis=2)
    out = (1 - alpha) * base + alpha * heat.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def peak_location(cam: np.ndarray) -> tuple[int, int]:
    """(row, col) of the map's maximum."""
    m = np.asarray(cam)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(m)), m.shape))  # type: ignore[return-value]


def cams_from_maps(maps: np.ndarray, targets: Sequence[int] | np.ndarray, size: int) -> np.ndarray:
    """Heat maps (N, size, size) in [0, 1] from the bundle's ``cams`` output (N, C, h, w), numpy only.

    The same post-processing pytorch-grad-cam applies to its maps (ReLU, per-image min-max scaling, bilinear
    resize), so an ONNX overlay matches a torch Grad-CAM overlay at the last feature map (see
    ``models.classifier.DeployedHeads``) within interpolation error.
    """
    import cv2

    m = np.asarray(maps, dtype=np.float32)
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    if m.ndim != 4 or len(t) != len(m):
        raise ValueError(f"expected maps (N, C, h, w) and N targets, got {m.shape} and {len(t)}")
    out = np.zeros((len(m), size, size), np.float32)
    for i, (per_class, target) in enumerate(zip(m, t, strict=True)):
        cam = np.maximum(per_class[int(target)], 0.0)
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        out[i] = cv2.resize(cam, (size, size))
    return np.clip(out, 0.0, 1.0)
