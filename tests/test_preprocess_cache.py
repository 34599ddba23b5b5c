"""The preprocessing cache and the ``brainmri preprocess`` command (manifest + split written by the test)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainmri.cli import main
from brainmri.config import Config, load_config
from brainmri.data.phantoms import make_phantom
from brainmri.errors import DataError
from brainmri.io.reader import read_image
from brainmri.layout import Layout
from brainmri.preprocess import PreprocessedCache, Preprocessor, preprocess_dir_for
from brainmri.preprocess.cache import build_cache

LABELS = ("glioma", "meningioma", "no_tumor", "pituitary")
COLUMNS = ("id", "path", "label", "source", "source_split", "md5", "phash", "width", "height", "mode", "format",
           "readable", "error")  # fmt: skip


def _write_dataset(root: Path, bad_images) -> tuple[Path, Path, dict]:
    """12 phantom PNGs (+ an exact duplicate) and two broken files; manifest.csv and split.json as documented."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(12):
        label = LABELS[i % 4]
        ph = make_phantom(label, size=(140 + 4 * i, 150), seed=i, bias_strength=0.3)
        path = root / f"{label}_{i:02d}.png"
        Image.fromarray((ph.image * 255).round().astype(np.uint8)).save(path)
        rows.append((f"ph/{path.name}", path, label))
    dup = root / "copy_of_00.png"
    dup.write_bytes((root / "glioma_00.png").read_bytes())
    rows.append(("ph/copy_of_00.png", dup, "glioma"))
    bad = bad_images(root / "bad")
    rows.append(("ph/bad/truncated.jpg", bad["truncated"], "glioma"))
    rows.append(("ph/bad/text.jpg", bad["unreadable"], "meningioma"))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for id_, path, label in rows:
            md5 = hashlib.md5(path.read_bytes()).hexdigest()
            w.writerow([id_, str(path), label, "ph", "", md5, "", "", "", "", "", "true", ""])
    ids = [r[0] for r in rows]
    split = {
        "version": 1, "manifest": str(manifest), "manifest_sha256": "", "seed": 0, "classes": list(LABELS),
        "train": [*ids[:8], "ph/bad/truncated.jpg"], "val": [*ids[8:10], "ph/copy_of_00.png"],
        "test": [*ids[10:12], "ph/bad/text.jpg"], "excluded": [],
    }  # fmt: skip
    split_path = root / "split.json"
    return manifest, _write_split(split_path, split), split


def _write_split(path: Path, split: dict) -> Path:
    """Write ``split`` with two folds that partition its train + val (as the split schema requires)."""
    trainval = split["train"] + split["val"]
    split = dict(
        split, folds=[{"train": trainval[1:], "val": trainval[:1]}, {"train": trainval[:1], "val": trainval[1:]}]
    )
    path.write_text(json.dumps(split), encoding="utf-8")
    return path


def _cfg(tmp_path: Path, **pre) -> Config:
    return load_config(
        None,
        [f"paths.work_dir={tmp_path / 'work'}", "preprocess.size=64", *(f"preprocess.{k}={v}" for k, v in pre.items())],
    )


def _cache_dir(cfg: Config) -> Path:
    return preprocess_dir_for(cfg.preprocess, Layout.from_config(cfg.paths).preprocess_root)


def _build(cfg: Config, manifest: Path, split_path: Path, out_root: Path | None = None, **kw):
    """build_cache with the sections of ``cfg`` it takes; the cache root defaults to the layout's."""
    root = out_root if out_root is not None else Layout.from_config(cfg.paths).preprocess_root
    return build_cache(cfg.preprocess, cfg.data, manifest, split_path, root, **kw)


