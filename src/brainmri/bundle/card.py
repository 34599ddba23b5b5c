"""What a bundle says about itself: ``card.json`` (machine) and ``README.md`` (human model card).

The card follows the spirit of MONAI bundle metadata and Mitchell et al. (2019) "Model Cards for Model
Reporting": what goes in, what comes out, how it was calibrated, what data it saw and how well it did.
Every number in the README comes from the run's own files (``calibration.json``, ``reports/``); when a
file is missing the card says so instead of inventing a value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from brainmri.errors import BundleError
from brainmri.labels import NO_TUMOR
from brainmri.utils import file_digest

UNCALIBRATED_NOTE = (
    "calibration.json was not found in the run (run `brainmri evaluate` first): temperature 1 "
    "(probabilities not calibrated), no conformal prediction sets, decision threshold 0.5 (not tuned)"
)


def read_calibration(path: Path, classes: list[str]) -> dict[str, Any]:
    """The card's ``calibration`` section: the run's ``calibration.json`` (``PostHocCalibration``), or defaults.

    Calibrated: ``{"calibrated": true, "source", "source_sha256", **PostHocCalibration.to_dict()}`` (temperature,
    threshold, conformal quantiles, default_alpha, fitted_on, details). Missing: temperature 1, threshold 0.5,
    no conformal sets, and a note saying so.
    """
    from brainmri.calibrate.posthoc import PostHocCalibration

    if not path.is_file():
        return {
            "calibrated": False,
            "source": None,
            "temperature": 1.0,
            "threshold": 0.5,
            "conformal": {},
            "default_alpha": None,
            "fitted_on": None,
            "note": UNCALIBRATED_NOTE,
        }
    cal = PostHocCalibration.load(path)
    if cal.classes != list(classes):
        raise BundleError(f"{path}: calibrated for classes {cal.classes}, the model has {list(classes)}")
    source = {"calibrated": True, "source": path.name, "source_sha256": file_digest(path, "sha256"), "note": None}
    return source | cal.to_dict()


def read_reports(reports_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` and ``summary.json`` of the run's evaluation, verbatim, with their hashes."""
    out: dict[str, Any] = {}
    for name in ("metrics.json", "summary.json"):
        path = reports_dir / name
        if path.is_file():
            try:
                out[name.removesuffix(".json")] = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise BundleError(f"{path}: not valid JSON ({exc})") from None
            out[f"{name.removesuffix('.json')}_sha256"] = file_digest(path, "sha256")
    return out or None


