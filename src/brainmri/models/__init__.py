"""Model factory over timm plus weight sources (hub, offline pip packages, local files)."""

from brainmri.models.classifier import BrainClassifier
from brainmri.models.ensemble import EnsembleClassifier
from brainmri.models.factory import create_model, list_backbones
from brainmri.models.weights import WEIGHT_SOURCES, load_offline_state_dict

__all__ = [
    "WEIGHT_SOURCES",
    "BrainClassifier",
    "EnsembleClassifier",
    "create_model",
    "list_backbones",
    "load_offline_state_dict",
]