def test_build_cache_fits_on_train_lists_failures_and_matches_inference(tmp_path, bad_images):
    manifest, split_path, _split = _write_dataset(tmp_path / "data", bad_images)
    cfg = _cfg(tmp_path)
    messages: list[str] = []
    report = _build(cfg, manifest, split_path, workers=1, log=messages.append)
    cache = PreprocessedCache(report.dir)
    assert report.dir == _cache_dir(cfg)
    assert report.total == 15 and report.processed == 12 and report.skipped == 0  # duplicate processed once
    assert report.fitted_on == 8  # readable training images only; val/test never seen by fit
    failed = dict(report.failed)
    assert set(failed) == {"ph/bad/truncated.jpg", "ph/bad/text.jpg"}
    assert all(f"failed: {i}: " in "\n".join(messages) for i in failed)
    assert any("fit: skipped ph/bad/truncated.jpg" in m for m in messages)

    index = cache.index()
    assert list(index.columns[:5]) == ["id", "md5", "file", "ok", "error"]
    assert len(index) == 15 and index["ok"].sum() == 13
    bad = index.set_index("id").loc["ph/bad/text.jpg"]
    assert not bad["ok"] and "not a recognised image format" in bad["error"] and bad["file"] == ""
    assert "truncated" in index.set_index("id").loc["ph/bad/truncated.jpg", "error"]
    assert not (report.dir / "config.yaml").exists()  # the command saves the config (see the CLI test)

    state = json.loads((report.dir / "state.json").read_text(encoding="utf-8"))
    assert state["fit"]["n_images"] == 8 and state["fit"]["split_part"] == "train"
    pre = cache.preprocessor()
    assert pre.is_fitted and pre.config_hash() == report.dir.name
    # the cache holds exactly what inference computes from the file
    for row in index[index["ok"]].itertuples():
        path = next(r for r in csv.DictReader(manifest.open()) if r["id"] == row.id)["path"]
        expected = pre(read_image(path).array)
        assert cache.load(row.md5).tobytes() == expected.tobytes()
    with pytest.raises(DataError, match="not in the preprocessing cache"):
        cache.load("0" * 32)


def test_rerun_skips_finished_images_and_resumes(tmp_path, bad_images):
    manifest, split_path, _ = _write_dataset(tmp_path / "data", bad_images)
    cfg = _cfg(tmp_path)
    first = _build(cfg, manifest, split_path, workers=1, log=lambda m: None)
    images = sorted((first.dir / "images").iterdir())
    stamps = {p.name: p.stat().st_mtime_ns for p in images}
    again = _build(cfg, manifest, split_path, workers=1, log=lambda m: None)
    assert again.processed == 0 and again.skipped == 13 and len(again.failed) == 2
    assert {p.name: p.stat().st_mtime_ns for p in images} == stamps  # nothing rewritten
    images[0].unlink()  # as if the run had been interrupted before this image
    resumed = _build(cfg, manifest, split_path, workers=1, log=lambda m: None)
    assert resumed.processed == 1 and images[0].is_file()
    assert not list(first.dir.rglob(".*"))  # no temporary files left behind


def test_changed_training_split_refits_and_clears(tmp_path, bad_images):
    manifest, split_path, split = _write_dataset(tmp_path / "data", bad_images)
    cfg = _cfg(tmp_path)
    first = _build(cfg, manifest, split_path, workers=1, log=lambda m: None)
    old_state = json.loads((first.dir / "state.json").read_text(encoding="utf-8"))
    # moving val/test ids does not touch the fit
    same_train = _write_split(tmp_path / "s2.json", dict(split, val=split["test"], test=split["val"]))
    kept = _build(cfg, manifest, same_train, workers=1, log=lambda m: None)
    assert not kept.refit and kept.processed == 0
    # a different training split: refit and rebuild (old images were made with other landmarks)
    moved = dict(split, train=split["train"][2:] + split["val"][:2], val=split["train"][:2] + split["val"][2:])
    logs: list[str] = []
    refit = _build(cfg, manifest, _write_split(tmp_path / "s3.json", moved), workers=1, log=logs.append)
    assert refit.refit and refit.processed == 12 and any("refitting" in m for m in logs)
    new_state = json.loads((refit.dir / "state.json").read_text(encoding="utf-8"))
    assert new_state["nyul"]["standard_landmarks_"] != old_state["nyul"]["standard_landmarks_"]


def test_preset_without_fit_and_config_hash_folders(tmp_path, bad_images):
    manifest, split_path, _ = _write_dataset(tmp_path / "data", bad_images)
    raw = _build(_cfg(tmp_path, preset="raw"), manifest, split_path, workers=1, log=lambda m: None)
    full = _cache_dir(_cfg(tmp_path))
    assert raw.dir != full and raw.fitted_on == 0
    assert PreprocessedCache(raw.dir).preprocessor().preset == "raw"


