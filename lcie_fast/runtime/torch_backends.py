"""PyTorch backends: eager (FP32 or AMP FP16/BF16, channels-last) and ``torch.compile``d."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from .. import ops
from ..metadata import ModelMetadata
from .base import Backend, BackendError

_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class EagerBackend(Backend):
    """The model in PyTorch eager mode.

    Args:
        model: An LCIE model.
        meta: Its metadata.
        device: ``cpu`` or ``cuda[:N]``.
        precision: ``fp32``, or ``fp16`` / ``bf16`` through autocast (weights stay FP32).
        channels_last: Model and inputs in channels-last memory format.
        fast_ops: ``ref`` (plain PyTorch), or ``auto``: BatchNorm folded into the convolutions
            (:func:`~lcie_fast.models.fused.fold_batchnorm`), the fused token projections
            (:func:`~lcie_fast.models.fused.fuse_for_inference`) and the Triton / CUDA kernels
            wherever they can run.
    """

    name = "eager"

    def __init__(self, model: torch.nn.Module, meta: ModelMetadata, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = True, fast_ops: str = "ref") -> None:
        if precision not in _DTYPES:
            raise BackendError(f"{self.name}: precision must be fp32, fp16 or bf16, got {precision!r}")
        target = torch.device(device)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"{self.name}: no CUDA GPU for device {device!r}")
        self.meta = meta
        self.precision = precision
        self.torch_device = target
        self.device = str(target)
        self.channels_last = channels_last
        self.model = model.to(target).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if fast_ops not in ("ref", "auto"):
            raise BackendError(f"{self.name}: fast_ops must be ref or auto, got {fast_ops!r}")
        self.fast_ops = fast_ops
        if fast_ops == "auto":
            from ..models.fused import fold_batchnorm, fuse_for_inference

            fold_batchnorm(self.model)  # BatchNorm into the convolution before it (inference only)
            fuse_for_inference(self.model)
            self.name = f"{self.name}+fast-ops"
        self.runner: Any = self.model

    def _autocast(self):
        dtype = _DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.torch_device.type, dtype=dtype)

    def _prepare(self, images: Any) -> torch.Tensor:
        x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
        x = x.to(self.torch_device, dtype=torch.float32, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def infer(self, images: Any) -> torch.Tensor:
        with self._autocast(), ops.use_impl(self.fast_ops):
            return self.runner(self._prepare(images)).float()

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def close(self) -> None:
        self.model = self.runner = None
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()


class CompiledBackend(EagerBackend):
    """``torch.compile`` (Inductor) of the eager model; on a GPU optionally with CUDA graphs.

    Args:
        cuda_graphs: Capture CUDA graphs (``mode="reduce-overhead"``; one graph per batch size).
        (others as :class:`EagerBackend`)
    """

    name = "compiled"

    def __init__(self, model: torch.nn.Module, meta: ModelMetadata, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = True, cuda_graphs: bool = False, fast_ops: str = "ref") -> None:
        super().__init__(model, meta, device, precision, channels_last, fast_ops)
        if cuda_graphs and self.torch_device.type != "cuda":
            raise BackendError("compiled: CUDA graphs need a CUDA device")
        self.cuda_graphs = cuda_graphs
        self.runner = torch.compile(self.model, mode="reduce-overhead" if cuda_graphs else None, dynamic=False)
        if cuda_graphs:
            self.name += "+cudagraphs"

    @torch.inference_mode()
    def infer(self, images: Any) -> torch.Tensor:
        with self._autocast(), ops.use_impl(self.fast_ops):
            out = self.runner(self._prepare(images))
        # CUDA-graph outputs are overwritten by the next replay: hand out a copy
        return out.float().clone() if self.cuda_graphs else out.float()
