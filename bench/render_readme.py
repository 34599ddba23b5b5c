"""Copy numbers from result files into README.md and docs/*.md, so no number there is typed by hand.

    python bench/render_readme.py            # rewrite the generated blocks in README.md and docs/*.md
    python bench/render_readme.py --check    # exit 1 if any of them is out of date
    python bench/render_readme.py --publish runs/cpu-fast   # first copy a run's reports into docs/results/

Each block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` and is rendered
from one artefact (named in the block), e.g. bench/results/*.json or a run's reports/summary.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
EVAL_SUMMARY = ROOT / "docs" / "results" / "summary.json"


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(m: Any, pct: bool = True) -> str:
    if not isinstance(m, dict):
        return "n/a" if m is None else (_pct(m) if pct else f"{m:.3f}")
    v, lo, hi = m.get("value"), m.get("ci_low"), m.get("ci_high")
    if v is None:
        return "n/a"
    if pct:
        return f"{100 * v:.1f}% ({100 * lo:.1f}–{100 * hi:.1f})" if lo is not None else _pct(v)
    return f"{v:.3f} ({lo:.3f}–{hi:.3f})" if lo is not None else f"{v:.3f}"


def _machine(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    v = m.get("versions", {})
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return f"{m.get('cores')} cores{gpu}, Python {m.get('python')}, torch {v.get('torch')}"


def block_import_audit() -> str | None:
    r = _load(RESULTS / "import_audit.json")
    if r is None:
        return None
    c, t = r["counts"], r["timing_s"]
    return (
        f"From `bench/results/import_audit.json` ({_machine(r)}): import of {c['files']:,} files "
        f"{t['import']:.1f} s, audit {t['audit_with_montage']:.1f} s (import + audit {t['import_plus_audit']:.1f} s); "
        f"{c['exact_clusters']} exact-duplicate groups ({c['exact_redundant_files']} redundant files), "
        f"{c['near_pairs']:,} near-duplicate pairs at pHash distance ≤ {c['near_threshold']}."
    )


def block_preprocess() -> str | None:
    r = _load(RESULTS / "preprocess.json")
    if r is None:
        return None
    chain, n4, skull = r["default_chain"], r["n4"], r["skull_strip"]
    return (
        f"From `bench/results/preprocess.json` ({_machine(r)}): default chain (decode → `full` preset → uint8) "
        f"**{chain['images_per_s']} images/s** with {chain['workers']} worker processes on {chain['files']} real "
        f"files; true N4 on {n4['images']} slices of {n4['shape'][0]}×{n4['shape'][1]}: median "
        f"**{n4['n4']['ms_median']} ms** (p90 {n4['n4']['ms_p90']} ms), `n4_fast` median {n4['n4_fast']['ms_median']} "
        f"ms; skull-strip fallback on {skull['files']} random real slices: {_pct(skull['fallback_rate'])}, "
        f"empty masks: {skull['empty_masks']}."
    )


def block_train(tag: str) -> str | None:
    r = _load(RESULTS / f"train_{tag}.json")
    if r is None:
        return None
    lines = [
        f"From `bench/results/train_{tag}.json` ({_machine(r)}); recipe `{r['recipe']}` "
        f"{' '.join(r.get('overrides', []))}, backbone `{r['backbone']}` ({r['weights']} weights), "
        f"{r['img_size']} px, {r['n_train']} train / {r['n_val']} val images:",
        "",
        f"- training wall time: **{r['train_wall_minutes']:.1f} min** (import, split and preprocessing before it are "
        + (
            f"not included: {r['data_prep_seconds']:.0f} s in this run, cached ones are skipped)"
            if r.get("data_prep_seconds") is not None
            else "not included; recorded from a trained run's `run.json` with `--from-run`)"
        ),
        f"- best validation accuracy **{_pct(r['best_val_acc'])}**, macro-F1 {_pct(r['best_val_macro_f1'])} "
        f"(best by `{r['best']['monitor']}` at {r['best']['epoch']})",
        "",
        "| stage | epoch | s | images/s | val acc | val macro-F1 |",
        "|---|---|---|---|---|---|",
    ]
    stage1 = [h for h in r["epochs"] if h["stage"] == 1]
    shown = [h for h in r["epochs"] if h["stage"] != 1 or h is stage1[0] or h is stage1[-1]]
    if len(stage1) > 2:
        lines.insert(
            -3,
            f"- stage 1 has {len(stage1)} epochs (on cached features: the first includes the "
            "feature pass); the table shows its first and last",
        )
    for h in shown:
        lines.append(
            f"| {h['stage']} | {h['epoch']} | {h['seconds']:.0f} | {h['images_per_s']:.0f} | "
            f"{_pct(h.get('val_acc'))} | {_pct(h.get('val_macro_f1'))} |"
        )
    return "\n".join(lines)


def block_latency(name: str = "latency.json") -> str | None:
    r = _load(RESULTS / name)
    if r is None:
        return None
    lines = [
        f"From `bench/results/{name}` ({_machine(r)}; load average at start {r.get('load_average_at_start')}):",
        "",
        "| bundle | px | single image p50 / p95, ORT | single p50, torch | folder, ORT (images/s) | folder, torch |",
        "|---|---|---|---|---|---|",
    ]
    for run in r["runs"]:
        one, folder = run["single"], run["folder"]
        lines.append(
            f"| {run['bundle']} | {run['size']} | {one['onnx']['p50_ms']} / {one['onnx']['p95_ms']} ms | "
            f"{one['torch']['p50_ms']} ms | {folder['onnx']['images_per_s']} | {folder['torch']['images_per_s']} |"
        )
    return "\n".join(lines)


def block_evaluation() -> str | None:
    s = _load(EVAL_SUMMARY)
    if s is None:
        return None
    lines = [f"From `{EVAL_SUMMARY.relative_to(ROOT)}` (copied from the CPU-recipe run's `reports/summary.json`):", ""]
    methods = sorted({v["ci_method"] for v in s.values() if isinstance(v, dict) and v.get("ci_method")})
    how = ", ".join(methods) if methods else "exact for proportions, bootstrap otherwise"
    lines.append(f"| metric | value (95% CI: {how}) |")
    lines.append("|---|---|")
    for key, value in s.items():
        if isinstance(value, dict) and "value" in value:
            pct = not any(w in key for w in ("nll", "brier", "temperature", "set_size", "ece", "mce"))
            lines.append(f"| {key} | {_ci(value, pct)} |")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            lines.append(f"| {key} | {value:.4g} |")
        elif key == "conformal" and isinstance(value, dict):
            tag = f"conformal {value.get('method')} α={value.get('alpha')}"
            lines.append(
                f"| {tag}: coverage (target {_pct(value.get('target_coverage'))}) | {_ci(value.get('coverage'))} |"
            )
            lines.append(f"| {tag}: mean set size | {_ci(value.get('mean_set_size'), pct=False)} |")
    return "\n".join(lines)


def block_bundle_check() -> str | None:
    c = _load(EVAL_SUMMARY.parent / "bundle_check.json")
    if c is None:
        return None
    return (
        f"From `docs/results/bundle_check.json` (written by the pipeline's last stage): the exported bundle "
        f"`{c.get('bundle', '')}`, run "
        f"through {c['runtime']} on all {c['n_test']} test images, scores accuracy {_pct(c['bundle_accuracy'])} "
        f"against {_pct(c['evaluation_accuracy'])} reported by `brainmri evaluate`; "
        f"{c['predictions_differing_from_evaluation']} predictions differ."
    )


def block_external() -> str | None:
    s = _load(EVAL_SUMMARY.parent / "navoneel_summary.json")
    if s is None:
        return None
    o = s.get("overlap_removed", {})
    return (
        f"From `docs/results/navoneel_summary.json` (`brainmri evaluate RUN --split <navoneel manifest>`): "
        f"{o.get('n_removed')} of {o.get('n_readable')} navoneel images were already in the run's train/val data "
        f"({o.get('n_exact')} exact, {o.get('n_near_only')} near) and were removed; on the remaining "
        f"{o.get('n_evaluated')} the tumour-vs-no-tumour view gives AUC {_ci(s.get('tumour_auc'))}, sensitivity "
        f"{_ci(s.get('tumour_sensitivity'))} and specificity {_ci(s.get('tumour_specificity'))} at threshold "
        f"{s.get('tumour_threshold')}."
    )


def _bench_module(name: str):
    """Another benchmark script of this folder (its own renderer is the one home of its table)."""
    import importlib

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return importlib.import_module(name)


def block_robustness() -> str | None:
    r = _load(RESULTS / "robustness.json")
    if r is None:
        return None
    c, sm = r["clean"], r["summary"]
    ext = r.get("external", {})
    lines = [
        f"From `bench/results/robustness.json` (run `{r['run']}`, {r['settings'].get('n_test')} test images, "
        f"{_machine(r)}): clean accuracy {_pct(c['accuracy'])}, tumour AUC {c['tumour_auc']:.3f}; over "
        f"{sm['n_conditions']} corruption × severity conditions the mean accuracy drop is **{sm['mean_drop']:.1f} "
        f"points**, the worst corruption ({sm['worst_corruption']}) drops {sm['worst_corruption_drop']:.1f} points "
        "(issue aims: ≤ 3 and ≤ 8).",
    ]
    for name, e in ext.items():
        ci = e.get("ci95", {}).get("auc", [None, None])
        lines.append(
            f"Zero-shot on {name} ({e['n']} images, {e.get('groups')}): tumour AUC **{e['auc']:.3f}** "
            f"({ci[0]:.3f}–{ci[1]:.3f}), sensitivity {_pct(e['sensitivity'])}, specificity {_pct(e['specificity'])}"
            + _answered_clause(e.get("answered"))
        )
    return "\n".join(lines)


def _answered_clause(a: dict[str, Any] | None) -> str:
    """What a deployment that sends out-of-domain flags to review answers itself (bench/robustness.py)."""
    if not a or a.get("auc") is None:
        return "."
    lo, hi = a["ci95"]["auc"]
    gate = "Mahalanobis gate (fitted by the benchmark)" if a.get("gate") == "mahalanobis" else "deployed gate"
    return f"; on the {_pct(a['share'])} of images the {gate} passes, AUC {a['auc']:.3f} ({lo:.3f}–{hi:.3f})."


def block_robustness_table(name: str = "robustness.json") -> str | None:
    r = _load(RESULTS / name)
    return None if r is None else _bench_module("robustness").render_markdown(r)


def block_robustness_gate() -> str | None:
    """MRI-C read through the deployed two-score gate: what it flags, and what a deployment honouring it answers."""
    r = _load(RESULTS / "robustness.json")
    a = None if r is None else (r.get("summary") or {}).get("answered")
    if a is None:
        return None
    c, sm = r["clean"], r["summary"]
    md = _bench_module("robustness").render_markdown(r).split("\n")
    start = next(i for i, line in enumerate(md) if line.startswith("| corruption |"))
    end = md.index("", start)
    head = (
        f"From `bench/results/robustness.json` (`python bench/robustness.py --run runs/cpu-fast`, "
        f"{r['created'][:10]}; run `{r['run']}` from a fresh `./run.sh`, the run behind the released bundle and its "
        f"gate; {r['settings']['n_test']} test images, {_machine(r)}): clean "
        f"accuracy {_pct(c['accuracy'])}, mean drop **{sm['mean_drop']:.1f} points**, worst corruption "
        f"{sm['worst_corruption']} ({sm['worst_corruption_drop']:.1f}). The deployed gate flags "
        f"{_pct(c['ood_flagged']['gate'])} of the clean test images; over the {sm['n_conditions']} corrupted "
        f"conditions it passes {_pct(a['mean_share'])} of the images on average, and on what it passes the accuracy "
        f"drop is {a['mean_drop']:.1f} points on average (worst cell {a['worst_drop']:.1f}). This is not the "
        "issue's MRI-C aim (that counts every image): it says how much of the damage the gate turns into "
        "review requests instead of wrong answers."
    )
    return "\n".join([head, "", *md[start:end]])


def block_ood_check(name: str = "ood_check.json") -> str | None:
    r = _load(RESULTS / name)
    if r is None:
        return None
    lines = [
        f"From `bench/results/{name}` (`python bench/ood_check.py BUNDLE`, bundle `{r['bundle']}`): share of "
        "images the deployed gate flags `in_domain: false`.",
        "",
    ]
    if "flagged_features" not in next(iter(r["sets"].values())):  # a result from before the input checks
        lines += ["| images | n | flagged |", "|---|---|---|"]
        lines += [f"| {name} | {v['n']} | {_pct(v['flagged'])} |" for name, v in r["sets"].items()]
        return "\n".join(lines)
    checks = r.get("input_checks", {})
    blocks = r.get("threshold_block_stats")
    lines[0] += (
        f" The gate: feature score ≤ {r['threshold']:.1f}"
        + (f", low-level score ≤ {blocks:.1f}" if blocks is not None else "")
        + f" and input checks (colourfulness ≤ {checks.get('max_colourfulness')}, border brightness ≤ "
        f"{checks.get('max_border_brightness')}); the feature score alone was the whole gate before "
        "(`bench/results/ood_check_features_only.json`)."
    )
    silent = "confident_unflagged" in next(iter(r["sets"].values()))
    has_blocks = "flagged_block_stats" in next(iter(r["sets"].values()))
    head = "| images | n | flagged | by feature score |" + (" by low-level score |" if has_blocks else "")
    head += " by colour | by border |" + (" passed, no review, p ≥ 0.9 |" if silent else "")
    lines += [head, "|---|---|---|---|---|---|" + "---|" * (silent + has_blocks)]
    for name, v in r["sets"].items():
        cells = [v["n"], _pct(v["flagged"]), _pct(v["flagged_features"])]
        cells += [_pct(v["flagged_block_stats"])] if has_blocks else []
        cells += [_pct(v["flagged_colour"]), _pct(v["flagged_border"])]
        cells += [_pct(v["confident_unflagged"])] if silent else []
        lines.append(f"| {name} | " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def block_external_validation() -> str | None:
    r = _load(RESULTS / "external.json")
    return None if r is None else _bench_module("external").render_md(r)


def _adaptation_row(method: str, sets: dict[str, Any], source: dict[str, Any], name: str) -> str:
    a = sets[name]["adapted"]
    y = a["thresholds"]["youden"]
    pb = y.get("patient_bootstrap") or y
    seconds = (sets[name].get("adapt") or {}).get("seconds")
    acc = (source.get(f"after_adapting_on_{name}") or {}).get("accuracy")
    return (
        f"| {name} | {method} | {_ci(a.get('auc_patient_bootstrap') or a['auc'], False)} | "
        f"{_pct(pb['sensitivity']['value'])} / "
        f"{_pct(pb['specificity']['value'])} | {a['ece']:.3f} | {seconds} | {_pct(acc)} |"
    )


def block_external_site_head() -> str | None:
    """Fine-tune and site head on the same run, the same external splits (two runs of bench/external.py)."""
    head, ft = _load(RESULTS / "external_site_head.json"), _load(RESULTS / "external_finetune_rerun.json")
    if head is None or ft is None:
        return None
    lines = [
        f"From `bench/results/external_finetune_rerun.json` and `bench/results/external_site_head.json` (run "
        f"`{Path(head['run']).name}`, the same seeded external splits; evaluation parts only, patients or clusters the "
        "adaptation never saw; AUC intervals resample patients where they are known, lgg-flair). Seconds include "
        "reading and preprocessing the slices. Source test accuracy before adaptation: "
        f"{_pct(head['source_test']['before']['accuracy'])}.",
        "",
        "| set | method | AUC [95% CI] | sens / spec at Youden's threshold | ECE | seconds | source test accuracy "
        "after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in head["sets"]:
        zs = head["sets"][name]["zero_shot"]
        auc = zs.get("auc_patient_bootstrap") or zs["auc"]
        lines.append(f"| {name} | zero-shot | {_ci(auc, False)} | | {zs['ece']:.3f} | | |")
        lines.append(_adaptation_row("fine-tune (run)", ft["sets"], ft["source_test"], name))
        lines.append(_adaptation_row("site head (bundle)", head["sets"], head["source_test"], name))
    return "\n".join(lines)


def block_ood_lowlevel() -> str | None:
    r = _load(RESULTS / "ood_lowlevel.json")
    if r is None:
        return None
    t = r["thresholds"]
    lines = [
        f"From `bench/results/ood_lowlevel.json` (`{r['command']}`; run `{r['run']}`; scores alone, no input "
        f"checks): share of images flagged. The gate's two thresholds sit at the {r['gate_quantile']:.3f} "
        f"validation quantile so that {_pct(r['validation_pass_rate'])} of validation slices pass both "
        f"(feature score ≤ {t['features']:.1f}, low-level score ≤ {t['block_stats']:.1f}); *feature score alone* "
        f"is the one-score gate of earlier bundles (≤ {t['features_alone']:.1f}, 95% of validation).",
        "",
        f"| images | n | feature score alone | gate: feature score | gate: low-level score (stages "
        f"{', '.join(map(str, r['stages']))}, {r['n_statistics']} statistics) | gate: either (deployed) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {v['n']} | {_pct(v['features_alone'])} | {_pct(v['features'])} | {_pct(v['block_stats'])} "
        f"| {_pct(v['gate'])} |"
        for name, v in r["sets"].items()
    ]
    return "\n".join(lines)


def block_validate_gate() -> str | None:
    rows = {name: _load(RESULTS / f"validate_gate_{name}.json") for name in ("lgg-flair", "navoneel")}
    if any(r is None or r.get("gate") is None for r in rows.values()):
        return None
    run = next(iter(rows.values()))["run"]
    lines = [
        f"From `bench/results/validate_gate_<set>.json` (`brainmri validate {run} ../shared/data/<set>`, its "
        "`external.json`): the evaluation part, at the bundle's threshold, all slices / the slices the gate passes "
        "/ the slices it flags; sensitivity and specificity in %, AUC with its 95% bootstrap CI (whole patients "
        "resampled where patients are known).",
        "",
        "| set | n | flagged (tumour / no tumour) | all: sens / spec / AUC | passed: n, sens / spec / AUC "
        "| flagged: n, sens / spec / AUC |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        g, t = r["gate"], r["views"]["run_temperature"]["thresholds"]["run"]["evaluation"]

        def rates(e: dict[str, Any]) -> str:
            if "auc" not in e:
                return "one class only"
            auc = (e.get("patient_bootstrap") or e)["auc"]
            ci = f" [{auc['ci_low']:.2f}, {auc['ci_high']:.2f}]" if auc.get("ci_low") is not None else ""
            return f"{_pct(e['sensitivity']['value'])} / {_pct(e['specificity']['value'])} / {auc['value']:.3f}{ci}"

        lines.append(
            f"| {name} | {r['counts']['evaluation']} | {_pct(g['flagged'])} ({_pct(g['flagged_tumour'])} / "
            f"{_pct(g['flagged_no_tumour'])}) | {rates(t)} | {g['passed']['n']}, {rates(g['passed'])} "
            f"| {g['flagged_subset']['n']}, {rates(g['flagged_subset'])} |"
        )
    return "\n".join(lines)


def block_site_head_anchor() -> str | None:
    r = _load(RESULTS / "site_head_anchor.json")
    if r is None:
        return None
    lines = [
        f"From `bench/results/site_head_anchor.json` ({r['n_site']} slices of {r['n_patients']} patients, "
        f"C = {r['c']}, "
        f"{r['stand_ins']} stand-ins; zero-shot site AUC {r['zero_shot_site_auc']:.3f}, source test accuracy before "
        f"adaptation {_pct(r['source_accuracy_before'])}; means of the two directions).",
        "",
        "| anchor weight | site AUC (other half) | source test accuracy | source tumour AUC |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {row['anchor']:g} | {row['site_auc']:.3f} | {_pct(row['source_accuracy'])} "
        f"| {row['source_tumour_auc']:.3f} |"
        for row in r["rows"]
    ]
    return "\n".join(lines)


def block_study_level() -> str | None:
    r = _load(RESULTS / "study_level.json")
    if r is None:
        return None
    sl = r["slice_level"]
    chosen = r.get("chosen", {})
    text = (
        f"From `bench/results/study_level.json` ({r['n_patients']} lgg-flair patients as "
        f"volumes, {r['n_slices']} slices, threshold {r['threshold']}): slice tumour AUC {_ci(sl['auc'], False)}, "
        f"sensitivity {_ci(sl['sensitivity'])}, specificity {_ci(sl['specificity'])}. "
    )
    if chosen.get("aggregate"):
        text += f"Study aggregate chosen by measurement: `{chosen['aggregate']}` (k = {chosen.get('k')}). "
    else:
        text += f"No aggregate could be chosen by measurement: {chosen.get('rule')}. "
    return text + r.get("study_negatives", "")


def block_serve() -> str | None:
    load, fuzz = _load(RESULTS / "serve_load.json"), _load(RESULTS / "fuzz.json")
    if load is None:
        return None
    lat = load["latency_ms"]
    text = (
        f"From `bench/results/serve_load.json` ({load['bundle']}; {load['concurrency']} concurrent clients for "
        f"{load['duration_s']:.0f} s, {load['cpu_count']} cores, load average at start "
        f"{load.get('load_average_at_start')}): **{load['requests_per_s']:.1f} requests/s**, p50 {lat['p50']:.0f} ms, "
        f"p99 {lat['p99']:.0f} ms, {load['errors']} errors in {load['requests']:,} requests (aims: ≥ 60 requests/s, "
        "p99 ≤ 250 ms, 0 errors)."
    )
    if fuzz is not None:
        api = fuzz["api"]
        text += (
            f" Fuzzing (`bench/results/fuzz.json`): {api['inputs']:,} malformed uploads → {api['crashes']} crashes, "
            f"{api['5xx']} server errors, {api['errors_not_naming_the_problem']} errors that do not name the problem."
        )
    return text


def block_ablation() -> str | None:
    r = _load(RESULTS / "ablation.json")
    if r is None:
        return None
    head = (
        f"From `bench/results/ablation.json` (`{r['command']}`; recipe: {r['recipe']['what']}; seeds "
        f"{', '.join(map(str, r['seeds']))}; {_machine(r)}). Cells: mean over seeds ± seed sd (95% {r['ci']}). "
        "The last column is the reference design's claim, not a measurement."
    )
    return head + "\n\n" + _bench_module("ablation").render_markdown(r) + "\n\n" + _ablation_deltas(r)


def _ablation_deltas(r: dict[str, Any]) -> str:
    """Each preset minus raw (paired bootstrap), so 'does preprocessing help' is read off one line each."""
    parts = []
    for preset, p in r["presets"].items():
        m = p["metrics"]
        if "minus_raw" not in m["test_accuracy"]:
            continue
        cells = []
        for key, label, k in (("test_accuracy", "test acc", 100), ("lgg_flair_auc", "lgg-flair AUC", 1),
                              ("navoneel_auc", "navoneel AUC", 1)):  # fmt: skip
            d = m[key]["minus_raw"]
            digits = 1 if k == 100 else 3
            lo, hi = (c * k for c in d["ci95"])
            cells.append(f"{label} {d['value'] * k:+.{digits}f} ({lo:+.{digits}f} to {hi:+.{digits}f})")
        parts.append(f"- **{preset} − raw**: " + "; ".join(cells))
    return "\n".join(parts)


def block_kfold() -> str | None:
    r = _load(RESULTS / "kfold.json")
    if r is None:
        return None
    lines = [
        f"From `bench/results/kfold.json` (`{r['command']}`; config `{r['config']}` with "
        f"{', '.join(r['overrides']) or 'no overrides'}; preprocessing {r['preprocessing']}; {_machine(r)}). "
        f"{r['note'][:1].upper()}{r['note'][1:]}.",
        "",
        "| metric | mean ± sd | 95% CI (t over folds) | per fold |",
        "|---|---|---|---|",
    ]
    for key in ("accuracy", "f1_macro", "auc_macro_ovr", "ece_after", "tumour_sensitivity", "tumour_specificity"):
        m = r["metrics"].get(key)
        if m is None:
            continue
        pct = key != "ece_after"
        f = (lambda v: f"{v * 100:.1f}%") if pct else (lambda v: f"{v:.3f}")
        per = ", ".join(f(v) for v in m["values"])
        lines.append(f"| {key} | {f(m['mean'])} ± {f(m['sd'])} | {f(m['ci_low'])}–{f(m['ci_high'])} | {per} |")
    return "\n".join(lines)


def block_adabn() -> str | None:
    r = _load(RESULTS / "adabn.json")
    return None if r is None else _bench_module("adabn").render_markdown(r)


def block_conformal() -> str | None:
    r = _load(RESULTS / "conformal.json")
    if r is None:
        return None
    head = f"From `bench/results/conformal.json` (run `{r.get('run')}`, fitted on validation, reported on test):"
    return "\n".join([head, "", _bench_module("conformal").render(r)])


def _auc_cell(e: dict[str, Any] | None) -> str:
    if not e or e.get("auc") is None:
        return "–"
    lo, hi = e["ci95"]["auc"]
    return f"{e['auc']:.3f} ({lo:.3f}–{hi:.3f})"


def _mric_row(label: str, r: dict[str, Any]) -> str:
    c, sm, ext = r["clean"], r["summary"], r.get("external", {})
    return (
        f"| {label} (`{r['run']}`) | {_pct(c['accuracy'])} | {c['ece']:.3f} | {sm['mean_drop']:.1f} | "
        f"{sm['worst_corruption']} {sm['worst_corruption_drop']:.1f} | {_auc_cell(ext.get('lgg-flair'))} | "
        f"{_auc_cell(ext.get('navoneel'))} |"
    )


#: Single-ingredient runs (bench/results/robustness_only_<key>.json): what each trained with, besides the
#: CPU recipe (six fine-tuning epochs, appearance preset off).
SINGLE_INGREDIENTS = {
    "invert": "only contrast inversion (`train.augment.invert=0.3`)",
    "remap": "only random intensity curves (`train.augment.intensity_remap=0.5`)",
    "fourier": "only Fourier amplitude mix with training partners (`train.augment.fourier_mix=0.5`)",
}


#: Recipe variants on the scan-grouped split (bench/results/<file>): what each changed.
SCAN_SPLIT_VARIANTS = {
    "robustness_no_randomisation_scan_split.json": "CPU recipe, 6 fine-tuning epochs",
    "robustness_scan_split_mixup.json": "… plus MixUp (`train.mixup_alpha=0.2`)",
    "robustness_scan_split_geometry.json": "… plus stronger geometry (rotation 20°, scale 0.8–1.2, shift 0.1)",
    "robustness_scan_split_mirror.json": "… with the mirror channel (`model.gray_mode=mirror`)",
    "robustness_scan_split_gin.json": "… plus GIN random conv nets (`train.augment.random_conv=0.5`)",
    "robustness_scan_split_ensemble2.json": "`brainmri ensemble` of two seeds (42 + 7) of the six-epoch recipe",
    "robustness_full_release.json": "CPU recipe, full chain, 14 fine-tuning epochs, released until 2026-12-06",
    "robustness_cpu_mirror.json": "… the same with the mirror channel",
    "robustness_rerun.json": "CPU recipe, full chain, 14 epochs, seed 42: the `./run.sh` released 2026-12-06",
    "robustness_invert.json": "… the same with contrast inversion in training (`train.augment.invert=0.2`)",
    "robustness_seed7.json": "… the same recipe, seed 7 (`--seed 7`)",
    "robustness_raw.json": "… preprocessing preset `raw` (grayscale + resize only), seed 42",
    "robustness_crop.json": "… preprocessing preset `crop` (brain crop, no N4/Nyúl/CLAHE), seed 42: the recipe "
    "released 2026-12-07 (its `./run.sh` gave the same weights, `robustness.json`)",
    "robustness_crop_seed7.json": "… preprocessing preset `crop`, seed 7",
    "robustness_crop_n4_nyul.json": "… preprocessing preset `crop+n4+nyul` (the full chain without skull mask and "
    "CLAHE), seed 42",
    "robustness_crop_n4.json": "… preprocessing preset `crop+n4` (brain crop and bias correction only), seed 42",
    "robustness_crop_n4_seed7.json": "… preprocessing preset `crop+n4`, seed 7",
    "robustness_dsu.json": "… preset `crop` (the released recipe) with DSU feature-statistics perturbation "
    "(`train.style.kind=dsu`), seed 42",
    "robustness_mixstyle.json": "… preset `crop` with MixStyle (`train.style.kind=mixstyle`), seed 42",
    "robustness_crop_invert.json": "… preset `crop` with contrast inversion in training (`train.augment.invert=0.2`), "
    "seed 42",
    "robustness_crop_invert_seed7.json": "… preset `crop` with contrast inversion, seed 7",
    "robustness_crop_160.json": "… preset `crop` at 160 px instead of 192 (`preprocess.size=160`), seed 42",
    "robustness_crop_160_seed7.json": "… preset `crop` at 160 px, seed 7",
    "robustness_crop_maxpool.json": "… preset `crop` with global max pooling (`model.global_pool=max`), seed 42",
    "robustness_crop_maxpool_seed7.json": "… preset `crop` with global max pooling, seed 7",
    "robustness_crop_droppath.json": "… preset `crop` with stochastic depth (`model.drop_path_rate=0.2`), seed 42",
    "robustness_crop_droppath_seed7.json": "… preset `crop` with stochastic depth, seed 7",
    "robustness_crop_erasing.json": "… preset `crop`, random erasing (`train.augment.random_erasing=0.25`), seed 42",
    "robustness_crop_erasing_seed7.json": "… preset `crop` with random erasing, seed 7",
    "robustness_crop_cutmix.json": "… preset `crop` with CutMix (`train.cutmix_alpha=1.0`, half the batches), seed 42",
    "robustness_crop_cutmix_seed7.json": "… preset `crop` with CutMix, seed 7",
    "robustness_site_crop_seed7.json": "… preset `crop`, seed 7, retrained 2026-12-07 (differs from the seed-7 `crop` "
    "row above: the retrain was not bit-identical)",
    "robustness_site_strip_seed7.json": "… preset `crop` with skull stripping in training "
    "(`train.augment.skull_strip=0.3`), seed 7",
    "robustness_site_crop_seed42.json": "… preset `crop`, seed 42, retrained 2026-12-07 (differs from the released "
    "seed-42 `crop` row above in the same way)",
    "robustness_site_strip_seed42.json": "… preset `crop` with skull stripping in training, seed 42",
    "robustness_crop_avgmax.json": "… preset `crop` with the mean of average and max pooling "
    "(`model.global_pool=avgmax`), seed 42 (stage 2 resumed at epoch 5)",
    "robustness_crop_avgmax_seed7.json": "… preset `crop` with average and max pooling, seed 7",
    "robustness_crop_deep2.json": "… preset `crop` fine-tuning blocks 2-6 instead of 3-6 "
    "(`train.stage2_trainable`), seed 42",
    "robustness_crop_deep2_seed7.json": "… preset `crop` fine-tuning blocks 2-6, seed 7",
}


def block_scan_split_variants() -> str | None:
    rows = {name: (label, r) for name, label in SCAN_SPLIT_VARIANTS.items() if (r := _load(RESULTS / name))}
    if not rows:
        return None
    return "\n".join(
        [
            f"From `bench/results/{'`, `'.join(rows)}` (`python bench/robustness.py --run RUN`, whole test split, "
            "one seed each):",
            "",
            "| model | clean acc | ECE | MRI-C mean drop | worst corruption (drop) | lgg-flair AUC | navoneel AUC |",
            "|---|---|---|---|---|---|---|",
            *(_mric_row(label, r) for label, r in rows.values()),
        ]
    )


#: Runs scored under the site variations (bench/robustness.py ``site_variations``): file -> what trained it.
SITE_RUNS = {
    "robustness_site_crop_seed7.json": "CPU recipe (preset `crop`), seed 7, retrained 2026-12-07",
    "robustness_site_strip_seed7.json": "… the same with skull stripping in training (`train.augment.skull_strip=0.3`)",
    "robustness_site_crop_seed42.json": "CPU recipe (preset `crop`), seed 42, retrained 2026-12-07",
    "robustness_site_strip_seed42.json": "… the same with skull stripping in training",
    "robustness_crop_avgmax.json": "CPU recipe (preset `crop`) with average and max pooling "
    "(`model.global_pool=avgmax`), seed 42",
    "robustness_crop_avgmax_seed7.json": "… the same, seed 7",
    "robustness_crop_deep2.json": "CPU recipe (preset `crop`) fine-tuning blocks 2-6 "
    "(`train.stage2_trainable`), seed 42",
    "robustness_crop_deep2_seed7.json": "… the same, seed 7",
}


def _site_row(label: str, r: dict[str, Any], variation: str) -> str:
    c, t, ext = r["clean"], r["site_variations"][variation], r["external"]
    cells = [f"{_auc_cell(ext.get(n))} → {_auc_cell((ext.get(n) or {}).get('site', {}).get(variation))}"
             for n in ("lgg-flair", "navoneel")]  # fmt: skip
    return (
        f"| {label} (`{r['run']}`) | {_pct(c['accuracy'])} → {_pct(t['accuracy'])} ({t['drop']:+.1f}) | "
        f"{cells[0]} | {cells[1]} | {r['summary']['mean_drop']:.1f} / {r['summary']['worst_corruption_drop']:.1f} |"
    )


def block_site_skull_strip() -> str | None:
    """Clean → skull-stripped (bench/robustness.py site variation) for each run in SITE_RUNS."""
    rows = {n: (label, r) for n, label in SITE_RUNS.items() if (r := _load(RESULTS / n)) and r.get("site_variations")}
    if not rows:
        return None
    return "\n".join(
        [
            f"From `bench/results/{'`, `'.join(rows)}` (`python bench/robustness.py --run RUN`, whole test split; "
            "each cell: clean → skull-stripped by `StripSkull`; AUCs with patient- / image-bootstrap 95% CIs):",
            "",
            "| model | test accuracy (drop) | lgg-flair AUC | navoneel AUC | MRI-C mean / worst drop |",
            "|---|---|---|---|---|",
            *(_site_row(label, r, "skull_stripped") for label, r in rows.values()),
        ]
    )


def block_paired(name: str) -> str | None:
    r = _load(RESULTS / name)
    if r is None:
        return None
    head = (
        f"From `bench/results/{name}` (`python bench/paired.py`; each cell: mean over seeds (per seed), "
        f"then the paired difference to `{r['reference']}` with its 95% bootstrap interval; "
        f"{r['resampling']}):"
    )
    return "\n".join([head, "", _bench_module("paired").render_markdown(r)])


def block_progressive() -> str | None:
    """Progressive resizing with a full fine-tune against the released recipe: training record + paired table."""
    train, ref = _load(RESULTS / "train_cpu_progressive.json"), _load(RESULTS / "train_cpu.json")
    paired = block_paired("paired_progressive.json")
    if train is None or ref is None or paired is None:
        return None
    line = (
        f"From `bench/results/train_cpu_progressive.json` (`{train['recipe']}` with "
        f"{', '.join(f'`{o}`' for o in train['overrides'])}): training "
        f"{train['train_wall_minutes']:.1f} min, best validation accuracy **{_pct(train['best_val_acc'])}** at "
        f"{train['best']['epoch']} (released recipe, `train_cpu.json`: {ref['train_wall_minutes']:.1f} min, "
        f"{_pct(ref['best_val_acc'])})."
    )
    return "\n".join([line, "", paired])


def block_shortcuts() -> str | None:
    """The look-alike groups of the training set and the linear probe with group vs class balancing."""
    r = _load(RESULTS / "shortcuts.json")
    if r is None:
        return None
    n_groups, g = ("12", r["groups"]["12"]) if "12" in r["groups"] else next(iter(r["groups"].items()))
    probes = r["linear_probe"]
    ref = next(p for p in probes if p["weights"] == "class-balanced")
    lines = [
        f"From `bench/results/shortcuts.json` (`python bench/shortcuts.py --run RUN`; "
        f"{r['settings']['features']} features, k-means seeds {'/'.join(map(str, r['settings']['seeds']))}):",
        "",
        f"- the majority class of an image's look-alike group ({n_groups} groups) alone gets "
        f"**{_pct(g['group_only_val_accuracy'])}** of the validation split right (largest class: "
        f"{_pct(g['largest_class_share_val'])});",
        "",
        "| linear probe weights | groups | val accuracy | lgg-flair AUC | navoneel AUC |",
        "|---|---|---|---|---|",
        f"| class-balanced | – | {_pct(ref['val_accuracy'])} | {ref['lgg-flair_auc']:.3f} "
        f"| {ref['navoneel_auc']:.3f} |",
    ]
    for n in r["settings"]["groups"]:
        rows = [p for p in probes if p.get("groups") == n]
        cells = [
            "/".join(_pct(p["val_accuracy"]) for p in rows),
            "/".join(f"{p['lgg-flair_auc']:.3f}" for p in rows),
            "/".join(f"{p['navoneel_auc']:.3f}" for p in rows),
        ]
        lines.append(f"| group-balanced | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block_rerun() -> str | None:
    """A fresh ./run.sh against the published run: run-to-run spread of the recipe, with scan-group CIs."""
    r = _load(ROOT / "docs" / "results" / "summary_rerun.json")
    if r is None:
        return None
    t, tr = r["test"], r["train"]
    return (
        f"From `docs/results/summary_rerun.json` ({r['what']}): training {tr['wall_seconds'] / 60:.1f} min, best "
        f"epoch {tr['best_epoch']} (validation accuracy {_pct(tr['best_val_acc'])}); test accuracy "
        f"{_ci(t['accuracy'])}, tumour AUC {_ci(t['tumour_auc'])}, ECE after temperature scaling "
        f"{_ci(t['ece_after'], pct=False)} ({t['accuracy']['ci_method']}); the exported bundle agrees "
        f"({_pct(r['bundle_check'])})." + _reproduction(r.get("reproduction"))
    )


def _reproduction(rep: dict | None) -> str:
    """A second training with the released seed: are its weights the same bytes as the released run's?"""
    if not rep:
        return ""
    same = "the same bytes as" if rep["weights_identical"] else "different from"
    return (
        f" A second training with the released run's seed ({rep['what']}) gave weights {same} the released "
        f"run's (`model.safetensors` SHA-256 `{rep['sha256'][:12]}…`)."
    )


