"""Batch tagging: inputs -> decode (overlapped with inference) -> backend -> labels, in input order.

``Tagger.load(path)`` takes a checkpoint (``.pt``), an ONNX graph (``.onnx``), an engine
bundle (``.engine``), or the URL of a model served by Triton (``http://HOST:PORT/MODEL``), and
opens the best backend that can run here, or the one asked for
(:func:`lcie_fast.runtime.open_backend`). Preprocessing comes from the model's metadata.

``Tagger.tag(inputs)`` yields one :class:`~lcie_fast.outputs.TagRecord` per input, in input
order, each with its labels (name and score, best first) or the reason it could not be read;
nothing is dropped and nothing duplicated. Decoding runs in a pool of threads (PIL and torch
release the GIL) while the backend works on the previous batch; on a GPU with DALI installed,
file inputs are decoded on the GPU instead. Both decoders yield the same
:class:`DecodedBatch`, and one method turns it into records. Queues are bounded, so memory
stays flat over millions of inputs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.datasets import IMAGE_EXTENSIONS
from .data.transforms import DEFAULT_MAX_BYTES, DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS, Preprocess, check_limit
from .errors import InvalidInputError
from .inputs import InputItem, decode_input, expand_inputs, image_array
from .metadata import ModelMetadata
from .metrics import sigmoid
from .outputs import TagRecord
from .outputs.records import HASH_NAMES
from .postprocess import TagPostprocess
from .remote import RemotePath
from .runtime import Backend, open_backend
from .thresholds import read_thresholds
from .webdataset import DEFAULT_IMAGE_KEYS, FailedInput, TarMember

__all__ = ["DecodedBatch", "Tagger", "TagRecord", "expand_inputs"]


@dataclasses.dataclass
class DecodedBatch:
    """A batch of inputs as a decoder hands it over.

    Attributes:
        items: The inputs, in input order.
        images: The decoded images of the inputs in ``decoded``, stacked: uint8 (B, 3, S, S)
            on the CPU, or already normalised float on the device (``normalized``).
        decoded: Positions in ``items`` of the images, in order.
        errors: Position in ``items`` -> why that input could not be decoded.
        normalized: ``images`` are normalised and on the backend's device (DALI).
        digests: Position in ``items`` -> hex digest of that input's bytes (when hashes are asked for).
    """

    items: list[InputItem]
    images: torch.Tensor | None
    decoded: list[int]
    errors: dict[int, str]
    normalized: bool = False
    digests: dict[int, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Call:
    """What one :meth:`Tagger.tag` call asks of every record."""

    threshold: float | None = None
    postprocess: TagPostprocess = TagPostprocess()
    all_scores: bool = False
    hash_name: str | None = None
    seen: dict[str, TagRecord] | None = None  # --dedup: digest -> the first record with that content


def _check_thresholds(values: Sequence[Any], source: str, names: Sequence[str] | None = None) -> None:
    """Every value a real number in [0, 1], else :class:`InvalidInputError` naming ``source`` and the label."""
    for position, value in enumerate(values):
        number = value if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)) else None
        if number is None or not 0.0 <= float(number) <= 1.0:  # NaN fails the comparison too
            subject = f"{source}: threshold" + (f" for {names[position]!r}" if names else "")
            raise InvalidInputError(f"{subject} must be a number in [0, 1], got {value!r}")


def _check_call(threshold: float | None, top_k: int | None, **counts: int | None) -> None:
    """The arguments of a tagging call, before anything runs: ``threshold`` in [0, 1], ``top_k``
    and ``counts`` whole numbers >= 1 (``skip`` >= 0); None means the default."""
    if threshold is not None:
        _check_thresholds([threshold], "threshold")
    for name, value in {"top_k": top_k, **counts}.items():
        least = 0 if name == "skip" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least):
            raise InvalidInputError(f"{name} must be a whole number >= {least}, got {value!r}")


def _plain_file(path: str, max_bytes: int) -> bool:
    """Whether ``path`` is a regular file of at most ``max_bytes`` (symlinks followed)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return True  # missing: DALI's reader reports it
    return stat.S_ISREG(info.st_mode) and info.st_size <= max_bytes


