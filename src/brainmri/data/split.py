"""Leakage-free train/val/test split and k folds over duplicate clusters.

Why clusters: copies of one scan (same bytes, re-encoded, resized, adjacent slices) on both sides of a
split let a model score on images it has effectively seen. Every exact (md5) and near (pHash distance
<= ``audit.near_threshold``) duplicate is joined into one cluster (connected components = union-find),
and whole clusters are assigned, so no cluster crosses train/val/test or a fold boundary.

Before assigning: unreadable files, rows of binary yes/no sets (external validation only), labels
outside ``data.classes`` and clusters with conflicting labels are excluded, and exact copies are kept
once. Every exclusion is recorded with its reason.

Assignment is a greedy stratified group split: per class, clusters (largest first, ties in a seeded
random order) go to the split whose class count is furthest below its target. This hits the requested
fractions per class to within one cluster and is deterministic for a seed.

With ``split.group_by: scan`` the groups assigned whole are the duplicate clusters joined with the other
slices of their scan series (``brainmri.data.grouping``: mutual nearest neighbours on cheap image
descriptors, within one image size and label, under a group-size cap), so adjacent slices that are
further apart than the near-duplicate threshold stay on one side too.

The split file records the groups it assigned (``groups``: every group of two or more assigned images,
singletons left out), so evaluation can resample whole groups: adjacent slices of one scan are not
independent samples, and a per-image bootstrap on them gives confidence intervals that are too narrow
(:func:`group_labels`).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmri.config import AuditConfig, SplitConfig
from brainmri.data.duplicates import DuplicateGraph, duplicate_graph, labels_conflict
from brainmri.errors import DataError
from brainmri.labels import TUMOR

SPLIT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
REQUIRED_KEYS = (
    "version",
    "manifest",
    "manifest_sha256",
    "seed",
    "classes",
    "train",
    "val",
    "test",
    "folds",
    "excluded",
)

REASON_CATEGORIES = (
    "unreadable",
    "binary set",
    "unknown label",
    "label conflict",
    "exact duplicate",
    "duplicate of test",
)


def reason_category(reason: str) -> str:
    """The category an exclusion reason belongs to (its text before the first ':' or ' of ')."""
    for cat in REASON_CATEGORIES:
        if reason.startswith(cat):
            return cat
    return reason.split(":")[0]


def assign_groups(
    labels: np.ndarray, sizes: np.ndarray, fractions: list[float], rng: np.random.Generator
) -> np.ndarray:
    """Greedy stratified assignment of groups to ``len(fractions)`` bins; returns the bin per group.

    Per label: groups sorted by size (largest first, ties in random order) go one by one to the bin with
    the largest deficit ``target - count`` among bins with a positive fraction.
    """
    out = np.full(len(labels), -1, np.int64)
    fr = np.asarray(fractions, np.float64)
    usable = fr > 0
    if not usable.any():
        raise ValueError("at least one fraction must be positive")
    for label in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        idx = idx[np.argsort(-sizes[idx], kind="stable")]
        target = fr * sizes[idx].sum()
        count = np.zeros(len(fr), np.float64)
        for g in idx:
            deficit = np.where(usable, target - count, -np.inf)
            b = int(np.argmax(deficit))
            out[g] = b
            count[b] += sizes[g]
    return out


def make_split(
    df: pd.DataFrame,
    split_cfg: SplitConfig,
    audit: AuditConfig,
    classes: Sequence[str],
    manifest: str = "",
    manifest_sha256: str = "",
    descriptors: Callable[[pd.DataFrame], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Compute the split dict (schema in docs/architecture.md) from a manifest frame.

    ``split_cfg`` is ``cfg.split``, ``audit`` gives the near-duplicate threshold (``cfg.audit``),
    ``classes`` the training classes (``cfg.data.classes``). ``descriptors`` (group_by scan only) maps
    manifest rows to scan descriptors (default: decode the files, no cache).
    """
    classes = list(classes)
    frame = df.sort_values("id", kind="stable").reset_index(drop=True)
    excluded = _unusable_rows(frame, classes)
    elig = frame[~frame["id"].isin(excluded)].reset_index(drop=True)
    graph = duplicate_graph(elig, audit.near_threshold)
    ids = np.array(elig["id"].tolist(), dtype=object)  # Python str, so lists serialise as plain JSON strings
    lab = elig["label"].to_numpy(str)
    n_conflict_clusters = _exclude_label_conflicts(graph, ids, lab, excluded)
    keep = _keep_one_exact_copy(elig, ids, excluded, split_cfg.keep_source_test)
    cluster, scan_info = _groups(elig, graph.cluster, keep, split_cfg, descriptors)
    rng = np.random.default_rng(split_cfg.seed)
    assignment, moved_out = _assign_splits(elig, ids, cluster, keep, excluded, split_cfg, rng, manifest)
    trainval = (assignment == 0) | (assignment == 1)
    if trainval.sum() == 0:
        raise DataError(f"{manifest or 'manifest'}: no images left for train/val after exclusions")
    fold_of = np.full(len(elig), -1, np.int64)
    _assign_rows(trainval, cluster, lab, [1.0 / split_cfg.folds] * split_cfg.folds, rng, fold_of, 0)
    folds = [
        {
            "train": sorted(ids[trainval & (fold_of != k)].tolist()),
            "val": sorted(ids[trainval & (fold_of == k)].tolist()),
        }
        for k in range(split_cfg.folds)
    ]
    parts = {name: sorted(ids[assignment == k].tolist()) for k, name in enumerate(SPLIT_NAMES)}
    return {
        "version": SPLIT_VERSION,
        "manifest": manifest,
        "manifest_sha256": manifest_sha256,
        "seed": split_cfg.seed,
        "classes": classes,
        **parts,
        "folds": folds,
        "excluded": [{"id": k, "reason": excluded[k]} for k in sorted(excluded)],
        "groups": _group_lists(ids, cluster, assignment >= 0),
        "params": {
            "near_threshold": audit.near_threshold,
            "hash_size": audit.hash_size,
            **split_cfg.model_dump(include={"val_fraction", "test_fraction", "folds", "keep_source_test"}),
            "clusters": len(set(graph.cluster[keep].tolist())),
            "label_conflict_clusters": n_conflict_clusters,
            "moved_out_of_train_for_test": moved_out,
            **scan_info,
        },
    }


