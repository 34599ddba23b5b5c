"""What other tools read from a bundle: ONNX ``metadata_props``, Hugging Face front matter, MONAI metadata.

- ``model.onnx`` carries ``metadata_props`` (string key/value pairs any ONNX reader shows: Netron,
  ``onnxruntime.InferenceSession.get_modelmeta().custom_metadata_map``): classes, input name/shape/size,
  value range and normalisation, the calibration it is meant to be used with, and its identity.
  The identity cannot be the card's sha256: the card lists the sha256 of ``model.onnx``, so a hash of the
  card (sealed or not) inside the ONNX file would change that file's hash — a cycle. It is instead the
  sha256 of ``model.safetensors`` (the same weights, hashed in ``card.files``; a reader holding a loose
  ``model.onnx`` finds its card by that value) plus the training-data fingerprint.
- ``README.md`` starts with Hugging Face model-card YAML (license, tags, ``pipeline_tag``,
  ``library_name: onnx``, ``model-index`` with the evaluated metrics and the data set of the card).
- ``configs/metadata.json`` follows the MONAI bundle ``metadata.json`` schema (version, changelog, task,
  ``network_data_format`` inputs/outputs with shapes, dtypes, value ranges and channel definitions).

Everything here is derived from the card, so it never says more than the card does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LICENSE = "apache-2.0"
MONAI_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
)
HF_TAGS = ["medical-imaging", "mri", "brain", "brain-tumor", "image-classification", "onnx", "brainmri"]
_HEADLINE = {  # summary.json key -> (model-index metric type, display name)
    "accuracy": ("accuracy", "accuracy (4 classes, calibrated)"),
    "balanced_accuracy": ("balanced_accuracy", "balanced accuracy"),
    "f1_macro": ("f1", "macro F1"),
    "auc_macro_ovr": ("roc_auc", "macro one-vs-rest AUC"),
    "ece_after": ("ece", "expected calibration error (after temperature)"),
    "tumour_sensitivity": ("recall", "tumour sensitivity at the bundle threshold"),
    "tumour_specificity": ("specificity", "tumour specificity at the bundle threshold"),
    "tumour_auc": ("roc_auc", "tumour vs no tumour AUC"),
}


def _value(x: Any) -> float | None:
    """A number, or the ``value`` of an estimate dict; None otherwise."""
    if isinstance(x, dict):
        x = x.get("value")
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def model_identity(card: dict[str, Any]) -> str:
    """``sha256:<hex>`` of ``model.safetensors`` (the weights); the card lists the same value."""
    return "sha256:" + card["files"]["model.safetensors"]["sha256"]


def onnx_metadata(card: dict[str, Any], weights_sha256: str) -> dict[str, str]:
    """The ``metadata_props`` written into ``model.onnx`` (all values strings; lists and dicts as JSON)."""
    inp, cal = card["input"], card["calibration"]
    preset = (card["preprocessing"].get("config") or {}).get("preset")
    props: dict[str, Any] = {
        "brainmri.format": card["format"],
        "brainmri.format_version": card["format_version"],
        "name": card["name"],
        "created": card["created"],
        "task": card["task"],
        "classes": card["classes"],
        "input_name": inp["name"],
        "input_shape": inp["shape"],
        "input_layout": inp["layout"],
        "input_size": inp["size"],
        "input_dtype": inp["dtype"],
        "value_range": inp["value_range"],
        "normalization": f"input = uint8 output of the bundled brainmri preprocessor (preset {preset}) / 255; "
        "the backbone's mean/std normalisation is inside the graph",
        "outputs": list(card.get("outputs") or [card["output"]["name"]]),
        "probabilities": "softmax(logits / temperature)",
        "temperature": cal["temperature"],
        "threshold": cal.get("threshold"),
        "tumor_probability": "1 - p(no_tumor); tumour when >= threshold",
        "weights_sha256": weights_sha256,
        "model_identity": f"sha256:{weights_sha256}",
        "data_fingerprint": (card.get("data") or {}).get("fingerprint"),
        "license": "Apache-2.0",
        "intended_use": "research use only; not a medical device, not for diagnosis",
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()}


def write_onnx_metadata(path: Path, props: dict[str, str]) -> None:
    """Set ``metadata_props`` (and a doc string) of the ONNX file at ``path`` in place (export only: needs onnx)."""
    import onnx

    model = onnx.load_model(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"brainmri bundle '{props.get('name')}': {props.get('task')}; classes {props.get('classes')}"
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


def read_onnx_metadata(data: bytes) -> dict[str, str]:
    """``metadata_props`` of ONNX bytes via ONNX Runtime (no onnx package needed)."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def headline_metrics(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluated headline numbers of the card (``metrics.summary``) as model-index metrics."""
    summary = (card.get("metrics") or {}).get("summary") or {}
    out = []
    for key, (kind, name) in _HEADLINE.items():
        value = _value(summary.get(key))
        if value is not None:
            out.append({"type": kind, "name": name, "value": round(value, 4)})
    if not out:  # no summary: the accuracy of metrics.json if there is one
        value = _value(((card.get("metrics") or {}).get("metrics") or {}).get("accuracy"))
        if value is not None:
            out.append({"type": "accuracy", "name": "accuracy", "value": round(value, 4)})
    return out


