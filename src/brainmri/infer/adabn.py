"""Test-time adaptation: re-estimate BatchNorm statistics on the target site's images (AdaBN).

AdaBN (Li et al., "Revisiting Batch Normalization for Practical Domain Adaptation", 2016) keeps every
learned weight and replaces each BatchNorm layer's running mean and variance (estimated on the training
images) by the statistics of the same layer's input over images of the target site. It needs no labels,
so adapting on the very images that are then predicted (the transductive setting) is legitimate.

How the statistics are estimated (both runtimes, identically): the images are cut into ``ceil(N / B)``
batches of near-equal size, every BatchNorm layer runs in training mode (normalising with the current
batch's statistics, so a layer sees inputs already adapted upstream), and its new running statistics are
the plain average over batches of the batch means and unbiased batch variances (PyTorch's cumulative
moving average, ``momentum=None``, after ``reset_running_stats``). Nothing else changes mode: dropout and
drop-path stay off. Population statistics computed layer by layer would cost one pass per layer; the
averaged batch statistics cost one pass and are what AdaBN implementations commonly use.

- torch: :func:`adapt_batchnorm` works on a deep copy of the model; the loaded bundle's model is never
  touched.
- ONNX: the exporter folds every BatchNorm into the preceding convolution (``model.onnx`` of a bundle has
  no ``BatchNormalization`` node), so the statistics cannot simply be swapped. The bundle still carries
  what is needed: ``model.safetensors`` holds each BatchNorm's ``weight`` (gamma), ``bias`` (beta),
  running mean and variance, and the unfused convolution weights. :func:`fused_sites` pairs every
  folded convolution of the graph with its BatchNorm by checking that gamma / sqrt(var + eps) and beta
  reproduce the fused weight and bias (so no naming convention is trusted; eps is identified on the way).
  With y the fused convolution's output and r = gamma / sqrt(var + eps), the training-mode BatchNorm output
  is ``|gamma| (y - mean_b(y)) / sqrt(var_b(y) + eps r^2) + beta`` (no division by gamma or r, so a zero
  gamma stays harmless): :func:`adapt_onnx` inserts exactly that after each folded convolution, runs the
  batches in ONNX Runtime, averages the statistics as above and writes new fused weights
  ``k W`` and bias ``k (b - mean) + beta`` with ``k = |gamma| / sqrt(var + eps r^2)``. The adapted graph
  has the same nodes and cost as the original and is only held in memory (a new ``InferenceSession``); the
  bundle on disk is never modified, so its hashes stay valid.

Torch and ONNX adaptation agree within float tolerance on the same images (``tests/test_adabn.py``). Few
images give noisy statistics: fewer than ``predict.adapt_bn_min_images`` (default 16) is refused.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainmri.errors import BrainMRIError, BundleError

#: BatchNorm eps values tried when identifying a folded BatchNorm (PyTorch default, TF-ported weights, others).
EPS_CANDIDATES = (1e-5, 1e-3, 1e-4, 1e-6, 1e-2)
WEIGHT_RTOL = 1e-4
BIAS_ATOL = 1e-4


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """``ceil(n / batch_size)`` consecutive slices of near-equal size (never a tiny last batch)."""
    k = max(1, math.ceil(n / max(1, batch_size)))
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def check_count(n: int, min_images: int) -> None:
    if n < min_images:
        raise BrainMRIError(
            f"AdaBN needs at least {min_images} target images to re-estimate BatchNorm statistics, got {n} "
            "(fewer give noisy statistics; predict.adapt_bn_min_images sets the minimum)"
        )


# ----------------------------------------------------------------------------- torch


def batchnorm_modules(model) -> list[Any]:
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adapt_batchnorm(model, images: np.ndarray, batch_size: int = 32):
    """A copy of ``model`` whose BatchNorm running statistics are those of ``images`` (float (N, 1, S, S)).

    See the module docstring for the estimate. The copy is returned in eval mode; ``model`` is unchanged.
    """
    import torch

    adapted = copy.deepcopy(model).eval()
    layers = batchnorm_modules(adapted)
    if not layers:
        raise BrainMRIError("the model has no BatchNorm layer: AdaBN has nothing to adapt")
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    x = np.ascontiguousarray(images, dtype=np.float32)
    with torch.no_grad():
        for sl in batch_slices(len(x), batch_size):
            adapted(torch.from_numpy(x[sl]))
    return adapted.eval()


# ----------------------------------------------------------------------------- ONNX


@dataclass
class Site:
    """One convolution of the ONNX graph with a BatchNorm folded into it."""

    node: int
    """Index of the Conv node in ``graph.node``."""
    batchnorm: str
    """State-dict prefix of the folded BatchNorm (e.g. ``backbone.bn1``)."""
    eps: float
    gamma: np.ndarray
    beta: np.ndarray
    ratio: np.ndarray
    """r = gamma / sqrt(running_var + eps): the fused weight is r * W."""


def _initializers(graph) -> dict[str, Any]:
    return {i.name: i for i in graph.initializer}


def _batchnorms(state: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    keys = ("weight", "bias", "running_mean", "running_var")
    prefixes = [k[: -len(".running_var")] for k in state if k.endswith(".running_var")]
    return {p: {k: state[f"{p}.{k}"].astype(np.float64) for k in keys} for p in prefixes if f"{p}.weight" in state}


def _match_batchnorm(w_fused, b_fused, w, cb, candidates) -> tuple[str, float, float] | None:
    """``(prefix, eps, error)`` of the BatchNorm that turns (w, cb) into (w_fused, b_fused), or None."""
    flat, flat_fused = w.reshape(len(w), -1), w_fused.reshape(len(w), -1)
    scale = np.abs(flat_fused).max() + 1e-12
    best = None
    for prefix, bn in candidates:
        for eps in EPS_CANDIDATES:
            r = bn["weight"] / np.sqrt(bn["running_var"] + eps)
            err_w = np.abs(flat * r[:, None] - flat_fused).max() / scale
            err_b = np.abs(bn["bias"] + (cb - bn["running_mean"]) * r - b_fused).max()
            fits = err_w < WEIGHT_RTOL and err_b < BIAS_ATOL * (1 + np.abs(b_fused).max())
            if fits and (best is None or err_w < best[2]):
                best = (prefix, eps, float(err_w))
    return best


def fused_sites(model, state: dict[str, np.ndarray]) -> list[Site]:
    """Every Conv of the ONNX ``model`` with a BatchNorm of ``state`` (the bundle's weights) folded into it.

    The unfused weight is looked up by the initializer's name (the exporter keeps the module path, behind
    the ``model.`` of the exported wrapper). Raises :class:`BundleError` when a BatchNorm of the weights is
    not found folded anywhere (then only the torch runtime can adapt this bundle).
    """
    from onnx import numpy_helper

    graph = model.graph
    if any(n.op_type == "BatchNormalization" for n in graph.node):
        raise BundleError("the ONNX graph has unfolded BatchNormalization nodes; AdaBN on ONNX expects folded ones "
                          "(use runtime torch)")  # fmt: skip
    inits = _initializers(graph)
    bns = _batchnorms(state)
    sites, used = [], set()
    for i, node in enumerate(graph.node):
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = node.input[1]
        key = next((k for k in (name, name.removeprefix("model.")) if k in state), None)
        w_fused = numpy_helper.to_array(inits[name]).astype(np.float64)
        if key is None or state[key].shape != w_fused.shape:
            continue
        w = state[key].astype(np.float64)
        bias_key = key[: -len("weight")] + "bias" if key.endswith("weight") else None
        cb = state[bias_key].astype(np.float64) if bias_key in state else np.zeros(len(w))
        has_bias = len(node.input) > 2 and node.input[2] in inits
        b_fused = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if has_bias else np.zeros(len(w))
        plain = np.allclose(w_fused, w, rtol=1e-6, atol=0) and np.allclose(b_fused, cb, rtol=1e-6, atol=1e-9)
        if plain or not has_bias:
            continue  # a plain convolution (e.g. squeeze-excitation): nothing folded into it (folding adds a bias)
        parent = key.rsplit(".", 2)[0] + "."
        pool = [(p, bn) for p, bn in bns.items() if bn["weight"].shape == (len(w),)]
        pool.sort(key=lambda item: not item[0].startswith(parent))  # the same module's BatchNorms first
        found = _match_batchnorm(w_fused, b_fused, w, cb, pool)
        if found is None:
            continue
        prefix, eps, _ = found
        bn = bns[prefix]
        ratio = bn["weight"] / np.sqrt(bn["running_var"] + eps)
        sites.append(Site(i, prefix, eps, bn["weight"], bn["bias"], ratio))
        used.add(prefix)
    missing = sorted(set(bns) - used)
    if missing:
        raise BundleError(f"{len(missing)} BatchNorm layer(s) not found folded into a convolution of the ONNX graph "
                          f"({', '.join(missing[:3])}...); adapt with runtime torch")  # fmt: skip
    return sites


def _stats_graph(model, sites: list[Site]):
    """A copy of ``model`` whose folded BatchNorms normalise with batch statistics and output them.

    For site i: outputs ``adabn_mean_i`` and ``adabn_var_i`` (biased batch mean/variance of the fused
    convolution's output, shape (1, C, 1, 1)) and ``adabn_shape_i``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    stats = copy.deepcopy(model)
    graph = stats.graph
    by_node = {s.node: (i, s) for i, s in enumerate(sites)}
    axes = "adabn_axes"
    graph.initializer.append(numpy_helper.from_array(np.array([0, 2, 3], dtype=np.int64), axes))
    nodes = []
    for j, node in enumerate(graph.node):
        nodes.append(node)
        if j not in by_node:
            continue
        i, s = by_node[j]
        out, pre, t = node.output[0], f"adabn_pre_{i}", f"adabn_{i}_"
        node.output[0] = pre
        shape = (1, len(s.gamma), 1, 1)
        gamma = np.abs(s.gamma)
        floor = np.where(gamma > 0, s.eps * s.ratio**2, 1.0)  # gamma = 0: any positive value, k = 0 anyway
        for name, value in (("g", gamma), ("e", floor), ("b", s.beta)):
            graph.initializer.append(numpy_helper.from_array(value.reshape(shape).astype(np.float32), t + name))
        mean, var = f"adabn_mean_{i}", f"adabn_var_{i}"
        nodes += [
            helper.make_node("ReduceMean", [pre, axes], [mean], keepdims=1),
            helper.make_node("Sub", [pre, mean], [t + "d"]),
            helper.make_node("Mul", [t + "d", t + "d"], [t + "d2"]),
            helper.make_node("ReduceMean", [t + "d2", axes], [var], keepdims=1),
            helper.make_node("Add", [var, t + "e"], [t + "ve"]),
            helper.make_node("Sqrt", [t + "ve"], [t + "s"]),
            helper.make_node("Div", [t + "g", t + "s"], [t + "k"]),
            helper.make_node("Mul", [t + "d", t + "k"], [t + "dk"]),
            helper.make_node("Add", [t + "dk", t + "b"], [out]),
            helper.make_node("Shape", [pre], [f"adabn_shape_{i}"]),
        ]
        graph.output.extend(
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in (mean, var)]
            + [helper.make_tensor_value_info(f"adabn_shape_{i}", TensorProto.INT64, [4])]
        )
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(stats)
    return stats


