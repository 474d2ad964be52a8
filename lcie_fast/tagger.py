"""Batch tagging: inputs -> decode (overlapped with inference) -> backend -> labels, in input order.

``Tagger.load(path)`` takes a checkpoint (``.pt``), an ONNX graph (``.onnx``) or an engine
bundle (``.engine``) and picks the best backend that can run here (``auto``: TensorRT for
bundles, ONNX Runtime for graphs, and for checkpoints torch.compile on a GPU, eager on a GPU,
eager on the CPU), or the one asked for. Preprocessing comes from the model's metadata.

``Tagger.tag(inputs)`` yields one :class:`TagRecord` per input, in input order, each with its
labels (name and score, best first) or the reason it could not be read; nothing is dropped and
nothing duplicated. Decoding runs in a pool of threads (PIL and torch release the GIL) while
the backend works on the previous batch; on a GPU with DALI installed, file inputs are decoded
on the GPU instead. Queues are bounded, so memory stays flat over millions of inputs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .data.datasets import IMAGE_EXTENSIONS, manifest_paths
from .data.transforms import DEFAULT_MAX_PIXELS, ImageDecodeError, Preprocess
from .metadata import ModelMetadata
from .runtime.base import Backend, BackendError

BACKENDS = ("auto", "tensorrt", "compiled", "eager", "onnxruntime")


@dataclasses.dataclass
class TagRecord:
    """The result for one input.

    Attributes:
        index: Position of the input in the input order.
        path: The input's path (None for in-memory images).
        labels: (label name, score) of every label at or above its threshold, best first,
            at most ``top_k``.
        error: None, or why the input could not be tagged.
        scores: Every label's score (only when asked for).
    """

    index: int
    path: str | None
    labels: list[tuple[str, float]]
    error: str | None = None
    scores: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"path": self.path} if self.path is not None else {"index": self.index}
        record["labels"] = [{"label": name, "score": round(score, 5)} for name, score in self.labels]
        record["error"] = self.error
        if self.scores is not None:
            record["scores"] = {k: round(v, 5) for k, v in self.scores.items()}
        return record


@dataclasses.dataclass
class _Item:
    index: int
    source: Any  # a path string, or an in-memory image
    path: str | None


# ------------------------------------------------------------------------------ inputs
def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def expand_inputs(inputs: Any, *, extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = True) -> Iterator[Any]:
    """Flatten the accepted input kinds into a stream of paths and in-memory images.

    Accepted: a path or a list of them; ``-`` (paths on stdin, one per line); ``@list.txt`` (a
    file of paths); a directory (image files by extension, recursive, sorted); a glob; a CSV or
    JSONL manifest (its image paths); PIL images; NumPy (H, W, 3) uint8 arrays; torch uint8
    tensors (3, H, W) or (H, W, 3); and (N, H, W, 3) arrays or tensors (N images).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    elif isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4:
        inputs = list(inputs)
    elif not isinstance(inputs, Iterable) or isinstance(inputs, (np.ndarray, torch.Tensor)) or _is_image(inputs):
        inputs = [inputs]
    exts = {e.lower() for e in extensions}
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            yield item
            continue
        text = str(item)
        if text == "-":
            for line in sys.stdin:
                if line.strip():
                    yield line.strip()
        elif text.startswith("@"):
            with open(text[1:]) as handle:
                for line in handle:
                    if line.strip():
                        yield line.strip()
        elif Path(text).is_dir():
            pattern = "**/*" if recursive else "*"
            yield from sorted(str(p) for p in Path(text).glob(pattern) if p.is_file() and p.suffix.lower() in exts)
        elif _is_glob(text):
            yield from sorted(p for p in glob.glob(text, recursive=True) if Path(p).is_file())
        elif Path(text).suffix.lower() in (".csv", ".jsonl") and Path(text).is_file():
            yield from manifest_paths(text)
        else:
            yield text  # a file (a missing one becomes an error record)


