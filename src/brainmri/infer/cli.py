"""``brainmri predict BUNDLE INPUT...``: files, folders (recursive), DICOM, NIfTI -> JSON or CSV.

Each bad input prints one ``error: path: reason`` line on stderr; the others still complete. Exit
status 1 if any input failed, 0 otherwise (2 for a usage error such as a modified bundle).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Any

from brainmri.cliargs import add_config_flag
from brainmri.config import Config


def _csv(classes: list[str], rows: list[dict[str, Any]], adaptation: dict[str, Any] | None = None) -> str:
    columns = ["source", "label", *[f"p_{c}" for c in classes], "tumor_probability", "is_tumor", "threshold"]
    columns += ["conformal_set", "conformal_alpha", "entropy", "review", "review_reasons", "time_ms"]
    columns += [f"mc_mean_{c}" for c in classes] + [f"mc_std_{c}" for c in classes] + ["gradcam", "error"]
    columns += ["in_domain", "ood_score", "ood_block_score", "ood_reasons"]  # out-of-domain gate (docs/inference.md)
    columns += ["adapt_bn_images"] if adaptation else []  # AdaBN applied: on how many target images
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        if "error" in r:
            writer.writerow({"source": r["source"], "error": r["error"]})
            continue
        flat = {k: v for k, v in r.items() if k in columns}
        if adaptation:
            flat["adapt_bn_images"] = adaptation["images"]
        flat.update({f"p_{c}": r["probabilities"][c] for c in classes})
        if r["conformal_set"] is not None:
            flat["conformal_set"] = "|".join(r["conformal_set"])
        flat["review_reasons"] = "; ".join(r["review_reasons"])
        flat["ood_reasons"] = "; ".join(r.get("ood_reasons") or [])
        if r["mc_dropout"]:
            flat.update({f"mc_mean_{c}": r["mc_dropout"]["mean"][c] for c in classes})
            flat.update({f"mc_std_{c}": r["mc_dropout"]["std"][c] for c in classes})
        writer.writerow(flat)
    return buf.getvalue()


def _adapted(predictor, adapt_bn: str, items: list):
    """``--adapt-bn``: the predictor adapted on the inputs (``inputs``) or on the target folder/file given."""
    from brainmri.infer.inputs import expand_inputs

    if adapt_bn == "inputs":
        return predictor.adapt(items, source="the predicted inputs (transductive)")
    return predictor.adapt(expand_inputs([adapt_bn]), source=adapt_bn)


def _predict_studies(cfg: Config, args: argparse.Namespace) -> int:
    """``--study``: each input is a DICOM series folder (several series: each predicted) or a NIfTI volume."""
    from brainmri.errors import BrainMRIError
    from brainmri.infer.predictor import Predictor
    from brainmri.infer.study import predict_studies
    from brainmri.utils import atomic_write_text

    if cfg.predict.format != "json":
        print("error: --study writes JSON (one entry per series, every slice inside)", file=sys.stderr)
        return 2
    axis = int(args.axis) if args.axis is not None and args.axis.isdigit() else args.axis
    options = {"method": args.aggregate, "top_k": args.top_k, "montage_dir": args.montage}
    studies, errors = [], []
    with Predictor.from_bundle(args.bundle, config=cfg.predict) as predictor:
        if cfg.predict.adapt_bn:  # a study's own slices are one patient's: adapt on a given folder only
            if cfg.predict.adapt_bn == "inputs":
                print("error: --study needs --adapt-bn FOLDER (a folder of the target site's images)", file=sys.stderr)
                return 2
            try:
                predictor = _adapted(predictor, cfg.predict.adapt_bn, [])
            except BrainMRIError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        for source in args.inputs:
            try:
                found, skipped = predict_studies(predictor, source, axis=axis, volume=args.volume, **options)
            except BrainMRIError as exc:
                print(f"error: {exc}", file=sys.stderr)
                errors.append({"source": source, "error": str(exc)})
                continue
            studies += [s.to_dict() for s in found]
            errors += [{"source": line.split(": ", 1)[0], "error": line, "kind": "skipped"} for line in skipped]
        settings = predictor.settings() | {"study": options}
    text = json.dumps({"settings": settings, "studies": studies, "errors": errors}, indent=2) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
        print(f"{len(studies)} series predicted, {len(errors)} errors -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 1 if any("kind" not in e for e in errors) else 0


def _predict(cfg: Config, args: argparse.Namespace) -> int:
    from brainmri.errors import BrainMRIError
    from brainmri.infer.inputs import Failure, expand_inputs_reporting
    from brainmri.infer.predictor import Predictor
    from brainmri.utils import atomic_write_text, progress

    if args.study:
        return _predict_studies(cfg, args)
    pc = cfg.predict
    rows: list[dict[str, Any]] = []
    failed = 0
    with Predictor.from_bundle(args.bundle, config=pc) as predictor:
        items, left_out = expand_inputs_reporting(args.inputs)
        _say_left_out(left_out)
        if not items:
            print(f"error: no image files found in {' '.join(args.inputs)}", file=sys.stderr)
            return 1
        if pc.adapt_bn:
            try:
                predictor = _adapted(predictor, pc.adapt_bn, items)
            except BrainMRIError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        for result in progress(predictor.run(items), desc="predict", total=len(items)):
            if isinstance(result, Failure):
                failed += 1
                print(f"error: {result}", file=sys.stderr)
            rows.append(result.to_dict())
        settings = predictor.settings()
    if pc.format == "csv":
        text = _csv(predictor.classes, rows, predictor.adaptation)
    else:
        doc = {
            "settings": settings,
            "predictions": [r for r in rows if "error" not in r],
            "errors": [r for r in rows if "error" in r],
            "left_out": left_out,
        }
        text = json.dumps(doc, indent=2) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    where = f" -> {args.out}" if args.out else ""
    print(f"{len(rows) - failed} predicted, {failed} failed{_flag_summary(rows)}{where}", file=sys.stderr)
    return 1 if failed else 0


def _flag_summary(rows: list[dict[str, Any]]) -> str:
    """``; of them K flagged out-of-domain (x%), R sent to review (y%)`` for the summary line: a site trying the
    bundle on its own scans learns at once how many of them the model regards as unlike its training images,
    without opening the output. Empty when nothing was predicted."""
    done = [r for r in rows if "error" not in r]
    if not done:
        return ""
    flagged = sum(r.get("in_domain") is False for r in done)
    review = sum(bool(r.get("review")) for r in done)
    gate = (
        "no out-of-domain score in this bundle"
        if all(r.get("in_domain") is None for r in done)
        else f"{flagged} flagged out-of-domain ({flagged / len(done):.0%})"
    )
    return f"; of them {gate}, {review} sent to review ({review / len(done):.0%})"


def _say_left_out(paths: list[str], show: int = 5) -> None:
    """One note on stderr naming the files of the input folders that are not images (none: nothing)."""
    if paths:
        more = f" and {len(paths) - show} more" if len(paths) > show else ""
        print(f"note: left out {len(paths)} file(s) of the input folders that are not images (by extension or "
              f"content): {', '.join(paths[:show])}{more}", file=sys.stderr)  # fmt: skip


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``brainmri predict``."""
    p = sub.add_parser(
        "predict",
        parents=[common],
        help="classify images (files, folders, DICOM, NIfTI) with a bundle",
        description="Classify image files and folders (searched recursively; JPEG, PNG, DICOM, NIfTI) with a "
        "verified bundle and print JSON or CSV. Each bad input prints one 'error: PATH: reason' line on stderr "
        "and the others still complete. Exit status 1 if any input failed, 0 otherwise, 2 for a usage error "
        "such as a modified bundle.",
    )
    p.add_argument("bundle", help="bundle folder (written by brainmri export)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    p.add_argument("--out", default=None, help="write results to this file (default: stdout)")
    add_config_flag(p, "--format", "predict.format", choices=["json", "csv"], help="output format")
    add_config_flag(p, "--threshold", "predict.threshold", type=float, metavar="T", help="tumour-probability threshold")
    add_config_flag(p, "--tta", "predict.tta", action="store_true", help="flip x shift test-time augmentation")
    add_config_flag(p, "--mc-dropout", "predict.mc_dropout", type=int, metavar="N", help="MC-dropout passes")
    add_config_flag(p, "--gradcam", "predict.gradcam_dir", metavar="DIR", help="write Grad-CAM overlay PNGs here")
    add_config_flag(p, "--adapt-bn", "predict.adapt_bn", nargs="?", const="inputs", metavar="FOLDER",
                    help="AdaBN: re-estimate BatchNorm statistics on the target site's images before predicting: "
                    "on the inputs themselves (no FOLDER; transductive) or on FOLDER")  # fmt: skip
    add_config_flag(p, "--runtime", "predict.runtime", choices=["onnx", "torch"], help="inference runtime")
    add_config_flag(p, "--batch-size", "predict.batch_size", type=int, metavar="B", help="images per model call")
    add_config_flag(p, "--workers", "predict.workers", type=int, metavar="W", help="decode/preprocess threads")
    g = p.add_argument_group("studies (--study)")
    g.add_argument("--study", action="store_true", help="each INPUT is a DICOM series folder (several series: "
                   "each predicted) or a NIfTI volume: predict every slice and aggregate per series")  # fmt: skip
    g.add_argument("--axis", default=None, help="NIfTI slice axis: axial, coronal, sagittal or 0-2 "
                   "(default: the acquisition axis)")  # fmt: skip
    g.add_argument("--volume", type=int, default=None, metavar="K", help="volume K of a 4-D NIfTI")
    g.add_argument("--aggregate", default="topk_mean", choices=["topk_mean", "max", "noisy_or"],
                   help="study tumour probability from the slices' (default topk_mean)")  # fmt: skip
    g.add_argument("--top-k", type=int, default=3, metavar="K", help="driving slices (and k of topk_mean)")
    g.add_argument("--montage", default=None, metavar="DIR", help="write a Grad-CAM montage of the driving slices")
    p.set_defaults(handler=_predict)
