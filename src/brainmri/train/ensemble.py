"""``brainmri ensemble``: combine finished runs into one run whose model averages their probabilities.

The members must be interchangeable apart from their weights: the same classes, split file (checked by
hash), fitted preprocessor and model architecture. Anything else (another split, another Nyúl fit,
another input size) would make the average mix models that saw different inputs, or let one member's
validation images be another's training images, so it is refused with the difference named.

The result is an ordinary run folder (``model.ensemble`` = number of members, weights ``members.<k>.*``):
``brainmri evaluate`` fits its temperature, threshold and out-of-domain score on validation as for any
run, and ``brainmri export`` seals it into one bundle (one ONNX graph holding every member).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from brainmri.errors import ConfigError, DataError
from brainmri.runs import PREPROCESSOR_FILE, RUN_JSON, Run, write_run
from brainmri.utils import replace_dir


def check_members(runs: Sequence[Run]) -> None:
    """Raise :class:`ConfigError` naming the first difference that makes ``runs`` unfit to average."""
    if len(runs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs, got {len(runs)}")
    first = runs[0]
    reference = _architecture(first)
    for run in runs:
        if run.cfg.model.ensemble > 1:
            raise ConfigError(f"{run.dir}: is itself an ensemble; list its member runs instead")
    for run in runs[1:]:
        checks = {
            "classes": (first.classes, run.classes),
            "split file (sha256)": (first.info.get("split_sha256"), run.info.get("split_sha256")),
            "fitted preprocessor": (_preprocessor_text(first), _preprocessor_text(run)),
            "model architecture": (reference, _architecture(run)),
        }
        for what, (a, b) in checks.items():
            if a != b:
                raise ConfigError(f"{run.dir}: {what} differs from {first.dir}; ensemble members must share it")


def _architecture(run: Run) -> dict:
    """Model settings that fix the network's shape and input handling (not where its weights came from)."""
    return run.cfg.model.model_dump(include={"backbone", "gray_mode", "drop_rate", "drop_path_rate"}) | {
        "size": run.cfg.preprocess.size
    }


def _preprocessor_text(run: Run) -> str:
    path = run.dir / PREPROCESSOR_FILE
    if not path.is_file():
        raise DataError(f"{run.dir}: no {PREPROCESSOR_FILE}; did training finish?")
    return path.read_text()


def combine_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, overwrite: bool = False) -> Run:
    """Write the ensemble of ``run_dirs`` to ``out_dir`` (atomically) and return it."""
    from brainmri.models.ensemble import EnsembleClassifier

    runs = [Run.load(d) for d in run_dirs]
    check_members(runs)
    out = Path(out_dir)
    if (out / RUN_JSON).is_file() and not overwrite:
        raise DataError(f"{out} already holds a run; pass --overwrite or another --name")
    if out.exists() and not (out / RUN_JSON).is_file():
        raise DataError(f"{out}: exists and is not a run folder; choose another --name")
    first = runs[0]
    model = EnsembleClassifier([run.build_model() for run in runs])
    cfg = first.cfg.model_copy(
        update={
            "model": first.cfg.model.model_copy(update={"ensemble": len(runs)}),
            "train": first.cfg.train.model_copy(update={"run_name": out.name}),
        }
    )
    members = [
        {
            "name": run.name,
            "dir": str(run.dir.resolve()),
            "seed": run.cfg.train.seed,
            "best_score": run.info.get("best_score"),
        }
        for run in runs
    ]
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_run(
            tmp,
            cfg,
            model,
            first.preprocessor(),
            classes=first.classes,
            split_file=first.info["split_file"],
            preprocess_dir=first.info["preprocess_dir"],
            extra={
                "name": out.name,
                "ensemble_members": members,
                "monitor": first.info.get("monitor"),
                "completed": True,
            },
        )
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # left only when writing failed
    return Run.load(out)
