"""``brainmri report RUN``: write one self-contained HTML report of a run."""

from __future__ import annotations

import argparse

from brainmri.cliargs import add_config_flag
from brainmri.config import Config
from brainmri.layout import Layout


def _report(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.report import Options, write_report

    opts = Options(max_width=args.image_width, render_steps=not args.no_render)
    out = write_report(args.run, Layout.from_config(cfg.paths), args.out, args.results, args.bundle, opts)
    print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``report`` command to the top-level parser."""
    p = sub.add_parser(
        "report",
        parents=[common],
        help="one self-contained HTML report of a run (data audit, split, curves, metrics with CIs, calibration, "
        "conformal sets, figures, external/robustness results, model card, config, versions)",
    )
    p.add_argument("run", metavar="RUN", help="run folder (runs/<name>)")
    p.add_argument("--out", default=None, metavar="FILE", help="HTML file to write (default: RUN/report.html)")
    add_config_flag(p, "--work-dir", "paths.work_dir", help="work folder with data/audit and data/split.json")
    add_config_flag(p, "--bundles-dir", "paths.bundles_dir", help="where the run's bundle (model card) is looked for")
    p.add_argument("--results", default=None, metavar="DIR", help="benchmark results folder (default: bench/results)")
    p.add_argument("--bundle", default=None, metavar="DIR", help="bundle whose card.json is the model card "
                   "(default: <bundles_dir>/<run name> when it exists)")  # fmt: skip
    p.add_argument("--image-width", type=int, default=1400, metavar="PX",
                   help="downscale inlined figures wider than this (0 keeps them as they are)")  # fmt: skip
    p.add_argument("--no-render", action="store_true",
                   help="do not render the preprocessing figure when the run has none (no image is read)")  # fmt: skip
    p.set_defaults(handler=_report)
