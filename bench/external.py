"""Benchmark: external validation before and after domain adaptation -> bench/results/external.json.

    python bench/external.py --run ../pipe/runs/cpu-fast            # lgg-flair and navoneel

For each external set (lgg-flair: FLAIR slices of 55 patients, grouped by patient; navoneel: binary yes/no,
overlap with the training data removed, grouped by near-duplicate cluster):

1. ``brainmri validate`` on the run: the calibration/evaluation split (saved), zero-shot metrics on the
   evaluation part at the run's threshold and at thresholds chosen on the calibration part;
2. ``brainmri adapt`` on the calibration part (same split; a patient-disjoint held-out slice of it for early
   stopping and, afterwards, for choosing the adapted model's thresholds);
3. ``brainmri validate`` on the adapted run with the same split;
4. the source held-out test split's 4-class accuracy, macro-F1 and ECE before and after adaptation (ECE at
   T = 1 and with T fitted on the source validation split, for both models alike).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = ("run", "target_sensitivity", "youden", "cost")


def _abs(p: str) -> str:
    return str(Path(p).expanduser().resolve())


def _run_root(run_dir: str) -> None:
    """Run folders may name their split file's manifest relative to the repository that trained them."""
    info = json.loads((Path(run_dir) / "run.json").read_text())
    manifest = json.loads(Path(info["split_file"]).read_text())["manifest"]
    if not Path(manifest).is_absolute() and not Path(manifest).exists():
        for base in Path(info["split_file"]).resolve().parents:
            if (base / manifest).exists():
                os.chdir(base)
                return


def _brief(e: dict) -> dict:
    """The headline of one threshold's evaluation-part metrics (value + CI of each)."""
    keys = ("sensitivity", "specificity", "ppv", "npv")
    out = {k: e[k] for k in keys}
    out["n_tumour"], out["n_no_tumour"] = e["n_tumour"], e["n_no_tumour"]
    if "patient_bootstrap" in e:
        out["patient_bootstrap"] = {k: e["patient_bootstrap"][k] for k in (*keys, "auc")}
    return out


def _view_summary(result: dict, view: str = "run_temperature") -> dict:
    v = result["views"][view]
    return {
        "temperature": v["temperature"],
        "auc": v["auc"],
        "auc_patient_bootstrap": v["thresholds"]["run"]["evaluation"].get("patient_bootstrap", {}).get("auc"),
        "ece": v["ece"]["evaluation"],
        "thresholds": {
            t: {
                "threshold": v["thresholds"][t]["threshold"],
                "on_calibration": v["thresholds"][t].get("on_calibration"),
                **_brief(v["thresholds"][t]["evaluation"]),
            }
            for t in THRESHOLDS
        },
    }


def source_metrics(run, cal_run, val_logits_of) -> dict:
    """4-class accuracy, macro-F1, ECE (T = 1 and T fitted on source val) on the source test split."""
    from sklearn.metrics import f1_score

    from brainmri.calibrate.probabilities import softmax
    from brainmri.calibrate.temperature import TemperatureScaler
    from brainmri.evaluate.metrics import expected_calibration_error

    test, val = cal_run["test"], cal_run["val"]
    z_test, z_val = val_logits_of(run, test), val_logits_of(run, val)
    pred = z_test.argmax(1)
    scaler = TemperatureScaler().fit(z_val, val.labels)
    return {
        "n_test": len(test.labels),
        "accuracy": float((pred == test.labels).mean()),
        "macro_f1": float(f1_score(test.labels, pred, average="macro")),
        "ece_t1": float(expected_calibration_error(softmax(z_test), test.labels, 15)),
        "temperature_val": scaler.temperature_,
        "ece_val_temperature": float(expected_calibration_error(scaler.predict_proba(z_test), test.labels, 15)),
    }