def test_cli_preprocess_parallel_and_show(tmp_path, bad_images, capsys):
    manifest, split_path, _ = _write_dataset(tmp_path / "data", bad_images)
    work = tmp_path / "work"
    common = ["--set", f"paths.work_dir={work}", "--set", "preprocess.size=64"]
    rc = main(["preprocess", "--manifest", str(manifest), "--split", str(split_path), "--workers", "2", *common])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "15 images: 0 already cached, 12 processed, 2 failed" in out
    assert "failed: ph/bad/text.jpg: " in err
    cfg = load_config(None, [f"paths.work_dir={work}", "preprocess.size=64"])
    cache_dir = _cache_dir(cfg)
    assert (cache_dir / "state.json").is_file() and (cache_dir / "config.yaml").is_file()
    saved = load_config(cache_dir / "config.yaml")
    assert saved.preprocess.workers == 2  # the --workers flag is recorded in the resolved config
    # same bytes as the single-process build
    single = _build(_cfg(tmp_path), manifest, split_path, out_root=tmp_path / "single", workers=1, log=print)
    for png in (cache_dir / "images").iterdir():
        assert png.read_bytes() == (single.dir / "images" / png.name).read_bytes()

    # show: uses the cache's fitted state when present
    image = tmp_path / "data" / "glioma_00.png"
    fig = tmp_path / "fig.png"
    assert main(["preprocess", *common, "show", str(image), "--out", str(fig)]) == 0
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["preprocess", "show", str(image), "--out", str(tmp_path / "raw.png"), "--preset", "raw"]) == 0
    assert main(["preprocess", "show", str(image), "--out", str(tmp_path / "x.jpg")]) == 2
    assert main(["preprocess", "show", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_cli_reports_missing_inputs(tmp_path, capsys):
    rc = main(["preprocess", "--manifest", str(tmp_path / "nope.csv"), "--split", str(tmp_path / "nope.json")])
    assert rc == 2
    assert "nope.csv" in capsys.readouterr().err


def test_preprocessor_loaded_from_cache_matches(tmp_path, bad_images):
    manifest, split_path, _ = _write_dataset(tmp_path / "data", bad_images)
    report = _build(_cfg(tmp_path), manifest, split_path, workers=1, log=lambda m: None)
    pre = Preprocessor.load(report.dir / "state.json")
    again = Preprocessor.from_dict(pre.to_dict())
    img = read_image(tmp_path / "data" / "pituitary_03.png").array
    assert again(img).tobytes() == pre(img).tobytes()


def test_fold_cache_fits_on_the_fold_training_part_only(tmp_path, bad_images):
    """k-fold: each fold's Nyúl landmarks come from that fold's training part, never its validation part."""
    from brainmri.data.split import read_split
    from brainmri.train.trainer import load_training_data

    _, _, split = _write_dataset(tmp_path / "data", bad_images)
    readable = {k: [i for i in split[k] if not i.startswith("ph/bad/")] for k in ("train", "val", "test")}
    split_path = _write_split(tmp_path / "readable.json", dict(split, **readable))  # as `data split` excludes them
    cfg = _cfg(tmp_path)
    folds = read_split(split_path)["folds"]
    layout = Layout.from_config(cfg.paths)
    states = []
    for k in (0, 1):
        train, val, cache = load_training_data(cfg, split_path, fold=k)
        assert cache.dir.parent == layout.fold_preprocess_root(k)
        state = json.loads(cache.state_path.read_text(encoding="utf-8"))
        assert state["fit"]["split_part"] == f"fold{k}:train"
        assert state["fit"]["n_images"] == len(folds[k]["train"])
        assert set(train.ids) | set(val.ids) <= set(folds[k]["train"]) | set(folds[k]["val"])
        states.append(state["nyul"]["standard_landmarks_"])
    assert states[0] != states[1]  # different training parts -> different landmarks
    again = load_training_data(cfg, split_path, fold=0)[2]  # a finished fold cache is reused, not refitted
    assert json.loads(again.state_path.read_text(encoding="utf-8"))["nyul"]["standard_landmarks_"] == states[0]