def _is_image(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.")


def _decode(item: _Item, preprocess: Preprocess) -> tuple[torch.Tensor | None, str | None]:
    """(3, S, S) uint8, or the error; never raises for bad input."""
    try:
        source = item.source
        if isinstance(source, str):
            return preprocess.load(source), None
        if _is_image(source):
            from .data.transforms import _to_rgb8

            return preprocess.from_array(_to_rgb8(source, "<PIL image>")), None
        array = source.detach().cpu() if isinstance(source, torch.Tensor) else np.asarray(source)
        if array.dtype not in (np.uint8, torch.uint8) or array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
            return None, f"in-memory image must be uint8 (H, W, 3) or (3, H, W), got {tuple(array.shape)} {array.dtype}"
        if isinstance(array, torch.Tensor) and array.shape[0] == 3 and array.shape[-1] != 3:
            array = array.permute(1, 2, 0)
        return preprocess.from_array(array), None
    except ImageDecodeError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 - one bad input must never stop a run of millions
        return None, f"{item.path or f'input {item.index}'}: {type(err).__name__}: {err}"


# ----------------------------------------------------------------------------- tagger
class Tagger:
    """A model ready to tag images. Build with :meth:`load`.

    Attributes:
        backend: The inference backend (``tagger.backend.label`` says which).
        meta: The model's metadata (labels, preprocessing).
        thresholds: Per-label score thresholds (a global one, or fitted per label).
    """

    def __init__(self, backend: Backend, thresholds: np.ndarray | float = 0.5, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.backend = backend
        self.meta: ModelMetadata = backend.meta
        self.labels = list(self.meta.label_names)
        self.preprocess = Preprocess(self.meta.preprocess, max_pixels=max_pixels)
        self.thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (len(self.labels),)).copy()
        self.torch_device = torch.device(backend.device if backend.device.startswith("cuda") else "cpu")
        self.stats = {"images": 0, "errors": 0, "decode_s": 0.0, "model_s": 0.0}

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", device: str | None = None, *, precision: str | None = None,
             thresholds: float | str | Path | dict[str, float] | None = None, fast_ops: str = "auto",
             max_pixels: int = DEFAULT_MAX_PIXELS) -> "Tagger":
        """Load a checkpoint, ONNX graph or engine bundle with the best (or the named) backend.

        Args:
            path: ``.pt`` checkpoint, ``.onnx`` graph exported by lcie-fast, or ``.engine`` bundle.
            backend: ``auto``, ``tensorrt``, ``compiled``, ``eager`` or ``onnxruntime``.
            device: ``cpu`` or ``cuda[:N]`` (default: a GPU when visible, for torch backends).
            precision: For torch backends: ``fp32``, ``fp16`` or ``bf16`` (default fp16 on a GPU,
                fp32 on the CPU). Graphs and engines carry their own precision.
            thresholds: One score threshold, a JSON file from ``lcie-fast eval --fit-thresholds``,
                or a {label: threshold} mapping (default 0.5).
            fast_ops: ``auto`` (fused projections and kernels) or ``ref`` for torch backends.
            max_pixels: Images with more pixels are refused (decompression bombs).

        Raises:
            BackendError: the named backend cannot run here (with the reason), or no backend fits.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model not found: {path}")
        if backend not in BACKENDS:
            raise BackendError(f"backend must be one of {BACKENDS}, got {backend!r}")
        kind = {".engine": "engine", ".onnx": "onnx"}.get(path.suffix, "checkpoint")
        instance = _build_backend(path, kind, backend, device, precision, fast_ops)
        tagger = cls(instance, max_pixels=max_pixels)
        if thresholds is not None:
            tagger.set_thresholds(thresholds)
        return tagger

    def set_thresholds(self, thresholds: float | str | Path | dict[str, float]) -> None:
        """One threshold for every label, a {label: threshold} mapping, or a fitted-thresholds JSON file."""
        if isinstance(thresholds, (int, float)):
            self.thresholds[:] = float(thresholds)
            return
        if isinstance(thresholds, (str, Path)):
            data = json.loads(Path(thresholds).read_text())
            thresholds = data.get("thresholds", data)
        unknown = sorted(set(thresholds) - set(self.labels))
        if unknown:
            raise ValueError(f"thresholds name labels the model does not have: {unknown} (labels: {self.labels})")
        for name, value in thresholds.items():
            self.thresholds[self.labels.index(name)] = float(value)

    # --------------------------------------------------------------------- inference
    def _device_batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> normalised float batch on the backend's device, in the memory
        format it reads (channels-last for torch backends, contiguous NCHW for graphs/engines)."""
        if self.torch_device.type == "cuda":
            images = images.pin_memory().to(self.torch_device, non_blocking=True)
        return self.preprocess.normalize(images, channels_last=getattr(self.backend, "channels_last", False))

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """(B, C) logits of a uint8 (B, 3, S, S) batch."""
        start = time.perf_counter()
        out = self.backend.infer_numpy(self._device_batch(images))
        self.stats["model_s"] += time.perf_counter() - start
        return out

    def _records(self, items: list[_Item], probabilities: np.ndarray, threshold: float | None, top_k: int | None,
                 all_scores: bool) -> list[TagRecord]:
        limits = self.thresholds if threshold is None else np.full(len(self.labels), threshold, np.float32)
        records = []
        for item, probs in zip(items, probabilities):
            order = np.argsort(-probs, kind="stable")
            chosen = [(self.labels[c], float(probs[c])) for c in order if probs[c] >= limits[c]]
            if top_k is not None:
                chosen = chosen[:top_k]
            scores = {name: float(p) for name, p in zip(self.labels, probs)} if all_scores else None
            records.append(TagRecord(item.index, item.path, chosen, None, scores))
        return records

    def tag(self, inputs: Any, *, batch_size: int = 32, threshold: float | None = None, top_k: int | None = None,
            workers: int | None = None, all_scores: bool = False, skip: int = 0, progress: bool = False,
            decoder: str = "auto", extensions: Sequence[str] = IMAGE_EXTENSIONS,
            recursive: bool = True) -> Iterator[TagRecord]:
        """Tag ``inputs`` (see :func:`expand_inputs`); one record per input, in input order.

        Args:
            batch_size: Images per backend call.
            threshold: One threshold for this call (default: the tagger's thresholds).
            top_k: Keep at most this many labels per image.
            workers: Decoder threads (default: CPU count).
            all_scores: Also put every label's score in each record.
            skip: Leave out the first ``skip`` inputs (resuming an output).
            progress: Show a tqdm bar.
            decoder: ``threads`` (PIL in a thread pool), ``dali`` (DALI: nvJPEG on a GPU, its CPU
                decoder otherwise) or ``auto`` (DALI for a GPU backend when installed).
        """
        from tqdm.auto import tqdm

        stream = (
            _Item(index, source, str(source) if isinstance(source, (str, os.PathLike)) else None)
            for index, source in enumerate(expand_inputs(inputs, extensions=extensions, recursive=recursive))
            if index >= skip
        )
        workers = workers or max(os.cpu_count() or 1, 1)
        bar = tqdm(desc="tag", unit="img", disable=not progress, dynamic_ncols=True, initial=skip)
        if self.backend.max_batch:
            batch_size = min(batch_size, self.backend.max_batch)
        if decoder not in ("auto", "threads", "dali"):
            raise ValueError(f"decoder must be auto, threads or dali, got {decoder!r}")
        if decoder == "auto":
            from .data.dali import dali_unavailable_reason

            decoder = "dali" if self.torch_device.type == "cuda" and not dali_unavailable_reason() else "threads"
        pipeline = self._dali_pipeline if decoder == "dali" else self._pipeline
        try:
            for records in pipeline(stream, batch_size, workers, threshold, top_k, all_scores):
                bar.update(len(records))
                yield from records
        finally:
            bar.close()

    def _pipeline(self, stream: Iterator[_Item], batch_size: int, workers: int, threshold: float | None,
                  top_k: int | None, all_scores: bool) -> Iterator[list[TagRecord]]:
        """Decode ahead in a thread pool (bounded window), infer batch by batch, in order."""
        window = max(2 * batch_size, workers * 4)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            pending: collections.deque[tuple[_Item, concurrent.futures.Future]] = collections.deque()
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    item = next(stream, None)
                    if item is None:
                        exhausted = True
                        break
                    pending.append((item, pool.submit(self._timed_decode, item)))
                if not pending:
                    return
                batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                yield self._run_batch([(item, future.result()) for item, future in batch], threshold, top_k, all_scores)

    def _dali_pipeline(self, stream: Iterator[_Item], batch_size: int, workers: int, threshold: float | None,
                       top_k: int | None, all_scores: bool, chunk: int = 8192) -> Iterator[list[TagRecord]]:
        """File inputs decoded by DALI, ``chunk`` files per pipeline; other inputs by threads."""
        import itertools

        from .data.dali import DaliLoader
        from .data.datasets import MultiLabelSet

        while True:
            items = list(itertools.islice(stream, chunk))
            if not items:
                return
            if not all(isinstance(item.source, str) for item in items):
                yield from self._pipeline(iter(items), batch_size, workers, threshold, top_k, all_scores)
                continue
            data = MultiLabelSet([item.source for item in items], np.zeros((len(items), 1), np.int8), ["_"], "tag")
            loader = DaliLoader(data, self.preprocess, batch_size, train=False, device=self.torch_device,
                                threads=max(workers, 1))
            loader.set_epoch(0)
            for batch in loader:
                records = {i: TagRecord(items[i].index, items[i].path, [], reason) for i, _, reason in batch.failed}
                if len(batch):
                    start = time.perf_counter()
                    logits = self.backend.infer_numpy(batch.images)
                    self.stats["model_s"] += time.perf_counter() - start
                    local = batch.indices.cpu().tolist()
                    probabilities = 1.0 / (1.0 + np.exp(-logits))
                    for i, record in zip(local, self._records([items[i] for i in local], probabilities, threshold,
                                                              top_k, all_scores)):
                        records[i] = record
                self.stats["images"] += len(records)
                self.stats["errors"] += len(batch.failed)
                yield [records[i] for i in sorted(records)]

    def _timed_decode(self, item: _Item):
        start = time.perf_counter()
        out = _decode(item, self.preprocess)
        self.stats["decode_s"] += time.perf_counter() - start
        return out

    def _run_batch(self, decoded: list, threshold: float | None, top_k: int | None, all_scores: bool) -> list[TagRecord]:
        good = [(item, image) for item, (image, _) in decoded if image is not None]
        by_index: dict[int, TagRecord] = {}
        for item, (image, error) in decoded:
            if image is None:
                by_index[item.index] = TagRecord(item.index, item.path, [], error)
        if good:
            logits = self.logits(torch.stack([image for _, image in good]))
            probabilities = 1.0 / (1.0 + np.exp(-logits))
            for record in self._records([item for item, _ in good], probabilities, threshold, top_k, all_scores):
                by_index[record.index] = record
        self.stats["images"] += len(decoded)
        self.stats["errors"] += len(decoded) - len(good)
        return [by_index[item.index] for item, _ in decoded]

    def tag_frames(self, frames: Any, *, threshold: float | None = None, top_k: int | None = None,
                   all_scores: bool = False) -> list[TagRecord]:
        """Tag a batch of frames you decoded yourself: (N, H, W, 3) uint8, NumPy or a torch tensor
        (a CUDA tensor is resized on the GPU), or a list of (H, W, 3) frames. RGB order."""
        if isinstance(frames, torch.Tensor) and frames.dim() == 4 and frames.shape[-1] == 3:
            images = self._resize_frames(frames)
        else:
            images = torch.stack([self.preprocess.from_array(np.asarray(f) if not isinstance(f, torch.Tensor) else f.cpu())
                                  for f in frames])
        items = [_Item(i, None, None) for i in range(len(images))]
        probabilities = 1.0 / (1.0 + np.exp(-self.logits(images)))
        return self._records(items, probabilities, threshold, top_k, all_scores)

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


