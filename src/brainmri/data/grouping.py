"""Scan grouping: join the slices of one scan series so a split can keep them on one side.

Why: public sets carry no patient ids, and the near-duplicate clusters of ``duplicates.py`` (pHash
distance <= 4) miss adjacent slices that lie a little further apart (distance 6 and more), which then
land on both sides of a split. This module links such slices with cheap descriptors and a rank test.

Why model-free, in the data layer: the split is a data-stage command and may not import ``models/``
(it sits above ``data/``), and a split should not depend on which backbone weights are installed. It is
also better at this job: on lgg-flair a slice's nearest neighbour is a slice of the same patient for
95.6 % of slices with these descriptors and for 76.4 % with pooled ImageNet EfficientNet-Lite0
embeddings, which describe anatomy, not the scan (``bench/results/slice_groups.json`` →
``lgg_flair.embedding_baseline``). A descriptor of 152 numbers per image is enough:

- ``thumb``: the image after a 0.5-99.5 percentile scaling, box-averaged to 8 x 8, zero mean and unit
  norm (correlation distance): head outline, position and coarse anatomy;
- ``profile``: mean row and column intensity profiles at 32 points each (correlation distance): the
  head's extent along each axis, which changes slowly from slice to slice;
- ``hist``: the 24-bin intensity histogram of the head (pixels above 5 % of the range, L1 distance):
  the sequence and scanner contrast.

The combined distance is the sum of the three distances, each divided by a fixed scale (the median
distance of adjacent slices on lgg-flair, rounded), so a typical adjacent pair scores about 3.

Linkage (``scan_groups``): candidate edges join mutual k nearest neighbours (each among the other's
``k`` nearest, default 4) within ``max_distance`` and inside one bucket (the split uses image size and
label: slices of one series share both). Slices of a series form a chain whose two neighbours are the
slices above and below, so a small mutual k follows the chain but rarely jumps to another patient.
Edges are merged in order of distance (Kruskal / single linkage), starting from the given initial
groups (the exact + near duplicate clusters, which must never be split), and a merge that would make a
group larger than ``max_group`` is refused, so chaining cannot build giant groups that break
stratification. Validation on lgg-flair (patient ids known) is in ``bench/slice_groups.py`` and
``docs/data.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

DESCRIPTOR_VERSION = 1
THUMB_SIDE = 8
PROFILE_POINTS = 32
HIST_BINS = 24
HEAD_LEVEL = 0.05
WORK_SIDE = 64
# distance scales: median distance of adjacent slices on lgg-flair (see the module docstring)
SCALES = {"thumb": 0.008, "profile": 0.011, "hist": 0.17}
_T = THUMB_SIDE * THUMB_SIDE
_P = 2 * PROFILE_POINTS
DESCRIPTOR_SIZE = _T + _P + HIST_BINS


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64).ravel()
    x = x - x.mean()
    norm = np.linalg.norm(x)
    return x / norm if norm > 1e-12 else x


def describe_array(array: np.ndarray) -> np.ndarray:
    """Descriptor (``DESCRIPTOR_SIZE`` float32) of one 2D image: thumb, profile, hist concatenated."""
    from PIL import Image

    a = np.asarray(array, np.float32)
    if a.ndim == 3:
        a = a.mean(axis=2)
    finite = a[np.isfinite(a)]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    a = np.clip((np.nan_to_num(a, nan=lo) - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)
    work = np.asarray(Image.fromarray(a).resize((WORK_SIDE, WORK_SIDE), Image.BOX), np.float64)
    f = WORK_SIDE // THUMB_SIDE
    thumb = work.reshape(THUMB_SIDE, f, THUMB_SIDE, f).mean(axis=(1, 3))
    g = WORK_SIDE // PROFILE_POINTS
    rows = work.mean(axis=1).reshape(PROFILE_POINTS, g).mean(axis=1)
    cols = work.mean(axis=0).reshape(PROFILE_POINTS, g).mean(axis=1)
    head = work[work > HEAD_LEVEL]
    hist = np.histogram(head, bins=HIST_BINS, range=(HEAD_LEVEL, 1.0))[0].astype(np.float64)
    hist = hist / max(hist.sum(), 1.0)
    return np.concatenate([_unit(thumb), _unit(np.concatenate([rows, cols])), hist]).astype(np.float32)


def describe_files(paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Descriptors of image files (rows of NaN for files that cannot be read), shape (n, DESCRIPTOR_SIZE)."""
    from brainmri.errors import ImageReadError
    from brainmri.io.reader import read_image
    from brainmri.utils import progress

    out = np.full((len(paths), DESCRIPTOR_SIZE), np.nan, np.float32)
    for k, p in enumerate(progress(paths, desc="scan descriptors", total=len(paths))):
        with contextlib.suppress(ImageReadError):  # unreadable: a NaN row, which links to nothing
            out[k] = describe_array(read_image(p).array)
    return out