def block_grouped_ci() -> str | None:
    """Per-image vs scan-group bootstrap intervals on the test split."""
    r = _load(RESULTS / "grouped_ci.json")
    if r is None:
        return None
    names = {"accuracy": "accuracy", "f1_macro": "macro F1", "tumour_auc": "tumour AUC", "ece": "ECE",
             "tumour_sensitivity": "tumour sensitivity"}  # fmt: skip
    lines = [
        f"From `bench/results/grouped_ci.json` (`python bench/grouped_ci.py`; {r['test_images']} test slices in "
        f"{r['test_groups']} scan groups, {r['images_in_groups_of_2_or_more']} of them in groups of two or more, "
        f"the largest {r['largest_group']}; {len(r['runs'])} runs: {', '.join(r['runs'])}):",
        "",
        "| metric | group ÷ per-image interval width (mean over runs) | first run: per image | first run: by group |",
        "|---|---|---|---|",
    ]
    first = next(iter(r["runs"].values()))
    for key, label in names.items():
        img, grp = first["images"][key], first["scan_groups"][key]
        cell = (lambda e: f"{e['value']:.3f} ({e['ci'][0]:.3f}–{e['ci'][1]:.3f})") if key == "ece" else (
            lambda e: f"{_pct(e['value'])} ({_pct(e['ci'][0])}–{_pct(e['ci'][1])})"
        )  # fmt: skip
        lines.append(f"| {label} | {r['mean_width_ratio'][key]:.2f} | {cell(img)} | {cell(grp)} |")
    return "\n".join(lines)


