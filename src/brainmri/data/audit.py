"""Duplicate and leakage audit of a manifest (optionally against a second manifest).

Why: public brain MRI sets are merges of older sets and hold the same scan several times (byte-identical
copies under other names, re-encoded or resized copies, adjacent slices). A split that puts copies of
one scan on both sides inflates accuracy. The audit measures this before any split is made:

- exact duplicate clusters (same md5);
- near duplicate pairs and clusters (pHash Hamming distance <= ``audit.near_threshold``);
- duplicate clusters spanning source splits (a Kaggle ``Testing/`` image that is also in ``Training/``);
- clusters whose members carry conflicting labels;
- unreadable files;
- with ``against``: the images of this manifest that already occur (exactly or nearly) in another one.

Outputs: ``audit.json`` (everything, machine readable), ``audit.txt`` (summary) and
``near_duplicates.png`` (a montage of near pairs below and just above the threshold, to check it by eye).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmri.config import AuditConfig
from brainmri.data.duplicates import (
    DuplicateGraph,
    distance_histograms,
    duplicate_graph,
    hash_words,
    labels_conflict,
    nearest,
)
from brainmri.utils import atomic_path, atomic_write_json, atomic_write_text, progress

HISTOGRAM_MAX = 16
"""audit.json keeps the number of pairs of different files at each pHash distance up to this."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _cluster_record(frame: pd.DataFrame, rows: np.ndarray) -> dict[str, Any]:
    sub = frame.iloc[rows]
    return {
        "ids": sub["id"].tolist(),
        "labels": sorted(set(sub["label"])),
        "source_splits": sorted(set(sub["source_split"])),
        "sources": sorted(set(sub["source"])),
    }


def audit_manifest(df: pd.DataFrame, cfg: AuditConfig, against: pd.DataFrame | None = None) -> dict[str, Any]:
    """All audit counts and lists for ``df`` (see the module docstring); JSON-serialisable."""
    threshold = int(cfg.near_threshold)
    graph = duplicate_graph(df, threshold)
    frame = graph.frame
    unreadable = frame.loc[~frame["readable"], ["id", "path", "error"]]
    clusters = _clusters(graph)
    result: dict[str, Any] = {
        "version": 1,
        "near_threshold": threshold,
        "hash_size": int(cfg.hash_size),
        "files": len(frame),
        "readable": int(frame["readable"].sum()),
        "per_label": {k: int(v) for k, v in sorted(Counter(frame["label"]).items())},
        "unreadable": {"count": len(unreadable), "files": unreadable.to_dict(orient="records")},
        "exact": _exact_duplicates(frame),
        "near": _near_pairs(graph),
        "clusters": clusters["clusters"],
        "distance_histogram": _distance_histogram(graph, threshold),
        "cross_source_split": clusters["cross_source_split"],
        "label_conflicts": clusters["label_conflicts"],
        "against": None,
    }
    if against is not None:
        result["against"] = audit_against(frame, against, threshold)
    result["_graph"] = graph  # removed before writing; used for the montage
    return result


def _distance_histogram(graph: DuplicateGraph, threshold: int) -> dict[str, dict[str, int]]:
    """Pairs of different files (and of those, pairs with different labels) at each pHash distance."""
    frame, hashed = graph.frame, graph.hashed
    hist_max = max(HISTOGRAM_MAX, threshold + 4)
    all_pairs, cross = distance_histograms(
        hash_words(frame["phash"].iloc[hashed].tolist()),
        hist_max,
        pd.factorize(frame["md5"].iloc[hashed])[0],
        pd.factorize(frame["label"].iloc[hashed])[0],
    )
    return {str(d): {"pairs": int(all_pairs[d]), "different_labels": int(cross[d])} for d in range(hist_max + 1)}


def _exact_duplicates(frame: pd.DataFrame) -> dict[str, Any]:
    """Clusters of files with the same md5."""
    md5 = frame["md5"]
    counts = md5[md5 != ""].value_counts()
    exact_md5 = sorted(counts.index[counts > 1])
    exact_list = [
        {"md5": digest, "ids": sorted(sub["id"]), "labels": sorted(set(sub["label"]))}
        for digest, sub in frame[md5.isin(exact_md5)].groupby("md5", sort=True)
    ]
    exact_list.sort(key=lambda r: r["ids"][0])
    return {
        "clusters": len(exact_list),
        "files_in_clusters": int(counts[counts > 1].sum()) if len(exact_list) else 0,
        "redundant_files": int((counts[counts > 1] - 1).sum()) if len(exact_list) else 0,
        "cluster_list": exact_list,
    }


