"""Scan grouping (``split.group_by: scan``): validated on lgg-flair, applied to brain-tumor-mri, and what it
does to the headline test metrics (docs/data.md, "Scan grouping").

Usage: ``nice -n 5 .venv/bin/python bench/slice_groups.py [--manifest work/data/manifest.csv]``
``[--old-split work/data/split.json] [--cache-dir work/data/preprocess/<hash>] [--work /tmp/slice_groups]``
``[--no-train] [--out bench/results/slice_groups.json]``

1. lgg-flair (55 patients, patient ids known): the patients are split in two halves with a fixed seed;
   for each (neighbours k, max distance) of a small grid the linkage runs on each half alone; the
   setting with the best pairwise F1 of "same patient" on half A is reported on half B. Also: the
   recall of adjacent slices (slice s and s+1 of one patient in one group), and the pHash <= 4
   near-duplicate clusters as the baseline.
2. brain-tumor-mri: the split of ``--manifest`` with ``group_by: scan`` (the config defaults) against the
   old split (``--old-split``, group_by near_duplicate): number of groups and their size distribution,
   the four pairs named in the issue, and how many same-label pairs at pHash distance 6..10 that the old
   split put in different parts are now one group.
3. Headline metrics (unless ``--no-train``): the cheap stage-1 recipe of configs/cpu-fast.yaml (frozen
   EfficientNet-Lite0 offline ImageNet weights, linear head on pooled features, 30 epochs, best epoch
   by validation macro F1) trained on the old split and on the scan-grouped split; test accuracy
   (Clopper-Pearson CI) and macro F1 (bootstrap CI), also by pHash distance of each test image to its
   nearest training image. Features are computed once from the preprocessing cache ``--cache-dir`` (the
   same preprocessed pixels for both splits, so only the split differs) and cached under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from robustness import git_commit  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SEED = 20261202
GRID_K = (2, 3, 4)
GRID_DISTANCE = (6.0, 9.0, 12.0, 18.0, float("inf"))
NAMED_PAIRS = [
    ("glioma/Tr-gl_0514", "glioma/Tr-gl_0523"),
    ("notumor/Tr-no_1061", "notumor/Tr-no_0754"),
    ("pituitary/Tr-pi_0356", "pituitary/Tr-pi_0412"),
    ("pituitary/Tr-pi_1152", "pituitary/Tr-pi_1151"),
]


# ----------------------------------------------------------------------------- lgg-flair


def adjacent_recall(patient: np.ndarray, slice_no: np.ndarray, groups: np.ndarray) -> float:
    """Share of (slice s, slice s+1) pairs of one patient that share a group."""
    key = pd.DataFrame({"p": patient, "s": slice_no, "g": groups})
    nxt = key.assign(s=key["s"] - 1).rename(columns={"g": "g_next"})
    pairs = key.merge(nxt, on=["p", "s"])
    return float((pairs["g"] == pairs["g_next"]).mean()) if len(pairs) else float("nan")


def lgg_scores(desc: np.ndarray, lab: pd.DataFrame, k: int, dist: float, cap: int) -> dict[str, Any]:
    from brainmri.data.grouping import group_sizes, pairwise_scores, scan_groups

    g = scan_groups(desc, k, dist, cap)
    s = pairwise_scores(lab["patient"], g)
    sizes = group_sizes(g)
    return {
        **{m: round(float(s[m]), 4) for m in ("precision", "recall", "f1")},
        "adjacent_recall": round(adjacent_recall(lab["patient"].to_numpy(), lab["slice"].to_numpy(), g), 4),
        "groups": sizes["groups"],
        "largest": sizes["largest"][:3],
    }


def lgg_phash_baseline(root: Path, lab: pd.DataFrame, threshold: int = 4) -> dict[str, Any]:
    from brainmri.data.duplicates import connected_components, hash_words, pairs_within
    from brainmri.data.grouping import pairwise_scores
    from brainmri.data.manifest import phash_hex
    from brainmri.io.reader import read_image

    hexes = [phash_hex(read_image(root / f).array) for f in lab["file"]]
    i, j, _ = pairs_within(hash_words(hexes), threshold)
    g = connected_components(len(lab), i, j)
    s = pairwise_scores(lab["patient"], g)
    return {
        "threshold": threshold,
        **{m: round(float(s[m]), 4) for m in ("precision", "recall", "f1")},
        "adjacent_recall": round(adjacent_recall(lab["patient"].to_numpy(), lab["slice"].to_numpy(), g), 4),
        "groups": int(g.max() + 1) if len(g) else 0,
    }


def lgg_study(root: Path, work: Path, cap: int, default: tuple[int, float]) -> dict[str, Any]:
    from brainmri.data.grouping import manifest_descriptors

    lab = pd.read_csv(root / "labels.csv")
    frame = pd.DataFrame({"path": [str(root / f) for f in lab["file"]], "md5": lab["file"]})
    desc = manifest_descriptors(frame, work / "lgg_descriptors.npz")
    patients = np.array(sorted(lab["patient"].unique()))
    half_a = set(np.random.default_rng(SEED).permutation(patients)[: len(patients) // 2].tolist())
    in_a = lab["patient"].isin(half_a).to_numpy()
    grid = []
    for k in GRID_K:
        for dist in GRID_DISTANCE:
            row: dict[str, Any] = {"k": k, "max_distance": None if np.isinf(dist) else dist}
            for name, mask in (("half_a", in_a), ("half_b", ~in_a), ("all", np.ones(len(lab), bool))):
                row[name] = lgg_scores(desc[mask], lab[mask].reset_index(drop=True), k, dist, cap)
            grid.append(row)
    best = max(grid, key=lambda r: r["half_a"]["f1"])
    dflt = next(r for r in grid if r["k"] == default[0] and r["max_distance"] == default[1])
    return {
        "files": len(lab),
        "patients": len(patients),
        "halves": {"a_patients": len(half_a), "b_patients": len(patients) - len(half_a), "seed": SEED},
        "max_group": cap,
        "grid": grid,
        "chosen_on_half_a": {"k": best["k"], "max_distance": best["max_distance"], "half_b": best["half_b"]},
        "config_default": {"k": default[0], "max_distance": default[1], "half_b": dflt["half_b"], "all": dflt["all"]},
        "phash_near_duplicates_baseline": lgg_phash_baseline(root, lab),
        "note": "pairwise scores count every pair of slices of one patient, also the top and bottom of the head "
        "that no slice-to-slice linkage can join; adjacent_recall is the leakage-relevant number",
    }


def lgg_embeddings(root: Path, files: list[str], work: Path, threads: int) -> np.ndarray:
    """Pooled EfficientNet-Lite0 (offline ImageNet weights) features of lgg-flair slices (0.5-99.5 percentile
    scaling, 192 px bilinear), cached as ``work/lgg_embeddings.npy``."""
    import torch
    from PIL import Image

    from brainmri.config import load_config
    from brainmri.io.reader import read_image
    from brainmri.models import create_model
    from brainmri.utils import setup_torch

    cached = work / "lgg_embeddings.npy"
    if cached.is_file() and len(np.load(cached)) == len(files):
        return np.load(cached)
    setup_torch(threads)
    model = create_model(load_config(REPO / "configs" / "cpu-fast.yaml").model, 4).eval()

    def load(f: str) -> np.ndarray:
        a = read_image(root / f).array
        lo, hi = np.percentile(a, [0.5, 99.5])
        a = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
        return np.asarray(Image.fromarray(a).resize((192, 192), Image.BILINEAR), np.float32)

    x = np.stack([load(f) for f in files])
    with torch.no_grad():
        batches = [torch.from_numpy(x[s : s + 64]).unsqueeze(1) for s in range(0, len(x), 64)]
        feats = [model.forward_features(b).numpy() for b in batches]
    out = np.concatenate(feats)
    np.save(cached, out)
    return out


def lgg_embedding_baseline(root: Path, work: Path, threads: int, cap: int) -> dict[str, Any]:
    """The same mutual-kNN linkage (no distance limit) on cosine distances of backbone embeddings, against
    the model-free descriptors; and how often each one's nearest neighbour is a slice of the same patient."""
    from brainmri.data.grouping import capped_union, manifest_descriptors, pair_distances, pairwise_scores

    lab = pd.read_csv(root / "labels.csv")
    pat, sl = lab["patient"].to_numpy(), lab["slice"].to_numpy()
    emb = lgg_embeddings(root, lab["file"].tolist(), work, threads).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    frame = pd.DataFrame({"path": [str(root / f) for f in lab["file"]], "md5": lab["file"]})
    desc = manifest_descriptors(frame, work / "lgg_descriptors.npz")
    out: dict[str, Any] = {}
    for name, dist in (("embedding_cosine", 1.0 - emb @ emb.T), ("descriptor", pair_distances(desc, desc))):
        np.fill_diagonal(dist, np.inf)
        row: dict[str, Any] = {"nearest_neighbour_same_patient": round(float((pat[dist.argmin(1)] == pat).mean()), 4)}
        for k in GRID_K:
            nbr = np.argsort(dist, axis=1)[:, :k]
            knn = np.zeros(dist.shape, bool)
            np.put_along_axis(knn, nbr, True, axis=1)
            i, j = np.nonzero(np.triu(knn & knn.T, 1))
            order = np.argsort(dist[i, j], kind="stable")
            g = capped_union(len(dist), i[order], j[order], cap)
            s = pairwise_scores(pat, g)
            row[f"k{k}"] = {m: round(float(s[m]), 4) for m in ("precision", "recall", "f1")}
            row[f"k{k}"]["adjacent_recall"] = round(adjacent_recall(pat, sl, g), 4)
        out[name] = row
    out["note"] = "all slices, no distance limit, the split's cap; embeddings of 192 px percentile-scaled slices"
    return out