def block_randomisation() -> str | None:
    on, off = _load(RESULTS / "robustness_randomised.json"), _load(RESULTS / "robustness_no_randomisation.json")
    if on is None or off is None:
        return None
    singles = [
        _mric_row(label, r)
        for key, label in SINGLE_INGREDIENTS.items()
        if (r := _load(RESULTS / f"robustness_only_{key}.json")) is not None
    ]
    return "\n".join(
        [
            "From `bench/results/robustness_no_randomisation.json` and `bench/results/robustness_randomised.json` "
            f"(the same {on['settings'].get('n_test')} test images, corruptions and external sets; "
            "`python bench/robustness.py --run RUN --limit 400`). Accuracy and ECE on the clean test subsample, "
            "MRI-C drops in points, tumour AUC zero-shot with 95% bootstrap CIs (lgg-flair: patients).",
            "",
            "| model | clean acc | ECE | MRI-C mean drop | worst corruption (drop) | lgg-flair AUC | navoneel AUC |",
            "|---|---|---|---|---|---|---|",
            _mric_row("without appearance randomisation", off),
            *singles,
            _mric_row("with appearance randomisation", on),
        ]
    )


def block_slice_groups() -> str | None:
    r = _load(RESULTS / "slice_groups.json")
    if r is None:
        return None
    lgg, btm, head = r["lgg_flair"], r["brain_tumor_mri"], r["headline_stage1"]
    chosen, base = lgg["chosen_on_half_a"], lgg["phash_near_duplicates_baseline"]
    b = chosen["half_b"]
    pairs = btm["named_pairs"]
    old, new = head["old_split_near_duplicate"]["test"], head["new_split_scan"]["test"]
    return (
        f"From `bench/results/slice_groups.json` ({_machine(r)}). lgg-flair ({lgg['patients']} patients; settings "
        f"chosen on {lgg['halves']['a_patients']} patients, reported on the other {lgg['halves']['b_patients']}): "
        f"pairwise same-patient precision {b['precision']:.3f}, recall {b['recall']:.3f}, adjacent slices kept "
        f"together {_pct(b['adjacent_recall'])} — against {_pct(base['adjacent_recall'])} "
        f"(recall {base['recall']:.3f}) for the pHash clusters alone. "
        f"Kaggle `Training/`: {btm['groups']['groups']:,} scan groups instead of "
        f"{btm['params']['clusters']:,} near-duplicate clusters ({btm['groups']['singletons']} single slices); "
        f"{sum(p['one_scan_group'] for p in pairs)} of the {len(pairs)} adjacent-slice pairs an independent check "
        "found split apart by the near-duplicate grouping are now in one group. "
        "Headline move (stage-1 recipe, same test size): "
        f"test accuracy {_pct(old['accuracy']['value'])} ({_pct(old['accuracy']['ci_low'])}–"
        f"{_pct(old['accuracy']['ci_high'])}) on the near-duplicate split → {_pct(new['accuracy']['value'])} "
        f"({_pct(new['accuracy']['ci_low'])}–{_pct(new['accuracy']['ci_high'])}) on the scan-grouped split."
    )