def _near_pairs(graph: DuplicateGraph) -> dict[str, Any]:
    """Pairs of different files within the pHash threshold."""
    ids = graph.frame["id"].to_numpy(str)
    near_pairs = [
        {"a": ids[i], "b": ids[j], "distance": int(d)}
        for i, j, d in zip(graph.near_i, graph.near_j, graph.near_d, strict=True)
    ]
    return {
        "pairs": len(near_pairs),
        "pairs_by_distance": {str(k): int(v) for k, v in sorted(Counter(graph.near_d.tolist()).items())},
        "files_in_pairs": len(set(graph.near_i.tolist()) | set(graph.near_j.tolist())),
        "pair_list": near_pairs,
    }


def _clusters(graph: DuplicateGraph) -> dict[str, Any]:
    """``clusters``, ``cross_source_split`` and ``label_conflicts`` sections (exact + near, single linkage)."""
    frame = graph.frame
    has_near = np.zeros(len(frame), bool)
    has_near[graph.near_i] = True
    has_near[graph.near_j] = True
    records, cross_split, conflicts = [], [], []
    for rows in graph.clusters(min_size=2):
        rec = _cluster_record(frame, rows)
        rec["kind"] = "near" if has_near[rows].any() else "exact"
        records.append(rec)
        if len(set(frame["source_split"].iloc[rows])) > 1:
            cross_split.append(rec)
        if labels_conflict(frame["label"].iloc[rows].tolist()):
            conflicts.append(rec)
    return {
        "clusters": {
            "count": len(records),
            "with_near_edges": sum(r["kind"] == "near" for r in records),
            "files": int(sum(len(r["ids"]) for r in records)),
            "largest": int(max((len(r["ids"]) for r in records), default=0)),
            "redundant_files": int(sum(len(r["ids"]) - 1 for r in records)),
            "list": records,
        },
        "cross_source_split": {"count": len(cross_split), "clusters": cross_split},
        "label_conflicts": {
            "count": len(conflicts),
            "files": int(sum(len(r["ids"]) for r in conflicts)),
            "clusters": conflicts,
        },
    }


def audit_against(df: pd.DataFrame, other: pd.DataFrame, threshold: int) -> dict[str, Any]:
    """Which images of ``df`` already occur in ``other``: exact (md5) or near (pHash distance <= threshold)."""
    other = other.reset_index(drop=True)
    md5_first = other[other["md5"] != ""].sort_values("id").drop_duplicates("md5").set_index("md5")["id"]
    other_label = dict(zip(other["id"], other["label"], strict=True))
    o_ok = other["readable"].to_numpy(bool) & (other["phash"] != "").to_numpy(bool)
    o_rows = np.flatnonzero(o_ok)
    o_words = hash_words(other["phash"].iloc[o_rows].tolist())
    q_ok = df["readable"].to_numpy(bool) & (df["phash"] != "").to_numpy(bool)
    q_rows = np.flatnonzero(q_ok)
    near_idx = np.full(len(df), -1, np.int64)
    near_dist = np.full(len(df), -1, np.int64)
    if len(q_rows) and len(o_rows):
        idx, dist = nearest(hash_words(df["phash"].iloc[q_rows].tolist()), o_words)
        near_idx[q_rows] = o_rows[idx]
        near_dist[q_rows] = dist
    matches = []
    for r in range(len(df)):
        row = df.iloc[r]
        kind = None
        if row["md5"] and row["md5"] in md5_first.index:
            kind, match, dist = "exact", md5_first[row["md5"]], 0
        elif near_idx[r] >= 0 and near_dist[r] <= threshold:
            kind, match, dist = "near", other["id"].iloc[near_idx[r]], int(near_dist[r])
        if kind is None:
            continue
        match_label = other_label[match]
        matches.append(
            {
                "id": row["id"],
                "label": row["label"],
                "match": match,
                "match_label": match_label,
                "distance": dist,
                "kind": kind,
                "label_conflict": labels_conflict([row["label"], match_label]),
            }
        )
    n_exact = sum(m["kind"] == "exact" for m in matches)
    by_label: dict[str, dict[str, int]] = {}
    for m in matches:
        by_label.setdefault(m["label"], Counter())[m["match_label"]] += 1
    return {
        "other_files": len(other),
        "files": len(df),
        "exact": n_exact,
        "near": len(matches) - n_exact,
        "total": len(matches),
        "fraction": round(len(matches) / len(df), 4) if len(df) else 0.0,
        "label_conflicts": sum(m["label_conflict"] for m in matches),
        "by_label": {k: dict(sorted(v.items())) for k, v in sorted(by_label.items())},
        "matches": matches,
    }


