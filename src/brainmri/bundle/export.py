"""``brainmri export RUN``: a training run -> a self-describing, verifiable bundle folder.

The ONNX graph is exported with the dynamo exporter (``torch.onnx.export(dynamo=True)``, the default
and recommended path in torch 2.14), opset 18, one file (weights inside, so one hash covers the graph),
with a dynamic batch axis. After export the graph is run once in ONNX Runtime on a batch size other
than the traced one and compared with torch: probabilities must agree within 1e-4, or export fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.bundle.card import data_fingerprint, package_versions, read_calibration, read_reports, render_readme
from brainmri.bundle.interop import hf_front_matter, monai_metadata, onnx_metadata, write_onnx_metadata
from brainmri.bundle.sealed import (
    BUNDLE_FILES,
    CARD_FILE,
    FORMAT,
    FORMAT_VERSION,
    METADATA_FILE,
    ONNX_FILE,
    ONNX_OPSET,
    README_FILE,
    SEAL_FIELD,
    WEIGHTS_FILE,
    seal_card,
    sha256_bytes,
)
from brainmri.errors import BundleError
from brainmri.utils import replace_dir

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"
CAMS_NAME = "cams"
BLOCK_STATS_NAME = "block_stats"
PARITY_TOLERANCE = 1e-4


def export_onnx(model, size: int, path: Path, opset: int = ONNX_OPSET) -> list[str]:
    """Write ``model`` (eval mode) to ``path`` as a single-file ONNX graph with a dynamic batch axis.

    The graph computes ``DeployedHeads``: logits, pooled features (out-of-domain score), when the head
    is average pooling + linear, class activation maps (Grad-CAM overlays without torch) and, when the backbone
    has timm's ``forward_intermediates``, early-stage statistics (the low-level out-of-domain score). Returns
    the output names.
    """
    import torch

    from brainmri.models.classifier import DeployedHeads

    heads = DeployedHeads(model).eval()
    outputs = list(heads.output_names)
    example = torch.rand(2, 1, size, size)  # batch 2: torch.export specialises sizes 0 and 1
    program = torch.onnx.export(
        heads,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=outputs,
        opset_version=opset,
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        external_data=False,
        optimize=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)
    return outputs


def onnx_parity(model, onnx_bytes: bytes, size: int, batch: int = 3, seed: int = 0) -> float:
    """Max |p_onnx - p_torch| on random inputs of a batch size the exporter did not trace."""
    import onnxruntime as ort
    import torch

    from brainmri.bundle.onnx import available_cores, session_options
    from brainmri.calibrate.probabilities import softmax

    x = np.random.default_rng(seed).random((batch, 1, size, size), dtype=np.float32)
    options = session_options(available_cores())
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).float().numpy()
    return float(np.abs(softmax(got) - softmax(ref)).max())


def _check_preprocessor(preprocessor, size: int) -> None:
    from brainmri.data.phantoms import make_phantom

    out = preprocessor(make_phantom("glioma", size=96, seed=0).image * 255.0)
    if out.dtype != np.uint8 or out.shape != (size, size):
        raise BundleError(
            f"the run's preprocessor returns {out.dtype} {out.shape}, the model expects uint8 ({size}, {size})"
        )


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``; an existing bundle there is replaced, anything else kept."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / CARD_FILE).is_file())):
        raise BundleError(f"{out}: exists and is not a bundle folder; choose another --out")
    replace_dir(tmp, out)


def export_bundle(run: Any, out: str | Path, *, opset: int = ONNX_OPSET) -> Path:
    """Export the run at ``run`` (a folder or a loaded :class:`brainmri.runs.Run`) to the folder ``out``.

    Writes ``model.onnx``, ``model.safetensors``, ``README.md``, ``configs/metadata.json`` and ``card.json``
    into a temporary sibling
    folder and renames it into place only when everything succeeded.
    """
    from brainmri.runs import Run
    from brainmri.utils import setup_torch

    setup_torch()
    run = run if isinstance(run, Run) else Run.load(run)
    out = Path(out)
    model = run.build_model()
    preprocessor = run.preprocessor()
    size = int(run.cfg.preprocess.size)
    _check_preprocessor(preprocessor, size)
    calibration = read_calibration(run.calibration_path, run.classes)

    with _staging(out) as tmp:
        parity, outputs = _write_model_files(model, run.cfg.model.backbone, size, tmp, opset)
        card = build_card(run, out.name, model, preprocessor, calibration, size=size, opset=opset, parity=parity)
        card["outputs"] = _outputs_spec(outputs, len(run.classes))
        card["ood"] = _read_ood(run.ood_path)
        card["ood_blocks"] = _read_ood(run.ood_blocks_path)
        _write_readme_and_card(card, tmp)
        _replace_dir(tmp, out)
    return out


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A fresh temporary sibling folder of ``out`` to write a bundle into (removed unless moved into place)."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def export_adapted_bundle(
    source: Any,
    model,
    out: str | Path,
    calibration: dict[str, Any],
    adaptation: dict[str, Any],
    *,
    opset: int = ONNX_OPSET,
) -> Path:
    """A new bundle from ``source`` (a loaded :class:`Bundle`) with an adapted ``model`` (same architecture).

    Written by ``brainmri adapt BUNDLE`` (site head): preprocessing, out-of-domain state and training lineage
    are the source's; the model files, the calibration (fitted on the site's held-out slices) and the new
    ``adaptation`` section are this bundle's. The source's evaluation no longer describes this model, so it
    moves to ``adaptation.source_metrics`` and ``metrics`` is empty.
    """
    import copy

    out = Path(out)
    card = {k: copy.deepcopy(v) for k, v in source.card.items() if k not in ("files", SEAL_FIELD)}
    size = int(card["input"]["size"])
    with _staging(out) as tmp:
        parity, outputs = _write_model_files(model, card["model"]["config"]["backbone"], size, tmp, opset)
        card["model"]["onnx"]["parity_max_abs_diff_probability"] = parity
        source_info = {"source_bundle": source.name, "source_card_sha256": source.card_sha256}
        card.update(
            name=out.name,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            calibration=calibration,
            outputs=_outputs_spec(outputs, len(card["classes"])),
            adaptation={**adaptation, **source_info, "source_metrics": card.get("metrics")},
            metrics=None,
            versions=package_versions(),
        )
        _write_readme_and_card(card, tmp)
        _replace_dir(tmp, out)
    return out


def _write_model_files(model, backbone: str, size: int, folder: Path, opset: int) -> tuple[float, list[str]]:
    """``model.onnx`` (checked, compared with torch) and ``model.safetensors``; returns parity and output names."""
    import onnx
    from safetensors.torch import save as save_safetensors

    outputs = export_onnx(model, size, folder / ONNX_FILE, opset)
    onnx_bytes = (folder / ONNX_FILE).read_bytes()
    onnx.checker.check_model(onnx.load_from_string(onnx_bytes))
    parity = onnx_parity(model, onnx_bytes, size)
    if not parity <= PARITY_TOLERANCE:
        raise BundleError(f"ONNX export does not reproduce the torch model: max |Δp| = {parity:.2e}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    (folder / WEIGHTS_FILE).write_bytes(save_safetensors(state, metadata={"format": "pt", "backbone": backbone}))
    return parity, outputs


def _write_readme_and_card(card: dict[str, Any], folder: Path) -> None:
    """ONNX ``metadata_props``; hash the model files into ``card["files"]``; ``configs/metadata.json`` (MONAI
    style) and ``README.md`` (Hugging Face front matter + model card) from the card, hashed; seal the card."""
    import json

    weights_sha256 = sha256_bytes((folder / WEIGHTS_FILE).read_bytes())
    write_onnx_metadata(folder / ONNX_FILE, onnx_metadata(card, weights_sha256))
    files = {name: (folder / name).read_bytes() for name in (ONNX_FILE, WEIGHTS_FILE)}
    card["files"] = {name: {"sha256": sha256_bytes(b), "bytes": len(b)} for name, b in files.items()}
    metadata = monai_metadata(card, version=str(card["versions"].get("brainmri") or "0"))
    meta_bytes = (json.dumps(metadata, indent=2) + "\n").encode("utf-8")
    (folder / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    (folder / METADATA_FILE).write_bytes(meta_bytes)
    card["files"][METADATA_FILE] = {"sha256": sha256_bytes(meta_bytes), "bytes": len(meta_bytes)}
    readme = (hf_front_matter(card) + render_readme(card)).encode("utf-8")
    (folder / README_FILE).write_bytes(readme)
    card["files"][README_FILE] = {"sha256": sha256_bytes(readme), "bytes": len(readme)}
    assert sorted(card["files"]) == sorted(BUNDLE_FILES)
    (folder / CARD_FILE).write_bytes(seal_card(card))


def build_card(
    run: Any,
    name: str,
    model,
    preprocessor,
    calibration: dict[str, Any],
    *,
    size: int,
    opset: int,
    parity: float,
) -> dict[str, Any]:
    """``card.json`` without ``files`` and the seal: what the bundle is, takes, returns, and was made from."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": "classification of one 2D brain MRI slice",
        "classes": run.classes,
        **_io_spec(size, len(run.classes)),
        "preprocessing": {
            "config": run.cfg.preprocess.model_dump(mode="json"),
            "state": preprocessor.to_dict(),
        },
        "model": _model_spec(run, model, opset, parity),
        "calibration": calibration,
        "decision": {
            "tumor_probability": "1 - p(no_tumor)",
            "is_tumor": "tumor_probability >= threshold",
            "review": "conformal set has more than one class, or normalised entropy > predict.review_entropy",
        },
        "metrics": read_reports(run.reports_dir),
        "data": data_fingerprint(run.info),
        "training": {"run": run.info, "config": run.cfg.model_dump(mode="json")},
        "versions": package_versions(),
    }


