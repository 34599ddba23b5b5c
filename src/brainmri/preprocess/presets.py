"""Named preprocessing chains (the reference ablation) resolved into explicit step settings."""

from __future__ import annotations

from brainmri.config import PreprocessConfig

#: preset -> (crop, bias, skull, nyul, clahe) switched on. ``custom`` keeps the sections as given.
PRESETS: dict[str, tuple[bool, bool, bool, bool, bool]] = {
    "raw": (False, False, False, False, False),
    "crop": (True, False, False, False, False),
    "crop+n4": (True, True, False, False, False),
    "crop+n4+nyul": (True, True, False, True, False),
    "full": (True, True, True, True, True),
}

DEFAULT_BIAS_METHOD = "n4_fast"


def resolve_preset(cfg: PreprocessConfig) -> PreprocessConfig:
    """A copy of ``cfg`` with ``preset="custom"`` and every step switched on/off as the preset says.

    Step *parameters* always come from the sections (so ``--set preprocess.bias.method=n4`` makes
    every preset that corrects the bias use true N4). A preset that corrects the bias while
    ``bias.method`` is ``none`` uses ``n4_fast``. ``workers`` does not affect the output and is
    reset to its default, so the resolved config (and its hash) depends only on what changes pixels.
    """
    out = cfg.model_copy(deep=True)
    out.workers = PreprocessConfig.model_fields["workers"].default
    if cfg.preset == "custom":
        return out
    crop, bias, skull, nyul, clahe = PRESETS[cfg.preset]
    out.crop.enabled = crop
    if not bias:
        out.bias.method = "none"
    elif out.bias.method == "none":
        out.bias.method = DEFAULT_BIAS_METHOD
    out.skull.enabled = skull
    out.nyul.enabled = nyul
    out.clahe.enabled = clahe
    out.preset = "custom"
    return out
