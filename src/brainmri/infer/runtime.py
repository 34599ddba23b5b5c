"""Runtimes: run a bundle's model on a float batch (B, 1, S, S) in [0, 1] and return logits (B, C).

A small registry behind one factory, ``create_runtime(name, bundle)``:
- ``onnx`` (default): ONNX Runtime on ``model.onnx``, intra-op threads = available cores, all graph
  optimisations on (constant folding, Conv+activation fusion, NCHWc layout), no thread spinning.
  The fast path for plain prediction and TTA.
- ``torch``: the same weights from ``model.safetensors`` in eager PyTorch; needed where gradients
  (Grad-CAM) or stochastic layers (MC dropout) are, and as the parity reference.
Both read the bytes the bundle verified (``Bundle.read``), never a path that could change in between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from brainmri.bundle.onnx import available_cores, session_options
from brainmri.bundle.sealed import ONNX_FILE, Bundle
from brainmri.errors import BundleError, ConfigError

RUNTIMES: dict[str, type[Runtime]] = {}


def register_runtime(name: str) -> Callable[[type[Runtime]], type[Runtime]]:
    def deco(cls: type[Runtime]) -> type[Runtime]:
        cls.name = name
        RUNTIMES[name] = cls
        return cls

    return deco


class Runtime:
    """Interface: ``logits(x float32 (B, 1, S, S)) -> float32 (B, C)``; ``outputs(x)`` -> every head by name.

    ``outputs`` returns ``logits`` and, for bundles exported with them, ``features`` (B, F) (the
    out-of-domain score's input), ``cams`` (B, C, h, w) (class activation maps) and ``block_stats`` (B, D)
    (the low-level out-of-domain score's input).
    """

    name = "runtime"

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        self.bundle = bundle
        self.threads = threads or available_cores()

    def logits(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": self.logits(x)}


@register_runtime("onnx")
class OnnxRuntime(Runtime):
    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(bundle, threads)
        options = session_options(self.threads)
        try:
            self.session = ort.InferenceSession(bundle.read(ONNX_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{bundle.dir / ONNX_FILE}: ONNX Runtime cannot load it ({exc})") from None
        (inp,) = self.session.get_inputs()
        size = bundle.input_size
        if list(inp.shape[1:]) != [1, size, size] or isinstance(inp.shape[0], int):
            raise BundleError(
                f"{bundle.dir / ONNX_FILE}: input shape {inp.shape}, card says [batch, 1, {size}, {size}]"
            )
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_name = self.output_names[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        values = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, values, strict=True)) | {"logits": values[0]}


@register_runtime("torch")
class TorchRuntime(Runtime):
    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        from brainmri.utils import setup_torch

        super().__init__(bundle, threads)
        setup_torch(threads)
        self.model = bundle.build_torch_model()

    def logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        from brainmri.models.classifier import DeployedHeads

        heads = DeployedHeads(self.model).eval()
        with torch.inference_mode():
            values = heads(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return {n: v.float().numpy() for n, v in zip(heads.output_names, values, strict=True)}


def create_runtime(name: str, bundle: Bundle, **kwargs: Any) -> Runtime:
    """The runtime called ``name`` for ``bundle``; an unknown name lists the known ones."""
    if name not in RUNTIMES:
        raise ConfigError(f"unknown runtime '{name}'; known: {', '.join(sorted(RUNTIMES))}")
    return RUNTIMES[name](bundle, **kwargs)
