"""Commands of the preprocess stage: ``brainmri preprocess`` (build the cache) and ``brainmri preprocess show``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainmri.cliargs import add_config_flag
from brainmri.config import Config
from brainmri.layout import Layout


def _layout(cfg: Config) -> Layout:
    return Layout.from_config(cfg.paths)


def _run(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.config import save_config
    from brainmri.preprocess.cache import build_cache, preprocess_dir_for

    manifest = Path(args.manifest) if args.manifest else _layout(cfg).manifest_file
    split = Path(args.split) if args.split else _layout(cfg).split_file
    out_root = Path(args.out) if args.out else _layout(cfg).preprocess_root
    save_config(cfg, preprocess_dir_for(cfg.preprocess, out_root) / "config.yaml")
    report = build_cache(cfg.preprocess, cfg.data, manifest, split, out_root)
    print(
        f"preprocess (preset {cfg.preprocess.preset}): {report.total} images: {report.skipped} already cached, "
        f"{report.processed} processed, {len(report.failed)} failed"
        + (f"; Nyúl fitted on {report.fitted_on} training images" if report.fitted_on else "")
    )
    print(f"cache: {report.dir} (state.json, index.csv, images/)")
    ok = report.total - len(report.failed)
    return 0 if ok > 0 or report.total == 0 else 1


def _show(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.errors import BrainMRIError
    from brainmri.io.reader import read_image
    from brainmri.preprocess.cache import STATE_FILE, preprocess_dir_for
    from brainmri.preprocess.preprocessor import Preprocessor
    from brainmri.preprocess.show import save_steps_figure

    image = Path(args.image)
    loaded = read_image(image, max_pixels=cfg.data.max_pixels, max_bytes=cfg.data.max_file_bytes)
    note = ""
    if args.state:
        pre = Preprocessor.load(args.state)
        note = f"state {args.state}"
    else:
        pre = Preprocessor.from_config(cfg.preprocess)
        state = preprocess_dir_for(cfg.preprocess, _layout(cfg).preprocess_root) / STATE_FILE
        if pre.needs_fit and state.is_file():
            pre = Preprocessor.load(state)
            note = f"Nyúl from {state}"
        elif pre.needs_fit:
            pre.fit([loaded.array])
            note = "Nyúl fitted on this image only (no cache state found)"
            print(f"note: {note}; run `brainmri preprocess` first for the training-split landmarks", file=sys.stderr)
    out = Path(args.show_out) if args.show_out else Path(f"{image.stem}_preprocess.png")
    if out.suffix.lower() != ".png":
        raise BrainMRIError(f"{out}: the figure is written as PNG; use a .png file name")
    title = f"{image.name} {loaded.width}x{loaded.height} {loaded.meta.get('mode', '')} | preset {pre.preset}"
    save_steps_figure(pre, loaded.array, out, title=f"{title} | {note}" if note else title)
    print(f"wrote {out}")
    return 0


def _suppressed_common() -> argparse.ArgumentParser:
    """``--config`` / ``--set`` for the ``show`` sub-action that do not reset values given before ``show``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", "-c", default=argparse.SUPPRESS, help="YAML config file")
    p.add_argument(
        "--set", dest="overrides", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )  # fmt: skip
    return p


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``brainmri preprocess [show IMAGE]``."""
    p = sub.add_parser(
        "preprocess",
        parents=[common],
        help="fit the preprocessing on the training split and cache every image of the split",
        description="Fit the preprocessing (Nyúl landmarks) on split['train'] and write every train/val/test "
        "image, preprocessed, into <out>/<config_hash>/ (state.json, index.csv, images/<md5>.png). "
        "Re-runs skip finished images. `brainmri preprocess show IMAGE` draws every step of one image.",
    )
    p.add_argument("--manifest", default=None, help="manifest CSV (default: <work_dir>/data/manifest.csv)")
    p.add_argument("--split", default=None, help="split JSON (default: <work_dir>/data/split.json)")
    p.add_argument("--out", default=None, help="cache root (default: <work_dir>/preprocess)")
    add_config_flag(
        p, "--preset", "preprocess.preset", metavar="NAME", help="raw|crop|crop+n4|crop+n4+nyul|full|custom"
    )
    add_config_flag(p, "--workers", "preprocess.workers", type=int, metavar="N", help="worker processes")
    p.set_defaults(handler=_run)

    psub = p.add_subparsers(dest="preprocess_command", metavar="[show]", help="optional sub-action")
    show = psub.add_parser(
        "show",
        parents=[_suppressed_common()],
        help="figure of one image after every step, with the bias field and the brain mask",
    )
    show.add_argument("image", help="image file (JPEG, PNG, DICOM, NIfTI ...)")
    show.add_argument(
        "--out",
        dest="show_out",
        default=None,
        metavar="FILE.png",
        help="PNG to write (default: <image>_preprocess.png)",
    )
    show.add_argument(
        "--state", default=None, metavar="JSON", help="fitted preprocessor to use (e.g. runs/<name>/preprocessor.json)"
    )
    add_config_flag(
        show, "--preset", "preprocess.preset", metavar="NAME", default=argparse.SUPPRESS, help="preset to draw"
    )
    show.set_defaults(handler=_show)