def manifest_descriptors(df: pd.DataFrame, cache: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Descriptors of the manifest rows (by ``path``), reusing and updating an ``.npz`` cache keyed by md5.

    The cache holds ``md5`` (n,) and ``desc`` (n, DESCRIPTOR_SIZE) and the descriptor version; a cache
    of another version is ignored. Rows not in the cache are decoded and added.
    """
    from brainmri.utils import atomic_path

    md5 = df["md5"].astype(str).tolist()
    known: dict[str, np.ndarray] = {}
    path = Path(cache) if cache else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) == DESCRIPTOR_VERSION:
                known = dict(zip(z["md5"].tolist(), z["desc"], strict=True))
    missing = [k for k, m in enumerate(md5) if m not in known]
    if missing:
        fresh = describe_files([df["path"].iloc[k] for k in missing])
        known.update({md5[k]: fresh[i] for i, k in enumerate(missing)})
        if path is not None:
            keys = sorted(known)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, version=DESCRIPTOR_VERSION, md5=np.array(keys), desc=np.stack([known[k] for k in keys]))
    if not md5:
        return np.zeros((0, DESCRIPTOR_SIZE), np.float32)
    return np.stack([known[m] for m in md5]).astype(np.float32)


def pair_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Combined scan distance between every row of ``a`` and every row of ``b``, shape (len(a), len(b))."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    d_thumb = 1.0 - a[:, :_T] @ b[:, :_T].T
    d_prof = 1.0 - a[:, _T : _T + _P] @ b[:, _T : _T + _P].T
    ha, hb = a[:, _T + _P :], b[:, _T + _P :]
    d_hist = np.abs(ha[:, None, :] - hb[None, :, :]).sum(axis=-1)
    d = d_thumb / SCALES["thumb"] + d_prof / SCALES["profile"] + d_hist / SCALES["hist"]
    # rounded: BLAS blocking changes the last bits, and the merge order must not depend on it
    return np.where(np.isnan(d), np.inf, np.round(np.maximum(d, 0.0), 9))


def mutual_knn_edges(
    desc: np.ndarray, k: int, max_distance: float, buckets: np.ndarray | None = None, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``(i, j, distance)``, ``i < j``, between rows that are among each other's ``k`` nearest
    neighbours inside their bucket (all rows one bucket when ``buckets`` is None) and within ``max_distance``.
    Rows with NaN descriptors get no edges."""
    n = len(desc)
    buckets = np.zeros(n, np.int64) if buckets is None else pd.factorize(pd.Series(list(buckets)))[0]
    ii, jj, dd = [], [], []
    for b in np.unique(buckets):
        rows = np.flatnonzero((buckets == b) & np.isfinite(desc).all(axis=1))
        kk = min(k, len(rows) - 1)
        if kk < 1:
            continue
        step = chunk or int(np.clip(4_000_000 // (len(rows) * HIST_BINS), 8, 256))  # ~32 MB per block
        nbr = np.empty((len(rows), kk), np.int64)
        nd = np.empty((len(rows), kk), np.float64)
        for s in range(0, len(rows), step):
            d = pair_distances(desc[rows[s : s + step]], desc[rows])
            d[np.arange(d.shape[0]), np.arange(s, s + d.shape[0])] = np.inf
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            nbr[s : s + step] = part
            nd[s : s + step] = np.take_along_axis(d, part, axis=1)
        src = np.repeat(np.arange(len(rows)), kk)
        dst, dist = nbr.ravel(), nd.ravel()
        pairs = set(zip(src.tolist(), dst.tolist(), strict=True))
        for a, c, dv in zip(src, dst, dist, strict=True):
            if a < c and dv <= max_distance and (int(c), int(a)) in pairs:
                ii.append(rows[a])
                jj.append(rows[c])
                dd.append(dv)
    if not ii:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float64)
    i, j, d = np.array(ii, np.int64), np.array(jj, np.int64), np.array(dd, np.float64)
    order = np.lexsort((j, i, d))
    return i[order], j[order], d[order]


def capped_union(n: int, i: np.ndarray, j: np.ndarray, max_group: int, initial: np.ndarray | None = None) -> np.ndarray:
    """Union the edges in the given order, refusing a merge that would make a group larger than
    ``max_group`` (groups of ``initial`` are kept whole even when larger). Labels 0..g-1 by first row."""
    parent = np.arange(n)
    if initial is not None and n:
        first = pd.Series(np.arange(n)).groupby(np.asarray(initial)).transform("min").to_numpy()
        parent = first.astype(np.int64)
    size = np.bincount(parent, minlength=n)

    def find(a: int) -> int:
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return int(root)

    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra == rb or size[ra] + size[rb] > max_group:
            continue
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
    roots = np.array([find(a) for a in range(n)], np.int64)
    _, first_idx, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first_idx), np.int64)
    rank[np.argsort(first_idx)] = np.arange(len(first_idx))
    return rank[inverse]


