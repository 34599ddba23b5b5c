"""``brainmri validate RUN DATA...`` and ``brainmri adapt RUN --external DATA...`` (docs/external.md).

Registered by ``brainmri.cli`` (``STAGE_CLI_MODULES``); every flag is a shortcut for a key of the
``external`` or ``adapt`` config section.
"""

from __future__ import annotations

import argparse
import json

from brainmri.cliargs import add_config_flag
from brainmri.config import Config


def _validate(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.evaluate.external import RESULT_FILE, summary_lines, validate

    out = validate(args.run, list(args.data), cfg)
    result = json.loads((out / RESULT_FILE).read_text())
    print("\n".join(summary_lines(result)))
    print(f"reports: {out}")
    return 0


def _adapt(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.runs import Run
    from brainmri.train.adapt import adapt_run

    result = adapt_run(args.run, list(args.external), cfg, out_dir=args.out)
    if isinstance(result, Run):
        info = result.info
        print(f"adapted run: {result.dir} (from {info['adapted_from']}, best epoch {info['adapt']['best_epoch']})")
        target, split_file = result.dir, info["external"]["split_file"]
    else:
        from brainmri.bundle import Bundle

        adaptation = Bundle.load(result).card["adaptation"]
        print(f"adapted bundle: {result} (site head on bundle {adaptation['source_bundle']})")
        target, split_file = result, adaptation["external"]["split_file"]
    print(f"  next: brainmri validate {target} {' '.join(args.external)} --split-file {split_file}")
    return 0


def _shared_flags(p: argparse.ArgumentParser) -> None:
    add_config_flag(p, "--patients", "external.patients", help="CSV file,patient with patient ids")
    add_config_flag(p, "--split-file", "external.split_file", help="reuse this external split file")
    add_config_flag(
        p,
        "--calibration-fraction",
        "external.calibration_fraction",
        type=float,
        help="share of the set (whole patients) in the calibration part",
    )
    add_config_flag(p, "--seed", "external.seed", type=int, help="seed of the split and the bootstrap")
    add_config_flag(
        p,
        "--skip-unreadable",
        "external.skip_unreadable",
        action="store_true",
        help="leave unreadable files out instead of stopping",
    )


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``validate`` and ``adapt`` to the top-level parser."""
    v = sub.add_parser(
        "validate",
        parents=[common],
        help="external validation: overlap removal, calibration/evaluation split, clinical thresholds",
    )
    v.add_argument("run", metavar="RUN", help="run folder (runs/<name>) or bundle folder (bundles/<name>)")
    v.add_argument("data", metavar="DATA", nargs="+", help="image folder(s) or CSV file,label[,patient]")
    add_config_flag(
        v,
        "--out",
        "external.out_dir",
        help="output folder (default RUN/reports/external/<set>; for a bundle <work_dir>/validation/<bundle>/<set>)",
    )
    add_config_flag(
        v,
        "--target-sensitivity",
        "external.target_sensitivity",
        type=float,
        help="threshold (a): sensitivity to reach on the calibration part",
    )
    add_config_flag(
        v,
        "--cost-ratio",
        "external.cost_ratio",
        type=float,
        help="threshold (c): cost of a false negative in false positives",
    )
    add_config_flag(
        v,
        "--refit-temperature",
        "external.refit_temperature",
        action="store_true",
        help="also re-fit the temperature on the calibration part",
    )
    add_config_flag(v, "--bootstrap", "external.bootstrap", type=int, help="bootstrap resamples (patients)")
    _shared_flags(v)
    v.set_defaults(handler=_validate)
    _register_adapt(sub, common)


def _register_adapt(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    a = sub.add_parser(
        "adapt",
        parents=[common],
        help="adapt a run (fine-tune) or a bundle (site head) to the calibration part of an external set",
    )
    a.add_argument("run", metavar="RUN", help="run folder (runs/<name>) or bundle folder (bundles/<name>)")
    a.add_argument("--external", nargs="+", required=True, metavar="DATA", help="external image folder(s) or CSV")
    a.add_argument(
        "--out", default=None, help="new run or bundle folder (default <runs_dir|bundles_dir>/<name>-adapted-<set>)"
    )
    add_config_flag(a, "--name", "adapt.run_name", help="name of the new run or bundle")
    add_config_flag(
        a, "--method", "adapt.method", choices=["auto", "finetune", "head"], help="fine-tune or site head (auto)"
    )
    add_config_flag(a, "--epochs", "adapt.epochs", type=int, help="maximum epochs")
    add_config_flag(a, "--lr", "adapt.lr", type=float, help="learning rate")
    add_config_flag(a, "--w-ext", "adapt.w_ext", type=float, help="weight of the external BCE term")
    add_config_flag(a, "--w-src", "adapt.w_src", type=float, help="weight of the replayed 4-class CE term")
    add_config_flag(a, "--w-kd", "adapt.w_kd", type=float, help="weight of distillation to the original model")
    add_config_flag(a, "--batchnorm", "adapt.batchnorm", choices=["freeze", "update"], help="BatchNorm statistics")
    _shared_flags(a)
    a.set_defaults(handler=_adapt)
