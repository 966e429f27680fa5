"""Training data in the wsolevaluation layout, decoded and augmented with cream_rt.preprocess."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cream_rt.metadata import SplitMetadata
from cream_rt.preprocess import normalize, read_image, resize_for_model, train_augment

__all__ = ["WsolImages", "BoxImages"]


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


class BoxImages(torch.utils.data.Dataset):
    """(image tensor, box `[x0, y0, x1, y1]` as fractions) for the box regressor: the whole
    image resized to the input size (as at evaluation, where the pseudo boxes were taken), and
    with `train` a random horizontal flip that flips the box too."""

    def __init__(self, ids: list[str], boxes: np.ndarray, images: Path, size: int, mean, std, train: bool,
                 seed: int = 0):
        self.ids, self.boxes = ids, np.asarray(boxes, np.float32)
        self.images, self.size, self.mean, self.std, self.train, self.seed = images, size, mean, std, train, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image = resize_for_model(read_image(self.images / self.ids[index]), self.size)
        box = self.boxes[index].copy()
        if self.train and np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
            image = image[:, ::-1]
            box[[0, 2]] = 1.0 - box[[2, 0]]
        x = normalize(np.ascontiguousarray(image)[None], self.mean, self.std)[0]
        return torch.from_numpy(x), torch.from_numpy(box)
