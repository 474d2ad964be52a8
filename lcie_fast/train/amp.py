"""AMP in one place: the autocast dtype and the GradScaler, made once per run and checkpointed."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from ..errors import InvalidInputError


class AmpPolicy:
    """Mixed precision for one run.

    ``auto`` picks bf16 on GPUs that support it, fp16 (with loss scaling) on older GPUs, bf16
    on CPUs that compute it natively (AVX-512 BF16 or AMX: about 1.9x the fp32 training speed
    of the edge preset on a 2-core AVX-512 BF16 EPYC), and full fp32 on other CPUs (where bf16
    is emulated and slower than fp32).

    Args:
        mode: ``auto``, ``bf16``, ``fp16`` or ``off``.
        device: The training device.
    """

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode == "auto":
            if device.type == "cuda":
                mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                from ..cpu import cpu_has_native_bf16

                mode = "bf16" if cpu_has_native_bf16() else "off"
        if mode == "fp16" and device.type != "cuda":
            raise InvalidInputError("amp=fp16 needs a CUDA device (use bf16 or off on the CPU)")
        self.mode = mode
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        # made once; its state (scale, growth tracker) is checkpointed with the run
        self.scaler = torch.amp.GradScaler(device.type, enabled=mode == "fp16")

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)
