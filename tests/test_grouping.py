"""Scan grouping (brainmri.data.grouping): synthetic scans cluster apart, adjacent slices together, the
size cap holds, the split keeps a scan on one side, and real lgg-flair patients are recovered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainmri.config import load_config
from brainmri.data.grouping import (
    DESCRIPTOR_SIZE,
    capped_union,
    describe_array,
    manifest_descriptors,
    pairwise_scores,
    scan_groups,
)

LGG = Path(__file__).resolve().parents[2] / "shared" / "data" / "lgg-flair"


def _scan(
    n: int, size: int, centre: tuple[float, float], axes: tuple[float, float], gain: float, seed: int, step: float = 1.0
):
    """``n`` slices of one synthetic scan: an elliptical head whose inner structures change slowly with the
    slice index (a growing ventricle, a drifting bright spot; ``step`` sets the pace), with fixed position,
    shape, contrast and a smooth texture of its own."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (6, 6)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = centre
    ay, ax = axes
    r = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2
    head = (r <= 1.0).astype(np.float32)
    slices = []
    for k in range(n):
        t = k * step
        shrink = 1.0 - 0.012 * t  # the head narrows slowly towards the top
        h = (((yy - cy) / (ay * shrink)) ** 2 + ((xx - cx) / (ax * shrink)) ** 2 <= 1.0).astype(np.float32)
        vent = (((yy - cy) / (0.18 * ay + 0.6 * t)) ** 2 + ((xx - cx) / (0.12 * ax)) ** 2 <= 1.0).astype(np.float32)
        spot = np.exp(-((yy - cy + 0.4 * ay - t) ** 2 + (xx - cx - 0.3 * ax) ** 2) / 40.0)
        img = gain * (0.55 * h * head + 0.35 * spot * h - 0.3 * vent * h + 0.25 * texture * h)
        img = img + rng.normal(0, 0.01, (size, size))
        slices.append(np.clip(img, 0, 1).astype(np.float32))
    return slices


def _two_scans():
    a = _scan(10, 96, (46.0, 50.0), (38.0, 30.0), 1.0, 1)
    b = _scan(10, 96, (52.0, 44.0), (30.0, 36.0), 0.7, 2)
    return a, b


def test_descriptor_shape_and_determinism():
    a, _ = _two_scans()
    d1, d2 = describe_array(a[0]), describe_array(a[0].copy())
    assert d1.shape == (DESCRIPTOR_SIZE,) and d1.dtype == np.float32
    np.testing.assert_array_equal(d1, d2)
    assert np.isfinite(describe_array(np.zeros((32, 32), np.float32))).all()  # blank image: no NaN


def test_two_synthetic_scans_cluster_apart_and_adjacent_slices_together():
    a, b = _two_scans()
    desc = np.stack([describe_array(x) for x in a + b])
    truth = np.array([0] * len(a) + [1] * len(b))
    groups = scan_groups(desc, k=3, max_distance=12.0, max_group=40)
    for g in np.unique(groups):
        assert len(set(truth[groups == g].tolist())) == 1, "a group mixes the two scans"
    for scan in (0, 1):
        idx = np.flatnonzero(truth == scan)
        together = [groups[i] == groups[i + 1] for i in idx[:-1]]
        assert np.mean(together) >= 0.8
    np.testing.assert_array_equal(groups, scan_groups(desc, k=3, max_distance=12.0, max_group=40))  # deterministic
    s = pairwise_scores(truth, groups)
    assert s["precision"] == 1.0 and s["recall"] > 0.5


def test_buckets_and_distance_limit_keep_scans_apart():
    a, b = _two_scans()
    desc = np.stack([describe_array(x) for x in a + b])
    buckets = np.array(["x"] * len(a) + ["y"] * len(b))
    groups = scan_groups(desc, k=19, max_distance=1e9, max_group=100, buckets=buckets)
    assert set(groups[: len(a)].tolist()).isdisjoint(groups[len(a) :].tolist())
    assert len(np.unique(scan_groups(desc, k=3, max_distance=1e-6, max_group=40))) == len(desc)  # no link passes


def test_capped_union_respects_cap_and_keeps_initial_groups():
    n = 10
    i, j = np.arange(n - 1), np.arange(1, n)  # a chain 0-1-2-...-9
    groups = capped_union(n, i, j, max_group=4)
    assert np.bincount(groups).max() <= 4
    assert groups.tolist() == sorted(groups.tolist())  # chain order kept: labels by first row
    initial = np.array([0, 0, 0, 0, 0, 0, 1, 2, 3, 4])  # a group of 6 (> cap) stays whole
    g2 = capped_union(n, np.zeros(0, np.int64), np.zeros(0, np.int64), max_group=4, initial=initial)
    assert len(set(g2[:6].tolist())) == 1 and len(np.unique(g2)) == 5


def test_pairwise_scores_by_hand():
    s = pairwise_scores(["p", "p", "p", "q"], [0, 0, 1, 1])
    # true pairs: (0,1) (0,2) (1,2); linked pairs: (0,1) (2,3); correct: (0,1)
    assert s["true_pairs"] == 3 and s["linked_pairs"] == 2
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(1 / 3)


