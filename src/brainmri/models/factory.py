"""``create_model``: one public entry, timm's registry behind it.

Any timm model name works as ``model.backbone``. Documented families: EfficientNet B0-B7
(``efficientnet_b0`` ... ``efficientnet_b7``, ``tf_efficientnet_b*``), EfficientNetV2
(``efficientnetv2_rw_s``, ``tf_efficientnetv2_b0`` ... ``b3``, ``tf_efficientnetv2_s/m/l``),
EfficientNet-Lite (``efficientnet_lite0`` ... ``lite4``; lite0-2 have offline weights), ResNet,
ConvNeXt and the rest of timm. An unknown name is an error that lists close matches.
"""

from __future__ import annotations

import difflib

import timm
import torch

from brainmri.config import ModelConfig
from brainmri.errors import ConfigError
from brainmri.models.classifier import BrainClassifier
from brainmri.models.ensemble import EnsembleClassifier
from brainmri.models.weights import OFFLINE_MEAN_STD, load_file_state_dict, load_offline_state_dict


def list_backbones(pattern: str = "*") -> list[str]:
    return timm.list_models(pattern)


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
    raise ConfigError(
        f"model.backbone: unknown timm model '{name}'"
        + (f"; did you mean: {', '.join(close)}" if close else "; see timm.list_models()")
    )


def create_model(cfg: ModelConfig, num_classes: int | None) -> BrainClassifier | EnsembleClassifier:
    """Build the classifier with the requested weights.

    The head is re-initialised for ``num_classes``; ``None`` keeps the pretrained (ImageNet) head.
    ``cfg.ensemble`` > 1 builds that many members in an :class:`EnsembleClassifier` (to load an
    ensemble's weights into: members are trained as separate runs).
    """
    if cfg.ensemble > 1:
        single = cfg.model_copy(update={"ensemble": 1})
        return EnsembleClassifier([create_model(single, num_classes) for _ in range(cfg.ensemble)])
    _check_name(cfg.backbone)
    in_chans = 1 if cfg.gray_mode == "stem" else 3
    kwargs = {"drop_rate": cfg.drop_rate, "drop_path_rate": cfg.drop_path_rate or None, "global_pool": cfg.global_pool}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    weights = cfg.weights
    if weights == "imagenet":
        try:
            backbone = timm.create_model(cfg.backbone, pretrained=True, in_chans=in_chans, **kwargs)
        except Exception as exc:
            raise ConfigError(
                f"model.weights=imagenet: could not fetch '{cfg.backbone}' weights from the hub "
                f"({type(exc).__name__}); offline, use model.weights=offline (efficientnet_lite0-2) or a local file"
            ) from None
        dcfg = backbone.pretrained_cfg
        mean, std = dcfg.get("mean", (0.485, 0.456, 0.406)), dcfg.get("std", (0.229, 0.224, 0.225))
        if num_classes is not None:
            backbone.reset_classifier(num_classes)
    else:
        backbone = timm.create_model(cfg.backbone, pretrained=False, in_chans=3, **kwargs)
        mean, std = (
            backbone.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)),
            backbone.pretrained_cfg.get("std", (0.229, 0.224, 0.225)),
        )
        if weights == "offline":
            backbone.load_state_dict(load_offline_state_dict(cfg.backbone, backbone.state_dict()), strict=True)
            mean, std = OFFLINE_MEAN_STD
        elif weights != "none":
            state = load_file_state_dict(weights)
            _load_checked(backbone, state, weights)
        if in_chans == 1:
            backbone = _to_single_channel(cfg, backbone, kwargs)
        if num_classes is not None:
            backbone.reset_classifier(num_classes)
    return BrainClassifier(backbone, mean, std, gray_mode=cfg.gray_mode)


def _load_checked(backbone: torch.nn.Module, state: dict, source: str) -> None:
    """Load a local file; classifier tensors may differ (re-initialised), anything else must match."""
    own = backbone.state_dict()
    head = {f"{backbone.pretrained_cfg.get('classifier', 'classifier')}.{s}" for s in ("weight", "bias")}
    bad = [k for k, v in state.items() if k in own and k not in head and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and k not in head and not k.endswith("num_batches_tracked")]
    if bad or missing:
        raise ConfigError(
            f"model.weights={source}: does not fit '{backbone.default_cfg.get('architecture')}' "
            f"(shape mismatches: {bad[:5]}, missing: {missing[:5]})"
        )
    state = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    backbone.load_state_dict(state, strict=False)


def _to_single_channel(cfg: ModelConfig, rgb: torch.nn.Module, kwargs: dict) -> torch.nn.Module:
    """Rebuild with in_chans=1 and sum the loaded RGB stem filters (what timm does for hub weights)."""
    gray = timm.create_model(cfg.backbone, pretrained=False, in_chans=1, **kwargs)
    state = rgb.state_dict()
    first = gray.pretrained_cfg.get("first_conv", "conv_stem")
    key = f"{first}.weight"
    state[key] = state[key].sum(dim=1, keepdim=True)
    gray.load_state_dict(state, strict=True)
    return gray
