"""Integration: import, audit and split the FULL brain-tumor-mri set (5,712 files), audit navoneel against it.

Skipped with a reason when the real data is absent (see conftest: BRAINMRI_SHARED_DATA or ../shared/data).
The import runs once per module into a temporary folder; the checks recompute what they verify
(md5 with hashlib, pHash distances with a different bit-counting method) instead of trusting the code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from brainmri.config import load_config
from brainmri.data.audit import run_audit
from brainmri.data.manifest import build_manifest, read_manifest, write_manifest
from brainmri.data.split import read_split, run_split

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README_COUNTS = {"glioma": 1321, "meningioma": 1339, "no_tumor": 1595, "pituitary": 1457}


def _import(roots, cfg):
    """build_manifest with the sections of ``cfg`` it takes."""
    return build_manifest(roots, cfg.data, cfg.audit)


@pytest.fixture(scope="module")
def full(tmp_path_factory, brain_tumor_mri_dir):
    work = tmp_path_factory.mktemp("full")
    cfg = load_config(None, ["data.workers=2"])
    df = _import([str(brain_tumor_mri_dir)], cfg)
    manifest = write_manifest(df, work / "manifest.csv")
    audit = run_audit(manifest, cfg.audit, work / "audit")
    split = run_split(manifest, work / "split.json", cfg.split, cfg.audit, cfg.data.classes)
    return {
        "work": work,
        "cfg": cfg,
        "df": read_manifest(manifest),
        "manifest": manifest,
        "audit": audit,
        "split": split,
        "root": brain_tumor_mri_dir,
    }


def _bits(hexes: list[str]) -> np.ndarray:
    """64-bit hashes as a 0/1 float matrix (n, 64) via np.unpackbits (independent of the code under test)."""
    raw = np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8).reshape(len(hexes), 8)
    return np.unpackbits(raw, axis=1).astype(np.float32)


def test_import_reads_every_file(full):
    df = full["df"]
    on_disk = {
        str((Path(d) / f).resolve())
        for d, _, files in os.walk(full["root"] / "Training")
        for f in files
        if not f.startswith(".")
    }
    assert len(on_disk) == 5712
    imported = {str(Path(p).resolve()) for p in df["path"]}
    # set differences, not a list comparison: pytest's diff of 5,712 paths takes many minutes
    assert not (on_disk - imported), f"not imported: {sorted(on_disk - imported)[:5]}"
    assert not (imported - on_disk), f"unexpected: {sorted(imported - on_disk)[:5]}"
    assert len(df) == 5712
    assert df["readable"].all(), df.loc[~df["readable"], ["path", "error"]].head().to_string()
    assert dict(Counter(df["label"])) == README_COUNTS
    assert (df["source_split"] == "train").all()
    assert ((df["format"] == "png") & df["id"].str.endswith(".jpg")).sum() == 5  # PNGs named .jpg
    assert {"L", "RGB", "RGBA", "P"} <= set(df["mode"])
    assert df["width"].min() >= 150 and df["width"].max() <= 1920


def test_exact_duplicate_count_matches_hashlib(full):
    digests = Counter(hashlib.md5(Path(p).read_bytes()).hexdigest() for p in full["df"]["path"])
    groups = {d: c for d, c in digests.items() if c > 1}
    exact = full["audit"]["exact"]
    assert exact["clusters"] == len(groups) > 0
    assert exact["redundant_files"] == sum(c - 1 for c in groups.values())
    assert exact["files_in_clusters"] == sum(groups.values())
    on_file = json.loads((full["work"] / "audit" / "audit.json").read_text())
    assert on_file["exact"]["clusters"] == len(groups)


def test_near_duplicates_are_listed(full):
    audit, df = full["audit"], full["df"].set_index("id")
    thr = full["cfg"].audit.near_threshold
    pairs = audit["near"]["pair_list"]
    assert audit["near"]["pairs"] == len(pairs) > 100
    a = [p["a"] for p in pairs]
    b = [p["b"] for p in pairs]
    dist = (_bits(df.loc[a, "phash"].tolist()) != _bits(df.loc[b, "phash"].tolist())).sum(axis=1)
    assert (dist == np.array([p["distance"] for p in pairs])).all()
    assert (dist <= thr).all() and (dist > 0).any()
    assert (df.loc[a, "md5"].to_numpy() != df.loc[b, "md5"].to_numpy()).all()
    assert (full["work"] / "audit" / "near_duplicates.png").stat().st_size > 10_000


def test_manifest_phash_matches_an_independent_computation(full):
    import imagehash
    from PIL import Image

    df = full["df"]
    sample = df[df["mode"].isin(["L", "RGB"])].sample(25, random_state=0)
    for path, expected in zip(sample["path"], sample["phash"], strict=True):
        with Image.open(path) as im:
            a = np.asarray(im.convert("L"), dtype=np.float32)
        u = np.round((a - a.min()) * (255.0 / (a.max() - a.min()))).astype(np.uint8)
        assert str(imagehash.phash(Image.fromarray(u), hash_size=8)) == expected, path


def test_split_has_no_exact_or_near_duplicates_across_splits_and_folds(full):
    split = read_split(full["work"] / "split.json")
    df = full["df"].set_index("id")
    thr = full["cfg"].audit.near_threshold
    members = split["train"] + split["val"] + split["test"]
    assert len(members) > 4000
    assert not df.loc[members, "md5"].duplicated().any(), "an exact duplicate appears twice in the split"
    part = np.array([0] * len(split["train"]) + [1] * len(split["val"]) + [2] * len(split["test"]))
    fold_of = {i: k for k, f in enumerate(split["folds"]) for i in f["val"]}
    fold = np.array([fold_of.get(i, -1) for i in members])
    bits = _bits(df.loc[members, "phash"].tolist())
    inv = 1.0 - bits
    near_pairs_inside = 0
    for start in range(0, len(members), 1024):
        blk, blk_inv = bits[start : start + 1024], inv[start : start + 1024]
        dist = blk @ inv.T + blk_inv @ bits.T  # Hamming distance as a matrix product
        ii, jj = np.nonzero(dist <= thr)
        ii = ii + start
        keep = jj > ii
        ii, jj = ii[keep], jj[keep]
        near_pairs_inside += len(ii)
        assert (part[ii] == part[jj]).all(), "a near duplicate crosses train/val/test"
        tv = part[ii] < 2
        assert (fold[ii][tv] == fold[jj][tv]).all(), "a near duplicate crosses folds"
    assert near_pairs_inside > 0  # near duplicates were kept together, not all dropped
    excluded = {e["id"]: e["reason"] for e in split["excluded"]}
    assert sum(r.startswith("exact duplicate of") for r in excluded.values()) > 0
    assert len(members) + len(excluded) == 5712
    card = json.loads((full["work"] / "data_card.json").read_text())
    assert card["splits"]["test"]["total"] == len(split["test"])


def test_navoneel_overlaps_brain_tumor_mri(full, navoneel_dir, tmp_path):
    cfg = full["cfg"]
    nav = _import([str(navoneel_dir)], cfg)
    assert len(nav) == 253 and set(nav["label"]) == {"tumor", "no_tumor"}
    path = write_manifest(nav, tmp_path / "navoneel.csv")
    res = run_audit(path, cfg.audit, tmp_path / "audit", against_path=full["manifest"], montage=False)
    ag = res["against"]
    assert ag["total"] > 0 and ag["exact"] > 0
    md5_full = set(full["df"]["md5"])
    assert ag["exact"] == int(nav["md5"].isin(md5_full).sum())
    assert "already occur there" in (tmp_path / "audit" / "audit.txt").read_text()
