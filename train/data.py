"""Training data in the wsolevaluation layout, decoded and augmented with cream_rt.preprocess."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cream_rt.errors import ImageReadError
from cream_rt.metadata import SplitMetadata
from cream_rt.preprocess import normalize, read_image, resize_for_model, train_augment
from cream_rt.unreadable import Unreadable, UnreadableImages

__all__ = ["WsolImages", "BoxImages", "collate_readable", "ReadableBatches", "split_loader"]


class WsolImages(torch.utils.data.Dataset):
    """(image tensor, label) of a split, random augmentation when `train`; an image that cannot
    be decoded yields `Unreadable` instead (`collate_readable` sets it aside)."""

    def __init__(self, meta: SplitMetadata, images: Path, size: int, mean, std, train: bool, seed: int = 0):
        self.ids = meta.image_ids
        self.labels = [meta.class_labels[i] for i in self.ids]
        self.images, self.size, self.mean, self.std, self.train = images, size, mean, std, train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        try:
            image = read_image(self.images / self.ids[index])
        except ImageReadError as exc:
            return Unreadable(self.ids[index], str(exc))
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


def collate_readable(items: list) -> tuple[torch.Tensor, torch.Tensor, list[Unreadable]]:
    """DataLoader collate: (images, labels) of the readable items and the `Unreadable` ones."""
    bad = [item for item in items if isinstance(item, Unreadable)]
    good = [item for item in items if not isinstance(item, Unreadable)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    x, y = torch.utils.data.default_collate(good)
    return x, y, bad


class ReadableBatches:
    """(images, labels) of a `collate_readable` loader; each unreadable image goes to `unreadable`
    (which stops the run past its limit) and an empty batch is skipped, or yielded with
    `keep_empty` (under torchrun every rank must skip the same steps). Has the loader's len."""

    def __init__(self, loader, unreadable: UnreadableImages, keep_empty: bool = False):
        self.loader, self.unreadable, self.keep_empty = loader, unreadable, keep_empty

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y, bad in self.loader:
            for item in bad:
                self.unreadable.add(item.name, item.reason)
            if len(y) or self.keep_empty:
                yield x, y


def split_loader(data_set: torch.utils.data.Dataset, **kwargs) -> torch.utils.data.DataLoader:
    """A DataLoader over a `WsolImages` set that sets unreadable images aside (`collate_readable`)."""
    return torch.utils.data.DataLoader(data_set, collate_fn=collate_readable, **kwargs)
