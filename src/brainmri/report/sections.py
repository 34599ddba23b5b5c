"""One function per report section: ``(inputs, opts) -> HTML``; each says "not run" when its file is missing.

Sections read result files only (the run folder, the work folder's data files, benchmark results, the
bundle card). Known layouts get a readable table; anything else goes through the generic JSON renderer,
so a result file that gains keys or rows still renders.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainmri.report.html import (
    esc,
    figure,
    is_scalar,
    kv_table,
    not_run,
    pre,
    render_json,
    rows_table,
    scalar_html,
    table,
)
from brainmri.report.sources import STEPS_FIGURE, Inputs


@dataclass(frozen=True)
class Options:
    max_width: int = 1400  # inlined figures wider than this are downscaled (0: keep)
    render_steps: bool = True  # render the preprocessing figure when the run carries none


def _reports_figure(inp: Inputs, name: str, caption: str, opts: Options) -> str:
    return figure(inp.reports_dir / name, caption, opts.max_width)


def _metrics(inp: Inputs) -> dict[str, Any] | None:
    return inp.json(inp.reports_dir / "metrics.json")


def _summary(inp: Inputs) -> dict[str, Any] | None:
    return inp.json(inp.reports_dir / "summary.json")


HEADLINE = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("f1_macro", "macro F1"),
    ("auc_macro_ovr", "macro one-vs-rest AUC"),
    ("ece_before", "ECE before calibration"),
    ("ece_after", "ECE after calibration"),
    ("tumour_sensitivity", "tumour sensitivity"),
    ("tumour_specificity", "tumour specificity"),
    ("tumour_auc", "tumour vs no tumour AUC"),
)


def overview(inp: Inputs, opts: Options) -> str:
    run = inp.run
    keys = ("name", "backbone", "img_size", "classes", "n_train", "n_val", "monitor", "best_score", "best_epoch",
            "wall_seconds", "completed", "fold")  # fmt: skip
    parts = [kv_table({k: run[k] for k in keys if k in run})]
    matches = inp.split_sha_matches()
    if matches is False:
        parts.append(
            f'<p class="missing">The split file {esc(inp.split_file)} is not the one this run was trained on '
            "(its sha256 differs from run.json); the data and split sections describe that file.</p>"
        )
    summary = _summary(inp)
    if summary is None:
        parts.append(not_run("evaluation", inp.reports_dir / "summary.json", "Run `brainmri evaluate RUN`."))
        return "".join(parts)
    rows = [[esc(label), scalar_html(summary[k])] for k, label in HEADLINE if k in summary]
    where = f"{summary.get('split', '?')} split, n = {summary.get('n', '?')}"
    parts.append(f"<h3>Headline test metrics ({esc(where)}; 95% CIs)</h3>")
    parts.append(table(["metric", "value [95% CI]"], rows))
    if summary.get("optimistic") or summary.get("note"):
        parts.append(f'<p class="missing">{esc(summary.get("note") or "optimistic estimate")}</p>')
    return "".join(parts)


def data_audit(inp: Inputs, opts: Options) -> str:
    audit = inp.json(inp.audit_file)
    if audit is None:
        return not_run("data audit", inp.audit_file, "Run `brainmri data audit`.")
    exact, near, clusters = audit.get("exact", {}), audit.get("near", {}), audit.get("clusters", {})
    conflicts = audit.get("label_conflicts", {})
    facts = {
        "manifest": audit.get("manifest"),
        "files": audit.get("files"),
        "readable": audit.get("readable"),
        "unreadable": (audit.get("unreadable") or {}).get("count"),
        "per label": audit.get("per_label"),
        "perceptual hash": f"pHash of {_bits(audit.get('hash_size'))} bits; near duplicate: distance ≤ "
        f"{audit.get('near_threshold', '?')}",
        "exact duplicates (same md5)": {k: v for k, v in exact.items() if k != "cluster_list"},
        "near duplicates": {k: v for k, v in near.items() if k != "pair_list"},
        "duplicate clusters (exact + near)": {k: v for k, v in clusters.items() if k != "list"},
        "clusters spanning source splits": (audit.get("cross_source_split") or {}).get("count"),
        "clusters with conflicting labels": {k: v for k, v in conflicts.items() if k != "clusters"},
    }
    parts = ["<h3>Audit</h3>", kv_table(facts)]
    hist = audit.get("distance_histogram")
    if isinstance(hist, Mapping) and hist:
        rows = [{"pHash distance": k, **v} for k, v in hist.items() if isinstance(v, Mapping)]
        parts += ["<h3>Pairs of different files by pHash distance</h3>", rows_table(rows)]
    parts.append("<h3>Near-duplicate examples</h3>")
    parts.append(figure(inp.near_duplicates_figure, "near-duplicate pairs found by the audit", opts.max_width))
    pairs = (audit.get("montage") or {}).get("pairs")
    if pairs:
        parts.append(rows_table(pairs, max_rows=24))
    if conflicts.get("clusters"):
        parts += ["<h3>Clusters with conflicting labels</h3>", rows_table(conflicts["clusters"], max_rows=20)]
    return "".join(parts)


def _bits(hash_size: Any) -> str:
    return str(hash_size * hash_size) if isinstance(hash_size, int) else "?"


def excluded(inp: Inputs, opts: Options) -> str:
    split = inp.json(inp.split_file)
    if split is None:
        return not_run("data split", inp.split_file, "Run `brainmri data split`.")
    items = split.get("excluded") or []
    if not items:
        return "<p>Nothing was excluded.</p>"
    kinds = Counter(_reason_kind(str(e.get("reason", ""))) for e in items if isinstance(e, Mapping))
    rows = [[esc(k), esc(n)] for k, n in kinds.most_common()]
    return (
        f"<p>{len(items)} files were removed before splitting; each row of <code>split.json → excluded</code> "
        "gives its reason.</p>"
        + table(["reason", "files"], rows)
        + "<h3>Examples</h3>"
        + rows_table(items, max_rows=25)
    )


def _reason_kind(reason: str) -> str:
    for sep in (":", " of "):
        if sep in reason:
            return reason.split(sep, 1)[0].strip()
    return reason.strip() or "(no reason given)"


def split_section(inp: Inputs, opts: Options) -> str:
    split = inp.json(inp.split_file)
    if split is None:
        return not_run("data split", inp.split_file, "Run `brainmri data split`.")
    facts = {"split file": str(inp.split_file), "seed": split.get("seed"), "classes": split.get("classes"),
             "sizes": {k: len(split.get(k) or []) for k in ("train", "val", "test")},
             "folds": len(split.get("folds") or []), "excluded": len(split.get("excluded") or []),
             "trained on this file": inp.split_sha_matches(), "params": split.get("params")}  # fmt: skip
    parts = [kv_table(facts)]
    card = inp.json(inp.data_card_file)
    if card is None:
        parts.append(not_run("per-class counts (data card)", inp.data_card_file))
        return "".join(parts)
    parts += ["<h3>Images per class and split</h3>", render_json(card.get("splits", {}))]
    folds = card.get("folds") or []
    rows = [{"fold": i, "part": part, **counts} for i, f in enumerate(folds) for part, counts in f.items()]
    if rows:
        parts += ["<h3>Folds (train + val only; test held out)</h3>", rows_table(rows, max_rows=60)]
    return "".join(parts)


def training(inp: Inputs, opts: Options) -> str:
    parts = [figure(inp.run_file("curves.png"), "training curves (loss, accuracy, macro F1 per epoch)", opts.max_width)]
    history = inp.json(inp.run_file("history.json"))
    if isinstance(history, list) and history:
        parts += ["<h3>History</h3>", rows_table(history, max_rows=80)]
    elif history is None:
        parts.append(not_run("training history", inp.run_file("history.json")))
    return "".join(parts)


def test_metrics(inp: Inputs, opts: Options) -> str:
    m = _metrics(inp)
    if m is None:
        return not_run("evaluation", inp.reports_dir / "metrics.json", "Run `brainmri evaluate RUN`.")
    boot = m.get("bootstrap") or {}
    note = boot.get("note") or (
        f"95% CIs: {boot.get('method', 'bootstrap')} bootstrap with {boot.get('resamples', '?')} resamples, "
        "Clopper–Pearson for proportions."
    )
    parts = [
        f"<p>{esc(m.get('split', '?'))} split (source {esc(m.get('source', '?'))}), n = {esc(m.get('n', '?'))}; "
        f"{esc(note)}</p>"
    ]
    multi = m.get("multiclass") or {}
    if multi:
        parts += ["<h3>Four classes</h3>", compare_table(multi)]
        per_class = (multi.get("calibrated") or next(iter(multi.values()))).get("per_class")
        if isinstance(per_class, Mapping):
            parts += ["<h3>Per class (one vs rest)</h3>", render_json(per_class)]
    binary = m.get("tumour_vs_no_tumour") or {}
    if binary:
        parts += ["<h3>Tumour vs no tumour</h3>", compare_table(binary)]
    report = inp.text(inp.reports_dir / "classification_report.txt")
    if report:
        parts += ["<h3>Classification report</h3>", pre(report)]
    return "".join(parts)


def compare_table(columns: Mapping[str, Any]) -> str:
    """``{column: {metric: value}}`` -> one row per scalar metric, one column per entry."""
    cols = [c for c, v in columns.items() if isinstance(v, Mapping)]
    metrics: list[str] = []
    for c in cols:
        metrics += [k for k, v in columns[c].items() if is_scalar(v) and k not in metrics]
    rows = [[esc(k), *(scalar_html(columns[c].get(k)) for c in cols)] for k in metrics]
    return table(["metric", *cols], rows)


def calibration(inp: Inputs, opts: Options) -> str:
    cal = inp.json(inp.calibration_file)
    m = _metrics(inp) or {}
    if cal is None and not m:
        return not_run("calibration", inp.calibration_file, "Run `brainmri evaluate RUN`.")
    parts = []
    if cal is not None:
        facts = {k: cal.get(k) for k in ("fitted_on", "n", "temperature", "threshold", "default_alpha")}
        parts += [kv_table(facts), "<h3>Fitted on the validation split</h3>", render_json(cal.get("details", {}))]
    multi = m.get("multiclass") or {}
    if multi:
        keys = ("nll", "brier", "ece", "ece_adaptive", "ece_classwise", "mce")
        sub = {c: {k: v.get(k) for k in keys if k in v} for c, v in multi.items() if isinstance(v, Mapping)}
        parts += [f"<h3>Test split, before and after (ECE with {esc(m.get('ece_bins', '?'))} bins)</h3>",
                  compare_table(sub)]  # fmt: skip
    parts.append(_reports_figure(inp, "reliability.png", "reliability diagrams before / after calibration", opts))
    parts.append(_reports_figure(inp, "confidence_hist.png", "confidence histograms", opts))
    return "".join(parts)


def conformal_records(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Mapping[str, Any]]]:
    """Every dict holding a ``coverage`` entry, with the keys that lead to it (method, alpha, ...)."""
    if not isinstance(value, Mapping):
        return []
    if "coverage" in value:
        return [(path, value)]
    out = []
    for k, v in value.items():
        out += conformal_records(v, (*path, str(k)))
    return out


def conformal_tables(value: Any) -> str:
    """Coverage and set size per setting (method / alpha / ...) and per class, for any nesting."""
    records = conformal_records(value)
    if not records:
        return render_json(value)
    overall, per_class = [], []
    for path, r in records:
        setting = " / ".join(path) or "(one setting)"
        row: dict[str, Any] = {"setting": setting}
        for k, v in r.items():
            if is_scalar(v):
                row[k] = v
            elif k == "set_size_counts" and isinstance(v, Mapping):
                row[k] = " ".join(f"{s}:{n}" for s, n in v.items())
        overall.append(row)
        for cls, pc in (r.get("per_class") or {}).items():
            if isinstance(pc, Mapping):
                per_class.append({"setting": setting, "class": cls, **{k: v for k, v in pc.items() if is_scalar(v)}})
    rest = {k: v for k, v in value.items() if not conformal_records(v)} if isinstance(value, Mapping) else {}
    parts = [render_json(rest)] if rest else []  # settings, choices, notes: everything but the records
    parts += ["<h3>Coverage and set size per setting</h3>", rows_table(overall, max_rows=120)]
    if per_class:
        parts += ["<h3>Per class</h3>", rows_table(per_class, max_rows=400)]
    return "".join(parts)


def conformal(inp: Inputs, opts: Options) -> str:
    m = _metrics(inp)
    parts = []
    if m is None or not m.get("conformal"):
        parts.append(not_run("conformal evaluation", inp.reports_dir / "metrics.json"))
    else:
        parts += ["<p>Sets fitted on the validation split, coverage measured on the test split "
                  "(Clopper–Pearson CIs). alpha is the allowed miss rate: target coverage = 1 − alpha.</p>",
                  conformal_tables(m["conformal"])]  # fmt: skip
    parts.append("<h3>Benchmark: conformal.json</h3>")
    parts.append(bench_block(inp, "conformal.json", opts, render=conformal_tables))
    return "".join(parts)


def confusion(inp: Inputs, opts: Options) -> str:
    parts = [_reports_figure(inp, "confusion_matrix.png", "confusion matrices (counts and row-normalised)", opts)]
    pairs = (_metrics(inp) or {}).get("confused_pairs")
    if pairs:
        parts += ["<h3>Most confused pairs</h3>", rows_table(pairs)]
    return "".join(parts)


def roc_pr(inp: Inputs, opts: Options) -> str:
    return _reports_figure(inp, "roc_pr.png", "ROC and precision-recall curves, one vs rest", opts) + _reports_figure(
        inp, "tumour_roc.png", "tumour vs no tumour ROC with the operating threshold", opts
    )


def gallery(inp: Inputs, opts: Options) -> str:
    parts = [_reports_figure(inp, "error_gallery.png", "Grad-CAM on the most confident errors", opts)]
    items = (_metrics(inp) or {}).get("error_gallery")
    if items:
        parts.append(rows_table(items, max_rows=48))
    return "".join(parts)


def steps_figure(inp: Inputs, opts: Options) -> str:
    for candidate in (inp.run_file(STEPS_FIGURE), inp.reports_dir / STEPS_FIGURE):
        if candidate.is_file():
            return figure(candidate, "preprocessing steps on one image", opts.max_width)
    if not opts.render_steps:
        return not_run("preprocessing figure", inp.run_file(STEPS_FIGURE))
    from brainmri.report.steps import render_steps

    return render_steps(inp, opts.max_width)


def preprocessing(inp: Inputs, opts: Options) -> str:
    state = inp.json(inp.preprocessor_file)
    parts = [steps_figure(inp, opts)]
    if state is None:
        parts.append(not_run("fitted preprocessor", inp.preprocessor_file))
    else:
        parts += ["<h3>Preprocessor settings (preprocessor.json)</h3>", render_json(state.get("config", state))]
    return "".join(parts)


def made_from(data: Any) -> str | None:
    """The run (or bundle) a benchmark result names, if any."""
    if not isinstance(data, Mapping):
        return None
    for key in ("run", "run_dir", "bundle", "run_name"):
        v = data.get(key)
        if isinstance(v, str) and v:
            return v
    return None


def bench_block(inp: Inputs, filename: str, opts: Options, render=render_json) -> str:
    path = inp.results_dir / filename
    data = inp.json(path)
    if data is None:
        return not_run(filename.removesuffix(".json"), path)
    source = made_from(data)
    if source is not None and Path(source).name != inp.name:
        return (
            f'<p class="missing"><strong>Not run for this run</strong>: {esc(path)} was made from '
            f"<code>{esc(source)}</code>, not <code>{esc(inp.name)}</code>; not shown.</p>"
        )
    parts = [f'<p class="src">From {esc(path)}.</p>']
    if source is None:
        parts.append(
            '<p class="note">This file names no run: it is a study of the recipe or of the data (its header '
            "says how it was made), not a measurement of this run.</p>"
        )
    if isinstance(data, Mapping) and isinstance(data.get("note"), str):
        parts.append(f'<p class="note">{esc(data["note"])}</p>')
    parts.append(render(data))
    stem = filename.removesuffix(".json")
    for png in sorted(inp.results_dir.glob(f"{stem}*.png")):
        parts.append(figure(png, f"{stem}: {png.stem}", opts.max_width))
    return "".join(parts)


def external(inp: Inputs, opts: Options) -> str:
    return bench_block(inp, "external.json", opts)


def robustness(inp: Inputs, opts: Options) -> str:
    """MRI-C of *this* run: the newest ``robustness*.json`` whose ``run_dir`` is this run's folder, else
    ``robustness.json`` (``bench/robustness.py``'s default output), which may name another run of that name."""
    own = []
    for path in sorted(inp.results_dir.glob("robustness*.json")):
        data = _peek_json(path)
        if isinstance(data, Mapping) and str(data.get("run_dir", "")) == str(inp.run_dir.resolve()):
            own.append((str(data.get("created", "")), path.name))
    return bench_block(inp, max(own)[1] if own else "robustness.json", opts)


def _peek_json(path: Path) -> Any | None:
    """``path`` parsed, or None; for choosing a file, so neither recorded as read nor as a problem."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


FURTHER = (
    ("kfold.json", "k-fold cross-validation"),
    ("ablation.json", "ablation"),
    ("slice_groups.json", "slice groups"),
    ("study_level.json", "study level (series → one answer)"),
    ("adabn.json", "test-time adaptation (AdaBN, TTA)"),
    ("ood_check_photos_ct.json", "out-of-domain gate (non-MRI images, external MRI)"),
    ("ood_lowlevel.json", "out-of-domain gate, score by score"),
)


def further(inp: Inputs, opts: Options) -> str:
    parts = []
    for filename, title in FURTHER:
        parts += [f"<h3>{esc(title)} <span class=\"src\">({esc(filename)})</span></h3>",
                  bench_block(inp, filename, opts)]  # fmt: skip
    kfold = inp.layout.kfold_dir(inp.name) / "kfold_summary.json"
    data = inp.json(kfold)
    if data is not None:
        parts += [f'<h3>k-fold runs of this recipe <span class="src">({esc(kfold)})</span></h3>', render_json(data)]
    return "".join(parts)


CARD_SKIP = ("ood", "ood_blocks", "metrics", "preprocessing", "files")  # large or shown in other sections


def model_card(inp: Inputs, opts: Options) -> str:
    path = inp.bundle_card_file
    if path is None:
        where = inp.layout.bundle_dir(inp.name)
        return not_run("export (no bundle, so no model card)", where / "card.json", "Run `brainmri export RUN`.")
    card = inp.json(path)
    if card is None:
        return not_run("model card", path)
    shown = {k: v for k, v in card.items() if k not in CARD_SKIP}
    if isinstance(shown.get("training"), Mapping):  # its config is the run's config.yaml, shown verbatim below
        shown["training"] = {k: v for k, v in shown["training"].items() if k != "config"}
    files = card.get("files")
    parts = [f'<p class="src">From {esc(path)}.</p>', render_json(shown)]
    if isinstance(files, Mapping):
        parts += ["<h3>Bundle files</h3>", render_json(files)]
    return "".join(parts)


def config_versions(inp: Inputs, opts: Options) -> str:
    from brainmri.report.versions import versions_table

    text = inp.text(inp.run_file("config.yaml"))
    parts = ["<h3>Resolved config of the run (config.yaml, verbatim)</h3>"]
    parts.append(pre(text) if text is not None else not_run("config", inp.run_file("config.yaml")))
    parts += ["<h3>Versions</h3>", versions_table(inp)]
    return "".join(parts)


def sources(inp: Inputs, opts: Options) -> str:
    read = list(dict.fromkeys(inp.read))
    parts = [
        "<p>Files this report read:</p>",
        "<ul>" + "".join(f"<li><code>{esc(p)}</code></li>" for p in read) + "</ul>",
    ]
    if inp.problems:
        parts.append(
            '<p class="missing">Problems:</p><ul>' + "".join(f"<li>{esc(p)}</li>" for p in inp.problems) + "</ul>"
        )
    return "".join(parts)


SECTIONS = (
    ("overview", "Run overview", overview),
    ("data", "Data card and audit", data_audit),
    ("excluded", "What was excluded and why", excluded),
    ("split", "The split", split_section),
    ("preprocessing", "Preprocessing", preprocessing),
    ("training", "Training curves", training),
    ("metrics", "Test metrics with 95% confidence intervals", test_metrics),
    ("calibration", "Calibration before and after", calibration),
    ("conformal", "Conformal prediction sets", conformal),
    ("confusion", "Confusion matrices", confusion),
    ("roc", "ROC and precision-recall", roc_pr),
    ("gallery", "Grad-CAM error gallery", gallery),
    ("external", "External validation", external),
    ("robustness", "Robustness to corruptions", robustness),
    ("further", "Further benchmark results", further),
    ("card", "Model card", model_card),
    ("config", "Exact config and versions", config_versions),
    ("sources", "Files read", sources),
)

__all__ = ["SECTIONS", "Options"]
