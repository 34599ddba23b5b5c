"""MRI-C: the held-out test split under corruptions, plus two external sets zero-shot (docs/robustness.md).

Usage: ``.venv/bin/python bench/robustness.py --run runs/cpu-fast [--limit N] [--out bench/results/robustness.json]``
``[--corruptions bias_field,jpeg] [--runtime onnx|torch] [--no-ood] [--figures]``

Like ImageNet-C (Hendrycks & Dietterich 2019), each corruption has three severities, fixed parameters and
fixed seeds (one generator per corruption, severity and image), so two runs give the same images. The
corruptions act on the *preprocessed* uint8 slices (the preprocessor output the model sees / 255) and
the result is rounded back to uint8: that isolates what the model does with a shifted appearance from
what preprocessing (N4, Nyúl standardisation, CLAHE) would undo, and costs no re-preprocessing. A
corruption that preprocessing removes would overstate the drop; one it amplifies is not measured.

Per condition: 4-class accuracy, tumour AUC of p_tumour = 1 - p(no_tumor), ECE, sensitivity/specificity
at the run's tumour threshold, and how many images the run's deployed out-of-domain gate flags (the scores
``brainmri evaluate`` fitted, ``runs/<name>/ood*.json``, the ones its bundle carries), and each of its scores alone.
Older results (every ``robustness*.json`` but ``robustness_rerun.json``) fitted their own scores here instead
(Mahalanobis on pooled features of 2,000 training images, energy on logits; keys ``mahalanobis`` / ``energy``);
the renderer reads both.
Drops are clean minus corrupted, in accuracy points. External: lgg-flair (all of it, FLAIR, other
source; patient-level bootstrap CIs from ``labels.csv``; pHash near-matches with training images are
counted, not removed: they are coincidences across sources) and navoneel with its overlap with the run's
train + val removed (``Run.load_external``), both tumour vs no tumour.

``--figures`` also draws ``docs/img/augment_examples.png`` (one real test slice under each training
transform) and ``docs/img/robustness_corruptions.png`` (the same slice under every corruption and
severity). Run it alone: it also reports seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SEED = 20261202
NO_TUMOR = "no_tumor"

# name -> the three severity parameters (see make_corruption for their meaning)
CORRUPTIONS: dict[str, list[float]] = {
    "bias_field": [0.2, 0.4, 0.6],  # bound c of the 9 polynomial coefficients U(-c, c)
    "gamma": [0.3, 0.6, 0.9],  # |log gamma|; the sign alternates image by image (darker / brighter)
    "gaussian_noise": [0.02, 0.05, 0.10],  # sigma (image range [0, 1])
    "rician_noise": [0.02, 0.05, 0.10],  # sigma of each of the two Gaussian channels
    "blur": [0.8, 1.5, 2.5],  # Gaussian sigma in pixels
    "downsample": [2.0, 3.0, 4.0],  # isotropic down-up sampling factor
    "thickness": [2.0, 4.0, 6.0],  # down-up sampling factor along one axis (alternating rows / columns)
    "jpeg": [50, 30, 10],  # JPEG quality (cv2.imencode)
    "intensity_remap": [0.1, 0.2, 0.3],  # largest shift of the inner knots of a random monotone curve
    "contrast_inversion": [0.3, 0.7, 1.0],  # strength s: x -> (1 - s) x + s (max - x) inside the head
}


#: What a site may do to its slices before export (no severities, so not part of MRI-C's mean drop; reported
#: apart, on the test split and on both external sets): name -> the deterministic brainmri.train.augment class.
SITE_VARIATIONS: dict[str, str] = {"skull_stripped": "StripSkull"}


# ----------------------------------------------------------------------------- corruptions


def make_corruption(name: str, param: float, rng: np.random.Generator, index: int):
    """The deterministic transform (from brainmri.train.augment) of one corruption for one image."""
    from brainmri.train import augment as A

    if name == "bias_field":
        return A.BiasField(rng.uniform(-param, param, size=9))
    if name == "gamma":
        return A.Gamma(float(np.exp(param if index % 2 else -param)))
    if name == "gaussian_noise":
        return A.GaussianNoise(param, seed=int(rng.integers(2**31)))
    if name == "rician_noise":
        return A.RicianNoise(param, seed=int(rng.integers(2**31)))
    if name == "blur":
        return A.GaussianBlur(param)
    if name == "downsample":
        return A.Resample(param)
    if name == "thickness":
        return A.Resample(param, axis=index % 2)
    if name == "intensity_remap":
        knots = np.linspace(0, 1, 5)
        knots[1:] = np.clip(knots[1:] + rng.uniform(-param, param, 4), 0, 1)
        return A.IntensityRemap(np.maximum.accumulate(knots))
    if name == "contrast_inversion":
        return A.ContrastInversion(strength=param)
    raise KeyError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}")


def corrupt_images(images: np.ndarray, name: str, level: int) -> np.ndarray:
    """uint8 (N, S, S) -> uint8 (N, S, S): corruption ``name`` at severity ``level`` (1-3), deterministic."""
    param = CORRUPTIONS[name][level - 1]
    code = sorted(CORRUPTIONS).index(name)
    out = np.empty_like(images)
    for i, img in enumerate(images):
        if name == "jpeg":
            _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(param)])
            out[i] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
            continue
        rng = np.random.default_rng([SEED, code, level, i])
        x = make_corruption(name, param, rng, i)(img.astype(np.float32) / 255.0)
        out[i] = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def site_images(images: np.ndarray, name: str) -> np.ndarray:
    """uint8 (N, S, S) -> uint8 (N, S, S): every slice as a site applying ``name`` would send it, deterministic."""
    from brainmri.train import augment as A

    transform = getattr(A, SITE_VARIATIONS[name])()
    out = [transform(img.astype(np.float32) / 255.0) for img in images]
    return np.round(np.clip(np.stack(out), 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- model runtimes


class FeatureModel:
    """What the bundle's graph computes (``DeployedHeads``: ``logits``, ``features``, ``block_stats`` where the
    backbone has them; the CAMs are dropped) for uint8 (N, S, S) images; torch or ONNX Runtime (the graph
    ``brainmri export`` writes, built by the same function)."""

    def __init__(self, run, runtime: str, cache_dir: Path, batch_size: int = 64) -> None:
        import torch

        from brainmri.models.classifier import DeployedHeads

        self.model = run.build_model().to(memory_format=torch.channels_last)
        self.heads = DeployedHeads(self.model)
        self.batch_size, self.runtime, self.session = batch_size, runtime, None
        if runtime == "onnx":
            self.session = self._onnx_session(run, cache_dir)

    def _onnx_session(self, run, cache_dir: Path):
        import onnxruntime as ort

        from brainmri.bundle.export import export_onnx
        from brainmri.utils import file_digest

        path = cache_dir / f"heads_{file_digest(run.dir / 'model.safetensors', 'sha256')[:16]}.onnx"
        if not path.is_file():
            tmp = path.with_suffix(".tmp.onnx")
            export_onnx(self.model.eval(), run.cfg.preprocess.size, tmp)
            os.replace(tmp, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = int(os.environ.get("BENCH_THREADS", "2")), 1
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def _torch(self, x: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            return [o.float().numpy() for o in self.heads(t)]

    def outputs(self, images: np.ndarray, runtime: str | None = None) -> dict[str, np.ndarray]:
        """The graph's outputs by name, batches joined."""
        parts = []
        for s in range(0, len(images), self.batch_size):
            x = images[s : s + self.batch_size].astype(np.float32)[:, None] / 255.0
            onnx = (runtime or self.runtime) == "onnx"
            parts.append(self.session.run(None, {self.session.get_inputs()[0].name: x}) if onnx else self._torch(x))
        joined = zip(self.heads.output_names, zip(*parts, strict=True), strict=True)
        return {name: np.concatenate(p) for name, p in joined if name != "cams"}

    def __call__(self, images: np.ndarray, runtime: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(logits, pooled features): what most benchmarks read."""
        out = self.outputs(images, runtime)
        return out["logits"], out["features"]


# ----------------------------------------------------------------------------- metrics


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    err = sum(
        abs((pred[m] == labels[m]).mean() - conf[m].mean()) * m.mean() for b in range(bins) if (m := which == b).any()
    )
    return float(err)


def tumour_scores(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float | None]:
    from sklearn.metrics import roc_auc_score

    call = p >= threshold
    both = 0 < y.sum() < len(y)
    return {
        "auc": float(roc_auc_score(y, p)) if both else None,
        "sensitivity": float(call[y == 1].mean()) if (y == 1).any() else None,
        "specificity": float((~call[y == 0]).mean()) if (y == 0).any() else None,
    }


def bootstrap_ci(y, p, threshold, groups, n_boot: int, seed: int = SEED) -> dict[str, list[float] | None]:
    """95% percentile CIs of the tumour scores, resampling whole groups (patients) with replacement."""
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"auc": [], "sensitivity": [], "specificity": []}
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        for k, v in tumour_scores(y[idx], p[idx], threshold).items():
            if v is not None:
                draws[k].append(v)
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None for k, v in draws.items()}


class Scorer:
    """Turns the graph's outputs (``FeatureModel.outputs``) for one condition into the reported numbers.

    ``gate``: the run's deployed out-of-domain scores (``brainmri.evaluate.domain.load_gate``); empty: no flags.
    """

    def __init__(self, classes, temperature: float, threshold: float, gate: list[tuple[str, Any]]) -> None:
        self.classes, self.t, self.threshold, self.gate = classes, temperature, threshold, gate
        self.no = classes.index(NO_TUMOR)

    def p_tumour(self, logits: np.ndarray) -> np.ndarray:
        return 1.0 - softmax(logits / self.t)[:, self.no]

    def passes(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        from brainmri.evaluate.domain import gate_passes

        return gate_passes(self.gate, outputs)

    def flagged(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Share of images the gate flags (``gate``) and each of its scores alone flags ({} without a gate)."""
        if not self.gate:
            return {}
        alone = {name: float((~score.predict(outputs[name])[0]).mean()) for name, score in self.gate}
        return {"gate": float((~self.passes(outputs)).mean()), **alone}

    def four_class(self, outputs: dict[str, np.ndarray], labels) -> dict[str, Any]:
        logits = outputs["logits"]
        probs = softmax(logits / self.t)
        r = {"n": len(labels), "accuracy": float((probs.argmax(1) == labels).mean()), "ece": ece(probs, labels)}
        r.update(
            {
                f"tumour_{k}": v
                for k, v in tumour_scores(labels != self.no, self.p_tumour(logits), self.threshold).items()
            }
        )
        if self.gate:
            r["answered"] = self.answered_accuracy(probs.argmax(1) == labels, self.passes(outputs))
        return {**r, "ood_flagged": self.flagged(outputs)}

    @staticmethod
    def answered_accuracy(correct: np.ndarray, inside: np.ndarray) -> dict[str, Any]:
        """Accuracy on the images the gate passes, with their share: what a deployment that sends flagged
        images to review answers itself (None when it answers none)."""
        return {"share": float(inside.mean()), "accuracy": float(correct[inside].mean()) if inside.any() else None}

    def binary(self, outputs: dict[str, np.ndarray], y, groups, n_boot) -> dict[str, Any]:
        p = self.p_tumour(outputs["logits"])
        r: dict[str, Any] = {"n": len(y), "n_tumour": int(y.sum()), "n_groups": len(set(groups))}
        r.update(tumour_scores(y, p, self.threshold))
        r["ci95"] = bootstrap_ci(y, p, self.threshold, groups, n_boot) if n_boot else None
        if self.gate:
            r["answered"] = self.answered(p, self.passes(outputs), y, groups, n_boot)
        return {**r, "ood_flagged": self.flagged(outputs)}

    def answered(self, p, inside: np.ndarray, y, groups, n_boot) -> dict[str, Any]:
        """Scores on the images the gate passes: what a deployment that sends flagged images to review answers
        itself, and how many images that is (selective prediction, reported with its coverage so a high AUC on
        a small share cannot pass for the whole set)."""
        r: dict[str, Any] = {"gate": " + ".join(name for name, _ in self.gate), "share": float(inside.mean()),
                             "n": int(inside.sum()), "n_tumour": int(y[inside].sum())}  # fmt: skip
        r.update(tumour_scores(y[inside], p[inside], self.threshold))
        g = np.asarray(groups)[inside]
        r["ci95"] = bootstrap_ci(y[inside], p[inside], self.threshold, g, n_boot) if n_boot and inside.any() else None
        return r


# ----------------------------------------------------------------------------- data


def stratified_subset(labels: np.ndarray, limit: int | None, seed: int = SEED) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of size ~limit (all when limit is None)."""
    if not limit or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, max(1, round(limit * len(idx) / len(labels))), replace=False))
    return np.sort(np.concatenate(keep))


def build_manifest_file(root: Path, cfg, out: Path) -> Path:
    """``brainmri data import ROOT --out OUT`` through the Python API (cached: reused when present)."""
    from brainmri.data import manifest as M

    if out.is_file():
        return out
    params = list(inspect.signature(M.build_manifest).parameters)
    if params[1] == "cfg":
        frame = M.build_manifest([str(root)], cfg, workers=1)
    else:
        frame = M.build_manifest([str(root)], cfg.data, cfg.audit, workers=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    M.write_manifest(frame, out)
    return out


def external_images(run, root: Path, cache_dir: Path, remove_overlap: bool = True):
    """SplitImages of ``root`` preprocessed with the run's preprocessor (cached), minus the training overlap.

    ``remove_overlap=False`` keeps every readable image (``overlap`` still says what would be removed):
    for a set from another source, pHash matches with training images are coincidences, not copies.
    """
    from brainmri.data.manifest import read_manifest
    from brainmri.runs import SplitImages, images_from_files

    pre_hash = hashlib.sha256((run.dir / "preprocessor.json").read_bytes()).hexdigest()[:12]
    kind = "dedup" if remove_overlap else "all"
    cached = cache_dir / f"{root.name}_{kind}_{run.name}_{pre_hash}.npz"
    if cached.is_file():
        z = np.load(cached, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        return SplitImages(meta["ids"], meta["paths"], z["images"], z["labels"], meta["label_names"], meta["overlap"])
    manifest = build_manifest_file(root, run.cfg, cache_dir / f"{root.name}_manifest.csv")
    if remove_overlap:
        data = run.load_external(manifest)
    else:
        frame = read_manifest(manifest)
        frame = frame[frame["readable"].astype(str).str.lower() == "true"]
        _, overlap = run.without_training_overlap(frame, str(manifest))
        data = images_from_files(frame, run.preprocessor(), run.classes)
        data.overlap = {**overlap, "kept": True}
    meta = {k: getattr(data, k) for k in ("ids", "paths", "label_names", "overlap")}
    np.savez_compressed(cached, images=data.images, labels=data.labels, meta=json.dumps(meta))
    return data


#: Bands of a slice's level inside its patient's stack (0 = lowest slice, 1 = highest); the lowest third
#: of the lgg-flair stacks reaches down to the skull base, the highest to the vertex.
LEVEL_BANDS: tuple[tuple[str, float, float], ...] = (
    ("lower third (skull base)", 0.0, 1 / 3),
    ("middle third", 1 / 3, 2 / 3),
    ("upper third (vertex)", 2 / 3, 1.0001),
)


def slice_levels(ids: list[str], root: Path) -> np.ndarray | None:
    """Each image's relative level in its patient's stack, from ``labels.csv`` (``slice`` column), else None.

    Why: the external sets' no-tumour slices are not healthy brains but the patients' slices above and below
    the lesion, down to the skull base; the level shows whether the model finds the lesion or reacts to
    anatomy it rarely saw as "no tumour" in training.
    """
    table = root / "labels.csv"
    if not table.is_file():
        return None
    import pandas as pd

    frame = pd.read_csv(table)
    if not {"file", "patient", "slice"} <= set(frame.columns):
        return None
    span = frame.groupby("patient")["slice"].agg(["min", "max"])
    lo, hi = frame["patient"].map(span["min"]), frame["patient"].map(span["max"])
    level = ((frame["slice"] - lo) / (hi - lo).where(hi > lo, 1)).to_numpy(float)
    by_file = dict(zip(frame["file"].astype(str), level, strict=True))
    return np.array([by_file.get(i.split("/", 1)[1] if "/" in i else i, np.nan) for i in ids])


def by_level(scorer, outputs, y, groups, levels: np.ndarray, n_boot: int) -> list[dict[str, Any]]:
    """Tumour scores, the 4-class calls and the OOD flags inside each level band (patient-bootstrap CIs)."""
    logits = outputs["logits"]
    p, calls = scorer.p_tumour(logits), softmax(logits / scorer.t).argmax(1)
    rows = []
    for name, lo, hi in LEVEL_BANDS:
        m = (levels >= lo) & (levels < hi)
        g = np.asarray(groups)[m]
        row: dict[str, Any] = {"band": name, "n": int(m.sum()), "n_tumour": int(y[m].sum())}
        row.update(tumour_scores(y[m], p[m], scorer.threshold))
        row["ci95"] = bootstrap_ci(y[m], p[m], scorer.threshold, g, n_boot) if n_boot and m.any() else None
        row["calls"] = {
            kind: {c: int((calls[m & (y == want)] == i).sum()) for i, c in enumerate(scorer.classes)}
            for kind, want in (("tumour", 1), ("no_tumour", 0))
        }
        row["ood_flagged"] = scorer.flagged({k: v[m] for k, v in outputs.items()}) if m.any() else {}
        rows.append(row)
    return rows


def patient_groups(ids: list[str], root: Path) -> list[str]:
    """Patient of every image from ``root/labels.csv`` (column ``file`` relative to root); else the image id."""
    table = root / "labels.csv"
    if not table.is_file():
        return list(ids)
    import pandas as pd

    frame = pd.read_csv(table)
    by_file = dict(zip(frame["file"].astype(str), frame["patient"].astype(str), strict=True))
    return [by_file.get(i.split("/", 1)[1] if "/" in i else i, i) for i in ids]


# ----------------------------------------------------------------------------- calibration and OOD


def operating_point(run, val_logits: np.ndarray, val_labels: np.ndarray) -> dict[str, Any]:
    """Temperature and tumour threshold from the run's calibration.json, else T = 1 and a threshold fitted on val."""
    cal = json.loads(run.calibration_path.read_text()) if run.calibration_path.is_file() else {}
    if cal.get("temperature") and cal.get("threshold") is not None:
        return {"temperature": float(cal["temperature"]), "threshold": float(cal["threshold"]),
                "source": str(run.calibration_path)}  # fmt: skip
    from brainmri.calibrate.threshold import ThresholdSelector

    no = run.classes.index(NO_TUMOR)
    sel = ThresholdSelector(0.95, 0.5).fit(1.0 - softmax(val_logits)[:, no], (val_labels != no).astype(int))
    return {
        "temperature": 1.0,
        "threshold": float(sel.threshold_),
        "source": "fitted on val here (no calibration.json)",
    }


def deployed_gate(run, val_outputs: dict[str, np.ndarray]) -> tuple[list[tuple[str, Any]], dict[str, Any] | None]:
    """The run's fitted out-of-domain gate (what its bundle carries) and what it is: its scores, thresholds and
    the share of the validation split it passes (about ``evaluate.ood_quantile``). Empty without one."""
    from brainmri.evaluate.domain import gate_passes, load_gate

    gate = load_gate(run)
    if not gate:
        print(f"warning: {run.dir} has no fitted out-of-domain gate (run brainmri evaluate); no OOD columns")
        return [], None
    return gate, {
        "source": "the run's deployed gate (runs/<name>/ood.json, ood_blocks.json; fitted by brainmri evaluate)",
        "scores": {name: {"threshold": float(score.threshold_)} for name, score in gate},
        "val_passed": float(gate_passes(gate, val_outputs).mean()),
    }


# ----------------------------------------------------------------------------- the benchmark


def evaluate_corruptions(model, scorer: Scorer, test, names: list[str], clean: dict[str, Any]) -> dict:
    clean_acc, clean_auc = clean["accuracy"], clean["tumour_auc"]
    clean_answered = (clean.get("answered") or {}).get("accuracy")
    out: dict[str, Any] = {}
    for name in names:
        rows = []
        for level in (1, 2, 3):
            t0 = time.perf_counter()
            outputs = model.outputs(corrupt_images(test.images, name, level))
            r = {"severity": level, "param": CORRUPTIONS[name][level - 1], **scorer.four_class(outputs, test.labels)}
            r["drop"] = round(100 * (clean_acc - r["accuracy"]), 2)
            r["auc_drop"] = None if clean_auc is None or r["tumour_auc"] is None else clean_auc - r["tumour_auc"]
            if r.get("answered") and None not in (clean_answered, r["answered"]["accuracy"]):
                r["answered"]["drop"] = round(100 * (clean_answered - r["answered"]["accuracy"]), 2)
            rows.append(r)
            auc, secs = r["tumour_auc"] or float("nan"), time.perf_counter() - t0
            print(f"  {name:20s} s{level}: acc {r['accuracy']:.3f} (drop {r['drop']:+.1f}) auc {auc:.3f} {secs:.0f}s")
        out[name] = {"severities": rows, "mean_drop": round(float(np.mean([r["drop"] for r in rows])), 2)}
    return out


def evaluate_site_test(model, scorer: Scorer, test, clean: dict[str, Any]) -> dict[str, Any]:
    """The test split under each site variation: 4-class numbers and the drop from clean."""
    out: dict[str, Any] = {}
    for name in SITE_VARIATIONS:
        r = scorer.four_class(model.outputs(site_images(test.images, name)), test.labels)
        r["drop"] = round(100 * (clean["accuracy"] - r["accuracy"]), 2)
        out[name] = r
        print(f"  site {name}: acc {r['accuracy']:.3f} (drop {r['drop']:+.1f})")
    return out


def summarise(corr: dict[str, Any]) -> dict[str, Any]:
    if not corr:
        return {}
    cells = [(n, r) for n, c in corr.items() for r in c["severities"]]
    worst_name = max(corr, key=lambda n: corr[n]["mean_drop"])
    worst_cell = max(cells, key=lambda nr: nr[1]["drop"])
    auc_drops = [r["auc_drop"] for _, r in cells if r["auc_drop"] is not None]
    return {
        "mean_drop": round(float(np.mean([r["drop"] for _, r in cells])), 2),
        "worst_corruption": worst_name,
        "worst_corruption_drop": corr[worst_name]["mean_drop"],
        "worst_cell": {
            "corruption": worst_cell[0],
            "severity": worst_cell[1]["severity"],
            "drop": worst_cell[1]["drop"],
        },
        "mean_auc_drop": float(np.mean(auc_drops)) if auc_drops else None,
        "n_conditions": len(cells),
        "answered": answered_summary([r for _, r in cells]),
    }


def answered_summary(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Over all cells, for a deployment that honours the gate: the mean share it answers and the mean and worst
    accuracy drop on what it answers (a cell it answers nothing of has no drop). None without a gate."""
    answered = [r["answered"] for r in cells if r.get("answered")]
    if not answered:
        return None
    drops = [a["drop"] for a in answered if a.get("drop") is not None]
    return {
        "mean_share": round(float(np.mean([a["share"] for a in answered])), 4),
        "mean_drop": round(float(np.mean(drops)), 2) if drops else None,
        "worst_drop": max(drops) if drops else None,
        "cells_with_nothing_answered": sum(a["accuracy"] is None for a in answered),
    }


def evaluate_external(
    run, model, scorer: Scorer, roots: dict[str, Path], cache_dir: Path, n_boot: int, site: bool = False
) -> dict:
    out: dict[str, Any] = {}
    for name, root in roots.items():
        if not root.is_dir():
            out[name] = {"skipped": f"{root} not found"}
            continue
        data = external_images(run, root, cache_dir, remove_overlap=name != "lgg-flair")
        y = np.array([label != NO_TUMOR for label in data.label_names], dtype=int)
        groups = patient_groups(data.ids, root)
        outputs = model.outputs(data.images)
        r = scorer.binary(outputs, y, groups, n_boot)
        r["groups"] = "patients (labels.csv)" if (root / "labels.csv").is_file() else "images"
        r["overlap"] = {k: v for k, v in (data.overlap or {}).items() if k != "removed_ids"}
        if site:
            r["site"] = {v: scorer.binary(model.outputs(site_images(data.images, v)), y, groups, n_boot)
                         for v in SITE_VARIATIONS}  # fmt: skip
        levels = slice_levels(data.ids, root)
        if levels is not None:
            r["by_level"] = by_level(scorer, outputs, y, groups, levels, n_boot)
        out[name] = r
        ci = r["ci95"] and r["ci95"]["auc"]
        print(f"  {name}: n {r['n']}, AUC {r['auc'] or float('nan'):.3f} {ci}, sens {r['sensitivity']:.3f}, "
              f"spec {r['specificity']:.3f}, OOD flagged {r['ood_flagged']}")  # fmt: skip
    return out


def enter_project_of(run) -> str | None:
    """chdir to the folder the run's split file names its manifest relative to (paths in split.json are
    relative to the project that ran the pipeline, e.g. ``work/data/manifest.csv``); returns it, or None."""
    manifest = Path(json.loads(Path(run.info["split_file"]).read_text())["manifest"])
    if manifest.is_absolute() or manifest.is_file():
        return None
    for root in Path(run.info["split_file"]).resolve().parents:
        if (root / manifest).is_file():
            os.chdir(root)
            return str(root)
    return None


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from brainmri.runs import Run
    from brainmri.utils import machine_facts, setup_torch

    setup_torch(args.threads)
    cv2.setNumThreads(1)
    t_start = time.perf_counter()
    run = Run.load(Path(args.run).resolve())
    cache_dir = Path(args.cache_dir).resolve()
    project = enter_project_of(run)
    cache_dir.mkdir(parents=True, exist_ok=True)
    model = FeatureModel(run, args.runtime, cache_dir)
    test, val = run.load_images("test"), run.load_images("val")
    keep = stratified_subset(test.labels, args.limit)
    test.images, test.labels = test.images[keep], test.labels[keep]
    parity = runtime_parity(model, test.images[:8]) if args.runtime == "onnx" else None
    val_out = model.outputs(val.images)
    op = operating_point(run, val_out["logits"], val.labels)
    gate, ood_info = deployed_gate(run, val_out) if args.ood else ([], None)
    scorer = Scorer(run.classes, op["temperature"], op["threshold"], gate)
    clean = scorer.four_class(model.outputs(test.images), test.labels)
    print(f"clean: acc {clean['accuracy']:.3f}, tumour AUC {clean['tumour_auc']:.3f} (n {clean['n']})", flush=True)
    names = args.corruptions.split(",") if args.corruptions else list(CORRUPTIONS)
    corr = evaluate_corruptions(model, scorer, test, names, clean)
    roots = {"lgg-flair": Path(args.lgg), "navoneel": Path(args.navoneel)}
    external = (
        evaluate_external(run, model, scorer, roots, cache_dir, args.bootstrap, args.site) if args.external else {}
    )
    site = evaluate_site_test(model, scorer, test, clean) if args.site else {}
    return {
        "benchmark": "MRI-C (bench/robustness.py)", "run": run.name, "run_dir": str(run.dir.resolve()),
        "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"limit": args.limit, "n_test": len(keep), "seed": SEED, "runtime": args.runtime,
                     "runtime_parity_max_abs_logit_diff": parity, "operating_point": op,
                     "applied_to": "preprocessed uint8 slices (preprocessor output), rounded back to uint8",
                     "probabilities": "softmax(logits / temperature)", "bootstrap": args.bootstrap,
                     "relative_paths_resolved_in": project},
        "clean": clean, "summary": summarise(corr), "corruptions": corr, "external": external,
        "site_variations": site, "ood": ood_info,
        "seconds": round(time.perf_counter() - t_start, 1), "load_avg": list(os.getloadavg()),
        "machine": machine_facts(),
    }  # fmt: skip


def runtime_parity(model: FeatureModel, images: np.ndarray) -> float:
    a, _ = model(images, "onnx")
    b, _ = model(images, "torch")
    diff = float(np.abs(a - b).max())
    if diff > 1e-2:
        raise SystemExit(f"ONNX and torch logits differ by {diff:.3g}; rerun with --runtime torch")
    return diff


# ----------------------------------------------------------------------------- figures


def augment_panels(img: np.ndarray, other: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(title, image) of one float slice under each training transform (fixed parameters)."""
    from brainmri.config import AugmentConfig
    from brainmri.train import augment as A

    rng = np.random.default_rng(0)
    steps = [
        ("flip", A.Flip()), ("rotate 8°, zoom 1.1", A.Affine(8, 1.1, 5, -4)),
        ("monotone remap", A.IntensityRemap(np.array([0, 0.05, 0.25, 0.85, 1.0]))),
        ("non-monotone remap", A.IntensityRemap(np.array([0, 0.9, 0.3, 0.75, 0.2]))),
        ("inversion in head mask", A.ContrastInversion()),
        ("Fourier amplitude: other slice", A.FourierAmplitudeMix(0.1, 1.0, other=other)),
        ("Fourier amplitude: jittered", A.FourierAmplitudeMix(0.1, 1.0, jitter=0.3, seed=3)),
        ("bias field c=0.6", A.BiasField(rng.uniform(-0.6, 0.6, 9))), ("gamma 1.8", A.Gamma(1.8)),
        ("blur sigma 1.2", A.GaussianBlur(1.2)), ("down-up x3", A.Resample(3.0)),
        ("slice thickness x4 (rows)", A.Resample(4.0, axis=0)), ("Gaussian noise 0.03", A.GaussianNoise(0.03, 1)),
        ("Rician noise 0.05", A.RicianNoise(0.05, 2)),
    ]  # fmt: skip
    panels = [("original", img)] + [(t, np.clip(f(img), 0, 1)) for t, f in steps]
    preset = A.Augmenter(AugmentConfig(appearance=True))
    panels += [(f"appearance preset, draw {k}", preset(img, np.random.default_rng(k))) for k in (1, 2)]
    return panels


def draw_grid(panels: list[tuple[str, np.ndarray]], cols: int, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.3 * rows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (t, im) in zip(np.ravel(axes), panels, strict=False):
        ax.imshow(im, cmap="gray", vmin=0, vmax=1)
        ax.set_title(t, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.3 * rows)))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100 if rows <= 5 else 72)
    plt.close(fig)
    from PIL import Image

    Image.open(out).convert("L").save(out, optimize=True)  # grayscale PNG: a third of the RGBA size


