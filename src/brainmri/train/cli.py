"""``brainmri train``: two-stage transfer learning into runs/<name>/."""

from __future__ import annotations

import argparse

from brainmri.cliargs import add_config_flag
from brainmri.config import Config
from brainmri.layout import Layout


def _train(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.runs import Run
    from brainmri.train.trainer import train_run

    split = args.split or str(Layout.from_config(cfg.paths).split_file)
    run_dir = train_run(cfg, split, fold=args.fold, resume=args.resume, overwrite=args.overwrite)
    run = Run.load(run_dir)
    info = run.info
    print(
        f"run {run_dir}: best {info['monitor']} = {info['best_score']:.4f} at {info['best_epoch']} "
        f"({info['n_train']} train / {info['n_val']} val images, {info['wall_seconds']:.0f} s)"
    )
    return 0


def _ensemble(cfg: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from brainmri.train.ensemble import combine_runs

    first = Path(args.runs[0])
    out = Path(args.out) if args.out else first.parent / f"{first.name}-ens{len(args.runs)}"
    run = combine_runs(args.runs, out, overwrite=args.overwrite)
    names = ", ".join(m["name"] for m in run.info["ensemble_members"])
    print(
        f"ensemble run {run.dir}: {len(args.runs)} members ({names}); "
        f"next: brainmri evaluate {run.dir} (fits temperature, threshold and out-of-domain score on validation)"
    )
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", parents=[common], help="train a classifier (frozen stage, then full fine-tuning)")
    p.add_argument("--split", default=None, help="split file (default: <work_dir>/data/split.json)")
    p.add_argument("--fold", type=int, default=None, help="train on fold K of the split file instead of train/val")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run of the same name")
    add_config_flag(p, "--name", "train.run_name", help="run name (folder under runs_dir)")
    add_config_flag(p, "--backbone", "model.backbone", help="timm model name")
    add_config_flag(p, "--weights", "model.weights", help="imagenet | offline | none | PATH")
    add_config_flag(p, "--epochs", "train.stage2.epochs", type=int, help="stage-2 (full fine-tuning) epochs")
    add_config_flag(p, "--frozen-epochs", "train.stage1.epochs", type=int, help="stage-1 (frozen backbone) epochs")
    add_config_flag(p, "--batch-size", "train.batch_size", type=int, help="batch size")
    add_config_flag(p, "--lr", "train.stage2.lr", type=float, help="stage-2 learning rate")
    add_config_flag(p, "--devices", "train.devices", help="devices: auto, N, or a list")
    add_config_flag(p, "--precision", "train.precision", help="auto | 32-true | bf16-mixed | 16-mixed")
    add_config_flag(p, "--seed", "train.seed", type=int, help="random seed")
    p.set_defaults(handler=_train)

    e = sub.add_parser(
        "ensemble",
        parents=[common],
        help="combine finished runs (same split, preprocessing and architecture) into one run that averages "
        "their probabilities",
    )
    e.add_argument("runs", nargs="+", help="run folders, e.g. runs/cpu-fast runs/cpu-fast-seed7")
    e.add_argument("--out", default=None, help="the new run folder (default: <first run>-ens<N> beside it)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing run folder at --out")
    e.set_defaults(handler=_ensemble)
