"""Model bundles: export a run (ONNX + safetensors + card.json + README.md) and load it back verified."""

from brainmri.bundle.export import export_bundle
from brainmri.bundle.sealed import BUNDLE_FILES, CARD_FILE, FORMAT_VERSION, ONNX_OPSET, Bundle

__all__ = ["BUNDLE_FILES", "CARD_FILE", "FORMAT_VERSION", "ONNX_OPSET", "Bundle", "export_bundle"]