def write_figures(run_dir: str, out_dir: Path) -> None:
    from brainmri.runs import Run

    run = Run.load(Path(run_dir).resolve())
    out_dir = out_dir.resolve()
    enter_project_of(run)
    test = run.load_images("test")
    glioma = np.flatnonzero(test.labels == run.classes.index("glioma"))
    i = int(glioma[len(glioma) // 2]) if len(glioma) else 0
    j = int(np.flatnonzero(test.labels == run.classes.index(NO_TUMOR))[0])
    img, other = test.images[i].astype(np.float32) / 255.0, test.images[j].astype(np.float32) / 255.0
    draw_grid(augment_panels(img, other), 4, out_dir / "augment_examples.png",
              f"Training transforms on one preprocessed test slice ({Path(test.ids[i]).name})")  # fmt: skip
    panels = []
    for name in CORRUPTIONS:
        panels.append((f"{name}: clean", img))
        for level in (1, 2, 3):
            x = corrupt_images(test.images[i : i + 1], name, level)[0].astype(np.float32) / 255.0
            panels.append((f"{name} s{level} ({CORRUPTIONS[name][level - 1]})", x))
    draw_grid(panels, 4, out_dir / "robustness_corruptions.png", "MRI-C corruptions, severities 1-3")
    print(f"wrote {out_dir / 'augment_examples.png'}, {out_dir / 'robustness_corruptions.png'}")


# ----------------------------------------------------------------------------- markdown


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _severity_cols(rows: list[dict[str, Any]], key: str, digits: int = 3) -> str:
    return " / ".join(_f(x[key], digits) for x in rows)


def _with_ci(e: dict[str, Any], key: str) -> str:
    lo, hi = ((e.get("ci95") or {}).get(key)) or (None, None)
    return f"{_f(e[key])} [{_f(lo)}, {_f(hi)}]"


def _flags(of: dict[str, Any], digits: int = 2) -> str:
    """One cell of OOD flags: the deployed gate's share, or (results before the gate) Mahalanobis / energy."""
    if "gate" in of or not of:
        return _f(of.get("gate"), digits)
    return f"{_f(of.get('mahalanobis'), digits)} / {_f(of.get('energy'), digits)}"


def _flags_label(of: dict[str, Any]) -> str:
    return "gate" if "gate" in of or not of else "Mahalanobis / energy"


def render_markdown(r: dict[str, Any]) -> str:
    """The result as markdown tables (for docs/robustness.md)."""
    c, s = r["clean"], r["summary"]
    flags, label = c["ood_flagged"], _flags_label(c["ood_flagged"])
    lines = [
        f"Run `{r['run']}`, {r['settings']['n_test']} test images, commit {str(r['git_commit'])[:7]}, "
        f"{r['seconds']:.0f} s on {r['machine'].get('cores', '?')} cores (load {r['load_avg'][0]:.1f}).",
        "",
        f"Clean: accuracy {_f(c['accuracy'])}, tumour AUC {_f(c['tumour_auc'])}, ECE {_f(c['ece'])}; OOD flagged "
        f"({label}): {_flags(flags, 3)}.",
        f"MRI-C: mean drop **{s['mean_drop']:.1f}** points; worst corruption **{s['worst_corruption']}** "
        f"({s['worst_corruption_drop']:.1f}); worst cell {s['worst_cell']['corruption']} "
        f"s{s['worst_cell']['severity']} ({s['worst_cell']['drop']:.1f}).",
        "",
        "| corruption | acc s1 / s2 / s3 | drop s1 / s2 / s3 | tumour AUC s1 / s2 / s3 | OOD flags (gate, or "
        "Mahalanobis before it) | accuracy where the gate passes |",
        "|---|---|---|---|---|---|",
    ]
    if s.get("answered"):
        a = s["answered"]
        lines[4:4] = [f"With the gate honoured (flagged images sent to review), the corrupted images answered: "
                      f"{a['mean_share']:.0%} on average, accuracy drop on them {_f(a['mean_drop'], 1)} points on "
                      f"average, worst {_f(a['worst_drop'], 1)} (clean: {_f(c['answered']['accuracy'])} on "
                      f"{c['answered']['share']:.0%})."]  # fmt: skip
    for name, v in r["corruptions"].items():
        rows = v["severities"]
        maha = " / ".join(_f(x["ood_flagged"].get("gate", x["ood_flagged"].get("mahalanobis")), 2) for x in rows)
        answered = " / ".join(_f((x.get("answered") or {}).get("accuracy")) for x in rows)
        lines.append(
            f"| {name} | {_severity_cols(rows, 'accuracy')} | {_severity_cols(rows, 'drop', 1)} | "
            f"{_severity_cols(rows, 'tumour_auc')} | {maha} | {answered} |"
        )
    lines += ["", "| external set | n (tumour) | groups | AUC [95% CI] | sens [CI] | spec [CI] "
              f"| OOD flagged ({label}) | AUC where the gate passes (share) |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, e in r["external"].items():
        if "skipped" in e:
            continue
        of = e["ood_flagged"]
        lines.append(
            f"| {name} | {e['n']} ({e['n_tumour']}) | {e['n_groups']} {e['groups'].split()[0]} | "
            f"{_with_ci(e, 'auc')} | {_with_ci(e, 'sensitivity')} | {_with_ci(e, 'specificity')} | "
            f"{_flags(of)} | {_answered(e.get('answered'))} |"
        )
    lines += render_site(r)
    for name, e in r["external"].items():
        lines += render_levels(name, e.get("by_level"))
    return "\n".join(lines)


def render_site(r: dict[str, Any]) -> list[str]:
    """Site variations (results since they were added): test accuracy and drop, external AUCs with CIs."""
    site = r.get("site_variations") or {}
    if not site:
        return []
    ext = {n: e for n, e in r["external"].items() if "site" in e}
    lines = ["", "| site variation | test acc (drop) | " + " | ".join(f"{n} AUC [95% CI] (clean)" for n in ext) + " |",
             "|---|---|" + "---|" * len(ext)]  # fmt: skip
    for name, t in site.items():
        cells = [f"{_with_ci(e['site'][name], 'auc')} ({_f(e['auc'])})" for e in ext.values()]
        lines.append(f"| {name} | {_f(t['accuracy'])} ({t['drop']:+.1f}) | " + " | ".join(cells) + " |")
    return lines


def _answered(a: dict[str, Any] | None) -> str:
    return "–" if not a or a.get("auc") is None else f"{_with_ci(a, 'auc')} ({a['share']:.0%})"


def render_levels(name: str, rows: list[dict[str, Any]] | None) -> list[str]:
    """The by-level breakdown of one external set as a markdown table (no lines when there is none)."""
    if not rows:
        return []
    classes = list(rows[0]["calls"]["no_tumour"])
    label = _flags_label(rows[0]["ood_flagged"])
    lines = ["", f"**{name}** by slice level in the patient's stack (4-class calls: {' / '.join(classes)}):", "",
             "| level | n (tumour) | AUC [95% CI] | sens | spec | no-tumour slices called | tumour slices called "
             f"| OOD flagged ({label}) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        calls = {k: " / ".join(str(row["calls"][k][c]) for c in classes) for k in ("no_tumour", "tumour")}
        lines.append(
            f"| {row['band']} | {row['n']} ({row['n_tumour']}) | {_with_ci(row, 'auc')} | "
            f"{_f(row['sensitivity'])} | {_f(row['specificity'])} | {calls['no_tumour']} | {calls['tumour']} | "
            f"{_flags(row['ood_flagged'])} |"
        )
    return lines


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="run folder (runs/<name>)")
    p.add_argument("--render", metavar="JSON", help="only print a result file as markdown tables and exit")
    p.add_argument("--limit", type=int, default=None, help="class-stratified subsample of the test split")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "robustness.json"))
    p.add_argument("--corruptions", default="", help=f"comma-separated subset of {','.join(CORRUPTIONS)}")
    p.add_argument("--runtime", choices=["onnx", "torch"], default="onnx",
                   help="onnx: ONNX Runtime (about 2-3x faster on CPU; checked against torch on 8 images)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ood", action=argparse.BooleanOptionalAction, default=True,
                   help="report what the run's deployed out-of-domain gate flags")  # fmt: skip
    p.add_argument("--external", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lgg", default=str(SHARED / "lgg-flair"))
    p.add_argument("--navoneel", default=str(SHARED / "navoneel"))
    p.add_argument(
        "--site",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also score site variations ({', '.join(SITE_VARIATIONS)}) on test and external sets",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the external CIs")
    p.add_argument("--cache-dir", default=str(REPO / "work" / "robustness"),
                   help="manifests, preprocessed external sets and the ONNX feature model are cached here")  # fmt: skip
    p.add_argument("--figures", action="store_true", help="only draw the docs figures (docs/img/) and exit")
    p.add_argument("--figures-dir", default=str(REPO / "docs" / "img"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render_markdown(json.loads(Path(args.render).read_text())))
        return 0
    if not args.run:
        raise SystemExit("--run is required (or --render JSON)")
    args.out = str(Path(args.out).resolve())
    if args.figures:
        write_figures(args.run, Path(args.figures_dir))
        return 0
    result = run_benchmark(args)
    from brainmri.utils import atomic_write_json

    atomic_write_json(Path(args.out), result)
    s = result["summary"]
    worst = f"{s.get('worst_corruption')} {s.get('worst_corruption_drop')}"
    print(f"clean acc {result['clean']['accuracy']:.3f}; mean drop {s.get('mean_drop')} points, worst corruption "
          f"{worst}; {result['seconds']} s -> {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