# ----------------------------------------------------------------------------- brain-tumor-mri


def part_of(split: dict[str, Any]) -> dict[str, str]:
    return {i: name for name in ("train", "val", "test") for i in split[name]}


def scan_split(manifest: Path, work: Path) -> tuple[dict[str, Any], pd.DataFrame, np.ndarray, np.ndarray]:
    """(split with group_by scan, the kept manifest rows, their scan groups, their near-duplicate clusters)."""
    from brainmri.config import load_config
    from brainmri.data.grouping import manifest_descriptors
    from brainmri.data.manifest import read_manifest
    from brainmri.data.split import _groups, make_split

    cfg = load_config(None, ["split.group_by=scan", f"paths.work_dir={work}"])
    df = read_manifest(manifest)
    cache = work / "btm_descriptors.npz"
    split = make_split(
        df, cfg.split, cfg.audit, cfg.data.classes, str(manifest), "", lambda f: manifest_descriptors(f, cache)
    )
    # the groups themselves (recomputed the way make_split does, over the rows it kept)
    kept_ids = set(split["train"]) | set(split["val"]) | set(split["test"])
    from brainmri.data.duplicates import duplicate_graph

    frame = df[df["id"].isin(kept_ids)].sort_values("id").reset_index(drop=True)
    graph = duplicate_graph(frame, cfg.audit.near_threshold)
    everything = np.ones(len(frame), bool)
    groups, _ = _groups(frame, graph.cluster, everything, cfg.split, lambda f: manifest_descriptors(f, cache))
    return split, frame, groups, graph.cluster