def _build_backend(path: Path, kind: str, backend: str, device: str | None, precision: str | None,
                   fast_ops: str) -> Backend:
    """The named backend, or the first of the ``auto`` order that builds here."""
    has_gpu = torch.cuda.is_available()
    if kind == "engine":
        order = ["tensorrt"] if backend == "auto" else [backend]
    elif kind == "onnx":
        order = ["onnxruntime"] if backend == "auto" else [backend]
    else:
        order = ([("compiled", "cuda"), ("eager", "cuda")] if has_gpu else []) + [("eager", "cpu")]
        order = [name for name, dev in order if device is None or dev == device.split(":")[0]] if backend == "auto" else [backend]
    errors = []
    for name in order:
        try:
            return _make(path, kind, name, device, precision, fast_ops)
        except (BackendError, ImportError, RuntimeError) as err:
            errors.append(f"{name}: {err}")
    raise BackendError(f"no backend can run {path} here: " + "; ".join(errors))


def _make(path: Path, kind: str, name: str, device: str | None, precision: str | None, fast_ops: str) -> Backend:
    if name == "tensorrt":
        if kind != "engine":
            raise BackendError("tensorrt runs engine bundles: build one with lcie-fast build-engine")
        from .runtime.tensorrt import TensorRTBackend

        index = int(device.split(":")[1]) if device and ":" in device else 0
        return TensorRTBackend(path, device=index)
    if name == "onnxruntime":
        if kind != "onnx":
            raise BackendError("onnxruntime runs .onnx graphs: export one with lcie-fast export")
        from .runtime.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path)
    if kind != "checkpoint":
        raise BackendError(f"{name} runs checkpoints (.pt), not {path.suffix} files")
    from .models.checkpoint import model_from_checkpoint
    from .runtime.torch_backends import CompiledBackend, EagerBackend

    model, meta = model_from_checkpoint(path)
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    chosen = precision or ("fp16" if target.startswith("cuda") else "fp32")
    if name == "compiled":  # auto picks it on GPUs only; asked for by name it also compiles for the CPU
        return CompiledBackend(model, meta, target, chosen, fast_ops=fast_ops)
    return EagerBackend(model, meta, target, chosen, fast_ops=fast_ops)
