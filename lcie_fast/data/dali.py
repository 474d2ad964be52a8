"""The DALI loader: the preprocessing of :mod:`lcie_fast.data.transforms` as a DALI graph.

``external_source`` (encoded bytes and flip flags, in the order of the same resumable sharded
:class:`~lcie_fast.data.loader.EpochSampler` the torch loader uses) -> ``decoders.image``
(``device="mixed"``: nvJPEG on the GPU; ``"cpu"`` without one) -> ``resize`` (antialiased,
uint8) -> ``flip`` -> ``crop_mirror_normalize`` (float, HWC) -> a (B, S, S, 3) tensor whose
``permute(0, 3, 1, 2)`` is the channels-last NCHW batch, without a copy.

Without a GPU the same graph runs CPU-only (``device_id=None``, decode on ``"cpu"``).

Training augmentation (:mod:`lcie_fast.data.augment`): the random resized crop window of each
sample is drawn on the host from (seed, epoch, index), exactly as for the torch loader, turned
into pixels from the image header and applied with ``fn.slice`` after decoding; the policy is
DALI's own ``auto_aug`` TrivialAugmentWide / RandAugment (GPU-side, DALI's random stream seeded
from the run seed: the same distribution of operations as torchvision's, not the same draws, so
a resumed DALI run replays the order, flips and crops exactly and the policy's draws anew).

A corrupt image stops a DALI pipeline for the whole batch. The loader then rebuilds the
pipeline, finds the culprits with the PIL decoder, reports them in ``Batch.failed`` and
reruns the batch without them; an image DALI refuses but PIL decodes is decoded by PIL.
Nothing is lost and nothing is fatal.
"""

from __future__ import annotations

import collections
from typing import Iterator, Sequence

import numpy as np
import torch

from .._optional import require
from ..errors import InvalidInputError
from .augment import Augment, sample_seed
from .datasets import MultiLabelSet
from .loader import Batch, EpochSampler
from .transforms import ImageDecodeError, Preprocess, image_header_size, read_image_bytes


def dali_unavailable_reason() -> str:
    """Why the DALI loader cannot run here ('' when it can)."""
    try:
        require("nvidia.dali", "the DALI loader")
    except ImportError as err:
        return str(err)
    return ""


def _build_pipeline(preprocess: Preprocess, batch_size: int, device_id: int | None, threads: int,
                    augment: Augment | None = None, seed: int = 0):
    dali = require("nvidia.dali", "the DALI loader")
    fn, types = dali.fn, dali.types
    config = preprocess.config
    interp = types.INTERP_LINEAR if config.interpolation == "bilinear" else types.INTERP_CUBIC
    policy = augment.policy_name if augment is not None else "none"

    @dali.pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=1,
                       exec_dynamic=True, enable_conditionals=policy != "none", seed=seed)
    def pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
        images = fn.decoders.image(encoded, device="mixed" if device_id is not None else "cpu", output_type=types.RGB)
        if augment is not None:  # crop windows in pixels, (top, left) and (height, width)
            anchor = fn.external_source(name="crop_anchor", dtype=types.INT32, ndim=1)
            shape = fn.external_source(name="crop_shape", dtype=types.INT32, ndim=1)
            images = fn.slice(images, anchor, shape, axis_names="HW")
        images = fn.resize(images, resize_x=config.input_size, resize_y=config.input_size, interp_type=interp,
                           antialias=True)
        images = fn.flip(images, horizontal=flip)
        if policy != "none":
            from nvidia.dali.auto_aug import rand_augment, trivial_augment

            if policy == "trivialaugment":
                images = trivial_augment.trivial_augment_wide(images, shape=[config.input_size] * 2)
            else:
                images = rand_augment.rand_augment(images, n=2, m=9, shape=[config.input_size] * 2)
        return fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="HWC",
            mean=[255.0 * m for m in config.mean], std=[255.0 * s for s in config.std],
        )

    pipe = pipeline()  # (DALI's auto_aug warns about its own deprecated aliases; DALI forces those warnings on)
    pipe.build()
    return pipe


