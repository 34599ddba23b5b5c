"""Paired comparison of training variants: does a change help, by more than seed noise and sampling noise?

Usage::

    .venv/bin/python bench/paired.py --arm baseline=runs/a,runs/a_seed7 --arm mirror=runs/b,runs/b_seed7 \\
        --out bench/results/paired_mirror.json

Each ``--arm NAME=RUN[,RUN...]`` is one recipe, trained once per seed on the **same split**; the first arm
is the reference. ``RUN+RUN`` in place of a run is an ensemble: the mean of the members' calibrated
probabilities (a run may appear in several arms; it is scored once); a run written by ``brainmri ensemble``
is scored like any run (one temperature fitted on the ensemble). Every run scores the same images:
the held-out test split (4-class accuracy, tumour AUC), lgg-flair (all of it, zero-shot) and navoneel
(overlap with train + val removed); tumour probability ``1 - softmax(logits / T)[no_tumor]`` with the
run's temperature.

Why paired: separate CIs of two runs overlap even when one is better on almost every resample, because
both share the same hard images. Here each bootstrap resample (lgg-flair: whole patients; the test
split: the scan groups its split file records, single images for split files written before groups
were recorded; navoneel: images) is applied to every run at once, an arm's value is the mean over its
seeds, and the difference to the reference arm gets a 95% percentile interval. With two seeds per arm
the seed spread is shown, not modelled: a difference smaller than the spread between one arm's seeds is not a finding.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED = 20261202


def parse_arms(specs: list[str]) -> dict[str, list[list[Path]]]:
    """``NAME=A,B+C`` -> {NAME: [[A], [B, C]]}: two seeds, the second an ensemble of B and C."""
    arms: dict[str, list[list[Path]]] = {}
    for spec in specs:
        name, sep, runs = spec.partition("=")
        if not sep or not runs:
            raise SystemExit(f"--arm {spec!r}: expected NAME=RUN[,RUN...] (RUN+RUN averages an ensemble)")
        arms[name] = [[Path(m).resolve() for m in r.split("+")] for r in runs.split(",")]
    return arms


def score_run(run_dir: Path, cache_dir: Path, roots: dict[str, Path]) -> dict[str, Any]:
    """Calibrated 4-class probabilities of one run on every evaluation set (and the labels they are scored on)."""
    import robustness as rb
    from brainmri.runs import Run

    run = Run.load(run_dir)
    model = rb.FeatureModel(run, "torch", cache_dir)
    val, test = run.load_images("val"), run.load_images("test")
    op = rb.operating_point(run, model(val.images)[0], val.labels)

    def probs(images: np.ndarray) -> np.ndarray:
        return rb.softmax(model(images)[0] / op["temperature"])

    from brainmri.data.split import group_labels

    no = run.classes.index(rb.NO_TUMOR)
    groups = group_labels(run.split(), test.ids)
    groups = test.ids if groups is None else groups
    sets = {"test": {"ids": test.ids, "probs": probs(test.images), "labels": test.labels, "groups": groups}}
    for name, root in roots.items():
        data = rb.external_images(run, root, cache_dir, remove_overlap=name != "lgg-flair")
        sets[name] = {"ids": data.ids, "probs": probs(data.images), "groups": rb.patient_groups(data.ids, root),
                      "y": np.array([label != rb.NO_TUMOR for label in data.label_names], dtype=int)}  # fmt: skip
    return {"no_tumor": no, "sets": sets}


def combine(members: list[dict[str, Any]]) -> dict[str, Any]:
    """One scored model from one run or an ensemble (mean of the members' calibrated probabilities):
    tumour probability ``p``, tumour label ``y`` and, on the test split, 4-class ``hit``."""
    no, out = members[0]["no_tumor"], {}
    for name, s in members[0]["sets"].items():
        for m in members[1:]:
            if m["sets"][name]["ids"] != s["ids"]:
                raise SystemExit(f"ensemble members score different {name} images (another split?)")
        probs = np.mean([m["sets"][name]["probs"] for m in members], axis=0)
        entry = {"ids": s["ids"], "groups": s["groups"], "p": 1.0 - probs[:, no]}
        if "labels" in s:
            entry["y"] = (s["labels"] != no).astype(int)
            entry["hit"] = (probs.argmax(1) == s["labels"]).astype(float)
        else:
            entry["y"] = s["y"]
        out[name] = entry
    return {"sets": out}


def metrics(s: dict[str, Any], idx: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from brainmri.evaluate.metrics import expected_calibration_error

    y, p = s["y"][idx], s["p"][idx]
    out = {"tumour_auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan"),
           "tumour_ece": float(expected_calibration_error(np.c_[1.0 - p, p], y))}  # fmt: skip
    if "hit" in s:
        out["accuracy"] = float(s["hit"][idx].mean())
    return out


def arm_means(scores: dict[str, list[dict[str, Any]]], set_name: str, idx: np.ndarray) -> dict[str, dict[str, float]]:
    """Each arm's metrics on the images ``idx`` of one set, averaged over the arm's seeds."""
    per = {a: [metrics(r["sets"][set_name], idx) for r in runs] for a, runs in scores.items()}
    return {a: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]} for a, ms in per.items()}


def compare(scores: dict[str, list[dict[str, Any]]], n_boot: int) -> dict[str, Any]:
    """Per set: each arm's per-seed and seed-mean metrics, and the paired difference to the first arm."""
    arms = list(scores)
    first = scores[arms[0]][0]["sets"]
    out: dict[str, Any] = {}
    rng = np.random.default_rng(SEED)
    for set_name, ref in first.items():
        for arm in arms:
            for r in scores[arm]:
                if r["sets"][set_name]["ids"] != ref["ids"]:
                    raise SystemExit(f"{arm}: scores different {set_name} images than {arms[0]} (another split?)")
        _, inverse = np.unique(ref["groups"], return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
        full = np.arange(len(ref["y"]))

        picks = (rng.integers(0, len(members), len(members)) for _ in range(n_boot))
        draws = [arm_means(scores, set_name, np.concatenate([members[g] for g in pick])) for pick in picks]
        point = arm_means(scores, set_name, full)
        entry: dict[str, Any] = {"n": len(full), "n_groups": len(members), "arms": {}}
        for a in arms:
            seeds = [metrics(r["sets"][set_name], full) for r in scores[a]]
            diff = {}
            for k, v in point[a].items():
                d = [dr[a][k] - dr[arms[0]][k] for dr in draws]
                diff[k] = {"diff": v - point[arms[0]][k], "ci95": [float(np.nanpercentile(d, 2.5)),
                                                                   float(np.nanpercentile(d, 97.5))]}  # fmt: skip
            entry["arms"][a] = {"mean": point[a], "per_seed": seeds, "minus_" + arms[0]: diff if a != arms[0] else None}
        out[set_name] = entry
    return out


def same_test_split(arms: dict[str, list[list[Path]]]) -> None:
    """Refuse, before any scoring, runs whose split files hold other test ids than the first run's."""
    from brainmri.runs import Run

    first: list[str] | None = None
    for arm, seeds in arms.items():
        for run_dir in (m for members in seeds for m in members):
            test = Run.load(run_dir).split()["test"]
            if first is None:
                first = test
            elif test != first:
                raise SystemExit(f"{arm}: {run_dir} has other test images than the first run (another split?)")


def render_markdown(r: dict[str, Any]) -> str:
    """One row per arm: seed-mean metric with the paired difference to the reference and its 95% interval."""
    ref = r["reference"]
    cols = [("test", "accuracy", "test accuracy"), ("test", "tumour_auc", "test tumour AUC"),
            ("lgg-flair", "tumour_auc", "lgg-flair AUC"), ("navoneel", "tumour_auc", "navoneel AUC")]  # fmt: skip
    if "tumour_ece" in r["sets"]["lgg-flair"]["arms"][ref]["mean"]:  # results before the ECE columns lack them
        cols += [("lgg-flair", "tumour_ece", "lgg-flair tumour ECE"), ("navoneel", "tumour_ece", "navoneel tumour ECE")]
    lines = ["| arm | seeds | " + " | ".join(c[2] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for arm, runs in r["arms"].items():
        cells = []
        for set_name, key, _ in cols:
            e = r["sets"].get(set_name, {}).get("arms", {}).get(arm)
            if not e:
                cells.append("–")
                continue
            per_seed = "/".join(f"{m[key]:.3f}" for m in e["per_seed"])
            d = e.get("minus_" + ref)
            cell = f"{e['mean'][key]:.3f} ({per_seed})"
            if d:
                lo, hi = d[key]["ci95"]
                cell += f"<br>{d[key]['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            cells.append(cell)
        size = len(str(runs[0]).split("+"))
        seeds = f"{len(runs)}" + (f" ({size}-model ensembles)" if size > 1 else "")
        lines.append(f"| {arm} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    shared = REPO.parent / "shared" / "data"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", action="append", default=[], help="NAME=RUN[,RUN...]; the first arm is the reference")
    p.add_argument("--out", help="result JSON (bench/results/paired_<name>.json)")
    p.add_argument("--render", metavar="JSON", help="only print a result file as a markdown table and exit")
    p.add_argument("--lgg", default=str(shared / "lgg-flair"))
    p.add_argument("--navoneel", default=str(shared / "navoneel"))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--cache-dir", default=str(REPO / "work" / "robustness"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render_markdown(json.loads(Path(args.render).read_text())))
        return 0
    arms = parse_arms(args.arm)
    if len(arms) < 2 or not args.out:
        raise SystemExit("give at least two --arm NAME=RUN[,RUN...] and --out")
    from brainmri.utils import atomic_write_json, machine_facts, setup_torch

    setup_torch(2)
    t0 = time.perf_counter()
    cache = Path(args.cache_dir).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    roots = {"lgg-flair": Path(args.lgg), "navoneel": Path(args.navoneel)}
    same_test_split(arms)
    scored = functools.cache(lambda run: score_run(run, cache, roots))  # a run in several arms is scored once
    scores = {a: [combine([scored(m) for m in members]) for members in seeds] for a, seeds in arms.items()}
    result = {
        "benchmark": "paired comparison of training variants (bench/paired.py)",
        "command": "python bench/paired.py " + " ".join(f"--arm {a}" for a in args.arm),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reference": next(iter(arms)),
        "arms": {a: ["+".join(str(m) for m in members) for members in seeds] for a, seeds in arms.items()},
        "bootstrap": args.bootstrap,
        "sets": compare(scores, args.bootstrap),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_facts(),
    }
    test = result["sets"]["test"]
    grouped = test["n_groups"] < test["n"]
    result["resampling"] = (
        f"lgg-flair: patients; test: {'scan groups of the split file' if grouped else 'images'} "
        f"({test['n_groups']} for {test['n']} slices); navoneel: images; one resample applied to every run"
    )
    atomic_write_json(Path(args.out), result)
    print(render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO / "bench"))
    sys.exit(main())