# ----------------------------------------------------------------------------- tagger
class Tagger:
    """A model ready to tag images. Build with :meth:`load`.

    Attributes:
        backend: The inference backend (``tagger.backend.label`` says which).
        meta: The model's metadata (labels, preprocessing).
        thresholds: Per-label score thresholds (a global one, or fitted per label).
        stats: Inputs, errors, entries folder and glob scans left out (``skipped``) and seconds
            spent decoding and in the model so far (updated under a lock: decoder threads add to it).

    Args:
        backend: The inference backend.
        thresholds: One score threshold or one per label, each in [0, 1].
        max_pixels, max_bytes, max_decode_bytes: Limits of one input (see
            :class:`~lcie_fast.data.transforms.Preprocess`); memory at worst is about
            ``max_decode_bytes`` times the decoder threads.

    Raises:
        InvalidInputError: a threshold or limit out of range.
    """

    def __init__(self, backend: Backend, thresholds: np.ndarray | float = 0.5, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> None:
        self.backend = backend
        self.meta: ModelMetadata = backend.meta
        self.labels = list(self.meta.label_names)
        self.preprocess = Preprocess(self.meta.preprocess, max_pixels=max_pixels, max_bytes=max_bytes,
                                     max_decode_bytes=max_decode_bytes)
        values = np.asarray(thresholds, dtype=np.float64)
        _check_thresholds(values.ravel(), "thresholds")
        self.thresholds = np.broadcast_to(values.astype(np.float32), (len(self.labels),)).copy()
        self.torch_device = torch.device(backend.device if backend.device.startswith("cuda") else "cpu")
        self.stats = {"images": 0, "errors": 0, "skipped": 0, "duplicates": 0, "decode_s": 0.0, "model_s": 0.0}
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", device: str | None = None, *, precision: str | None = None,
             thresholds: float | str | Path | dict[str, float] | None = None, fast_ops: str = "auto",
             max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
             max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES, allow_host_code: bool = False) -> Tagger:
        """Load a checkpoint, ONNX graph, engine bundle or Triton-served model with the best (or the named) backend.

        Args:
            path: ``.pt`` checkpoint, ``.onnx`` graph exported by lcie-fast, ``.engine`` bundle, or the
                URL ``http[s]://HOST:PORT/MODEL[/VERSION]`` of a model served by Triton Inference Server
                from a repository written by ``lcie-fast export-triton`` (backend ``triton``).
            backend, device, precision, fast_ops, allow_host_code: as :func:`lcie_fast.runtime.open_backend`.
            thresholds: One score threshold, a JSON file from ``lcie-fast eval --fit-thresholds``,
                or a {label: threshold} mapping (default: the thresholds a Triton-served model was
                exported with, when it carries any; else 0.5).
            max_pixels: Images with more pixels are refused (decompression bombs).
            max_bytes: Files larger than this are refused before they are read.
            max_decode_bytes: Images whose decoding needs more memory (from the header) are
                refused; JPEGs are decoded at a reduced scale instead where that fits.

        Raises:
            BackendError: the named backend cannot run here (with the reason), or no backend fits.
            InvalidInputError: a limit out of range.
        """
        for name, value in (("max_pixels", max_pixels), ("max_bytes", max_bytes), ("max_decode_bytes", max_decode_bytes)):
            check_limit(name, value)  # before the model loads
        instance = open_backend(path, backend, device, precision=precision, fast_ops=fast_ops,
                                allow_host_code=allow_host_code)
        tagger = cls(instance, max_pixels=max_pixels, max_bytes=max_bytes, max_decode_bytes=max_decode_bytes)
        if thresholds is None:  # a Triton model's lcie_metadata may carry the thresholds fitted for it
            thresholds = getattr(instance, "default_thresholds", None)
        if thresholds is not None:
            tagger.set_thresholds(thresholds)
        return tagger

    def set_thresholds(self, thresholds: float | str | Path | dict[str, float]) -> None:
        """One threshold for every label, a {label: threshold} mapping, or a thresholds file: the JSON of
        ``lcie-fast eval --fit-thresholds``, a ``{label: threshold}`` JSON, or one number per line in
        label order (see :func:`~lcie_fast.thresholds.read_thresholds`). Nothing changes unless all are valid.

        Raises:
            InputNotFoundError: the file does not exist.
            InvalidInputError: unreadable, a wrong count (both named), an unknown label, or a value
                that is not a number in [0, 1]; names the file.
        """
        source = "thresholds"
        if isinstance(thresholds, (str, Path)):
            thresholds = read_thresholds(thresholds, self.labels)  # every error names the file
        elif not isinstance(thresholds, dict):
            _check_thresholds([thresholds], source)
            self.thresholds[:] = float(thresholds)
            return
        unknown = sorted(set(thresholds) - set(self.labels))
        if unknown:
            raise InvalidInputError(f"{source}: thresholds name labels the model does not have: {unknown} "
                                    f"(labels: {self.labels})")
        _check_thresholds(list(thresholds.values()), source, names=list(thresholds))
        for name, value in thresholds.items():
            self.thresholds[self.labels.index(name)] = float(value)

    # --------------------------------------------------------------------- inference
    def _count(self, **amounts: float) -> None:
        with self._stats_lock:
            for key, amount in amounts.items():
                self.stats[key] += amount

    def logits(self, images: torch.Tensor, normalized: bool = False) -> np.ndarray:
        """(B, C) logits of a uint8 (B, 3, S, S) batch (or of an already normalised one on the device)."""
        start = time.perf_counter()
        if not normalized:
            # normalised on the backend's device, in the memory format it reads
            if self.torch_device.type == "cuda":
                images = images.pin_memory().to(self.torch_device, non_blocking=True)
            images = self.preprocess.normalize(images, channels_last=getattr(self.backend, "channels_last", False))
        out = self.backend.infer_numpy(images)
        self._count(model_s=time.perf_counter() - start)
        return out

    def _records(self, batch: DecodedBatch, call: _Call) -> list[TagRecord]:
        """The one place decoded batches become records: sigmoid, thresholds, post-processing, hashes,
        duplicates, error records, stats."""
        records = [TagRecord(item.index, item.path, [], batch.errors.get(position),
                             digest=(call.hash_name, batch.digests[position])
                             if call.hash_name and position in batch.digests else None)
                   for position, item in enumerate(batch.items)]
        rows, copies, first = [], [], {}  # rows of batch.images to run; duplicates; digest -> first position here
        for row, position in enumerate(batch.decoded):
            digest = batch.digests.get(position)
            if call.seen is not None and digest is not None and (digest in call.seen or digest in first):
                copies.append(position)
            else:
                rows.append(row)
                if digest is not None:
                    first[digest] = position
        if rows:
            images = batch.images if len(rows) == len(batch.decoded) else batch.images[rows]
            probabilities = sigmoid(self.logits(images, batch.normalized))
            limits = self.thresholds if call.threshold is None else np.full(len(self.labels), call.threshold, np.float32)
            for row, probs in zip(rows, probabilities):
                position = batch.decoded[row]
                order = np.argsort(-probs, kind="stable")
                kept = [(self.labels[c], float(probs[c])) for c in order if probs[c] >= limits[c]]
                record = records[position]
                record.labels = call.postprocess.apply(kept, probs, self.labels)
                if call.all_scores:
                    record.scores = {name: float(p) for name, p in zip(self.labels, probs)}
                if call.seen is not None and position in batch.digests:
                    call.seen.setdefault(batch.digests[position], record)
        for position in copies:
            original, record = call.seen[batch.digests[position]], records[position]
            record.labels, record.duplicate_of = list(original.labels), original.key
            record.scores = None if original.scores is None else dict(original.scores)
        self._count(images=len(batch.items), errors=len(batch.errors), duplicates=len(copies))
        return records

    def tag(self, inputs: Any, *, batch_size: int = 32, threshold: float | None = None, top_k: int | None = None,
            workers: int | None = None, all_scores: bool = False, skip: int = 0, progress: bool = False,
            decoder: str = "auto", extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = True,
            hash_name: str | None = None, dedup: bool = False, postprocess: TagPostprocess | None = None,
            shard: tuple[int, int] | None = None, done: Callable[[str], bool] | None = None,
            wds_image_keys: Sequence[str] = DEFAULT_IMAGE_KEYS, known: Iterable[TagRecord] = (),
            quiet_suffixes: Sequence[str] = ()) -> Iterator[TagRecord]:
        """Tag ``inputs`` (see :func:`~lcie_fast.inputs.expand_inputs`); one record per input, in input order.

        Arguments are checked here, when ``tag`` is called, before any input is read; the records
        come as the returned iterator is consumed. Entries a folder or glob scan leaves out are
        counted in ``stats["skipped"]`` (and reported on stderr and in the log). Inputs given as
        paths, folders, globs, lists or manifests are expanded first, so the progress bar knows
        the total (stdin and generators are streamed).

        Args:
            batch_size: Images per backend call (>= 1).
            threshold: One threshold for this call, in [0, 1] (default: the tagger's thresholds).
            top_k: Keep at most this many labels per image (>= 1; ``postprocess.max_tags``).
            workers: Decoder threads (>= 1; default: CPU count).
            all_scores: Also put every label's score in each record.
            skip: Leave out the first ``skip`` inputs of this call's inputs (of the shard, if
                any) that ``done`` does not leave out: resuming an output.
            progress: Show a tqdm bar.
            decoder: ``threads`` (PIL in a thread pool), ``dali`` (DALI: nvJPEG on a GPU, its CPU
                decoder otherwise) or ``auto`` (DALI for a GPU backend when installed, unless
                hashes are asked for: they come from the bytes the threads decoder reads).
            hash_name: ``sha256`` or ``md5``: each record's content hash, from the bytes read for decoding.
            dedup: Inputs whose content (``hash_name``, sha256 by default) was seen before in this
                call (or in ``known``) are not run through the model: their record copies the
                first one's labels and names it in ``duplicate_of``.
            postprocess: What happens to each image's tags after the thresholds (exclusions,
                minimum and maximum counts, order, display names).
            shard: ``(i, n)``: only the inputs whose position in the whole input order is
                ``i`` modulo ``n`` (their records keep that position as ``index``).
            done: Inputs for whose path this returns True are left out (no record): resuming
                sidecar captions.
            wds_image_keys: The image member of a WebDataset sample, by extension, first found wins.
            known: Records of an earlier run of the same output (resuming with ``dedup``).
            quiet_suffixes: Files with these suffixes are left out of folder scans without a word
                (the sidecar captions a caption run writes beside its images).

        Raises:
            InvalidInputError: an argument out of range, named.
        """
        _check_call(threshold, top_k, batch_size=batch_size, workers=workers, skip=skip)
        if decoder not in ("auto", "threads", "dali"):
            raise InvalidInputError(f"decoder must be auto, threads or dali, got {decoder!r}")
        if hash_name not in (None, *HASH_NAMES):
            raise InvalidInputError(f"hash must be one of {', '.join(HASH_NAMES)} or None, got {hash_name!r}")
        if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
            raise InvalidInputError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
        hash_name = hash_name or ("sha256" if dedup else None)
        if decoder == "dali" and hash_name:
            raise InvalidInputError("hashes and --dedup need the threads decoder (they come from the bytes it reads); "
                                    "pass decoder='threads' or 'auto'")
        if decoder == "auto":
            from .data.dali import dali_unavailable_reason

            decoder = ("dali" if self.torch_device.type == "cuda" and not hash_name and not dali_unavailable_reason()
                       else "threads")
        postprocess = postprocess or TagPostprocess()
        if top_k is not None:
            postprocess = dataclasses.replace(postprocess, max_tags=top_k)
        postprocess.check(self.labels)
        seen = None
        if dedup:
            seen = {record.digest[1]: record for record in known
                    if record.digest is not None and record.error is None and record.duplicate_of is None}
        call = _Call(threshold, postprocess, all_scores, hash_name, seen)
        sources = expand_inputs(inputs, extensions=extensions, recursive=recursive, wds_image_keys=wds_image_keys,
                                on_skip=lambda path, reason: self._count(skipped=1), quiet_suffixes=quiet_suffixes)
        countable = isinstance(inputs, (str, os.PathLike)) or (
            isinstance(inputs, (list, tuple)) and not any(isinstance(x, str) and x == "-" for x in inputs))

        def selected(sources: Iterable[Any]) -> Iterator[InputItem]:
            items = InputItem.numbered(sources)
            if shard is not None:
                items = (item for item in items if item.index % shard[1] == shard[0])
            if done is not None:
                items = (item for item in items if item.path is None or not done(item.path))
            return itertools.islice(items, skip, None)

        total = None
        stream = selected(sources)
        if countable:  # listed now: the bar knows the total, and ``done`` is asked once, before any output is written
            stream = list(stream)
            total = skip + len(stream)
            stream = iter(stream)
        workers = workers or max(os.cpu_count() or 1, 1)
        if self.backend.max_batch:
            batch_size = min(batch_size, self.backend.max_batch)
        batches = (self._dali_batches(stream, batch_size, workers) if decoder == "dali"
                   else self._thread_batches(stream, batch_size, workers, hash_name))
        return self._tagged(batches, call, progress, skip, total)

    def _tagged(self, batches: Iterator[DecodedBatch], call: _Call, progress: bool, skip: int,
                total: int | None) -> Iterator[TagRecord]:
        from tqdm.auto import tqdm

        bar = tqdm(desc="tag", unit="img", disable=not progress, dynamic_ncols=True, initial=skip, total=total)
        try:
            for batch in batches:
                records = self._records(batch, call)
                bar.update(len(records))
                yield from records
        finally:
            bar.close()

    def _timed_decode(self, item: InputItem, hash_name: str | None) -> tuple[torch.Tensor | None, str | None, str | None]:
        start = time.perf_counter()
        out = decode_input(item, self.preprocess, hash_name)
        self._count(decode_s=time.perf_counter() - start)
        return out

    def _thread_batches(self, stream: Iterator[InputItem], batch_size: int, workers: int,
                        hash_name: str | None = None) -> Iterator[DecodedBatch]:
        """Decode ahead in a thread pool (bounded window), batch by batch, in order."""
        window = max(2 * batch_size, workers * 4)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            pending: collections.deque[tuple[InputItem, concurrent.futures.Future]] = collections.deque()
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    item = next(stream, None)
                    if item is None:
                        exhausted = True
                        break
                    pending.append((item, pool.submit(self._timed_decode, item, hash_name)))
                if not pending:
                    return
                chunk = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                items, images, decoded, errors, digests = [], [], [], {}, {}
                for position, (item, future) in enumerate(chunk):
                    image, error, digest = future.result()
                    items.append(item)
                    if digest is not None:
                        digests[position] = digest
                    if image is None:
                        errors[position] = error
                    else:
                        images.append(image)
                        decoded.append(position)
                yield DecodedBatch(items, torch.stack(images) if images else None, decoded, errors, digests=digests)

    def _dali_batches(self, stream: Iterator[InputItem], batch_size: int, workers: int,
                      chunk: int = 8192) -> Iterator[DecodedBatch]:
        """File inputs decoded by DALI, ``chunk`` files per pipeline; in-memory inputs by threads."""
        from .data.dali import DaliLoader

        while True:
            items = list(itertools.islice(stream, chunk))
            if not items:
                return
            if not all(isinstance(item.source, str) and not isinstance(item.source, (TarMember, RemotePath, FailedInput))
                       and _plain_file(item.source, self.preprocess.max_bytes) for item in items):
                # in-memory images, shard members, URLs, or files DALI must not read (special, oversized): the threads
                # decoder makes their error records
                yield from self._thread_batches(iter(items), batch_size, workers)
                continue
            loader = DaliLoader([item.source for item in items], self.preprocess, batch_size, train=False,
                                device=self.torch_device, threads=max(workers, 1))
            loader.set_epoch(0)
            for batch in loader:
                local = sorted(batch.indices.cpu().tolist() + [i for i, _, _ in batch.failed])
                position = {index: p for p, index in enumerate(local)}
                yield DecodedBatch([items[i] for i in local], batch.images if len(batch) else None,
                                   [position[i] for i in batch.indices.cpu().tolist()],
                                   {position[i]: reason for i, _, reason in batch.failed}, normalized=True)

    def tag_decoded(self, batch: DecodedBatch, *, threshold: float | None = None,
                    postprocess: TagPostprocess | None = None, all_scores: bool = False,
                    hash_name: str | None = None) -> list[TagRecord]:
        """Records of a batch decoded elsewhere (a Ray map step, your own loader): the same post-processing,
        error records and statistics as :meth:`tag`. ``batch.digests`` become the records' hashes
        (``hash_name``); duplicates are not looked for here (see ``dedup`` in :meth:`tag`).

        Raises:
            InvalidInputError: a threshold, post-processing or hash name out of range.
        """
        _check_call(threshold, None)
        if hash_name not in (None, *HASH_NAMES):
            raise InvalidInputError(f"hash must be one of {', '.join(HASH_NAMES)} or None, got {hash_name!r}")
        postprocess = postprocess or TagPostprocess()
        postprocess.check(self.labels)
        return self._records(batch, _Call(threshold, postprocess, all_scores, hash_name))

    def tag_frames(self, frames: Any, *, threshold: float | None = None, top_k: int | None = None,
                   all_scores: bool = False) -> list[TagRecord]:
        """Tag a batch of frames you decoded yourself: (N, H, W, 3) uint8, NumPy or a torch tensor
        (a CUDA tensor is resized on the GPU), or a list of (H, W, 3) frames. RGB order.

        Raises:
            InvalidInputError: a frame that is not uint8 (H, W, 3) (the check :meth:`tag` makes of
                in-memory images, there an error record), or a single frame instead of a batch.
        """
        if isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim != 4:
            raise InvalidInputError(f"frames must be a batch (N, H, W, 3), got {tuple(frames.shape)}; "
                                    "for one frame pass frames[None]")
        _check_call(threshold, top_k)
        checked = [image_array(frame, f"frame {i}") for i, frame in enumerate(frames)]
        if not checked:
            return []
        if isinstance(frames, torch.Tensor) and frames.shape[-1] == 3:
            images = self._resize_frames(frames)
        else:
            images = torch.stack([self.preprocess.from_array(f.cpu() if isinstance(f, torch.Tensor) else f)
                                  for f in checked])
        batch = DecodedBatch([InputItem(i, None, None) for i in range(len(images))], images, list(range(len(images))), {})
        return self._records(batch, _Call(threshold, TagPostprocess(max_tags=top_k), all_scores))

    def _resize_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 tensor -> (N, 3, S, S) uint8 on the tensor's device (GPU resize)."""
        import torch.nn.functional as F

        size = self.preprocess.size
        chw = frames.permute(0, 3, 1, 2)
        if frames.device.type == "cpu":
            return torch.stack([self.preprocess.from_array(f) for f in frames])
        resized = F.interpolate(chw.float(), size=(size, size), mode=self.meta.preprocess.interpolation,
                                align_corners=False, antialias=True)
        return resized.round_().clamp_(0, 255).to(torch.uint8).cpu()