BLOCKS = {
    "slice_groups": block_slice_groups,
    "randomisation": block_randomisation,
    "ablation": block_ablation,
    "kfold": block_kfold,
    "adabn": block_adabn,
    "conformal": block_conformal,
    "robustness": block_robustness,
    "robustness_table": block_robustness_table,
    "robustness_rerun_table": lambda: block_robustness_table("robustness_rerun.json"),
    "robustness_stage1_table": lambda: block_robustness_table("robustness_stage1_baseline.json"),
    "robustness_randomised_table": lambda: block_robustness_table("robustness_randomised.json"),
    "robustness_gate": block_robustness_gate,
    "scan_split_variants": block_scan_split_variants,
    "paired_mirror": lambda: block_paired("paired_mirror.json"),
    "paired_ema": lambda: block_paired("paired_ema.json"),
    "paired_ensemble": lambda: block_paired("paired_ensemble.json"),
    "paired_balance": lambda: block_paired("paired_balance.json"),
    "paired_lite1": lambda: block_paired("paired_lite1.json"),
    "paired_wise": lambda: block_paired("paired_wise.json"),
    "paired_lesions": lambda: block_paired("paired_lesions.json"),
    "progressive": block_progressive,
    "paired_ece": lambda: block_paired("paired_ece.json"),
    "paired_invert": lambda: block_paired("paired_invert.json"),
    "paired_preprocess": lambda: block_paired("paired_preprocess.json"),
    "paired_style": lambda: block_paired("paired_style.json"),
    "paired_ensemble_crop": lambda: block_paired("paired_ensemble_crop.json"),
    "paired_invert_crop": lambda: block_paired("paired_invert_crop.json"),
    "paired_pool_size": lambda: block_paired("paired_pool_size.json"),
    "paired_ensemble_budget": lambda: block_paired("paired_ensemble_budget.json"),
    "paired_droppath_erasing": lambda: block_paired("paired_droppath_erasing.json"),
    "paired_cutmix": lambda: block_paired("paired_cutmix.json"),
    "site_skull_strip": block_site_skull_strip,
    "paired_skull_strip": lambda: block_paired("paired_skull_strip.json"),
    "paired_avgmax": lambda: block_paired("paired_avgmax.json"),
    "paired_deep2": lambda: block_paired("paired_deep2.json"),
    "shortcuts": block_shortcuts,
    "ood_check": block_ood_check,
    "ood_check_photos_ct": lambda: block_ood_check("ood_check_photos_ct.json"),
    "ood_lowlevel": block_ood_lowlevel,
    "external_validation": block_external_validation,
    "external_site_head": block_external_site_head,
    "site_head_anchor": block_site_head_anchor,
    "study_level": block_study_level,
    "serve": block_serve,
    "external": block_external,
    "bundle_check": block_bundle_check,
    "import_audit": block_import_audit,
    "preprocess": block_preprocess,
    "train_cpu": lambda: block_train("cpu"),
    "train_gpu": lambda: block_train("gpu"),
    "latency": block_latency,
    "latency_gate": lambda: block_latency("latency_gate.json"),
    "validate_gate": block_validate_gate,
    "evaluation": block_evaluation,
    "grouped_ci": block_grouped_ci,
    "rerun": block_rerun,
}