# --------------------------------------------------------------------------------------------- montage


def select_montage_pairs(graph: DuplicateGraph, threshold: int, n_pairs: int, seed: int = 0) -> list[tuple]:
    """Pairs of different files for the montage: near pairs spread over the distances 0..threshold, and
    about a third of the panels for pairs just above it (threshold+1 .. threshold+4)."""
    from brainmri.data.duplicates import pairs_within

    frame = graph.frame
    hashed = graph.hashed
    pi, pj, pd_ = pairs_within(hash_words(frame["phash"].iloc[hashed].tolist()), threshold + 4)
    i, j = hashed[pi], hashed[pj]
    md5 = frame["md5"].to_numpy(str)
    keep = md5[i] != md5[j]
    i, j, d = i[keep], j[keep], pd_[keep]
    rng = np.random.default_rng(seed)
    n_above = n_pairs // 3 if (d > threshold).any() else 0
    n_below = n_pairs - n_above

    def spread(mask: np.ndarray, count: int) -> list[tuple]:
        buckets = {}
        for dist in sorted(set(d[mask].tolist())):
            sel = np.flatnonzero(mask & (d == dist))
            buckets[dist] = list(rng.permutation(sel))
        chosen: list[tuple] = []
        while len(chosen) < count and any(buckets.values()):
            for dist in sorted(buckets):
                if buckets[dist] and len(chosen) < count:
                    k = buckets[dist].pop(0)
                    chosen.append((int(i[k]), int(j[k]), int(dist)))
        return sorted(chosen, key=lambda t: (t[2], t[0]))

    return spread(d <= threshold, n_below) + spread(d > threshold, n_above)