class DaliLoader:
    """Batches decoded and preprocessed by DALI; same order, flips and Batch as TorchLoader.

    Args:
        data: A labelled set, or plain image paths to decode for inference (``train=False``;
            each Batch then has (B, 0) targets).
        preprocess, batch_size, train, seed, device, rank, world_size: as TorchLoader.
        threads: DALI CPU threads.
        prefetch: Batches in flight ahead of the one being consumed.
        augment: Training augmentation (only used when ``train``).
    """

    def __init__(self, data: MultiLabelSet | Sequence[str], preprocess: Preprocess, batch_size: int, *, train: bool, seed: int = 0,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, threads: int = 2,
                 prefetch: int = 1, channels_last: bool = True, augment: Augment | None = None) -> None:
        if not isinstance(data, MultiLabelSet):
            if train:
                raise InvalidInputError("DaliLoader: training needs a labelled MultiLabelSet, not plain paths")
            data = list(data)
        self.data = data
        self.paths: list[str] = data if isinstance(data, list) else data.paths
        self.targets = data.targets if isinstance(data, MultiLabelSet) else np.zeros((len(data), 0), np.int8)
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        self.device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        self.threads = threads
        self.prefetch = prefetch
        self.channels_last = channels_last
        self.sampler = EpochSampler(len(data), rank=rank, world_size=world_size, seed=seed, shuffle=train, flip=train)
        self.augment = augment if train and augment is not None and augment.active else None
        self.seed = seed * 1000 + rank  # DALI's own random stream (augmentation policy only)
        self.builds = 0
        self.pipe = self._new_pipeline()

    def _new_pipeline(self):
        # a rebuilt pipeline (after a bad image) continues with fresh policy draws, not the first ones again
        self.builds += 1
        seed = (self.seed * 7919 + self.builds) % 2**31
        return _build_pipeline(self.preprocess, self.batch_size, self.device_id, self.threads, self.augment, seed)

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
        items, failed, windows = [], [], []
        for index, flip in requests:
            path = self.paths[index]
            try:  # regular files only, at most max_bytes: a FIFO or a link to /dev/zero fails here
                encoded = np.frombuffer(read_image_bytes(path, self.preprocess.max_bytes), np.uint8)
            except ImageDecodeError as err:
                failed.append((index, path, str(err)))
                continue
            except OSError as err:
                failed.append((index, path, f"{path}: cannot read: {err.strerror or err}"))
                continue
            if encoded.size == 0:
                failed.append((index, path, f"{path}: empty file (zero bytes)"))
                continue
            if self.augment is not None:
                try:
                    height, width = image_header_size(encoded.tobytes(), path, self.preprocess.max_pixels)
                except ImageDecodeError as err:
                    failed.append((index, path, str(err)))
                    continue
                window = self.augment.crop_window(sample_seed(self.sampler.seed, self.sampler.epoch, index))
                windows.append(window.pixels(height, width))
            items.append((index, flip, encoded))
        return {"items": items, "failed": failed, "windows": windows}

    def _feed(self, batch: dict) -> None:
        if batch["items"]:
            self.pipe.feed_input("encoded", [item[2] for item in batch["items"]])
            self.pipe.feed_input("flip", [np.array(int(item[1]), dtype=np.int32) for item in batch["items"]])
            if self.augment is not None:
                self.pipe.feed_input("crop_anchor", [np.array(w[:2], dtype=np.int32) for w in batch["windows"]])
                self.pipe.feed_input("crop_shape", [np.array(w[2:], dtype=np.int32) for w in batch["windows"]])
            self.pipe.schedule_run()

    def _screen(self, batch: dict) -> None:
        """After a pipeline failure: move images PIL cannot decode to ``failed``."""
        kept, windows = [], []
        for i, (index, flip, encoded) in enumerate(batch["items"]):
            try:
                self.preprocess.decode(encoded.tobytes())
                kept.append((index, flip, encoded))
                windows.extend(batch["windows"][i:i + 1])
            except ImageDecodeError as err:
                path = self.paths[index]
                batch["failed"].append((index, path, str(err).replace("<bytes>", path, 1)))
        batch["items"], batch["windows"] = kept, windows

    def _to_batch(self, batch: dict, images: torch.Tensor) -> Batch:
        indices = torch.tensor([item[0] for item in batch["items"]], dtype=torch.int64)
        targets = torch.from_numpy(self.targets[indices.numpy()]).to(self.device)
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
        from .loader import ImageDataset

        if self.augment is not None:  # the torch loader's augmentation, same crop windows
            dataset = ImageDataset(self.data, self.preprocess, self.augment)
            seeds = [sample_seed(self.sampler.seed, self.sampler.epoch, item[0]) for item in batch["items"]]
            images = torch.stack([dataset.augmented(item[2].tobytes(), item[1], seed)
                                  for item, seed in zip(batch["items"], seeds)])
            return self.preprocess.normalize(images.to(self.device), channels_last=self.channels_last)
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
        self.pipe = self._new_pipeline()
        self._screen(batch)
        images = self._empty()
        if batch["items"]:
            self._feed(batch)
            try:
                images = self._outputs(batch)
            except RuntimeError:  # DALI refuses what PIL decodes: decode this batch with PIL
                self.pipe = self._new_pipeline()
                images = self._pil_fallback(batch)
        for later in pending:  # their runs were lost with the old pipeline
            self._feed(later)
        return images
