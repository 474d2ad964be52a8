"""The DALI loader: the preprocessing of :mod:`lcie_fast.data.transforms` as a DALI graph.

``external_source`` (encoded bytes and flip flags, in the order of the same resumable sharded
:class:`~lcie_fast.data.loader.EpochSampler` the torch loader uses) -> ``decoders.image``
(``device="mixed"``: nvJPEG on the GPU; ``"cpu"`` without one) -> ``resize`` (antialiased,
uint8) -> ``flip`` -> ``crop_mirror_normalize`` (float, HWC) -> a (B, S, S, 3) tensor whose
``permute(0, 3, 1, 2)`` is the channels-last NCHW batch, without a copy.

Without a GPU the same graph runs CPU-only (``device_id=None``, decode on ``"cpu"``).

A corrupt image stops a DALI pipeline for the whole batch. The loader then rebuilds the
pipeline, finds the culprits with the PIL decoder, reports them in ``Batch.failed`` and
reruns the batch without them; an image DALI refuses but PIL decodes is decoded by PIL.
Nothing is lost and nothing is fatal.
"""

from __future__ import annotations

import collections
from typing import Iterator

import numpy as np
import torch

from .._optional import require
from .datasets import MultiLabelSet
from .loader import Batch, EpochSampler
from .transforms import ImageDecodeError, Preprocess, decode_image


def dali_unavailable_reason() -> str:
    """Why the DALI loader cannot run here ('' when it can)."""
    try:
        require("nvidia.dali", "the DALI loader")
    except ImportError as err:
        return str(err)
    return ""


def _build_pipeline(preprocess: Preprocess, batch_size: int, device_id: int | None, threads: int):
    dali = require("nvidia.dali", "the DALI loader")
    fn, types = dali.fn, dali.types
    config = preprocess.config
    interp = types.INTERP_LINEAR if config.interpolation == "bilinear" else types.INTERP_CUBIC

    @dali.pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=1,
                       exec_dynamic=True)
    def pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
        images = fn.decoders.image(encoded, device="mixed" if device_id is not None else "cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=config.input_size, resize_y=config.input_size, interp_type=interp,
                           antialias=True)
        images = fn.flip(images, horizontal=flip)
        return fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="HWC",
            mean=[255.0 * m for m in config.mean], std=[255.0 * s for s in config.std],
        )

    pipe = pipeline()
    pipe.build()
    return pipe


class DaliLoader:
    """Batches decoded and preprocessed by DALI; same order, flips and Batch as TorchLoader.

    Args:
        data, preprocess, batch_size, train, seed, device, rank, world_size: as TorchLoader.
        threads: DALI CPU threads.
        prefetch: Batches in flight ahead of the one being consumed.
    """

    def __init__(self, data: MultiLabelSet, preprocess: Preprocess, batch_size: int, *, train: bool, seed: int = 0,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, threads: int = 2,
                 prefetch: int = 1, channels_last: bool = True) -> None:
        self.data = data
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        self.device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        self.threads = threads
        self.prefetch = prefetch
        self.channels_last = channels_last
        self.sampler = EpochSampler(len(data), rank=rank, world_size=world_size, seed=seed, shuffle=train, flip=train)
        self.pipe = _build_pipeline(preprocess, batch_size, self.device_id, threads)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start=start_batch * self.batch_size)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def _requests(self) -> Iterator[list[tuple[int, bool]]]:
        chunk: list[tuple[int, bool]] = []
        for request in self.sampler:
            chunk.append(request)
            if len(chunk) == self.batch_size:
                yield chunk
                chunk = []
        if chunk and not self.train:
            yield chunk

    def _read(self, requests: list[tuple[int, bool]]) -> dict:
        """Read encoded bytes; unreadable or empty files fail here, before DALI sees them."""
        items, failed = [], []
        for index, flip in requests:
            path = self.data.paths[index]
            try:
                encoded = np.fromfile(path, dtype=np.uint8)
            except OSError as err:
                failed.append((index, path, f"{path}: cannot read: {err.strerror or err}"))
                continue
            if encoded.size == 0:
                failed.append((index, path, f"{path}: empty file (zero bytes)"))
                continue
            items.append((index, flip, encoded))
        return {"items": items, "failed": failed}

    def _feed(self, batch: dict) -> None:
        if batch["items"]:
            self.pipe.feed_input("encoded", [item[2] for item in batch["items"]])
            self.pipe.feed_input("flip", [np.array(int(item[1]), dtype=np.int32) for item in batch["items"]])
            self.pipe.schedule_run()

    def _screen(self, batch: dict) -> None:
        """After a pipeline failure: move images PIL cannot decode to ``failed``."""
        kept = []
        for index, flip, encoded in batch["items"]:
            try:
                decode_image(encoded.tobytes(), self.preprocess.max_pixels)
                kept.append((index, flip, encoded))
            except ImageDecodeError as err:
                path = self.data.paths[index]
                batch["failed"].append((index, path, str(err).replace("<bytes>", path, 1)))
        batch["items"] = kept

    def _to_batch(self, batch: dict, images: torch.Tensor) -> Batch:
        indices = torch.tensor([item[0] for item in batch["items"]], dtype=torch.int64)
        targets = torch.from_numpy(self.data.targets[indices.numpy()]).to(self.device)
        return Batch(images=images, targets=targets.clamp(min=0).float(), mask=(targets >= 0).float(),
                     indices=indices.to(self.device), failed=batch["failed"])

    def _outputs(self, batch: dict) -> torch.Tensor:
        (out,) = self.pipe.outputs()
        tensor = out.as_tensor()
        hwc = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)  # (B, S, S, 3)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(tensor, hwc, cuda_stream=stream)
        images = hwc.permute(0, 3, 1, 2)  # channels-last NCHW view of the HWC buffer
        return images if self.channels_last else images.contiguous()

    def _pil_fallback(self, batch: dict) -> torch.Tensor:
        images = torch.stack([self.preprocess.load(item[2].tobytes(), flip=item[1]) for item in batch["items"]])
        return self.preprocess.normalize(images.to(self.device), channels_last=self.channels_last)

    def _empty(self) -> torch.Tensor:
        size = self.preprocess.size
        return torch.empty(0, 3, size, size, device=self.device)

    def __iter__(self) -> Iterator[Batch]:
        pending: collections.deque[dict] = collections.deque()
        requests = self._requests()
        exhausted = False
        while True:
            while not exhausted and len(pending) <= self.prefetch:
                chunk = next(requests, None)
                if chunk is None:
                    exhausted = True
                    break
                batch = self._read(chunk)
                self._feed(batch)
                pending.append(batch)
            if not pending:
                return
            batch = pending.popleft()
            if not batch["items"]:
                yield self._to_batch(batch, self._empty())
                continue
            try:
                images = self._outputs(batch)
            except RuntimeError:
                images = self._recover(batch, pending)
            yield self._to_batch(batch, images)

    def _recover(self, batch: dict, pending: collections.deque) -> torch.Tensor:
        """A batch failed in DALI: rebuild, drop what PIL cannot decode, rerun everything in flight."""
        self.pipe = _build_pipeline(self.preprocess, self.batch_size, self.device_id, self.threads)
        self._screen(batch)
        images = self._empty()
        if batch["items"]:
            self._feed(batch)
            try:
                images = self._outputs(batch)
            except RuntimeError:  # DALI refuses what PIL decodes: decode this batch with PIL
                self.pipe = _build_pipeline(self.preprocess, self.batch_size, self.device_id, self.threads)
                images = self._pil_fallback(batch)
        for later in pending:  # their runs were lost with the old pipeline
            self._feed(later)
        return images
