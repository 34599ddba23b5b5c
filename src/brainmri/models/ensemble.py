"""A deep ensemble as one network: several classifiers of one architecture, probabilities averaged.

Why one module: bundles, ONNX export, calibration, the out-of-domain score, AdaBN and Grad-CAM all take
"a model"; wrapping the members keeps every one of them unchanged. Averaging independently trained
networks is the most reliable single gain in accuracy and calibration under dataset shift measured so
far (Lakshminarayanan et al. 2017; Ovadia et al. 2019); here two seeds of the CPU recipe raised the
navoneel AUC by 0.028 with an interval excluding zero (``bench/results/paired_mirror.json``).

- ``forward`` returns log(mean_k softmax(logits_k)): "logits" whose softmax is the members' mean
  probability, so temperature scaling, thresholds and conformal sets are fitted on the ensemble as on
  any model;
- ``forward_features`` concatenates the members' pooled features (the out-of-domain score sees all);
- class activation maps are the members' mean (``DeployedHeads``), Grad-CAM hooks every member.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class EnsembleClassifier(nn.Module):
    """Members (``BrainClassifier``) that share classes and input size; state keys ``members.<k>.*``."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        classes = {int(m.num_classes) for m in members}
        if len(classes) != 1:
            raise ValueError(f"ensemble members disagree on the number of classes: {sorted(classes)}")
        self.members = nn.ModuleList(members)

    @property
    def num_classes(self) -> int:
        return int(self.members[0].num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_log_probs([m(x) for m in self.members])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.forward_features(x) for m in self.members], dim=1)

    def forward_block_stats(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.forward_block_stats(x) for m in self.members], dim=1)

    def forward_classifier(self, features: torch.Tensor) -> torch.Tensor:
        """Ensemble logits from concatenated member features (the inverse split of ``forward_features``)."""
        sizes = [int(m.backbone.num_features) for m in self.members]
        chunks = torch.split(features, sizes, dim=1)
        return mean_log_probs([m.forward_classifier(c) for m, c in zip(self.members, chunks, strict=True)])

    def gradcam_target_layers(self) -> list[nn.Module]:
        return [m.gradcam_target_layer() for m in self.members]


def mean_log_probs(member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """log(mean_k softmax(z_k)), computed stably as logsumexp_k(log_softmax(z_k)) - log K."""
    stacked = torch.stack([torch.log_softmax(z.float(), dim=1) for z in member_logits])
    return torch.logsumexp(stacked, dim=0) - math.log(len(member_logits))


def members_of(model: nn.Module) -> list[nn.Module]:
    """The member networks of an ensemble, or ``[model]`` for a single classifier."""
    return list(model.members) if isinstance(model, EnsembleClassifier) else [model]
