"""Appearance-group balancing: break the "this look -> this class" shortcut in the training set.

Why: in the Kaggle training set, sequence, plane and source go with the class. Whole look-alike groups
of slices are almost all ``no_tumor``, others mostly ``pituitary``; a tumour slice from another hospital
that happens to look like the first kind can be called ``no_tumor`` for how it looks, not for what it
shows (``bench/shortcuts.py``; docs/robustness.md, "Look-alike groups").
The groups are not labelled, so they are inferred, as in GEORGE (Sohoni et al. 2020): k-means on the
frozen ImageNet features (unit length, then PCA), which group images by contrast, plane and texture. Training
then draws every (group, class) cell in proportion to its group's size split equally among the classes
present in it — simple data balancing, which rivals group DRO on known shortcuts (Idrissi et al. 2022)
— with each image's weight capped so that a handful of images is never repeated without bound.
Finally the classes are balanced overall, which is why the loss's class weights are switched off.
Measured (docs/robustness.md): it lifts a linear probe's lgg-flair AUC, not a fine-tuned model's; off by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class GroupBalancer:
    """scikit-learn-style: ``fit(features, labels)`` learns ``pca_``, ``kmeans_``, ``groups_``, ``table_``,
    ``weights_``; ``predict(features)`` assigns other images to the learnt groups.

    ``weights_`` (mean 1) are sampling weights for the training images, in the order given to ``fit``.
    """

    def __init__(self, n_groups: int, max_weight: float = 30.0, n_components: int = 32, seed: int = 0) -> None:
        if n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        if max_weight <= 1:
            raise ValueError(f"max_weight must be > 1, got {max_weight}")
        self.n_groups = n_groups
        self.max_weight = max_weight
        self.n_components = n_components
        self.seed = seed

    def fit(self, features: np.ndarray, labels: np.ndarray, num_classes: int) -> GroupBalancer:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import normalize

        labels = np.asarray(labels, dtype=np.int64)
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        if len(labels) < self.n_groups:
            raise ValueError(f"{len(labels)} training images cannot form {self.n_groups} groups")
        x = normalize(np.asarray(features, dtype=np.float64))
        k = max(1, min(self.n_components, x.shape[1], len(x) - 1))
        self.pca_ = PCA(k, random_state=self.seed).fit(x)
        self.kmeans_ = KMeans(self.n_groups, n_init=5, random_state=self.seed).fit(self.pca_.transform(x))
        self.groups_ = self.kmeans_.labels_
        self.table_ = np.zeros((self.n_groups, num_classes), dtype=np.int64)
        np.add.at(self.table_, (self.groups_, labels), 1)
        self.weights_ = self._weights(labels, num_classes)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The group of other images (e.g. an external set's: which training look-alikes they resemble)."""
        from sklearn.preprocessing import normalize

        return self.kmeans_.predict(self.pca_.transform(normalize(np.asarray(features, dtype=np.float64))))

    def _weights(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        group_size = self.table_.sum(1)
        classes_present = (self.table_ > 0).sum(1)
        cell = self.table_[self.groups_, labels]
        w = group_size[self.groups_] / (classes_present[self.groups_] * cell)
        w = np.minimum(w, self.max_weight * np.median(w))
        for c in range(num_classes):  # equal total mass per class, as class weights would give
            mask = labels == c
            if mask.any():
                w[mask] /= w[mask].sum()
        return w / w.mean()

    def summary(self, classes: list[str]) -> dict[str, Any]:
        """What the run records (``balance.json``): the group x class table and what the weights do."""
        w = self.weights_
        return {
            "n_groups": self.n_groups,
            "max_weight": self.max_weight,
            "classes": list(classes),
            "table": self.table_.tolist(),
            "effective_sample_size": round(float(w.sum() ** 2 / (w**2).sum()), 1),
            "weight_range": [round(float(w.min()), 4), round(float(w.max()), 4)],
            "weights": [round(float(v), 6) for v in w],
        }