def render(text: str) -> str:
    for name, fn in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            continue
        body = fn()
        body = "_(not measured yet: run the command above)_" if body is None else body
        text = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(3), text)
    return text


# navoneel_summary.json is copied by hand from RUN/reports/navoneel/summary.json after the external evaluation
PUBLISHED = (
    "summary.json",
    "confusion_matrix.png",
    "reliability.png",
    "roc_pr.png",
    "error_gallery.png",
    "confidence_hist.png",
    "tumour_roc.png",
)


def publish(run_dir: Path) -> None:
    """Copy the evaluation's headline files of a run into docs/results/ (committed, quoted by README)."""
    import shutil

    reports = run_dir / "reports"
    out = EVAL_SUMMARY.parent
    out.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        if (reports / name).is_file():
            shutil.copyfile(reports / name, out / name)
    for name in ("curves.png", "history.json"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out / name)
    check = pipeline_bundle_check(run_dir)
    if check.is_file():
        shutil.copyfile(check, out / "bundle_check.json")
    else:
        print(f"note: {check} not found (the run was not trained by `brainmri pipeline`); bundle_check.json kept")


def pipeline_bundle_check(run_dir: Path) -> Path:
    """Where the pipeline wrote the bundle check of this run: its config's ``work_dir``/pipeline (runs_dir may lie
    anywhere, so the folder is read from the run's saved config, not guessed from the run's path)."""
    from brainmri.layout import Layout
    from brainmri.runs import Run

    return Layout.from_config(Run.load(run_dir).cfg.paths).workflow_dir / "bundle_check.json"


def rendered_pages() -> list[Path]:
    """The README and every page under docs/: each may hold generated blocks (docs/measurements.md holds most)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--publish", type=Path, default=None, metavar="RUN")
    args = ap.parse_args()
    if args.publish is not None:
        publish(args.publish)
    stale = []
    for page in rendered_pages():
        old = page.read_text()
        new = render(old)
        if new != old:
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print(f"out of date: {', '.join(map(str, stale))}: run python bench/render_readme.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