def one_set(name: str, data: list[str], run_dir: str, work: Path, base: list[str], adapt_extra: list[str]) -> dict:
    from brainmri.config import load_config
    from brainmri.evaluate.external import RESULT_FILE, validate
    from brainmri.train.adapt import adapt_run

    out = work / name
    t0 = time.perf_counter()
    cfg = load_config(None, [*base, "external.refit_temperature=true"])
    zero = validate(run_dir, data, cfg, out / "zero_shot")
    t_validate = time.perf_counter() - t0
    split = zero / "split.json"
    cfg_a = load_config(None, [*base, f"external.split_file={split}", *adapt_extra])
    t0 = time.perf_counter()
    adapted = adapt_run(run_dir, data, cfg_a, out_dir=work / "runs" / f"adapted-{name}")
    t_adapt = time.perf_counter() - t0
    cfg_v = load_config(None, [*base, f"external.split_file={adapted.info['external']['split_file']}"])
    after = validate(adapted.dir, data, cfg_v, out / "adapted")
    z = json.loads((zero / RESULT_FILE).read_text())
    a = json.loads((after / RESULT_FILE).read_text())
    return {
        "data": data,
        "group_by": z["group_by"],
        "counts": z["counts"],
        "counts_adapted": a["counts"],
        "overlap": {k: z["overlap"][k] for k in ("n_readable", "n_removed", "n_exact", "n_near_only", "n_evaluated")},
        "zero_shot": _view_summary(z),
        "zero_shot_refit_temperature": _view_summary(z, "refit_temperature"),
        "adapted": _view_summary(a),
        "adapt": {
            k: adapted.info["adapt"][k]
            for k in (
                "best_epoch",
                "seconds",
                "history",
                "w_ext",
                "w_src",
                "w_kd",
                "batchnorm",
                "trainable",
                "epochs",
                "lr",
                "replay_pool",
            )
        },
        "adapted_run": str(adapted.dir),
        "seconds": {"validate_zero_shot": round(t_validate, 1), "adapt_total": round(t_adapt, 1)},
        "outputs": {"zero_shot": str(zero), "adapted": str(after)},
    }


def _ci(e: dict | None, pct: bool = True) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3f}")
    if e.get("ci_low") is None:
        return f(e["value"])
    return f"{f(e['value'])} [{f(e['ci_low'])}, {f(e['ci_high'])}]"


def _row(label: str, v: dict, t: str) -> str:
    th = v["thresholds"][t]
    pb = th.get("patient_bootstrap", {})
    sens = _ci(pb.get("sensitivity") or th["sensitivity"])
    spec = _ci(pb.get("specificity") or th["specificity"])
    auc = _ci(v.get("auc_patient_bootstrap") or v["auc"], pct=False)
    return f"| {label} | {th['threshold']:.3f} | {sens} | {spec} | {auc} | {v['ece']:.3f} |"


def render_md(result: dict) -> str:
    """The before/after tables of docs/external.md, from the result dict only."""
    lines = [
        f"From `bench/results/external.json` ({result['machine'].get('cores', '?')} cores; run "
        f"`{Path(result['run']).name}`, backbone `{result.get('run_backbone')}`). Evaluation parts only; "
        "sensitivity/specificity in %, 95% CIs from the patient bootstrap where patients are known (lgg-flair), "
        "else exact Clopper–Pearson; AUC with its bootstrap CI; ECE of the tumour-vs-no-tumour decision.",
        "",
    ]
    for name, s in result["sets"].items():
        c = s["counts"]
        pts = f"; {c['evaluation_patients']} patients" if c["evaluation_patients"] else ""
        lines += [
            f"**{name}** — {c['readable']} readable, {c['removed_overlap']} removed as training overlap "
            f"({s['overlap']['n_exact']} exact, {s['overlap']['n_near_only']} near), grouped by {s['group_by']}; "
            f"calibration {c['calibration']} / evaluation {c['evaluation']} ({c['evaluation_tumour']} tumour, "
            f"{c['evaluation_no_tumour']} no tumour{pts}). Adapted thresholds "
            f"are chosen on the {s['counts_adapted']['threshold_fit']} held-out calibration images the "
            "adaptation did not train on.",
            "",
            "| model, threshold | t | sensitivity | specificity | AUC | ECE |",
            "|---|---|---|---|---|---|",
        ]
        for label, key in (
            ("zero-shot", "zero_shot"),
            ("zero-shot, T refit", "zero_shot_refit_temperature"),
            ("adapted", "adapted"),
        ):
            v = s[key]
            for t in ("run", "target_sensitivity", "youden", "cost"):
                if key == "zero_shot_refit_temperature" and t == "run":
                    continue
                lines.append(_row(f"{label}, {t.replace('_', ' ')}", v, t))
        a = s["adapt"]
        lines += [
            "",
            f"Adaptation: best epoch {a['best_epoch']} of {a['epochs']}, {a['seconds']:.0f} s "
            f"(w_ext {a['w_ext']}, w_src {a['w_src']}, w_kd {a['w_kd']}, BN {a['batchnorm']}, "
            f"trainable {', '.join(a['trainable'])}).",
            "",
        ]
    lines += [
        "Source held-out test split (4 classes):",
        "",
        "| model | accuracy | macro-F1 | ECE (T = 1) | ECE (T on source val) |",
        "|---|---|---|---|---|",
    ]
    for k, m in result["source_test"].items():
        lines.append(
            f"| {k.replace('_', ' ')} | {100 * m['accuracy']:.2f} | {m['macro_f1']:.4f} | {m['ece_t1']:.4f} "
            f"| {m['ece_val_temperature']:.4f} |"
        )
    return "\n".join(lines)


