"""Leakage-free split on small generated data: clusters never cross splits or folds; exclusions recorded."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from brainmri.cli import main
from brainmri.config import load_config
from brainmri.data.manifest import build_manifest, read_manifest, write_manifest
from brainmri.data.phantoms import KAGGLE_FOLDER, make_phantom
from brainmri.data.split import assign_groups, group_labels, make_split, read_split, split_frame, split_ids
from brainmri.errors import DataError

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
N_PER_CLASS = 14


_HASHES: list[int] = []


def _split(df, cfg, **kw):
    """make_split with the sections of ``cfg`` it takes."""
    return make_split(df, cfg.split, cfg.audit, cfg.data.classes, **kw)


def _import(roots, cfg):
    """build_manifest with the sections of ``cfg`` it takes."""
    return build_manifest(roots, cfg.data, cfg.audit)


def _png(path: Path, label: str, seed: int, size: int = 96) -> None:
    """Save a phantom whose pHash is far (> threshold + 4) from every phantom saved before, so the only
    duplicates in the fixture are the ones made on purpose (random phantoms can look alike)."""
    from brainmri.data.manifest import phash_hex

    limit = load_config().audit.near_threshold + 4
    while True:
        img = (make_phantom(label, size=size, seed=seed, bias_strength=0.2).image * 255).round().astype(np.uint8)
        h = int(phash_hex(img), 16)
        if all((h ^ o).bit_count() > limit for o in _HASHES):
            break
        seed += 7919
    _HASHES.append(h)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _resized(src: Path, dst: Path) -> None:
    img = Image.open(src)
    img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.BILINEAR).convert("RGB").save(dst, "JPEG", quality=85)


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    from conftest import write_bad_images

    base = tmp_path_factory.mktemp("split")
    root = base / "kag"
    for ci, label in enumerate(CLASSES):
        folder = root / "Training" / KAGGLE_FOLDER[label]
        for k in range(N_PER_CLASS):
            _png(folder / f"{label}_{k:02d}.png", label, seed=10_000 * ci + 31 * k + 1)
        for k in range(3):  # near copies of the first three
            _resized(folder / f"{label}_{k:02d}.png", folder / f"{label}_{k:02d}_small.jpg")
        shutil.copyfile(folder / f"{label}_03.png", folder / f"{label}_03_copy.png")  # exact copy
        for k in range(2):
            _png(root / "Testing" / KAGGLE_FOLDER[label] / f"test_{label}_{k}.png", label, seed=90_000 + 10 * ci + k)
    tr = root / "Training"
    # label conflict: a meningioma image also filed as glioma
    shutil.copyfile(tr / "meningioma/meningioma_05.png", tr / "glioma/glioma_from_meningioma.png")
    # a training copy (resized) of a test image
    _resized(root / "Testing/pituitary/test_pituitary_0.png", tr / "pituitary/leak_of_test.jpg")
    bad = write_bad_images(tr / "notumor")
    ext = base / "ext" / "brain_tumor_dataset"
    _png(ext / "yes" / "y.png", "glioma", seed=123_456)
    _png(ext / "no" / "n.png", "no_tumor", seed=654_321)
    # these tests pin the near-duplicate grouping on small random phantoms (no scan structure to find);
    # scan grouping has its own tests in test_grouping.py
    cfg = load_config(None, ["data.workers=1", "split.group_by=near_duplicate"])
    df = _import([str(root), str(base / "ext")], cfg)
    manifest = write_manifest(df, base / "manifest.csv")
    return {"base": base, "df": df, "manifest": manifest, "bad": bad, "cfg": cfg}


def _duplicate_pairs(df, threshold):
    """Independent reference: every pair of readable rows that is an exact or near duplicate."""
    rows = df[df["readable"]].reset_index(drop=True)
    ints = [int(h, 16) for h in rows["phash"]]
    pairs = []
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            if rows["md5"][a] == rows["md5"][b] or (ints[a] ^ ints[b]).bit_count() <= threshold:
                pairs.append((rows["id"][a], rows["id"][b]))
    return pairs


def _check_no_leak(split, df, threshold):
    part = {}
    for name in ("train", "val", "test"):
        for i in split[name]:
            part[i] = name
    fold_of = {i: k for k, f in enumerate(split["folds"]) for i in f["val"]}
    pairs = _duplicate_pairs(df, threshold)
    assert pairs, "the fixture must contain duplicates"
    checked = 0
    for a, b in pairs:
        if a in part and b in part:
            checked += 1
            assert part[a] == part[b], (a, b, part[a], part[b])
            if part[a] != "test":
                assert fold_of[a] == fold_of[b], (a, b)
    kept_md5 = df.set_index("id").loc[list(part), "md5"]
    assert not kept_md5.duplicated().any(), "an exact duplicate was kept twice"
    return checked


def test_split_has_no_cluster_across_splits_or_folds(split_data):
    df, cfg = split_data["df"], split_data["cfg"]
    split = _split(df, cfg)
    checked = _check_no_leak(split, df, cfg.audit.near_threshold)
    assert checked >= 4  # near pairs (resized copies) really were inside the split and checked
    # every manifest row is in exactly one of train/val/test/excluded
    listed = split["train"] + split["val"] + split["test"] + [e["id"] for e in split["excluded"]]
    assert sorted(listed) == sorted(df["id"])
    # folds partition train+val
    vals = [i for f in split["folds"] for i in f["val"]]
    assert sorted(vals) == sorted(split["train"] + split["val"])
    assert len(split["folds"]) == cfg.split.folds


def test_exclusion_reasons(split_data):
    df, cfg = split_data["df"], split_data["cfg"]
    split = _split(df, cfg)
    reasons = {e["id"]: e["reason"] for e in split["excluded"]}
    for path in split_data["bad"].values():
        rid = df.set_index("path").loc[str(path), "id"]
        assert reasons[rid].startswith("unreadable")
    assert reasons["ext/brain_tumor_dataset/yes/y.png"].startswith("binary set")
    assert reasons["ext/brain_tumor_dataset/no/n.png"].startswith("binary set")  # whole binary source out
    assert reasons["kag/Training/glioma/glioma_from_meningioma.png"].startswith("label conflict")
    assert reasons["kag/Training/meningioma/meningioma_05.png"].startswith("label conflict")
    for label in CLASSES:
        folder = KAGGLE_FOLDER[label]
        assert reasons[f"kag/Training/{folder}/{label}_03_copy.png"] == (
            f"exact duplicate of kag/Training/{folder}/{label}_03.png"
        )
        assert f"kag/Training/{folder}/{label}_03.png" not in reasons
    counts = Counter(r.split(":")[0].split(" of ")[0] for r in reasons.values())
    assert counts == {"unreadable": 4, "binary set": 2, "label conflict": 2, "exact duplicate": 4}


def test_split_is_stratified_and_deterministic(split_data):
    df, cfg = split_data["df"], split_data["cfg"]
    a = _split(df, cfg)
    b = _split(df, cfg)
    assert a == b
    c = _split(df, load_config(None, ["split.seed=7", "split.group_by=near_duplicate"]))
    assert c["test"] != a["test"]
    label = dict(zip(df["id"], df["label"], strict=True))
    kept = len(a["train"]) + len(a["val"]) + len(a["test"])
    assert abs(len(a["test"]) / kept - cfg.split.test_fraction) < 0.06
    assert abs(len(a["val"]) / kept - cfg.split.val_fraction) < 0.06
    for name in ("train", "val", "test"):
        assert set(Counter(label[i] for i in a[name])) == set(CLASSES), name


def test_assign_groups_hits_fractions():
    rng = np.random.default_rng(0)
    labels = np.array(["a"] * 300 + ["b"] * 100)
    sizes = rng.integers(1, 4, size=400)
    bins = assign_groups(labels, sizes, [0.7, 0.15, 0.15], np.random.default_rng(1))
    for lab in ("a", "b"):
        m = labels == lab
        got = np.bincount(bins[m], weights=sizes[m], minlength=3) / sizes[m].sum()
        assert np.allclose(got, [0.7, 0.15, 0.15], atol=0.02)
    zero = assign_groups(labels, sizes, [0.8, 0.0, 0.2], np.random.default_rng(1))
    assert not (zero == 1).any()


def test_keep_source_test(split_data):
    df = split_data["df"]
    cfg = load_config(None, ["split.keep_source_test=true", "split.group_by=near_duplicate"])
    split = _split(df, cfg)
    testing = sorted(df.loc[df["source_split"] == "test", "id"])
    assert split["test"] == testing
    reasons = {e["id"]: e["reason"] for e in split["excluded"]}
    leak = "kag/Training/pituitary/leak_of_test.jpg"
    assert reasons[leak] == "duplicate of test image kag/Testing/pituitary/test_pituitary_0.png (keep_source_test)"
    assert split["params"]["moved_out_of_train_for_test"] >= 1
    _check_no_leak(split, df, cfg.audit.near_threshold)
    with pytest.raises(DataError, match="keep_source_test"):
        _split(df[df["source_split"] != "test"], cfg)


def test_split_cli_writes_files(split_data, tmp_path, capsys):
    out = tmp_path / "out" / "split.json"
    rc = main(["data", "split", str(split_data["manifest"]), "--out", str(out), "--folds", "3", "--seed", "5"])
    assert rc == 0
    assert "excluded" in capsys.readouterr().out
    split = read_split(out)
    assert len(split["folds"]) == 3 and split["seed"] == 5
    assert split["manifest_sha256"] and split["classes"] == CLASSES
    nn = json.loads((out.parent / "splits_final.json").read_text())
    assert nn == [{"train": f["train"], "val": f["val"]} for f in split["folds"]]
    card = json.loads((out.parent / "data_card.json").read_text())
    assert card["splits"]["test"]["total"] == len(split["test"])
    assert sum(card["splits"]["train"][c] for c in CLASSES) == len(split["train"])
    assert card["excluded"]["exact duplicate"]["total"] == 4
    md = (out.parent / "data_card.md").read_text()
    assert "| train |" in md and "exact duplicate" in md
    saved = yaml.safe_load((out.parent / "split.config.yaml").read_text())
    assert saved["split"]["folds"] == 3 and saved["split"]["seed"] == 5


def test_read_split_validation(split_data, tmp_path):
    split = _split(split_data["df"], split_data["cfg"], manifest="m.csv", manifest_sha256="x")

    def write(obj):
        p = tmp_path / "s.json"
        p.write_text(json.dumps(obj))
        return p

    assert read_split(write(split))["train"] == split["train"]
    with pytest.raises(DataError, match="not found"):
        read_split(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_split(tmp_path / "bad.json")
    broken = dict(split)
    del broken["folds"]
    with pytest.raises(DataError, match="missing keys folds"):
        read_split(write(broken))
    broken = dict(split, test=split["test"] + [split["train"][0]])
    with pytest.raises(DataError, match="both 'train' and 'test'"):
        read_split(write(broken))
    folds = [dict(f) for f in split["folds"]]
    folds[0] = {"train": folds[0]["train"][1:], "val": folds[0]["val"]}
    with pytest.raises(DataError, match="partition"):
        read_split(write(dict(split, folds=folds)))
    with pytest.raises(DataError, match="version"):
        read_split(write(dict(split, version=99)))
    with pytest.raises(DataError, match="in two groups"):
        read_split(write(dict(split, groups=[split["groups"][0], split["groups"][0][:1] + split["train"][:1]])))
    with pytest.raises(DataError, match="which no split holds"):
        read_split(write(dict(split, groups=[["nowhere.png", split["train"][0]]])))
    older = {k: v for k, v in split.items() if k != "groups"}
    assert read_split(write(older))["train"] == split["train"]  # files written before groups were recorded


def test_split_records_its_groups_for_the_bootstrap(split_data):
    """Every group of two or more assigned images is recorded, lies inside one part, and holds the near
    copies; ``group_labels`` gives their members one label and every other id its own."""
    df, cfg = split_data["df"], split_data["cfg"]
    split = _split(df, cfg)
    part = {i: name for name in ("train", "val", "test") for i in split[name]}
    assert split["groups"] and all(len(g) > 1 for g in split["groups"])
    for g in split["groups"]:
        assert len({part[i] for i in g}) == 1, g
    for a, b in _duplicate_pairs(df, cfg.audit.near_threshold):
        if a in part and b in part:
            assert any(a in g and b in g for g in split["groups"]), (a, b)
    ids = split["test"] + split["train"]
    labels = group_labels(split, ids)
    members = {i for g in split["groups"] for i in g}
    lonely = [k for k, i in enumerate(ids) if i not in members]
    assert len(set(labels[lonely].tolist())) == len(lonely)
    for g in split["groups"]:
        in_ids = [ids.index(i) for i in g if i in ids]
        assert len(set(labels[in_ids].tolist())) <= 1
    assert group_labels({k: v for k, v in split.items() if k != "groups"}, ids) is None


def test_split_frame(split_data):
    df = read_manifest(split_data["manifest"])
    split = _split(df, split_data["cfg"])
    train = split_frame(df, split, "train")
    assert train["id"].tolist() == split["train"] and list(train.columns) == list(df.columns)
    f1 = split_frame(df, split, "fold1:val")
    assert f1["id"].tolist() == split["folds"][1]["val"]
    assert len(split_ids(split, "trainval")) == len(split["train"]) + len(split["val"])
    with pytest.raises(DataError, match="unknown split part"):
        split_frame(df, split, "training")
    with pytest.raises(DataError, match="fold 9 does not exist"):
        split_frame(df, split, "fold9:train")
    with pytest.raises(DataError, match="re-run"):
        split_frame(df[df["id"] != split["test"][0]], split, "test")
