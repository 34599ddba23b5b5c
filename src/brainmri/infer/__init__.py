"""Inference: runtimes (ONNX Runtime, torch), Predictor, TTA, MC dropout, the predict CLI."""

from brainmri.infer.inputs import Failure
from brainmri.infer.predictor import Prediction, Predictor
from brainmri.infer.runtime import RUNTIMES, create_runtime

__all__ = ["RUNTIMES", "Failure", "Prediction", "Predictor", "create_runtime"]
