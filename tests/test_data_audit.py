"""Duplicate audit on small generated data: exact copies, resized/re-encoded copies, conflicts, --against."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from brainmri.cli import main
from brainmri.config import load_config
from brainmri.data.audit import audit_manifest
from brainmri.data.duplicates import connected_components, hash_words, labels_conflict, nearest, pairs_within
from brainmri.data.manifest import build_manifest, read_manifest, write_manifest
from brainmri.data.phantoms import make_phantom

THRESHOLD = load_config().audit.near_threshold


def _import(roots, cfg):
    """build_manifest with the sections of ``cfg`` it takes."""
    return build_manifest(roots, cfg.data, cfg.audit)


def _phantom_png(path: Path, label: str, seed: int, size: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = (make_phantom(label, size=size, seed=seed, bias_strength=0.2).image * 255).round().astype(np.uint8)
    Image.fromarray(img).save(path)


def _resized_jpeg(src: Path, dst: Path, scale: float = 0.75, quality: int = 80) -> None:
    img = Image.open(src)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(dst, "JPEG", quality=quality)


def _brute_force_pairs(df, threshold):
    """Independent reference: Python int XOR + bit_count over every pair of different files."""
    rows = df[df["readable"]].reset_index(drop=True)
    ints = [int(h, 16) for h in rows["phash"]]
    out = set()
    for a in range(len(ints)):
        for b in range(a + 1, len(ints)):
            if rows["md5"][a] != rows["md5"][b] and (ints[a] ^ ints[b]).bit_count() <= threshold:
                out.add(tuple(sorted((rows["id"][a], rows["id"][b]))))
    return out


@pytest.fixture(scope="module")
def dup_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit")
    root = base / "kag"
    tr = root / "Training"
    for ci, label in enumerate(["glioma", "meningioma", "notumor", "pituitary"]):
        canon = "no_tumor" if label == "notumor" else label
        for k in range(4):
            _phantom_png(tr / label / f"{label}_{k}.png", canon, seed=1000 * ci + 17 * k + 3)
    shutil.copyfile(tr / "glioma/glioma_0.png", tr / "glioma/glioma_0_copy.png")  # exact copy, other name
    _resized_jpeg(tr / "glioma/glioma_1.png", tr / "glioma/glioma_1_small.jpg")  # resized + re-encoded
    shutil.copyfile(tr / "meningioma/meningioma_2.png", tr / "glioma/mislabelled.png")  # label conflict
    _phantom_png(root / "Testing" / "pituitary" / "t.png", "pituitary", seed=3000 + 3)  # same bytes as pituitary_0
    cfg = load_config(None, ["data.workers=1"])
    df = _import([str(root)], cfg)
    manifest = write_manifest(df, base / "manifest.csv")
    return {"base": base, "root": root, "manifest": manifest, "df": df, "cfg": cfg}


def test_hash_words_and_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    for bits in (64, 256):
        n = 300
        base = rng.integers(0, 2**63, size=(40, bits // 64), dtype=np.uint64)
        words = base[rng.integers(0, 40, n)].copy()
        flips = rng.integers(0, 2, size=(n, bits // 64), dtype=np.uint64) << rng.integers(
            0, 64, (n, bits // 64)
        ).astype(np.uint64)
        words ^= flips
        hexes = ["".join(f"{int(w):016x}" for w in row) for row in words]
        parsed = hash_words(hexes)
        assert np.array_equal(parsed, words)
        ints = [int(h, 16) for h in hexes]
        expected = {
            (a, b, (ints[a] ^ ints[b]).bit_count())
            for a in range(n)
            for b in range(a + 1, n)
            if (ints[a] ^ ints[b]).bit_count() <= 3
        }
        i, j, d = pairs_within(parsed, 3, chunk=37)
        assert set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == expected
        assert len(expected) > n  # the test data has near pairs to find
        idx, dist = nearest(parsed[:50], parsed[50:], chunk=16)
        for q in range(50):
            best = min((ints[q] ^ ints[50 + r]).bit_count() for r in range(n - 50))
            assert dist[q] == best and (ints[q] ^ ints[50 + idx[q]]).bit_count() == best


def test_hash_words_rejects_mixed_lengths():
    with pytest.raises(ValueError, match="different lengths"):
        hash_words(["ff", "ffff"])


def test_connected_components_and_label_conflicts():
    labels = connected_components(6, np.array([0, 3]), np.array([2, 4]))
    assert labels.tolist() == [0, 1, 0, 2, 2, 3]
    assert labels_conflict(["glioma", "meningioma"])
    assert labels_conflict(["tumor", "no_tumor"])
    assert not labels_conflict(["tumor", "glioma", "tumor"])
    assert not labels_conflict(["pituitary", "pituitary"])


def test_audit_finds_exact_near_conflict_and_cross_split(dup_data):
    df = dup_data["df"]
    res = audit_manifest(df, dup_data["cfg"].audit)
    res.pop("_graph")
    ids = {Path(i).name: i for i in df["id"]}

    assert res["exact"]["clusters"] == 3
    exact_sets = [set(c["ids"]) for c in res["exact"]["cluster_list"]]
    assert {ids["glioma_0.png"], ids["glioma_0_copy.png"]} in exact_sets
    assert {ids["meningioma_2.png"], ids["mislabelled.png"]} in exact_sets
    assert {ids["pituitary_0.png"], ids["t.png"]} in exact_sets
    assert res["exact"]["redundant_files"] == 3

    near = {tuple(sorted((p["a"], p["b"]))) for p in res["near"]["pair_list"]}
    assert tuple(sorted((ids["glioma_1.png"], ids["glioma_1_small.jpg"]))) in near
    assert near == _brute_force_pairs(df, THRESHOLD)
    for p in res["near"]["pair_list"]:
        assert p["distance"] <= THRESHOLD

    conflicts = res["label_conflicts"]["clusters"]
    assert any(set(c["labels"]) == {"glioma", "meningioma"} and ids["mislabelled.png"] in c["ids"] for c in conflicts)
    cross = res["cross_source_split"]["clusters"]
    assert any(ids["t.png"] in c["ids"] and ids["pituitary_0.png"] in c["ids"] for c in cross)
    assert res["unreadable"]["count"] == 0
    assert res["files"] == len(df)


def test_audit_reports_unreadable_files(tmp_path, dup_data, bad_images):
    root = tmp_path / "r"
    shutil.copytree(dup_data["root"] / "Training" / "notumor", root / "notumor")
    bad = bad_images(root / "notumor")
    df = _import([str(root)], load_config(None, ["data.workers=1"]))
    res = audit_manifest(df, load_config().audit)
    res.pop("_graph")
    listed = {f["path"]: f["error"] for f in res["unreadable"]["files"]}
    assert res["unreadable"]["count"] == 4
    assert set(listed) == {str(p) for p in bad.values()}
    for kind, path in bad.items():
        assert listed[str(path)].startswith(kind)


def test_audit_against_other_manifest(tmp_path, dup_data):
    tr = dup_data["root"] / "Training"
    other = tmp_path / "ext"
    (other / "yes").mkdir(parents=True)
    shutil.copyfile(tr / "glioma/glioma_2.png", other / "yes/copy.png")
    _resized_jpeg(tr / "meningioma/meningioma_1.png", other / "yes/resized.jpg", scale=0.6, quality=75)
    _phantom_png(other / "no" / "new.png", "no_tumor", seed=777_777)
    df_other = _import([str(other)], load_config(None, ["data.workers=1"]))
    res = audit_manifest(df_other, load_config().audit, against=dup_data["df"])
    res.pop("_graph")
    ag = res["against"]
    by_id = {Path(m["id"]).name: m for m in ag["matches"]}
    assert by_id["copy.png"]["kind"] == "exact" and by_id["copy.png"]["match"].endswith("glioma_2.png")
    assert by_id["resized.jpg"]["kind"] == "near" and by_id["resized.jpg"]["match"].endswith("meningioma_1.png")
    assert by_id["resized.jpg"]["distance"] <= THRESHOLD
    # the new phantom matches only if its hash really is within the threshold of some training image
    new_hash = int(df_other.set_index("id").loc["ext/no/new.png", "phash"], 16)
    closest = min((new_hash ^ int(h, 16)).bit_count() for h in dup_data["df"]["phash"])
    assert ("new.png" in by_id) == (closest <= THRESHOLD)
    assert ag["exact"] == 1 and ag["near"] == len(by_id) - 1
    assert ag["label_conflicts"] == 0  # tumor vs glioma/meningioma is compatible


def test_audit_cli_writes_outputs_and_threshold_flag(tmp_path, dup_data, capsys):
    out = tmp_path / "audit_out"
    rc = main(["data", "audit", str(dup_data["manifest"]), "--out", str(out), "--threshold", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "exact duplicates (same md5): 3 clusters" in printed
    res = json.loads((out / "audit.json").read_text())
    assert res["near_threshold"] == 2
    assert all(p["distance"] <= 2 for p in res["near"]["pair_list"])
    found = {tuple(sorted((p["a"], p["b"]))) for p in res["near"]["pair_list"]}
    assert found == _brute_force_pairs(read_manifest(dup_data["manifest"]), 2)
    assert yaml.safe_load((out / "config.yaml").read_text())["audit"]["near_threshold"] == 2
    assert (out / "audit.txt").read_text().startswith("Audit of")
    with Image.open(out / "near_duplicates.png") as im:
        assert im.format == "PNG" and im.width > 200
    md5 = dict(zip(*[read_manifest(dup_data["manifest"])[c] for c in ("id", "md5")], strict=True))
    assert res["montage"]["pairs"], "montage shows at least the resized copy"
    for p in res["montage"]["pairs"]:
        assert md5[p["a"]] != md5[p["b"]] and p["distance"] <= 2 + 4


def test_audit_cli_missing_manifest_is_one_line_error(tmp_path, capsys):
    rc = main(["data", "audit", str(tmp_path / "nope.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "manifest not found" in err and len(err.strip().splitlines()) == 1
