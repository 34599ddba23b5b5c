"""The network every runtime sees: grayscale [0, 1] in, logits out.

Why a wrapper: replicating the grayscale channel and applying the weight source's mean/std *inside*
the module means the exported ONNX graph, the torch runtime, Grad-CAM and training all normalise the
same way; nothing outside the model has to remember which statistics a backbone was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

BLOCK_STAGES = (1, 2, 3)
"""timm ``feature_info`` stages (strides 4, 8, 16) whose statistics feed the low-level out-of-domain score."""


class BrainClassifier(nn.Module):
    """timm backbone + input normalisation.

    Args:
        backbone: a timm model whose classifier already has ``num_classes`` outputs.
        mean, std: per-channel normalisation of the weight source (3 values, or 1 in ``stem`` mode).
        gray_mode: ``replicate`` copies the single channel to 3 (keeps ImageNet stem weights intact);
            ``stem`` means the backbone was built with ``in_chans=1`` (timm sums the RGB stem filters);
            ``mirror`` feeds (x, x, flipped x): symmetric anatomy stays grey, as in ``replicate``, while
            a one-sided lesion shows as colour, a cue that does not depend on the lesion's contrast
            (the midline-symmetry prior of asymmetry-based tumour detectors).
    """

    def __init__(
        self,
        backbone: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        gray_mode: str = "replicate",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.gray_mode = gray_mode
        channels = 1 if gray_mode == "stem" else 3
        if gray_mode == "stem":
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, channels, 1, 1))

    @property
    def num_classes(self) -> int:
        return int(self.backbone.num_classes)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if self.gray_mode == "replicate":
            x = x.expand(-1, 3, -1, -1)
        elif self.gray_mode == "mirror":
            x = torch.cat([x, x, torch.flip(x, dims=[-1])], dim=1)
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features (B, F): what stage 1 caches when the backbone is frozen."""
        return self.backbone.forward_head(self.backbone.forward_features(self.normalise(x)), pre_logits=True)

    def forward_block_stats(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) per-channel mean and standard deviation of the early feature stages ``BLOCK_STAGES``.

        Why: the second out-of-domain score (``calibrate.ood``, Lee et al. 2018 score every layer). Early stages
        describe texture, noise and edges, which differ between an MRI slice and a photograph or CT whatever the
        class; the pooled last-layer features only describe what separates the four classes.
        """
        return block_statistics(self.backbone.forward_intermediates(
            self.normalise(x), indices=list(BLOCK_STAGES), intermediates_only=True, stop_early=True))  # fmt: skip

    def forward_classifier(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features (dropout + linear head)."""
        drop = getattr(self.backbone, "drop_rate", 0.0)
        if drop and self.training:
            features = nn.functional.dropout(features, p=float(drop), training=True)
        return self.backbone.get_classifier()(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalise(x))

    def classifier_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.get_classifier().parameters())

    def gradcam_target_layers(self) -> list[nn.Module]:
        return [self.gradcam_target_layer()]

    def gradcam_target_layer(self) -> nn.Module:
        """Deepest feature stage (timm ``feature_info``): last block for EfficientNet, layer4 for ResNet.

        Why this layer: it is the last one with spatial resolution, so the map is the most
        class-specific while still localising (Selvaraju et al. 2017 use the last conv layer).
        """
        info = getattr(self.backbone, "feature_info", None)
        if info:
            name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
            return self.backbone.get_submodule(name)
        convs = [m for m in self.backbone.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError("backbone has no conv layer for Grad-CAM")
        return convs[-1]


class DeployedHeads(nn.Module):
    """What a bundle's ONNX graph computes in one pass; ``output_names`` lists its outputs in order:

    - ``logits`` (B, C): identical to ``BrainClassifier.forward``;
    - ``features`` (B, F): the pooled pre-logit features the out-of-domain score is fitted on;
    - ``cams`` (B, C, h, w): Σ_k w_ck A_k over the last feature map A (h = w = S / 32). For a backbone that
      ends in global average pooling and a linear classifier this is CAM (Zhou et al. 2016), and Grad-CAM
      at that layer equals it up to a positive scale (the gradient of the pooled logit is w_ck / (h·w)
      everywhere), so overlays need no gradients and no torch at inference time;
    - ``block_stats`` (B, D): ``BrainClassifier.forward_block_stats`` (the low-level out-of-domain score's input),
      from the same pass (timm ``forward_intermediates``).

    ``supports_cam(model)`` / ``supports_block_stats(model)`` say whether a backbone has what the last two
    need; otherwise they are left out. For an ensemble (``models.ensemble``) the logits are log(mean softmax),
    the features and block statistics the members' concatenated and the maps the members' mean.
    """

    def __init__(self, model: nn.Module) -> None:
        from brainmri.models.ensemble import members_of

        super().__init__()
        self.model = model
        self.members = members_of(model)
        self.with_cam = all(supports_cam(m) for m in self.members)
        self.with_block_stats = all(supports_block_stats(m) for m in self.members)
        self.output_names = ["logits", "features"] + ["cams"] * self.with_cam + ["block_stats"] * self.with_block_stats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from brainmri.models.ensemble import mean_log_probs

        heads = [self._member_heads(m, x) for m in self.members]
        if len(heads) == 1:
            return tuple(heads[0][n] for n in self.output_names)
        merged = {
            "logits": mean_log_probs([h["logits"] for h in heads]),
            "features": torch.cat([h["features"] for h in heads], dim=1),
        }
        if self.with_cam:
            merged["cams"] = torch.stack([h["cams"] for h in heads]).mean(dim=0)
        if self.with_block_stats:
            merged["block_stats"] = torch.cat([h["block_stats"] for h in heads], dim=1)
        return tuple(merged[n] for n in self.output_names)

    def _member_heads(self, member: BrainClassifier, x: torch.Tensor) -> dict[str, torch.Tensor]:
        backbone, xn, out = member.backbone, member.normalise(x), {}
        if self.with_block_stats:
            fmap, stages = backbone.forward_intermediates(xn, indices=list(BLOCK_STAGES))
            out["block_stats"] = block_statistics(stages)
        else:
            fmap = backbone.forward_features(xn)
        out["features"] = backbone.forward_head(fmap, pre_logits=True)
        out["logits"] = backbone.get_classifier()(out["features"])
        if self.with_cam:
            out["cams"] = torch.einsum("cf,bfhw->bchw", backbone.get_classifier().weight, fmap)
        return out


def block_statistics(stages: list[torch.Tensor]) -> torch.Tensor:
    """(B, 2 * Σ channels): each stage's per-channel spatial mean, then standard deviation, stage after stage."""
    stats = []
    for f in stages:
        mean = f.mean(dim=(2, 3))
        stats += [mean, (f - mean[:, :, None, None]).square().mean(dim=(2, 3)).sqrt()]
    return torch.cat(stats, dim=1)


def supports_block_stats(model: BrainClassifier) -> bool:
    """True when the backbone offers timm's ``forward_intermediates`` with the stages ``BLOCK_STAGES`` name."""
    backbone = model.backbone
    info = getattr(backbone, "feature_info", None)
    return hasattr(backbone, "forward_intermediates") and info is not None and len(info) > max(BLOCK_STAGES)


def supports_cam(model: BrainClassifier) -> bool:
    """True when logits = Linear(global average pool(last feature map)): CAM is then exact.

    Not for heads with a layer after pooling (MobileNetV3's ``conv_head``): the linear layer then sees other
    channels than the feature map has.
    """
    backbone = model.backbone
    pool = getattr(backbone, "global_pool", None)
    pool_type = getattr(pool, "pool_type", "")
    head = backbone.get_classifier()
    return isinstance(head, nn.Linear) and pool_type == "avg" and head.in_features == backbone.num_features
