"""Training the heads on a frozen backbone from cached image tokens (``train.cache_features``).

With ``freeze_backbone`` the backbone and MLFF compute the same image tokens (B, h*w, D) for an
image every epoch. :class:`CachedTokenLoader` computes them once per image and flip, in fp32
whatever the run's autocast (the flip is applied to the normalised batch: it commutes with the
per-channel normalisation), keeps them in host memory, and yields the same :class:`~lcie_fast.data.loader.Batch` as the image loaders,
in the same order and with the same flips (:class:`~lcie_fast.data.loader.EpochSampler`), with
``images`` holding tokens. The model takes tokens in place of images
(:meth:`lcie_fast.models.lcie.LCIE.forward`), so each step costs the heads only.

Every process caches the whole set (its shard changes every epoch); images that fail to decode
are reported once, by :attr:`CachedTokenLoader.failed`, and left out of every batch.

With ``train.feature_cache_dir`` the tokens are also written there (one file per dataset and
backbone state) and read back by later runs: reruns of heads-only training with other head
settings, seeds or schedules skip the backbone entirely. The file name is a hash of everything
the tokens depend on: the backbone's and MLFF's weights and switches, the token grid, the
preprocessing, the flips, and each image's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError
from ..data.datasets import MultiLabelSet
from ..data.loader import Batch, EpochSampler, TorchLoader
from ..data.transforms import Preprocess
from ..errors import InvalidInputError
from ..io import atomic_write

# refuse a cache larger than this fraction of the memory available when it is built
MEMORY_FRACTION = 0.6


def available_memory_bytes() -> int | None:
    """Memory available to new allocations (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cache_key(model: torch.nn.Module, data: MultiLabelSet, preprocess: Preprocess, flips: tuple[bool, ...]) -> str:
    """Hex SHA-256 of everything the cached tokens depend on (see the module docstring)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    files = []
    for path in data.paths:
        try:
            stat = os.stat(path)
            files.append([path, stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([path, -1, -1])
    digest.update(json.dumps({"mlff": model.mlff, "token_hw": list(model.token_hw), "dim": model.dim,
                              "preprocess": vars(preprocess.config), "flips": list(flips),
                              "autocast": "off", "files": files}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class CachedTokenLoader:
    """The image tokens of ``data`` under ``model``'s frozen backbone, served as batches.

    Args:
        model: The LCIE model (its ``forward_features`` makes the tokens; run in eval mode).
        data: Images and targets.
        preprocess: The model's preprocessing.
        batch_size: Images per batch, on this rank.
        train: Shuffle, flip and drop the last incomplete batch (as the image loaders do).
        seed: Seed of the order and flips.
        device: Where batches are delivered (tokens are kept in host memory).
        rank, world_size: Data-parallel shard of each epoch's order.
        workers: Decoder processes while the cache is built.
        progress: Show a progress bar while building.
        cache_dir: Folder of token files shared between runs ('' keeps them in memory only).
        processes_per_node: Processes on this machine that each hold a copy (the memory check).

    Raises:
        ConfigError: the cache would not fit in memory (the sizes are named).
    """

    def __init__(self, model: torch.nn.Module, data: MultiLabelSet, preprocess: Preprocess, batch_size: int, *,
                 train: bool, seed: int = 0, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 workers: int = 2, progress: bool = True, cache_dir: str | Path = "",
                 processes_per_node: int = 1) -> None:
        self.data = data
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        self.sampler = EpochSampler(len(data), rank=rank, world_size=world_size, seed=seed, shuffle=train, flip=train)
        flips = (False, True) if train else (False,)
        num_tokens = model.token_hw[0] * model.token_hw[1]
        needed = len(flips) * len(data) * num_tokens * model.dim * 4 * processes_per_node
        available = available_memory_bytes()
        if available is not None and needed > MEMORY_FRACTION * available:
            raise ConfigError(
                f"train.cache_features: the image tokens of {len(data)} images x {len(flips)} flip(s) x "
                f"{num_tokens} tokens x {model.dim} channels x {processes_per_node} process(es) need "
                f"{needed / 2**30:.1f} GiB, over {MEMORY_FRACTION:.0%} of the {available / 2**30:.1f} GiB "
                f"available; turn it off")
        self.path = Path(cache_dir) / f"tokens-{cache_key(model, data, preprocess, flips)[:24]}.pt" if cache_dir else None
        self.failed: list[tuple[int, str, str]] = []
        if not self._read(len(flips), num_tokens, model.dim):
            self.tokens = torch.empty(len(flips), len(data), num_tokens, model.dim)  # (flips, N, h*w, D)
            self.decoded = np.zeros(len(data), dtype=bool)
            self._build(model, preprocess, flips, np.arange(len(data)), workers, progress)
        elif self.failed:  # a file that failed before may be readable now (a network share, a fixed file)
            retry = np.array(sorted(index for index, _, _ in self.failed))
            self.failed = []
            self._build(model, preprocess, flips, retry, workers, progress)
            if not self.decoded[retry].any():
                return  # nothing new to write
        else:
            return
        if self.path is not None:
            with atomic_write(self.path, "wb") as handle:
                torch.save({"tokens": self.tokens, "decoded": torch.from_numpy(self.decoded),
                            "failed": [list(f) for f in self.failed]}, handle)

    def _read(self, flips: int, num_tokens: int, dim: int) -> bool:
        """Load the token file when there is a usable one; a damaged file is rebuilt."""
        if self.path is None or not self.path.is_file():
            return False
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            tokens, decoded = saved["tokens"], saved["decoded"].numpy()
            failed = [(int(i), str(p), str(r)) for i, p, r in saved["failed"]]
        except Exception as err:  # noqa: BLE001 - any unreadable cache file is rebuilt, never trusted
            warnings.warn(f"{self.path}: unreadable token cache ({type(err).__name__}: {err}); rebuilding it", stacklevel=2)
            return False
        if tuple(tokens.shape) != (flips, len(self.data), num_tokens, dim) or decoded.shape != (len(self.data),):
            warnings.warn(f"{self.path}: token cache of shape {tuple(tokens.shape)} does not fit; rebuilding it", stacklevel=2)
            return False
        self.tokens, self.decoded, self.failed = tokens, decoded, failed
        return True

    @torch.no_grad()
    def _build(self, model, preprocess: Preprocess, flips: tuple[bool, ...], indices: np.ndarray, workers: int,
               progress: bool) -> None:
        """Compute the tokens of the images at ``indices`` (dataset indices)."""
        loader = TorchLoader(self.data.subset(indices), preprocess, self.batch_size, train=False, workers=workers,
                             device=self.device, channels_last=True)
        was_training = model.training
        model.eval()
        desc = f"caching backbone tokens ({'train, both flips' if self.train else 'eval'})"
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            self.failed.extend((int(indices[i]), path, reason) for i, path, reason in batch.failed)
            if not len(batch):
                continue
            index = torch.from_numpy(indices[batch.indices.cpu().numpy()])
            for slot, flip in enumerate(flips):
                tokens, _ = model.forward_features(batch.images.flip(-1) if flip else batch.images)
                self.tokens[slot, index] = tokens.float().cpu()
            self.decoded[index.numpy()] = True
        model.train(was_training)
        if not self.decoded.any():
            raise InvalidInputError(f"no image of {self.data.source} could be decoded")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start=start_batch * self.batch_size)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        chunk: list[tuple[int, bool]] = []
        for request in self.sampler:
            chunk.append(request)
            if len(chunk) == self.batch_size:
                yield self._batch(chunk)
                chunk = []
        if chunk and not self.train:
            yield self._batch(chunk)

    def _batch(self, chunk: list[tuple[int, bool]]) -> Batch:
        kept = [(index, flip) for index, flip in chunk if self.decoded[index]]
        indices = torch.tensor([index for index, _ in kept], dtype=torch.int64)
        slots = torch.tensor([int(flip) for _, flip in kept], dtype=torch.int64)
        tokens = self.tokens[slots, indices].to(self.device, non_blocking=True)  # (B, h*w, D)
        targets = torch.from_numpy(self.data.targets[indices.numpy()]).to(self.device)
        return Batch(images=tokens, targets=targets.clamp(min=0).float(), mask=(targets >= 0).float(),
                     indices=indices.to(self.device), failed=[])
