"""The network every runtime sees: grayscale [0, 1] in, logits out.

Why a wrapper: replicating the grayscale channel and applying the weight source's mean/std *inside*
the module means the exported ONNX graph, the torch runtime, Grad-CAM and training all normalise the
same way; nothing outside the model has to remember which statistics a backbone was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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
    """What a bundle's ONNX graph computes in one pass: logits, pooled features and class activation maps.

    - ``logits`` (B, C): identical to ``BrainClassifier.forward``;
    - ``features`` (B, F): the pooled pre-logit features the out-of-domain score is fitted on;
    - ``cams`` (B, C, h, w): Σ_k w_ck A_k over the last feature map A (h = w = S / 32). For a backbone that
      ends in global average pooling and a linear classifier this is CAM (Zhou et al. 2016), and Grad-CAM
      at that layer equals it up to a positive scale (the gradient of the pooled logit is w_ck / (h·w)
      everywhere), so overlays need no gradients and no torch at inference time.

    ``supports_cam(model)`` says whether the head has that shape; otherwise ``cams`` is left out. For an
    ensemble (``models.ensemble``) the logits are log(mean softmax), the features the members'
    concatenated and the maps the members' mean.
    """

    def __init__(self, model: nn.Module) -> None:
        from brainmri.models.ensemble import members_of

        super().__init__()
        self.model = model
        self.members = members_of(model)
        self.with_cam = all(supports_cam(m) for m in self.members)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from brainmri.models.ensemble import mean_log_probs

        heads = [self._member_heads(m, x) for m in self.members]
        if len(heads) == 1:
            return heads[0]
        logits = mean_log_probs([h[0] for h in heads])
        pooled = torch.cat([h[1] for h in heads], dim=1)
        if not self.with_cam:
            return logits, pooled
        return logits, pooled, torch.stack([h[2] for h in heads]).mean(dim=0)

    def _member_heads(self, member: BrainClassifier, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        backbone = member.backbone
        fmap = backbone.forward_features(member.normalise(x))
        pooled = backbone.forward_head(fmap, pre_logits=True)
        logits = backbone.get_classifier()(pooled)
        if not self.with_cam:
            return logits, pooled
        cams = torch.einsum("cf,bfhw->bchw", backbone.get_classifier().weight, fmap)
        return logits, pooled, cams


def supports_cam(model: BrainClassifier) -> bool:
    """True when logits = Linear(global average pool(last feature map)): CAM is then exact."""
    backbone = model.backbone
    pool = getattr(backbone, "global_pool", None)
    pool_type = getattr(pool, "pool_type", "")
    return isinstance(backbone.get_classifier(), nn.Linear) and pool_type == "avg"