def _io_spec(size: int, n_classes: int) -> dict[str, Any]:
    return {
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "shape": ["batch", 1, size, size],
            "channels": 1,
            "size": size,
            "dtype": "float32",
            "value_range": [0.0, 1.0],
            "source": "uint8 output of the bundled preprocessor / 255",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", n_classes],
            "dtype": "float32",
            "meaning": "logits; probabilities = softmax(logits / calibration.temperature)",
        },
    }


def _outputs_spec(names: list[str], n_classes: int) -> dict[str, Any]:
    """Every output of the graph (``output`` above names the logits, kept for older readers)."""
    spec = {
        OUTPUT_NAME: {"shape": ["batch", n_classes], "meaning": "logits"},
        FEATURES_NAME: {"shape": ["batch", "F"], "meaning": "pooled pre-logit features (out-of-domain score)"},
        CAMS_NAME: {"shape": ["batch", n_classes, "h", "w"], "meaning": "class activation maps (sum_k w_ck A_k)"},
        BLOCK_STATS_NAME: {
            "shape": ["batch", "D"],
            "meaning": "per-channel mean and std of early feature stages (low-level out-of-domain score)",
        },
    }
    return {name: spec[name] for name in names}


def _read_ood(path: Path) -> dict[str, Any] | None:
    """The run's fitted out-of-domain score (``ood.json``, written by evaluation), checked, or None."""
    import json

    from brainmri.calibrate.ood import ood_from_dict

    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    ood_from_dict(d)  # refuses a malformed file before it is sealed into a bundle
    return d


def _model_spec(run: Any, model, opset: int, parity: float) -> dict[str, Any]:
    import torch

    return {
        "config": run.cfg.model.model_dump(mode="json"),
        "num_classes": len(run.classes),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "onnx": {
            "opset": opset,
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "dynamic_axes": {INPUT_NAME: {"0": "batch"}, OUTPUT_NAME: {"0": "batch"}},
            "parity_max_abs_diff_probability": parity,
        },
    }
