"""``brainmri evaluate RUN`` and ``brainmri kfold``."""

from __future__ import annotations

import argparse
import json

from brainmri.cliargs import add_config_flag
from brainmri.config import Config
from brainmri.layout import Layout


def _fmt(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    if e.get("ci_low") is None:
        return f"{e['value']:.4f}"
    return f"{e['value']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}]"


def _evaluate(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.evaluate.evaluation import evaluate_run

    out = evaluate_run(args.run, cfg)
    s = json.loads((out / "summary.json").read_text())
    print(f"reports: {out}")
    if s.get("note"):
        print(f"NOTE: {s['note']}")
    lines = [("temperature", f"{s['temperature']:.3f}")]
    for key in ("accuracy", "f1_macro", "auc_macro_ovr", "ece_before", "ece_after", "tumour_sensitivity",
                "tumour_specificity"):  # fmt: skip
        if key in s:
            lines.append((key, _fmt(s[key])))
    if "conformal" in s:
        c = s["conformal"]
        lines.append((f"coverage@{c['target_coverage']:.2f} ({c['method']})", _fmt(c["coverage"])))
        lines.append(("mean set size", _fmt(c["mean_set_size"])))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"  {k:<{width}}  {v}")
    return 0


def _kfold(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.evaluate.kfold import run_kfold

    split = args.split or str(Layout.from_config(cfg.paths).split_file)
    out = run_kfold(cfg, split, reuse=args.reuse, overwrite=args.overwrite)
    print(f"k-fold summary: {out / 'kfold_summary.md'}")
    print((out / "kfold_summary.md").read_text())
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add this stage's commands to the top-level parser."""
    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="fit calibration on val, evaluate a split: metrics with CIs, conformal sets, figures, Grad-CAM gallery",
    )
    p.add_argument("run", metavar="RUN", help="run folder (runs/<name>)")
    add_config_flag(p, "--split", "evaluate.split", help="test | val | PATH to a manifest CSV of an external set")
    add_config_flag(p, "--bootstrap", "evaluate.bootstrap", type=int, help="bootstrap resamples for the 95%% CIs")
    add_config_flag(p, "--gradcam", "evaluate.gradcam_method", help="gradcam | gradcam++")
    p.set_defaults(handler=_evaluate)

    k = sub.add_parser("kfold", parents=[common], help="train and evaluate every fold; mean ± sd and 95%% CI")
    k.add_argument("--split", default=None, help="split file (default: <work_dir>/data/split.json)")
    add_config_flag(k, "--folds", "split.folds", type=int, help="number of folds (must match the split file)")
    add_config_flag(k, "--name", "train.run_name", help="results go to runs/<name>-kfold/")
    k.add_argument("--reuse", action="store_true", help="evaluate finished fold runs instead of retraining them")
    k.add_argument("--overwrite", action="store_true", help="retrain fold runs that already exist")
    k.set_defaults(handler=_kfold)