def scan_groups(
    desc: np.ndarray,
    k: int = 4,
    max_distance: float = 12.0,
    max_group: int = 40,
    buckets: np.ndarray | None = None,
    initial: np.ndarray | None = None,
) -> np.ndarray:
    """Group label per row: mutual-kNN edges within ``max_distance`` merged by distance under the size cap."""
    i, j, _ = mutual_knn_edges(desc, k, max_distance, buckets)
    return capped_union(len(desc), i, j, max_group, initial)


def group_sizes(groups: np.ndarray) -> dict[str, object]:
    """Count, largest sizes and the size histogram of a group labelling (for reports)."""
    sizes = np.bincount(np.asarray(groups)) if len(groups) else np.zeros(0, np.int64)
    sizes = sizes[sizes > 0]
    values, counts = np.unique(sizes, return_counts=True)
    return {
        "groups": len(sizes),
        "singletons": int((sizes == 1).sum()),
        "largest": sorted(sizes.tolist(), reverse=True)[:10],
        "size_histogram": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
    }


def pairwise_scores(truth: Sequence[object], groups: Sequence[int]) -> dict[str, float | int]:
    """Pairwise precision, recall and F1 of "same group" against "same ``truth``" (e.g. patient)."""
    t = pd.factorize(pd.Series(list(truth)))[0]
    g = np.asarray(groups, np.int64)
    joint = pd.crosstab(t, g).to_numpy().astype(np.int64)

    def pairs(c: np.ndarray) -> int:
        return int((c * (c - 1) // 2).sum())

    tp, same_truth, same_group = pairs(joint), pairs(joint.sum(axis=1)), pairs(joint.sum(axis=0))
    precision = tp / same_group if same_group else 1.0
    recall = tp / same_truth if same_truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_pairs": same_truth, "linked_pairs": same_group}


def descriptor_digest(desc: np.ndarray) -> str:
    """Short sha256 of a descriptor matrix (to record which descriptors a split used)."""
    return hashlib.sha256(np.ascontiguousarray(desc, np.float32).tobytes()).hexdigest()[:16]
