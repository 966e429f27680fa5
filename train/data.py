"""Training data in the wsolevaluation layout, decoded and augmented with cream_rt.preprocess."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cream_rt.metadata import SplitMetadata
from cream_rt.preprocess import normalize, read_image, resize_for_model, train_augment

__all__ = ["WsolImages"]


class WsolImages(torch.utils.data.Dataset):
    """(image tensor, label) of a split; random augmentation when `train`."""

    def __init__(self, meta: SplitMetadata, images: Path, size: int, mean, std, train: bool, seed: int = 0):
        self.ids = meta.image_ids
        self.labels = [meta.class_labels[i] for i in self.ids]
        self.images, self.size, self.mean, self.std, self.train = images, size, mean, std, train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image = read_image(self.images / self.ids[index])
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image = train_augment(image, self.size, rng)
        else:
            image = resize_for_model(image, self.size)
        x = normalize(np.ascontiguousarray(image)[None], self.mean, self.std)[0]
        return torch.from_numpy(x), self.labels[index]
