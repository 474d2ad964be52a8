"""The torch DataLoader path: PIL decoding in worker processes, uint8 batches, normalised on
the device, channels-last. Shared by both loaders: the resumable sharded sampler and the
:class:`Batch` they yield.

Every loader yields the same :class:`Batch`; an image that fails to decode is left out of its
batch and reported in ``Batch.failed`` (index, path, reason), never raised.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import Augment, sample_seed
from .datasets import MultiLabelSet
from .transforms import ImageDecodeError, Preprocess, flip_decision, resize_image


@dataclasses.dataclass
class Batch:
    """One batch, on the training device.

    Attributes:
        images: (B, 3, S, S) float32, normalised, channels-last; from a
            :class:`~lcie_fast.train.feature_cache.CachedTokenLoader`, the backbone's image
            tokens (B, h*w, D) instead.
        targets: (B, C) float32 in {0, 1} (unknown entries hold 0; see ``mask``).
        mask: (B, C) float32, 1 where the label is known.
        indices: (B,) int64 dataset indices of the images.
        failed: (index, path, reason) of every image of this batch that could not be decoded.
    """

    images: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    indices: torch.Tensor
    failed: list[tuple[int, str, str]]

    def __len__(self) -> int:
        return int(self.indices.shape[0])


class EpochSampler(Sampler):
    """Seeded, sharded, resumable order: epoch ``e`` of rank ``r`` is a pure function of
    (seed, e, r, world size), and an epoch can start at any position.

    Yields ``(index, flip)`` pairs: the flip of each sample is decided here, deterministically,
    so workers need no shared state.

    Args:
        num_samples: Dataset size.
        rank, world_size: This process's shard of the order.
        seed: Base seed of the shuffle and the flips.
        shuffle: Permute each epoch (training) or keep dataset order (evaluation).
        flip: Decide random horizontal flips (training).
    """

    def __init__(self, num_samples: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, flip: bool = True) -> None:
        self.num_samples = num_samples
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.flip = seed, shuffle, flip
        self.epoch = 0
        self.start = 0
        self.per_rank = math.ceil(num_samples / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch, and skip its first ``start`` samples of this rank (resume)."""
        self.epoch, self.start = epoch, start

    def order(self) -> np.ndarray:
        """This rank's dataset indices for the current epoch (padded by wrapping to equal length)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).numpy()
        else:
            order = np.arange(self.num_samples)
        total = self.per_rank * self.world_size
        if total > self.num_samples and self.num_samples:
            order = np.concatenate([order, order[: total - self.num_samples]])
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        for index in self.order()[self.start:]:
            index = int(index)
            yield index, (self.flip and flip_decision(self.seed, self.epoch, index))

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)


class AugmentedRequests(Sampler):
    """An :class:`EpochSampler`'s ``(index, flip)`` requests with each sample's augmentation seed
    added: ``(index, flip, seed)``, a pure function of (run seed, epoch, index)."""

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, bool, int]]:
        for index, flip in self.sampler:
            yield index, flip, sample_seed(self.sampler.seed, self.sampler.epoch, index)

    def __len__(self) -> int:
        return len(self.sampler)


class ImageDataset(Dataset):
    """Decodes ``(index, flip[, augmentation seed])`` requests to ``(uint8 image or None,
    targets, index, error)``; with an active :class:`Augment`, crops before the resize and
    applies its policy after the flip."""

    def __init__(self, data: MultiLabelSet, preprocess: Preprocess, augment: Augment | None = None) -> None:
        self.data = data
        self.preprocess = preprocess
        self.augment = augment if augment is not None and augment.active else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, request: tuple):
        index, flip = request[0], request[1]
        try:
            if self.augment is None:
                image = self.preprocess.load(self.data.paths[index], flip=flip)
            else:
                image = self.augmented(self.data.paths[index], flip, request[2])
            error = ""
        except ImageDecodeError as err:
            image, error = None, str(err)
        return image, self.data.targets[index], index, error

    def augmented(self, source: str | bytes, flip: bool, seed: int) -> torch.Tensor:
        """Decode, crop, resize, flip and apply the policy -> (3, S, S) uint8."""
        config = self.preprocess.config
        decoded = self.preprocess.decode(source)  # the byte, pixel and memory limits of every decode
        cropped = self.augment.crop(decoded, self.augment.crop_window(seed))
        image = resize_image(cropped, config.input_size, config.interpolation)  # (3, S, S) uint8
        if flip:
            image = image.flip(-1)
        return self.augment.apply_policy(image, seed).contiguous()


def collate(items) -> dict:
    """Stack the decoded images; report the rest."""
    good = [item for item in items if item[0] is not None]
    failed = [(item[2], item[3]) for item in items if item[0] is None]
    if good:
        images = torch.stack([item[0] for item in good])
        targets = torch.from_numpy(np.stack([item[1] for item in good]))
    else:
        images = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        targets = torch.empty(0, items[0][1].shape[0], dtype=torch.int8)
    indices = torch.tensor([item[2] for item in good], dtype=torch.int64)
    return {"images": images, "targets": targets, "indices": indices, "failed": failed}


def to_batch(raw: dict, preprocess: Preprocess, device: torch.device, paths: list[str], channels_last: bool = True) -> Batch:
    """Move a collated uint8 batch to ``device`` and normalise it there."""
    targets = raw["targets"].to(device, non_blocking=True)
    images = raw["images"].to(device, non_blocking=True)
    if images.shape[0]:
        images = preprocess.normalize(images, channels_last=channels_last)
    else:
        images = torch.empty(0, 3, preprocess.size, preprocess.size, device=device)
    return Batch(
        images=images,
        targets=targets.clamp(min=0).float(),
        mask=(targets >= 0).float(),
        indices=raw["indices"].to(device),
        failed=[(i, paths[i], err) for i, err in raw["failed"]],
    )


class TorchLoader:
    """PIL decoding in ``workers`` processes, pinned uint8 batches, normalisation on ``device``.

    Args:
        data: The images and targets.
        preprocess: The model's preprocessing.
        batch_size: Images per batch on this rank.
        train: Shuffle, flip and drop the last incomplete batch.
        seed: Seed of the order and flips (saved with the run).
        workers: Decoder processes (0 decodes in the calling process).
        device: Where batches are delivered.
        rank, world_size: Data-parallel shard.
        augment: Training augmentation (only used when ``train``).
    """

    def __init__(self, data: MultiLabelSet, preprocess: Preprocess, batch_size: int, *, train: bool, seed: int = 0,
                 workers: int = 2, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 channels_last: bool = True, augment: Augment | None = None) -> None:
        self.data = data
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.channels_last = channels_last
        self.sampler = EpochSampler(len(data), rank=rank, world_size=world_size, seed=seed, shuffle=train, flip=train)
        augment = augment if train and augment is not None and augment.active else None
        self.loader = DataLoader(
            ImageDataset(data, preprocess, augment),
            batch_size=batch_size,
            sampler=AugmentedRequests(self.sampler) if augment is not None else self.sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            drop_last=train,
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
            # its own generator: creating an iterator must not draw from the global RNG, or a
            # resumed run's dropout stream would differ from the uninterrupted run's
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start=start_batch * self.batch_size)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for raw in self.loader:
            yield to_batch(raw, self.preprocess, self.device, self.data.paths, self.channels_last)