def onnx_statistics(session, sites: list[Site], images: np.ndarray, batch_size: int) -> tuple[list, list]:
    """Per site: the average over batches of the batch mean and unbiased batch variance (float64)."""
    names = [f"adabn_{k}_{i}" for i in range(len(sites)) for k in ("mean", "var", "shape")]
    input_name = session.get_inputs()[0].name
    means = [np.zeros(len(s.gamma)) for s in sites]
    variances = [np.zeros(len(s.gamma)) for s in sites]
    slices = batch_slices(len(images), batch_size)
    for sl in slices:
        values = session.run(names, {input_name: np.ascontiguousarray(images[sl], dtype=np.float32)})
        for i in range(len(sites)):
            mean, var, shape = values[3 * i : 3 * i + 3]
            n = int(shape[0] * np.prod(shape[2:]))
            means[i] += mean.reshape(-1).astype(np.float64) / len(slices)
            variances[i] += var.reshape(-1).astype(np.float64) * n / max(1, n - 1) / len(slices)
    return means, variances


def adapt_onnx(model_bytes: bytes, state: dict[str, np.ndarray], images: np.ndarray, session_factory,
               batch_size: int = 32) -> tuple[bytes, dict[str, Any]]:  # fmt: skip
    """The ONNX graph ``model_bytes`` with its folded BatchNorms re-estimated on ``images`` (float (N,1,S,S)).

    ``state``: the bundle's ``model.safetensors`` as numpy arrays; ``session_factory(bytes)`` builds an ONNX
    Runtime session. Returns the adapted graph's bytes and a summary (layers, eps values found).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(model_bytes)
    sites = fused_sites(model, state)
    stats = _stats_graph(model, sites)
    means, variances = onnx_statistics(session_factory(stats.SerializeToString()), sites, images, batch_size)
    inits = _initializers(model.graph)
    for s, mean, var in zip(sites, means, variances, strict=True):
        node = model.graph.node[s.node]
        gamma = np.abs(s.gamma)
        k = np.where(gamma > 0, gamma / np.sqrt(var + s.eps * s.ratio**2 + (gamma == 0)), 0.0)
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        new_w = (w * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        new_b = (k * (b - mean) + s.beta).astype(np.float32)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(new_w, node.input[1]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(new_b, node.input[2]))
    info = {"batchnorm_layers": len(sites), "eps": sorted({s.eps for s in sites})}
    return model.SerializeToString(), info


# ----------------------------------------------------------------------------- runtimes and the Predictor


def adapt_runtime(runtime, images: np.ndarray, batch_size: int = 32) -> tuple[Any, dict[str, Any]]:
    """A new runtime of the same kind running the adapted network, and what was adapted.

    ``runtime``: an ``infer.runtime`` ``onnx`` or ``torch`` runtime (left unchanged); ``images``: float32
    (N, 1, S, S) in [0, 1]. The ONNX one reads the graph and ``model.safetensors`` through ``Bundle.read``
    (hash-checked) and needs no torch.
    """
    adapted = copy.copy(runtime)
    if runtime.name == "torch":
        adapted.model = adapt_batchnorm(runtime.model, images, batch_size)
        return adapted, {"batchnorm_layers": len(batchnorm_modules(adapted.model))}
    if runtime.name != "onnx":
        raise BrainMRIError(f"AdaBN supports the onnx and torch runtimes, not {runtime.name}")
    import onnxruntime as ort
    from safetensors.numpy import load

    from brainmri.bundle.onnx import session_options
    from brainmri.bundle.sealed import ONNX_FILE, WEIGHTS_FILE

    def session(data: bytes):
        return ort.InferenceSession(data, session_options(runtime.threads), providers=["CPUExecutionProvider"])

    state = load(runtime.bundle.read(WEIGHTS_FILE))
    data, info = adapt_onnx(runtime.bundle.read(ONNX_FILE), state, images, session, batch_size)
    adapted.session = session(data)
    return adapted, info


def _target_images(predictor, inputs: Any) -> tuple[np.ndarray, int, str]:
    """Preprocessed uint8 (N, S, S) target images, how many inputs failed to load, and what they were."""
    from brainmri.infer.inputs import Item, Loaded, expand_inputs

    size = predictor.size
    if isinstance(inputs, np.ndarray) and inputs.dtype == np.uint8 and inputs.shape[1:] == (size, size):
        return inputs, 0, f"{len(inputs)} preprocessed images"
    items = inputs if isinstance(inputs, list) and all(isinstance(i, Item) for i in inputs) else expand_inputs(inputs)
    loaded, failed = [], 0
    for result in predictor.loader(items):
        if isinstance(result, Loaded):
            loaded.append(result.image)
        else:
            failed += 1
    images = np.stack(loaded) if loaded else np.zeros((0, size, size), np.uint8)
    what = inputs if isinstance(inputs, str) else f"{len(items)} inputs"
    return images, failed, str(what)


def adapt_predictor(predictor, inputs: Any, *, min_images: int | None = None, source: str | None = None):
    """A copy of ``predictor`` whose network uses BatchNorm statistics of ``inputs`` (see Predictor.adapt)."""
    images, failed, what = _target_images(predictor, inputs)
    minimum = predictor.config.adapt_bn_min_images if min_images is None else min_images
    check_count(len(images), minimum)
    batch_size = predictor.config.batch_size
    x = images[:, None].astype(np.float32) / np.float32(255.0)
    runtime, info = adapt_runtime(predictor.runtime, x, batch_size)
    adapted = copy.copy(predictor)
    adapted.runtime = runtime
    adapted._torch = runtime if runtime.name == "torch" else None
    adapted._source_runtime = predictor._source_runtime or predictor.runtime
    adapted._adapt_images = images
    adapted.adaptation = {
        "method": "AdaBN (BatchNorm statistics re-estimated on target images)",
        "source": source or what,
        "images": len(images),
        "failed_inputs": int(failed),
        "batch_size": batch_size,
        "batches": len(batch_slices(len(images), batch_size)),
        "runtime": runtime.name,
        **info,
    }
    return adapted