def _thumb(path: str, size: int = 128) -> np.ndarray:
    from PIL import Image

    from brainmri.io.pixels import to_uint8
    from brainmri.io.reader import read_image

    try:
        arr = to_uint8(read_image(path).array)
    except Exception:
        return np.zeros((size, size), np.uint8)
    img = Image.fromarray(arr)
    img.thumbnail((size, size))
    canvas = np.zeros((size, size), np.uint8)
    h, w = img.size[1], img.size[0]
    canvas[(size - h) // 2 : (size - h) // 2 + h, (size - w) // 2 : (size - w) // 2 + w] = np.asarray(img)
    return canvas


def render_pair_montage(
    frame: pd.DataFrame, pairs: list[tuple], out_path: str | os.PathLike[str], threshold: int, title: str = ""
) -> Path:
    """Save a montage: each panel is two images side by side, titled with their distance and ids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_row = 3
    rows = max(1, -(-len(pairs) // per_row))
    fig, axes = plt.subplots(rows, per_row * 2, figsize=(per_row * 2 * 1.9, rows * 2.15), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (a, b, dist) in enumerate(progress(pairs, desc="montage")):
        r, c = divmod(k, per_row)
        below = dist <= threshold
        color = "tab:green" if below else "tab:red"
        tag = "near" if below else "above thr"
        for side, row in enumerate((a, b)):
            ax = axes[r, c * 2 + side]
            ax.imshow(_thumb(frame["path"].iloc[row]), cmap="gray", vmin=0, vmax=255)
            name = frame["id"].iloc[row].split("/")[-2:]
            ax.set_title(f"{'/'.join(name)}", fontsize=5.5)
            if side == 0:
                ax.text(1.0, 1.16, f"d={dist} ({tag})", transform=ax.transAxes, ha="center", fontsize=8, color=color)
    heading = title or f"pHash pairs of different files: green <= threshold {threshold}, red just above"
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out_path)


# --------------------------------------------------------------------------------------------- report


def audit_text(result: dict[str, Any], manifest: str, against: str | None = None) -> str:
    ex, near, cl = result["exact"], result["near"], result["clusters"]
    lines = [
        f"Audit of {manifest}",
        f"files: {result['files']} (readable {result['readable']}, unreadable {result['unreadable']['count']})",
        f"per label: {', '.join(f'{k} {v}' for k, v in result['per_label'].items())}",
        f"pHash: {result['hash_size'] ** 2} bits, near threshold: distance <= {result['near_threshold']}",
        "",
        f"exact duplicates (same md5): {ex['clusters']} clusters, {ex['files_in_clusters']} files, "
        f"{ex['redundant_files']} redundant copies",
        f"near duplicates (different files, distance <= {result['near_threshold']}): {near['pairs']} pairs over "
        f"{near['files_in_pairs']} files; by distance {near['pairs_by_distance']}",
        f"duplicate clusters (exact + near, single linkage): {cl['count']} clusters, {cl['files']} files, "
        f"largest {cl['largest']}, {cl['with_near_edges']} with near edges; {cl['redundant_files']} files beyond "
        "one per cluster",
        f"clusters spanning source splits: {result['cross_source_split']['count']}",
        f"clusters with conflicting labels: {result['label_conflicts']['count']} "
        f"({result['label_conflicts']['files']} files)",
        "",
        "pairs of different files by pHash distance (pairs whose labels differ: mostly different patients):",
    ]
    lines += [
        f"  d={k:>2}: {v['pairs']:>8} pairs, {v['different_labels']:>7} with different labels"
        for k, v in result["distance_histogram"].items()
        if v["pairs"]
    ]
    if result["unreadable"]["count"]:
        lines += ["", "unreadable files:"]
        lines += [f"  {f['path']}: {f['error']}" for f in result["unreadable"]["files"]]
    if result["label_conflicts"]["count"]:
        lines += ["", f"clusters with conflicting labels (first 20 of {result['label_conflicts']['count']}):"]
    for rec in result["label_conflicts"]["clusters"][:20]:
        lines.append(
            f"  label conflict {rec['labels']}: {', '.join(rec['ids'][:6])}{' ...' if len(rec['ids']) > 6 else ''}"
        )
    ag = result.get("against")
    if ag:
        lines += [
            "",
            f"against {against}: {ag['total']} of {ag['files']} images ({ag['fraction']:.1%}) already occur there "
            f"({ag['exact']} exact, {ag['near']} near); {ag['label_conflicts']} of them with a conflicting label",
            f"  label here -> label there: {ag['by_label']}",
        ]
    return "\n".join(lines) + "\n"


def run_audit(
    manifest_path: str | os.PathLike[str],
    cfg: AuditConfig,
    out_dir: str | os.PathLike[str],
    against_path: str | os.PathLike[str] | None = None,
    montage: bool = True,
) -> dict[str, Any]:
    """Audit a manifest file and write audit.json, audit.txt and near_duplicates.png into ``out_dir``.

    ``cfg`` is the ``audit`` section. The command layer saves the resolved config next to the outputs.
    """
    from brainmri.data.manifest import read_manifest

    df = read_manifest(manifest_path)
    other = read_manifest(against_path) if against_path is not None else None
    result = audit_manifest(df, cfg, other)
    graph: DuplicateGraph = result.pop("_graph")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["manifest"] = str(manifest_path)
    result["manifest_sha256"] = file_sha256(manifest_path)
    if against_path is not None:
        result["against"]["manifest"] = str(against_path)
    if montage:
        pairs = select_montage_pairs(graph, cfg.near_threshold, cfg.montage_pairs)
        render_pair_montage(graph.frame, pairs, out / "near_duplicates.png", cfg.near_threshold)
        result["montage"] = {
            "file": "near_duplicates.png",
            "pairs": [
                {"a": graph.frame["id"].iloc[a], "b": graph.frame["id"].iloc[b], "distance": d} for a, b, d in pairs
            ],
        }
    atomic_write_json(out / "audit.json", result)
    atomic_write_text(out / "audit.txt", audit_text(result, str(manifest_path), str(against_path or "") or None))
    return result
