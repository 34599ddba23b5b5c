"""Datasets, a resumable sampler and the Lightning DataModule over the preprocessing cache.

Images live in memory as the uint8 Preprocessor output (a few hundred MB for the whole Kaggle set),
so an epoch costs only augmentation and the network. Randomness is a pure function of
(seed, epoch, index): the sampler order and each sample's augmentation are the same whether the run
was interrupted or not, and whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from brainmri.train.augment import Augmenter


class SliceDataset(Dataset):
    """uint8 (N, S, S) images + int labels -> (float tensor (1, S, S) in [0, 1], label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augmenter: Augmenter | None = None, seed: int = 0):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.augmenter = augmenter
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index].astype(np.float32) / 255.0
        if self.augmenter is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            img = self.augmenter(img, rng)
        return torch.from_numpy(np.ascontiguousarray(img))[None], int(self.labels[index])


class EpochSampler(Sampler[int]):
    """Shuffles (or, with ``weights``, draws with replacement ∝ weights) from a (seed, epoch) generator.

    Lightning calls ``set_epoch`` on samplers that have it, also after resuming from a checkpoint.
    With weights this is scikit-learn/PyTorch-style oversampling (``WeightedRandomSampler``), made
    reproducible across interruptions.
    """

    def __init__(
        self, n: int, seed: int, weights: np.ndarray | None = None, dataset: SliceDataset | None = None
    ) -> None:
        self.n = n
        self.seed = seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.dataset = dataset
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.dataset is not None:
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            idx = torch.randperm(self.n, generator=g)
        return iter(idx.tolist())


def oversampling_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return 1.0 / counts[labels]


class SliceDataModule(L.LightningDataModule):
    def __init__(
        self,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        val_images: np.ndarray,
        val_labels: np.ndarray,
        num_classes: int,
        batch_size: int = 32,
        num_workers: int = 0,
        augmenter: Augmenter | None = None,
        oversample: bool = False,
        seed: int = 0,
        weights: np.ndarray | None = None,
    ) -> None:
        """``weights``: per-image draw weights (appearance-group balancing); ``oversample``: class-balanced ones."""
        super().__init__()
        self.train_set = SliceDataset(train_images, train_labels, augmenter, seed)
        self.val_set = SliceDataset(val_images, val_labels, None, seed)
        if weights is None and oversample:
            weights = oversampling_weights(self.train_set.labels, num_classes)
        self.sampler = EpochSampler(len(self.train_set), seed, weights, self.train_set)
        self.batch_size = batch_size
        self.num_workers = num_workers

    def _loader(self, dataset: Dataset, sampler: Sampler | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=False,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, None)