def _dataset(card: dict[str, Any]) -> dict[str, Any]:
    data = card.get("data") or {}
    roots = ((card.get("training") or {}).get("config") or {}).get("data", {}).get("roots") or []
    names = [Path(str(r)).name for r in roots] or ["data root not recorded in the run config"]
    summary = (card.get("metrics") or {}).get("summary") or {}
    entry = {"type": "brainmri-manifest", "name": ", ".join(names), "split": summary.get("split") or "test"}
    if data.get("fingerprint"):
        entry["revision"] = data["fingerprint"]
    return entry


def hf_front_matter(card: dict[str, Any]) -> str:
    """Hugging Face model-card YAML front matter (``---`` block) for the top of ``README.md``."""
    import yaml

    meta: dict[str, Any] = {
        "license": LICENSE,
        "library_name": "onnx",
        "pipeline_tag": "image-classification",
        "tags": HF_TAGS,
        "datasets": [_dataset(card)["name"]],
    }
    metrics = headline_metrics(card)
    if metrics:
        meta["model-index"] = [
            {
                "name": card["name"],
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "brain MRI slice classification"},
                        "dataset": _dataset(card),
                        "metrics": metrics,
                    }
                ],
            }
        ]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def parse_front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a README (``{}`` when there is none)."""
    import yaml

    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---\n", 4)
    return yaml.safe_load(text[4:end]) if end > 0 else {}


def monai_metadata(card: dict[str, Any], version: str) -> dict[str, Any]:
    """A MONAI-bundle-style ``configs/metadata.json`` describing what goes in and what comes out."""
    classes, inp, versions = card["classes"], card["input"], card.get("versions") or {}
    n, size = len(classes), inp["size"]
    created = card["created"]
    outputs: dict[str, Any] = {
        "pred": {
            "type": "probabilities",
            "format": "logits",
            "num_channels": n,
            "spatial_shape": [1],
            "dtype": "float32",
            "value_range": [],
            "is_onehot": False,
            "channel_def": {str(i): c for i, c in enumerate(classes)},
            "onnx_output": card["output"]["name"],
            "postprocessing": f"softmax(logits / {card['calibration']['temperature']})",
        }
    }
    return {
        "schema": MONAI_SCHEMA,
        "version": version,
        "changelog": {version: f"exported by brainmri on {created} as bundle '{card['name']}'"},
        "monai_version": None,
        "pytorch_version": versions.get("torch"),
        "numpy_version": versions.get("numpy"),
        "optional_packages_version": {k: v for k, v in versions.items() if k in ("onnxruntime", "onnx", "timm")},
        "name": card["name"],
        "task": card["task"],
        "description": f"{(card['model'].get('config') or {}).get('backbone')} classifier of 2D brain MRI slices "
        f"into {', '.join(classes)}; research use only, not a medical device",
        "authors": "brainmri",
        "copyright": "see README.md",
        "license": "Apache-2.0 (code and weights); data licences: see README.md",
        "data_type": "png/jpeg/dicom/nifti slices",
        "image_classes": f"single channel, {size}x{size}, the bundled preprocessor's uint8 output / 255",
        "label_classes": ", ".join(f"{i}: {c}" for i, c in enumerate(classes)),
        "pred_classes": f"{n} logits in the order of label_classes",
        "eval_metrics": {m["type"] + ":" + m["name"]: m["value"] for m in headline_metrics(card)},
        "intended_use": "research only; not for diagnosis",
        "model_identity": model_identity(card),
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": 1,
                    "spatial_shape": [size, size],
                    "dtype": inp["dtype"],
                    "value_range": list(inp["value_range"]),
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                    "onnx_input": inp["name"],
                    "onnx_shape": inp["shape"],
                }
            },
            "outputs": outputs,
        },
    }


def bundle_info(bundle: Any) -> dict[str, Any]:
    """What ``brainmri bundle info`` prints: identity, input, output, calibration, interop metadata."""
    card = bundle.card
    info: dict[str, Any] = {
        "bundle": str(bundle.dir),
        "name": bundle.name,
        "format_version": card["format_version"],
        "created": card.get("created"),
        "card_sha256": bundle.card_sha256,
        "model_identity": model_identity(card),
        "classes": bundle.classes,
        "input": card["input"],
        "outputs": card.get("outputs") or {card["output"]["name"]: card["output"]},
        "calibrated": bool(card["calibration"].get("calibrated")),
        "temperature": bundle.temperature,
        "threshold": bundle.threshold,
        "out_of_domain_score": bool(card.get("ood")),
        "low_level_out_of_domain_score": bool(card.get("ood_blocks")),
        "backbone": (card["model"].get("config") or {}).get("backbone"),
        "files": card["files"],
        "unexpected_files": list(bundle.unexpected),
        "onnx_metadata": read_onnx_metadata(bundle.read("model.onnx")),
    }
    info["huggingface"] = parse_front_matter(bundle.read("README.md").decode("utf-8"))
    if "configs/metadata.json" in card["files"]:
        info["monai_metadata"] = json.loads(bundle.read("configs/metadata.json"))
    return info