def test_manifest_descriptors_cache(tmp_path):
    a, _ = _two_scans()
    paths = []
    for k, x in enumerate(a[:3]):
        p = tmp_path / f"s{k}.png"
        Image.fromarray((x * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    frame = pd.DataFrame({"path": paths, "md5": ["m0", "m1", "m2"]})
    cache = tmp_path / "desc.npz"
    d1 = manifest_descriptors(frame, cache)
    assert cache.is_file()
    Path(paths[0]).unlink()  # cached rows are not decoded again
    d2 = manifest_descriptors(frame, cache)
    np.testing.assert_array_equal(d1, d2)


def _write_scans(root: Path) -> dict[str, int]:
    """Two synthetic scans per class under Kaggle-style class folders; returns file id -> scan number."""
    scan_of = {}
    for c, cls in enumerate(("glioma", "meningioma", "notumor", "pituitary")):
        for s in range(2):
            seed = 10 * c + s
            rng = np.random.default_rng(seed)
            centre = (float(rng.uniform(40, 56)), float(rng.uniform(40, 56)))
            axes = (float(rng.uniform(28, 40)), float(rng.uniform(26, 38)))
            for t, x in enumerate(_scan(8, 96, centre, axes, float(rng.uniform(0.6, 1.0)), seed, step=2.5)):
                p = root / "Training" / cls / f"{cls}_{s}_{t}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((x * 255).astype(np.uint8)).save(p)
                scan_of[f"{root.name}/Training/{cls}/{p.name}"] = 2 * c + s
    return scan_of


def test_split_group_by_scan_keeps_each_scan_on_one_side(tmp_path):
    from brainmri.data.manifest import build_manifest
    from brainmri.data.split import data_card, data_card_markdown, make_split, validate_split

    root = tmp_path / "scans"
    scan_of = _write_scans(root)
    # two 8-slice scans per class: each scan is half its class, so allow groups of up to half a class
    cfg = load_config(
        None, ["split.group_by=scan", "data.workers=1", "split.folds=2", "split.scan_max_class_share=0.5"]
    )
    df = build_manifest([str(root)], cfg.data, cfg.audit)
    split = make_split(df, cfg.split, cfg.audit, cfg.data.classes)
    validate_split(split)
    part = {i: name for name in ("train", "val", "test") for i in split[name]}
    for scan in set(scan_of.values()):
        sides = {part[i] for i, s in scan_of.items() if s == scan and i in part}
        assert len(sides) == 1, f"scan {scan} is split over {sides}"
    p = split["params"]
    assert p["group_by"] == "scan"
    assert p["scan_groups"] == len(set(scan_of.values())) < p["clusters"]  # pHash alone splits some scans
    assert "Grouped by scan" in data_card_markdown(data_card(split, df), cfg.data.classes)
    near = load_config(None, ["split.group_by=near_duplicate"]).split
    assert "scan_groups" not in make_split(df, near, cfg.audit, cfg.data.classes)["params"]


@pytest.mark.skipif(not (LGG / "labels.csv").is_file(), reason="shared lgg-flair data not present")
def test_lgg_flair_patients_recovered():
    lab = pd.read_csv(LGG / "labels.csv")
    patients = sorted(lab["patient"].unique())[:4]
    rows = []
    for p in patients:  # 10 consecutive slices from the middle of each of 4 patients: 40 files
        part = lab[lab["patient"] == p].sort_values("slice")
        mid = len(part) // 2
        rows.append(part.iloc[max(0, mid - 5) : mid + 5])
    sub = pd.concat(rows).reset_index(drop=True)
    desc = np.stack([describe_array(np.asarray(Image.open(LGG / f), np.float32)) for f in sub["file"]])
    sc = load_config().split
    groups = scan_groups(desc, sc.scan_neighbours, sc.scan_max_distance, sc.scan_max_group)
    s = pairwise_scores(sub["patient"], groups)
    assert s["precision"] >= 0.8, s
    assert s["recall"] >= 0.3, s


def test_cli_split_group_by_scan_caches_descriptors(tmp_path):
    from brainmri.cli import main
    from brainmri.data.split import read_split

    root = tmp_path / "scans"
    _write_scans(root)
    manifest = tmp_path / "work" / "manifest.csv"
    assert main(["data", "import", str(root), "--out", str(manifest), "--workers", "1"]) == 0
    out = tmp_path / "work" / "split.json"
    args = ["data", "split", str(manifest), "--out", str(out), "--folds", "2", "--set", "split.group_by=scan"]
    assert main(args) == 0
    assert (out.parent / "scan_descriptors.npz").is_file()
    assert read_split(out)["params"]["group_by"] == "scan"


def test_edges_do_not_depend_on_block_size():
    from brainmri.data.grouping import mutual_knn_edges

    a, b = _two_scans()
    desc = np.stack([describe_array(x) for x in a + b])
    ref = mutual_knn_edges(desc, 3, 12.0)
    for chunk in (1, 3, 7):
        for x, y in zip(ref, mutual_knn_edges(desc, 3, 12.0, chunk=chunk), strict=True):
            np.testing.assert_array_equal(x, y)


def test_small_sets_are_not_merged_into_a_few_groups(tmp_path):
    """16 slices a class: the default cap (5% of the smallest class) keeps every slice its own group, so a
    stratified split still fills val and test; the configured share lifts that limit."""
    from brainmri.data.manifest import build_manifest
    from brainmri.data.split import make_split

    root = tmp_path / "scans"
    _write_scans(root)
    cfg = load_config(None, ["split.group_by=scan", "data.workers=1", "split.folds=2"])
    df = build_manifest([str(root)], cfg.data, cfg.audit)
    split = make_split(df, cfg.split, cfg.audit, cfg.data.classes)
    assert split["params"]["scan_max_group_effective"] == 1
    assert all(len(split[part]) > 0 for part in ("train", "val", "test"))
    wide = load_config(None, ["split.group_by=scan", "split.scan_max_class_share=0.5"]).split
    assert make_split(df, wide, cfg.audit, cfg.data.classes)["params"]["scan_max_group_effective"] == 8