def _scan_group_cap(kept: pd.DataFrame, split_cfg: SplitConfig) -> int:
    """``split.scan_max_group``, lowered on small data sets to ``scan_max_class_share`` of the smallest class
    (at least 1: no merge).

    Why: on a few dozen similar-looking images (phantoms, a pilot site's first scans) mutual-kNN links
    would merge whole classes into a handful of groups, and the val/test parts would come out empty. On the
    Kaggle set (≥ 1,300 images a class) the configured cap applies unchanged."""
    smallest = int(kept["label"].value_counts().min()) if len(kept) else 0
    return max(1, min(split_cfg.scan_max_group, int(smallest * split_cfg.scan_max_class_share)))


def _groups(
    elig: pd.DataFrame,
    cluster: np.ndarray,
    keep: np.ndarray,
    split_cfg: SplitConfig,
    descriptors: Callable[[pd.DataFrame], np.ndarray] | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(group per row, params to record): the duplicate clusters, or with ``group_by: scan`` those clusters
    joined with the other slices of their scan series among the kept rows (same width, height and label)."""
    if split_cfg.group_by != "scan":
        return cluster, {"group_by": split_cfg.group_by}
    from brainmri.data.grouping import descriptor_digest, group_sizes, manifest_descriptors, scan_groups

    rows = np.flatnonzero(keep)
    kept = elig.iloc[rows].reset_index(drop=True)
    desc = descriptors(kept) if descriptors is not None else manifest_descriptors(kept)
    buckets = (kept["width"].astype(str) + "x" + kept["height"].astype(str) + ":" + kept["label"]).to_numpy()
    cap = _scan_group_cap(kept, split_cfg)
    scan = scan_groups(
        desc, split_cfg.scan_neighbours, split_cfg.scan_max_distance, cap, buckets=buckets, initial=cluster[rows]
    )
    out = np.arange(len(elig), dtype=np.int64) + len(rows)  # excluded rows: one group each (never assigned)
    out[rows] = scan
    sizes = group_sizes(scan)
    info = {
        "group_by": split_cfg.group_by,
        "scan_neighbours": split_cfg.scan_neighbours,
        "scan_max_distance": split_cfg.scan_max_distance,
        "scan_max_group": split_cfg.scan_max_group,
        "scan_max_group_effective": cap,
        "scan_groups": sizes["groups"],
        "scan_groups_largest": sizes["largest"][:5],
        "scan_descriptors_sha256": descriptor_digest(desc),
    }
    return out, info


def _unusable_rows(frame: pd.DataFrame, classes: list[str]) -> dict[str, str]:
    """id -> reason for unreadable files, rows of binary yes/no sets and labels outside ``classes``."""
    excluded: dict[str, str] = {}
    readable = frame["readable"].to_numpy(bool)
    for rid, err in zip(frame["id"][~readable], frame["error"][~readable], strict=True):
        excluded[rid] = err if err.startswith("unreadable") else (f"unreadable: {err}" if err else "unreadable")
    binary_sources = set(frame.loc[frame["label"] == TUMOR, "source"])
    for rid, src in zip(frame["id"], frame["source"], strict=True):
        if rid not in excluded and src in binary_sources:
            excluded[rid] = f"binary set: source '{src}' has yes/no labels (external validation only, not 4-class)"
    for rid, lab in zip(frame["id"], frame["label"], strict=True):
        if rid not in excluded and lab not in classes:
            excluded[rid] = f"unknown label: '{lab}' is not one of {classes}"
    return excluded


def _exclude_label_conflicts(graph: DuplicateGraph, ids: np.ndarray, lab: np.ndarray, excluded: dict[str, str]) -> int:
    """Exclude every member of a duplicate cluster whose labels conflict; returns the number of such clusters."""
    n_conflict_clusters = 0
    for rows in graph.clusters(min_size=2):
        if labels_conflict(lab[rows].tolist()):
            n_conflict_clusters += 1
            names = ", ".join(sorted(set(lab[rows].tolist())))
            for r in rows:
                excluded[ids[r]] = f"label conflict: duplicate cluster of {len(rows)} files labelled {names}"
    return n_conflict_clusters


def _keep_one_exact_copy(
    elig: pd.DataFrame, ids: np.ndarray, excluded: dict[str, str], keep_source_test: bool
) -> np.ndarray:
    """Mask of rows still kept once exact copies beyond the first (by id; test copy first if asked) are dropped."""
    keep = ~pd.Series(ids).isin(excluded).to_numpy()
    md5 = elig["md5"].to_numpy(str)
    source_split = elig["source_split"].to_numpy(str)
    first_of: dict[str, str] = {}
    order = np.flatnonzero(keep)
    if keep_source_test:  # keep the test copy of an exact duplicate, drop the training copies
        order = order[np.argsort(source_split[order] != "test", kind="stable")]
    for r in order:
        first = first_of.setdefault(md5[r], ids[r])
        if first != ids[r]:
            excluded[ids[r]] = f"exact duplicate of {first}"
            keep[r] = False
    return keep


def _group_lists(ids: np.ndarray, cluster: np.ndarray, assigned: np.ndarray) -> list[list[str]]:
    """The assigned groups of two or more images, each a sorted id list, in order of their first id."""
    rows = np.flatnonzero(assigned)
    members: dict[int, list[str]] = {}
    for r in rows:
        members.setdefault(int(cluster[r]), []).append(str(ids[r]))
    return sorted(sorted(m) for m in members.values() if len(m) > 1)


def group_labels(split: dict[str, Any], ids: Sequence[str]) -> np.ndarray | None:
    """One integer per id: ids of one recorded group share it, any other id gets its own.

    ``None`` for a split file written before groups were recorded (callers then resample images and
    say so). Used for cluster-bootstrap CIs on the test and validation parts.
    """
    groups = split.get("groups")
    if groups is None:
        return None
    of = {i: g for g, members in enumerate(groups) for i in members}
    first_free = len(groups)
    return np.array([of.get(i, first_free + k) for k, i in enumerate(ids)], dtype=np.int64)


def _assign_splits(
    elig: pd.DataFrame,
    ids: np.ndarray,
    cluster: np.ndarray,
    keep: np.ndarray,
    excluded: dict[str, str],
    split_cfg: SplitConfig,
    rng: np.random.Generator,
    manifest: str,
) -> tuple[np.ndarray, int]:
    """(split per row: 0 train, 1 val, 2 test, -1 excluded; rows moved out of train/val for duplicating test).

    With ``keep_source_test`` the source's test rows are the test split and clusters reaching into them
    leave train/val; otherwise whole clusters are drawn into all three splits. ``keep`` is updated.
    """
    lab = elig["label"].to_numpy(str)
    assignment = np.full(len(elig), -1, np.int64)
    train_frac = 1.0 - split_cfg.val_fraction - split_cfg.test_fraction
    if not split_cfg.keep_source_test:
        if train_frac <= 0:
            raise DataError(
                f"split.val_fraction + split.test_fraction = {split_cfg.val_fraction + split_cfg.test_fraction} "
                "leaves no training data"
            )
        _assign_rows(
            keep, cluster, lab, [train_frac, split_cfg.val_fraction, split_cfg.test_fraction], rng, assignment, 0
        )
        return assignment, 0
    is_test = keep & (elig["source_split"].to_numpy(str) == "test")
    if not is_test.any():
        raise DataError(
            f"{manifest or 'manifest'}: split.keep_source_test is set but no kept row has source_split 'test' "
            "(import a Kaggle-style root with a Testing/ folder, or drop --keep-source-test)"
        )
    assignment[is_test] = 2
    test_first: dict[int, str] = {}
    for r in np.flatnonzero(is_test):
        test_first.setdefault(int(cluster[r]), ids[r])
    moved_out = 0
    for r in np.flatnonzero(keep & ~is_test):
        if int(cluster[r]) in test_first:
            excluded[ids[r]] = f"duplicate of test image {test_first[int(cluster[r])]} (keep_source_test)"
            keep[r] = False
            moved_out += 1
    fractions = [max(train_frac, 0.0), split_cfg.val_fraction]
    if sum(fractions) <= 0:
        raise DataError("split fractions leave nothing for train/val: lower split.val_fraction/test_fraction")
    _assign_rows(keep & ~is_test, cluster, lab, [f / sum(fractions) for f in fractions], rng, assignment, offset=0)
    return assignment, moved_out


def _assign_rows(
    mask: np.ndarray,
    cluster: np.ndarray,
    labels: np.ndarray,
    fractions: list[float],
    rng: np.random.Generator,
    out: np.ndarray,
    offset: int,
) -> None:
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        return
    groups, inverse = np.unique(cluster[rows], return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(groups))
    glabel = np.empty(len(groups), dtype=labels.dtype)
    glabel[inverse] = labels[rows]
    bins = assign_groups(glabel, sizes, fractions, rng)
    out[rows] = bins[inverse] + offset


# --------------------------------------------------------------------------------------------- files


def splits_final(split: dict[str, Any]) -> list[dict[str, list[str]]]:
    """nnU-Net style ``splits_final.json`` content: one ``{"train", "val"}`` per fold."""
    return [{"train": f["train"], "val": f["val"]} for f in split["folds"]]


def read_split(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``split.json``; DataError naming the file and the problem otherwise."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: split file not found (create it with `brainmri data split`)")
    try:
        split = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not valid JSON ({exc})") from None
    validate_split(split, str(p))
    return split


def validate_split(split: Any, name: str = "split") -> None:
    """Check the split schema and its invariants (disjoint splits, folds partition train+val)."""
    if not isinstance(split, dict):
        raise DataError(f"{name}: top level must be an object")
    missing = [k for k in REQUIRED_KEYS if k not in split]
    if missing:
        raise DataError(f"{name}: missing keys {', '.join(missing)}")
    if split["version"] != SPLIT_VERSION:
        raise DataError(f"{name}: unsupported version {split['version']!r} (expected {SPLIT_VERSION})")
    if not isinstance(split["classes"], list) or not all(isinstance(c, str) for c in split["classes"]):
        raise DataError(f"{name}: 'classes' must be a list of strings")

    def ids_of(value: Any, where: str) -> set[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(f"{name}: '{where}' must be a list of id strings")
        s = set(value)
        if len(s) != len(value):
            dup = next(v for v, c in Counter(value).items() if c > 1)
            raise DataError(f"{name}: '{where}' lists id {dup!r} twice")
        return s

    sets = {k: ids_of(split[k], k) for k in SPLIT_NAMES}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sets[a] & sets[b]
        if both:
            raise DataError(f"{name}: id {sorted(both)[0]!r} is in both '{a}' and '{b}'")
    if not isinstance(split["excluded"], list):
        raise DataError(f"{name}: 'excluded' must be a list")
    for k, e in enumerate(split["excluded"]):
        if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not isinstance(e.get("reason"), str):
            raise DataError(f"{name}: excluded[{k}] must be an object with string 'id' and 'reason'")
        if any(e["id"] in s for s in sets.values()):
            raise DataError(f"{name}: excluded id {e['id']!r} also appears in a split")
    trainval = sets["train"] | sets["val"]
    folds = split["folds"]
    if not isinstance(folds, list) or len(folds) == 0:
        raise DataError(f"{name}: 'folds' must be a non-empty list")
    seen_val: set[str] = set()
    for k, f in enumerate(folds):
        if not isinstance(f, dict) or "train" not in f or "val" not in f:
            raise DataError(f"{name}: folds[{k}] must be an object with 'train' and 'val'")
        tr, va = ids_of(f["train"], f"folds[{k}].train"), ids_of(f["val"], f"folds[{k}].val")
        if tr & va:
            raise DataError(f"{name}: folds[{k}]: id {sorted(tr & va)[0]!r} is in both train and val")
        if tr | va != trainval:
            odd = sorted((tr | va) ^ trainval)[0]
            raise DataError(f"{name}: folds[{k}] does not partition train+val (id {odd!r})")
        if va & seen_val:
            raise DataError(f"{name}: id {sorted(va & seen_val)[0]!r} is a validation id in two folds")
        seen_val |= va
    if seen_val != trainval:
        raise DataError(f"{name}: fold validation sets do not cover train+val (id {sorted(trainval - seen_val)[0]!r})")
    _validate_groups(split.get("groups"), set().union(*sets.values()), name)


def _validate_groups(groups: Any, assigned: set[str], name: str) -> None:
    """``groups`` (optional): lists of assigned ids, each id in at most one group."""
    if groups is None:
        return
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise DataError(f"{name}: 'groups' must be a list of id lists")
    seen: set[str] = set()
    for k, g in enumerate(groups):
        members = set(g)
        if not all(isinstance(i, str) for i in g) or len(members) != len(g):
            raise DataError(f"{name}: groups[{k}] must list distinct id strings")
        if members & seen:
            raise DataError(f"{name}: id {sorted(members & seen)[0]!r} is in two groups")
        if members - assigned:
            raise DataError(f"{name}: groups[{k}] names id {sorted(members - assigned)[0]!r}, which no split holds")
        seen |= members


_FOLD_RE = re.compile(r"^fold(\d+)[:/](train|val)$")


def split_ids(split: dict[str, Any], which: str) -> list[str]:
    """Ids of ``which``: ``train``, ``val``, ``test``, ``trainval`` or ``fold<k>:train`` / ``fold<k>:val``."""
    if which in SPLIT_NAMES:
        return list(split[which])
    if which == "trainval":
        return sorted(split["train"] + split["val"])
    m = _FOLD_RE.match(which)
    if m:
        k = int(m.group(1))
        if k >= len(split["folds"]):
            raise DataError(f"fold {k} does not exist: the split has {len(split['folds'])} folds (0..)")
        return list(split["folds"][k][m.group(2)])
    raise DataError(f"unknown split part '{which}': use train, val, test, trainval or fold<k>:train|val")


def split_frame(manifest_df: pd.DataFrame, split: dict[str, Any], which: str) -> pd.DataFrame:
    """Manifest rows of one split part (see :func:`split_ids`), in the split's id order, index reset.

    Raises DataError when the split names ids the manifest lacks (the manifest changed after splitting).
    """
    ids = split_ids(split, which)
    indexed = manifest_df.set_index("id", drop=False)
    missing = [i for i in ids if i not in indexed.index]
    if missing:
        raise DataError(
            f"split part '{which}' names {len(missing)} ids missing from the manifest (first: {missing[0]!r}); "
            "the manifest changed since the split was made: re-run `brainmri data split`"
        )
    return indexed.loc[ids].reset_index(drop=True)


# --------------------------------------------------------------------------------------------- data card


def data_card(split: dict[str, Any], manifest_df: pd.DataFrame) -> dict[str, Any]:
    """Counts per class and split (and fold), and what was removed and why."""
    label = dict(zip(manifest_df["id"], manifest_df["label"], strict=True))
    classes = split["classes"]

    def per_class(ids: list[str]) -> dict[str, int]:
        c = Counter(label.get(i, "?") for i in ids)
        out = {k: int(c.get(k, 0)) for k in classes}
        out["total"] = len(ids)
        return out

    excl_by_cat: dict[str, Counter] = {}
    for e in split["excluded"]:
        excl_by_cat.setdefault(reason_category(e["reason"]), Counter())[label.get(e["id"], "?")] += 1
    return {
        "manifest": split["manifest"],
        "manifest_sha256": split["manifest_sha256"],
        "files_in_manifest": len(manifest_df),
        "seed": split["seed"],
        "params": split.get("params", {}),
        "splits": {k: per_class(split[k]) for k in SPLIT_NAMES},
        "folds": [{"train": per_class(f["train"]), "val": per_class(f["val"])} for f in split["folds"]],
        "excluded": {
            cat: {"total": int(sum(c.values())), "per_label": dict(sorted(c.items()))}
            for cat, c in sorted(excl_by_cat.items())
        },
        "excluded_total": len(split["excluded"]),
    }


def data_card_markdown(card: dict[str, Any], classes: list[str]) -> str:
    p = card["params"]
    lines = [
        "# Data card",
        "",
        f"Manifest: `{card['manifest']}` ({card['files_in_manifest']} files, sha256 `{card['manifest_sha256'][:16]}…`)",
        f"Seed {card['seed']}; near-duplicate threshold: pHash distance <= {p.get('near_threshold')} "
        f"({p.get('hash_size', 8) ** 2} bits); {p.get('clusters')} groups (a duplicate cluster or a single image), "
        "each assigned whole.",
        f"Fractions: val {p.get('val_fraction')}, test {p.get('test_fraction')}; {p.get('folds')} folds over "
        f"train+val; keep_source_test: {p.get('keep_source_test')}.",
        *(
            [
                f"Grouped by scan: the clusters joined with the other slices of their scan series into "
                f"{p.get('scan_groups')} groups (largest {p.get('scan_groups_largest')}; k {p.get('scan_neighbours')}, "
                f"max distance {p.get('scan_max_distance')}, cap {p.get('scan_max_group')}); each group assigned whole."
            ]
            if p.get("group_by") == "scan"
            else []
        ),
        "",
        "## Images per class and split",
        "",
        "| split | " + " | ".join(classes) + " | total |",
        "|---|" + "---|" * (len(classes) + 1),
    ]
    for name, counts in card["splits"].items():
        lines.append(f"| {name} | " + " | ".join(str(counts[c]) for c in classes) + f" | {counts['total']} |")
    for k, f in enumerate(card["folds"]):
        v = f["val"]
        lines.append(f"| fold{k} val | " + " | ".join(str(v[c]) for c in classes) + f" | {v['total']} |")
    lines += ["", "## Removed before splitting", "", "| reason | files | per label |", "|---|---|---|"]
    for cat, info in card["excluded"].items():
        per = ", ".join(f"{k} {v}" for k, v in info["per_label"].items())
        lines.append(f"| {cat} | {info['total']} | {per} |")
    lines += [
        "",
        f"{card['excluded_total']} files removed in all (each with its reason in `split.json` → `excluded`). "
        f"Clusters with conflicting labels: {p.get('label_conflict_clusters')}; files moved out of train/val "
        f"because they duplicate a test image: {p.get('moved_out_of_train_for_test')}.",
        "",
    ]
    return "\n".join(lines)


def run_split(
    manifest_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    split_cfg: SplitConfig,
    audit: AuditConfig,
    classes: Sequence[str],
) -> dict[str, Any]:
    """Split a manifest file; write split.json, splits_final.json and data_card.{md,json} beside ``out_path``.

    Sections as in :func:`make_split`. The command layer saves the resolved config next to them.
    """
    from brainmri.data.audit import file_sha256
    from brainmri.data.manifest import read_manifest
    from brainmri.utils import atomic_write_json, atomic_write_text

    df = read_manifest(manifest_path)
    cache = Path(out_path).parent / "scan_descriptors.npz"

    def descriptors(frame: pd.DataFrame) -> np.ndarray:
        from brainmri.data.grouping import manifest_descriptors

        return manifest_descriptors(frame, cache)

    split = make_split(
        df,
        split_cfg,
        audit,
        classes,
        manifest=str(manifest_path),
        manifest_sha256=file_sha256(manifest_path),
        descriptors=descriptors,
    )
    validate_split(split, str(out_path))
    out = Path(out_path)
    atomic_write_json(out, split)
    atomic_write_json(out.parent / "splits_final.json", splits_final(split))
    card = data_card(split, df)
    atomic_write_json(out.parent / "data_card.json", card)
    atomic_write_text(out.parent / "data_card.md", data_card_markdown(card, split["classes"]))
    return split