def data_fingerprint(run_info: dict[str, Any]) -> dict[str, Any]:
    """sha256 of the manifest and split file the run was trained on (what data, exactly)."""
    split_path = Path(str(run_info.get("split_file") or ""))
    split: dict[str, Any] = {}
    split_sha = run_info.get("split_sha256")
    if split_path.is_file():
        split_sha = file_digest(split_path, "sha256")
        try:
            split = json.loads(split_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            split = {}
    manifest_path = Path(str(split.get("manifest") or ""))
    recorded = split.get("manifest_sha256")
    manifest_sha = file_digest(manifest_path, "sha256") if manifest_path.is_file() else recorded
    fingerprint = None
    if manifest_sha and split_sha:
        import hashlib

        fingerprint = hashlib.sha256(f"{manifest_sha}:{split_sha}".encode()).hexdigest()
    return {
        "fingerprint": fingerprint,
        "manifest": str(manifest_path) if split.get("manifest") else None,
        "manifest_sha256": manifest_sha,
        "manifest_matches_split": (manifest_sha == recorded) if (manifest_sha and recorded) else None,
        "split_file": str(split_path) if run_info.get("split_file") else None,
        "split_sha256": split_sha,
        "split_counts": {k: len(split[k]) for k in ("train", "val", "test") if isinstance(split.get(k), list)},
        "excluded": len(split["excluded"]) if isinstance(split.get("excluded"), list) else None,
        "seed": split.get("seed"),
    }


def package_versions() -> dict[str, Any]:
    from importlib import metadata

    from brainmri.utils import machine_facts

    facts = machine_facts()
    versions = dict(facts["versions"])
    for pkg in ("onnx", "onnxscript", "safetensors"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    versions["python"] = facts["python"]
    return versions


# ------------------------------------------------------------------------------------------ README


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _qhat(q: float | None) -> str:
    return "inf (every class in every set: too few calibration samples)" if q is None else _fmt(q)


def metric_rows(obj: Any, prefix: str = "", limit: int = 60) -> list[tuple[str, str]]:
    """Flatten a metrics JSON into (name, "value [lo, hi]") rows; lists (confusion matrices) are skipped.

    An estimate is a dict with ``value`` (``evaluate.metrics.estimate``: ``value, ci_low, ci_high,
    ci_method``); its CI is shown when both bounds are there.
    """
    rows: list[tuple[str, str]] = []

    def walk(node: Any, name: str) -> None:
        if len(rows) >= limit:
            return
        if isinstance(node, bool) or node is None:
            return
        if isinstance(node, int | float):
            rows.append((name, _fmt(node)))
            return
        if not isinstance(node, dict):
            return
        value = node.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool):
            lo, hi = node.get("ci_low"), node.get("ci_high")
            text = _fmt(value) + (f" [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None else "")
            rows.append((name, text))
            return
        for key, child in node.items():
            walk(child, f"{name}.{key}" if name else str(key))

    walk(obj, prefix)
    return rows


LIMITATIONS = [
    "## Limitations",
    "",
    "- Trained and evaluated on public 2D slice collections (Kaggle) with known exact and near duplicates, "
    "mixed encodings and some label noise; performance on other scanners, sequences, institutions or "
    "patient populations is unknown.",
    "- One slice at a time: no 3D context, no clinical history; classes outside the four above are forced into "
    "one of them.",
    "- Calibration, threshold and conformal sets hold on data like the calibration split; under distribution "
    "shift they may not. Conformal coverage is marginal (on average), not per patient.",
    "- Grad-CAM overlays show where the model looked, not where the tumour is.",
    "",
]


def _ensemble_note(members: int) -> str:
    if members <= 1:
        return ""
    return (
        f" A deep ensemble of {members} networks of this backbone (parameters counted over all of them): the"
        " logits are the log of their mean probability, and each prediction costs one forward pass per member."
    )


def render_readme(card: dict[str, Any]) -> str:
    """The human model card. Numbers only from ``card`` (which holds the run's own files)."""
    lines = [
        f"# Model card: {card['name']}",
        "",
        "> **Research use only. Not a medical device; not for diagnosis or treatment decisions.** "
        "Outputs must be reviewed by a qualified clinician.",
        "",
        *_use_and_model_section(card),
        *_data_section(card["data"]),
        *_calibration_section(card["calibration"]),
        *_adaptation_section(card.get("adaptation")),
        *_evaluation_section(card.get("metrics"), adapted=bool(card.get("adaptation"))),
        *LIMITATIONS,
        *_verification_section(card),
    ]
    return "\n".join(lines)


def _use_and_model_section(card: dict[str, Any]) -> list[str]:
    classes, inp, model = card["classes"], card["input"], card["model"]
    return [
        "## Intended use",
        "",
        f"Classifies a single 2D brain MRI slice into one of {len(classes)} classes: {', '.join(classes)}. "
        "For research into tumour classification, calibration and uncertainty on public data sets. "
        "It is not intended for screening, triage, diagnosis, or any use on patients.",
        "",
        "## Model",
        "",
        f"- Backbone: `{model['config']['backbone']}` (timm), {model.get('parameters', '?'):,} parameters, "
        f"gray mode `{model['config'].get('gray_mode')}`." + _ensemble_note(int(model["config"].get("ensemble", 1))),
        f"- Input: `{inp['name']}` float32 {inp['layout']} `[batch, {inp['channels']}, {inp['size']}, {inp['size']}]`,"
        f" values in [{inp['value_range'][0]}, {inp['value_range'][1]}] (the bundled preprocessor's uint8 output"
        " / 255).",
        f"- Output: logits for {classes}; probabilities = softmax(logits / temperature).",
        f"- Files: `model.onnx` (ONNX opset {model['onnx']['opset']}, dynamic batch) and `model.safetensors` "
        "(same weights, for the torch runtime: Grad-CAM, MC dropout).",
        f"- Preprocessing (bundled, fitted state included): preset `{card['preprocessing']['config'].get('preset')}`, "
        f"size {inp['size']} px.",
        "",
    ]


def _data_section(data: dict[str, Any]) -> list[str]:
    lines = ["## Data", ""]
    counts = data.get("split_counts") or {}
    if data.get("fingerprint"):
        lines.append(f"- Data fingerprint (sha256 of manifest + split): `{data['fingerprint']}`.")
    else:
        lines.append("- Data fingerprint: not available (manifest or split file missing at export).")
    if counts:
        lines.append("- Split sizes: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".")
    if data.get("excluded") is not None:
        lines.append(f"- Excluded from the split (duplicates, unreadable, label conflicts): {data['excluded']}.")
    return [*lines, ""]


def _calibration_section(cal: dict[str, Any]) -> list[str]:
    lines = ["## Calibration and decision", ""]
    if not cal["calibrated"]:
        return [*lines, f"- **Not calibrated.** {cal['note']}.", ""]
    lines.append(f"- Temperature: {_fmt(cal['temperature'])} (from `{cal['source']}`).")
    if cal["threshold"] is not None:
        lines.append(
            f"- Tumour decision: calibrated tumour probability = 1 - p({NO_TUMOR}) >= {_fmt(cal['threshold'])}"
            " means tumour."
        )
    for alpha, entry in cal["conformal"].items():
        lines.append(
            f"- Conformal prediction sets at alpha={alpha} ({entry['method'].upper()}): qhat {_qhat(entry['qhat'])}"
            f" (target coverage {1 - float(alpha):.0%}, "
            + ("per class (Mondrian)" if entry.get("mondrian") else "marginal")
            + ", on exchangeable data)"
            + (", the default" if float(alpha) == cal["default_alpha"] else "")
            + "."
        )
    if cal.get("fitted_on"):
        lines.append(f"- Fitted on: the `{cal['fitted_on']}` split ({cal.get('n')} images).")
    return [*lines, ""]


def _adaptation_section(adapt: dict[str, Any] | None) -> list[str]:
    """What ``brainmri adapt BUNDLE`` changed, and on which slices (absent for an exported run)."""
    if not adapt:
        return []
    ext = adapt.get("external") or {}
    before, after = adapt.get("holdout_before") or {}, adapt.get("holdout_after") or {}
    return [
        "## Site adaptation",
        "",
        f"- Adapted from bundle `{adapt.get('source_bundle')}` (card sha256 `{adapt.get('source_card_sha256')}`) to "
        f"the set `{ext.get('name')}` by `{adapt.get('method')}`: only the `{NO_TUMOR}` row of the linear head was "
        "refitted on frozen features (offset logistic regression, L2 strength "
        f"C = {_fmt(adapt.get('c'))} by patient-grouped cross-validation); the source temperature is folded in. "
        + (
            f"Anchored to stand-ins for the source features (drawn from the out-of-domain gate) with weight "
            f"{_fmt(adapt.get('anchor'))}."
            if adapt.get("anchor")
            else "Not anchored to the source: expect the source's own images to be answered differently."
        ),
        f"- Fitted on {ext.get('n_train')} labelled slices; threshold chosen on {ext.get('n_holdout')} held-out "
        "slices of other patients (not used in the fit).",
        f"- Held-out tumour AUC {_fmt(before.get('holdout_auc'))} before, {_fmt(after.get('holdout_auc'))} after; "
        f"log loss {_fmt(before.get('holdout_bce'))} before, {_fmt(after.get('holdout_bce'))} after.",
        "- Conformal sets were dropped: adaptation changed the probabilities and tumour / no-tumour labels cannot "
        "refit 4-class sets. The source evaluation is in `card.json` → `adaptation.source_metrics`; measure this "
        f"model on the site's evaluation part: `brainmri validate BUNDLE DATA --split-file {ext.get('split_file')}`.",
        "",
    ]


def _evaluation_section(metrics: dict[str, Any] | None, adapted: bool = False) -> list[str]:
    lines = ["## Evaluation", ""]
    rows = metric_rows(metrics.get("metrics")) if metrics else []
    if not rows and adapted:
        return [
            *lines,
            "**Adapted to a site: the source's evaluation no longer applies; validate it there (above).**",
            "",
        ]
    if not rows:
        return [*lines, "**No evaluation report was found in the run; this model's performance is unknown.**", ""]
    note = ((metrics.get("metrics") or {}).get("bootstrap") or {}).get("note") or (
        "95% CIs: exact Clopper–Pearson for sensitivity, specificity, PPV, NPV and conformal coverage; percentile "
        "bootstrap otherwise."
    )
    lines += [
        f"Values from the run's `reports/metrics.json`, 95% CI in brackets where reported. {note}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    return [*lines, *(f"| {name} | {text} |" for name, text in rows), ""]


def _verification_section(card: dict[str, Any]) -> list[str]:
    lines = [
        "## Verification",
        "",
        "`brainmri.load_bundle(path)` checks the sha256 of every file before use (card.json lists them and seals "
        "itself) and refuses a modified bundle.",
        "",
    ]
    lines += [f"- `{name}`: sha256 `{entry['sha256']}`" for name, entry in card["files"].items() if name != "README.md"]
    return [*lines, "", f"Exported by brainmri {card['versions'].get('brainmri')} on {card['created']}.", ""]