def render_docs(result_path: Path, doc: Path) -> None:
    from brainmri.utils import atomic_write_text

    text = doc.read_text()
    start, end = "<!-- generated:external -->", "<!-- /generated:external -->"
    a, b = text.index(start) + len(start), text.index(end)
    body = render_md(json.loads(result_path.read_text()))
    atomic_write_text(doc, text[:a] + "\n" + body + "\n" + text[b:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="trained run folder")
    ap.add_argument("--data", default=os.environ.get("BRAINMRI_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--work", default=str(ROOT / "work" / "bench-external"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "external.json"))
    ap.add_argument("--sets", nargs="+", default=["lgg-flair", "navoneel"])
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra adapt.* overrides")
    ap.add_argument("--render-docs", action="store_true", help="only rewrite docs/external.md from --out")
    args = ap.parse_args()
    if args.render_docs:
        sys.path.insert(0, str(ROOT / "src"))
        render_docs(Path(args.out), ROOT / "docs" / "external.md")
        return 0
    run_dir, work, out, data = _abs(args.run), Path(_abs(args.work)), Path(_abs(args.out)), Path(_abs(args.data))
    sys.path.insert(0, str(ROOT / "src"))
    os.environ.setdefault("BRAINMRI_NO_PROGRESS", "1")
    _run_root(run_dir)

    from brainmri.runs import Run, predict_logits
    from brainmri.utils import atomic_write_json, machine_facts, setup_torch

    setup_torch()
    base = [f"external.bootstrap={args.bootstrap}", "data.workers=1", f"paths.runs_dir={work / 'runs'}"]
    t0 = time.perf_counter()
    sets = {name: one_set(name, [str(data / name)], run_dir, work, base, args.overrides) for name in args.sets}
    run = Run.load(run_dir)
    source = {"test": run.load_images("test"), "val": run.load_images("val")}

    def logits_of(r, split):
        return predict_logits(r.build_model(), split.images).astype("float64")

    before = source_metrics(run, source, logits_of)
    after = {name: source_metrics(Run.load(s["adapted_run"]), source, logits_of) for name, s in sets.items()}
    result = {
        "machine": machine_facts(),
        "run": run_dir,
        "run_backbone": run.info.get("backbone"),
        "sets": sets,
        "source_test": {"before": before, **{f"after_adapting_on_{k}": v for k, v in after.items()}},
        "seconds_total": round(time.perf_counter() - t0, 1),
        "note": "evaluation parts are patient-disjoint (lgg-flair) or near-duplicate-cluster-disjoint (navoneel) "
        "from every image the thresholds, the temperature refit and the adaptation saw",
    }
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