def cross_pairs(frame: pd.DataFrame, groups: np.ndarray, old: dict[str, str], new: dict[str, str]) -> dict[str, Any]:
    """Same-label pairs at pHash distance 6..10 that the old split puts in different parts."""
    from brainmri.data.duplicates import hash_words, pairs_within

    i, j, d = pairs_within(hash_words(frame["phash"].tolist()), 10)
    ids = frame["id"].to_numpy()
    lab = frame["label"].to_numpy()
    out = {}
    for dist in (6, 8, 10):
        m = (d == dist) & (lab[i] == lab[j])
        a, b = ids[i[m]], ids[j[m]]
        crossed = np.array([old.get(x) != old.get(y) for x, y in zip(a, b, strict=True)], bool)
        together = groups[i[m]] == groups[j[m]]
        still = np.array([new.get(x) != new.get(y) for x, y in zip(a, b, strict=True)], bool)
        out[str(dist)] = {
            "same_label_pairs": int(m.sum()),
            "old_split_crossing": int(crossed.sum()),
            "of_those_now_one_scan_group": int((crossed & together).sum()),
            "new_split_crossing": int(still.sum()),
        }
    return out


def file_number_locality(frame: pd.DataFrame, groups: np.ndarray, near: np.ndarray) -> dict[str, Any]:
    """A proxy for "same scan" without patient ids: the share of same-group pairs whose Kaggle file numbers
    (``Tr-gl_0514`` -> 514) differ by at most 5, for the near-duplicate clusters, the scan groups and random
    pairs of one size and label (the file order of this set partly follows the source's scan order)."""
    num = frame["id"].str.extract(r"_(\d+)\.[A-Za-z]+$")[0].astype(float).to_numpy()
    bucket = (frame["width"].astype(str) + "x" + frame["height"].astype(str) + frame["label"]).to_numpy()
    out = {}
    for name, lab in (("near_duplicate_clusters", near), ("scan_groups", groups), ("random_same_size_label", bucket)):
        i, j = np.nonzero(np.triu(lab[:, None] == lab[None, :], 1))
        gap = np.abs(num[i] - num[j])
        out[name] = {"pairs": len(i), "share_file_number_gap_le_5": round(float((gap <= 5).mean()), 4)}
    return out


def btm_study(manifest: Path, old_split_path: Path, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from brainmri.data.grouping import group_sizes

    t0 = time.perf_counter()
    split, frame, groups, near = scan_split(manifest, work)
    seconds = time.perf_counter() - t0
    old = json.loads(old_split_path.read_text())
    po, pn = part_of(old), part_of(split)
    gid = dict(zip(frame["id"], groups, strict=True))
    named = []
    for a, b in NAMED_PAIRS:
        ia, ib = (f"brain-tumor-mri/Training/{x}.jpg" for x in (a, b))
        named.append({"a": a, "b": b, "old_split": [po.get(ia), po.get(ib)], "new_split": [pn.get(ia), pn.get(ib)],
                      "one_scan_group": bool(gid.get(ia) is not None and gid.get(ia) == gid.get(ib))})  # fmt: skip
    sizes = group_sizes(groups)
    labels = frame["label"].to_numpy()
    mixed = int(sum(len(set(labels[groups == g])) > 1 for g in np.unique(groups)))
    result = {
        "manifest": str(manifest),
        "files_grouped": len(frame),
        "split_seconds_with_descriptors": round(seconds, 1),
        "params": split["params"],
        "groups": sizes,
        "groups_with_mixed_labels": mixed,
        "near_duplicate_clusters_in_same_rows": split["params"]["clusters"],
        "named_pairs": named,
        "cross_pairs_by_phash_distance": cross_pairs(frame, groups, po, pn),
        "file_number_locality": file_number_locality(frame, groups, near),
        "parts": {k: {"old": len(old[k]), "new": len(split[k])} for k in ("train", "val", "test")},
    }
    return result, split, gid


# ----------------------------------------------------------------------------- headline metrics


def features(cache_dir: Path, frame: pd.DataFrame, work: Path, threads: int) -> np.ndarray:
    """Pooled EfficientNet-Lite0 (offline ImageNet) features of the cached preprocessed images, by md5."""
    import torch

    from brainmri.config import load_config
    from brainmri.models import create_model
    from brainmri.preprocess.cache import PreprocessedCache
    from brainmri.utils import progress, setup_torch

    out = work / "features.npz"
    md5 = frame["md5"].tolist()
    if out.is_file():
        with np.load(out) as z:
            known = dict(zip(z["md5"].tolist(), z["f"], strict=True))
        if all(m in known for m in md5):
            print(f"features: reusing {out}", flush=True)
            return np.stack([known[m] for m in md5])
    setup_torch(threads)
    cfg = load_config(REPO / "configs" / "cpu-fast.yaml")
    model = create_model(cfg.model, len(cfg.data.classes)).eval().to(memory_format=torch.channels_last)
    cache = PreprocessedCache(cache_dir)
    feats = []
    with torch.no_grad():
        for s in progress(range(0, len(md5), 64), desc="features", total=-(-len(md5) // 64), leave=True):
            x = torch.from_numpy(np.stack([cache.load(m) for m in md5[s : s + 64]])).float().div_(255).unsqueeze(1)
            feats.append(model.forward_features(x.contiguous(memory_format=torch.channels_last)).numpy())
    f = np.concatenate(feats).astype(np.float32)
    np.savez(out, md5=np.array(md5), f=f)
    return f


def train_head(f: np.ndarray, y: np.ndarray, parts: dict[str, np.ndarray]) -> np.ndarray:
    """The stage-1 recipe of configs/cpu-fast.yaml on features; returns test probabilities of the best epoch."""
    import torch

    from brainmri.config import load_config
    from brainmri.models import create_model
    from brainmri.train.losses import balanced_class_weights, build_loss
    from brainmri.train.module import warmup_cosine
    from brainmri.train.trainer import _head_epoch, _head_validation

    cfg = load_config(REPO / "configs" / "cpu-fast.yaml")
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = create_model(cfg.model.model_copy(update={"weights": "none"}), len(cfg.data.classes))
    ft = {k: torch.from_numpy(f[v]) for k, v in parts.items()}
    yt = {k: y[v] for k, v in parts.items()}
    loss_fn = build_loss(tc, model.num_classes, balanced_class_weights(yt["train"], model.num_classes))
    opt = torch.optim.AdamW(model.backbone.get_classifier().parameters(), lr=tc.stage1.lr, weight_decay=tc.weight_decay)
    total = -(-len(ft["train"]) // tc.batch_size) * tc.stage1.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 0, total))
    g = torch.Generator().manual_seed(tc.seed)
    best, best_probs = -np.inf, None
    for _ in range(tc.stage1.epochs):
        model.train()
        perm = torch.randperm(len(ft["train"]), generator=g)
        _head_epoch(model, ft["train"][perm], torch.from_numpy(yt["train"])[perm], loss_fn, opt, sched, tc.batch_size)
        score = _head_validation(model, ft["val"], yt["val"])[tc.monitor]
        if score > best:
            model.eval()
            with torch.inference_mode():
                best, best_probs = score, torch.softmax(model.forward_classifier(ft["test"]), 1).numpy()
    return best_probs


def split_test_metrics(probs: np.ndarray, y: np.ndarray, near: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import f1_score

    from brainmri.evaluate.metrics import bootstrap_counts, estimate, proportion_estimate

    pred = probs.argmax(1)
    hit = pred == y
    w = bootstrap_counts(len(y), 1000, SEED)
    f1s = [f1_score(y, pred, average="macro", sample_weight=wi) for wi in w]
    by_dist = {}
    for name, m in (("nearest_train_phash_le_8", near <= 8), ("nearest_train_phash_gt_8", near > 8)):
        by_dist[name] = {"n": int(m.sum()), "accuracy": proportion_estimate(hit[m].sum(), m.sum())}
    return {
        "n": len(y),
        "accuracy": proportion_estimate(hit.sum(), len(y)),
        "macro_f1": estimate(float(f1_score(y, pred, average="macro")), np.array(f1s)),
        "by_distance_to_training": by_dist,
    }


def headline(
    manifest: Path,
    old: dict[str, Any],
    new: dict[str, Any],
    gid: dict[str, int],
    cache_dir: Path,
    work: Path,
    threads: int,
) -> dict[str, Any]:
    from brainmri.data.duplicates import hash_words, nearest
    from brainmri.data.manifest import read_manifest

    df = read_manifest(manifest).set_index("id", drop=False)
    ids = sorted(set().union(*(set(s[k]) for s in (old, new) for k in ("train", "val", "test"))))
    frame = df.loc[ids].reset_index(drop=True)
    t0 = time.perf_counter()
    reused = (work / "features.npz").is_file()
    f = features(cache_dir, frame, work, threads)
    feat_s = time.perf_counter() - t0
    classes = old["classes"]
    y = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    pos = {i: k for k, i in enumerate(frame["id"])}
    words = hash_words(frame["phash"].tolist())
    out: dict[str, Any] = {"feature_seconds": round(feat_s, 1), "features": len(frame), "features_reused": reused,
                           "preprocessing_cache": str(cache_dir)}  # fmt: skip
    for name, split in (("old_split_near_duplicate", old), ("new_split_scan", new)):
        parts = {k: np.array([pos[i] for i in split[k]], np.int64) for k in ("train", "val", "test")}
        t0 = time.perf_counter()
        probs = train_head(f, y, parts)
        _, near = nearest(words[parts["test"]], words[parts["train"]])
        out[name] = {"train": len(parts["train"]), "val": len(parts["val"]),
                     "head_seconds": round(time.perf_counter() - t0, 1),
                     "test": split_test_metrics(probs, y[parts["test"]], near)}  # fmt: skip
        print(f"{name}: test acc {out[name]['test']['accuracy']['value']:.4f}", flush=True)
        out[name]["test_by_scan_group"] = memory_check(split, gid, probs.argmax(1) == y[parts["test"]])
    return out


def memory_check(split: dict[str, Any], gid: dict[str, int], hit: np.ndarray) -> dict[str, Any]:
    """Test accuracy of the images whose scan group also has training images, and of the rest."""
    from brainmri.evaluate.metrics import proportion_estimate

    train_groups = {gid[i] for i in split["train"] if i in gid}
    reach = np.array([gid.get(i) in train_groups for i in split["test"]], bool)
    return {
        name: {"n": int(m.sum()), "accuracy": proportion_estimate(hit[m].sum(), m.sum())}
        for name, m in (("scan_group_has_training_images", reach), ("scan_group_test_only", ~reach))
    }


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", default=str(REPO / "work" / "data" / "manifest.csv"))
    p.add_argument("--old-split", default=str(REPO / "work" / "data" / "split.json"))
    p.add_argument("--cache-dir", default=None, help="preprocessing cache (192 px, cpu-fast) for the headline run")
    p.add_argument("--lgg", default=str(SHARED / "lgg-flair"))
    p.add_argument("--work", default="/tmp/slice_groups", help="descriptor and feature caches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--embedding-baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="compare with backbone embeddings on lgg-flair (about 2 minutes on 2 busy cores)")  # fmt: skip
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "slice_groups.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from brainmri.config import load_config
    from brainmri.utils import atomic_write_json, machine_facts

    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start, load0 = time.perf_counter(), list(os.getloadavg())
    sc = load_config().split
    lgg = lgg_study(Path(args.lgg), work, sc.scan_max_group, (sc.scan_neighbours, sc.scan_max_distance))
    print(f"lgg-flair chosen on half A: {lgg['chosen_on_half_a']}", flush=True)
    if args.embedding_baseline:
        lgg["embedding_baseline"] = lgg_embedding_baseline(Path(args.lgg), work, args.threads, sc.scan_max_group)
    btm, new_split, gid = btm_study(Path(args.manifest), Path(args.old_split), work)
    print(f"brain-tumor-mri: {btm['groups']['groups']} groups, largest {btm['groups']['largest'][:5]}", flush=True)
    if args.train and args.cache_dir:
        old = json.loads(Path(args.old_split).read_text())
        head = headline(Path(args.manifest), old, new_split, gid, Path(args.cache_dir), work, args.threads)
    else:
        head = {"not_run": "--no-train or no --cache-dir given"}
    result = {
        "benchmark": "scan grouping (bench/slice_groups.py)",
        "command": " ".join([Path(sys.executable).name, "bench/slice_groups.py", *(argv or sys.argv[1:])]),
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "lgg_flair": lgg,
        "brain_tumor_mri": btm,
        "headline_stage1": head,
        "seconds": round(time.perf_counter() - t_start, 1),
        "load_avg_at_start": load0,
        "load_avg_at_end": list(os.getloadavg()),
        "machine": machine_facts(),
    }
    atomic_write_json(Path(args.out), result)
    print(f"-> {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
