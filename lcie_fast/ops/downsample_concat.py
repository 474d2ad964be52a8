"""MLFF (paper eq. 1): bilinearly downsample X3, X4 to X5's size, concatenate, emit tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import FastOp
from .triton_support import triton_tensor_reasons

FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def downsample_concat_ref(*features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference MLFF: ``F.interpolate(bilinear, align_corners=False)`` + ``cat``.

    Args:
        *features: Maps (B, C_i, H_i, W_i), shallow to deep; the last sets the output size.

    Returns:
        tokens: (B, h*w, D) decoder tokens, D = sum(C_i), row-major over (h, w).
        x_ml: (B, D, h, w), the same values as the spatial branch reads them.
    """
    h, w = features[-1].shape[-2:]
    maps = [
        f if f.shape[-2:] == (h, w) else F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        for f in features
    ]
    x_ml = torch.cat(maps, dim=1)  # (B, D, h, w)
    tokens = x_ml.flatten(2).transpose(1, 2)  # (B, h*w, D)
    return tokens, x_ml


def _common_reasons(features: tuple[torch.Tensor, ...]) -> list[str]:
    reasons = []
    if len(features) != 3:
        reasons.append(f"the fused kernels take exactly 3 levels (X3, X4, X5), got {len(features)}")
        return reasons
    if any(f.dim() != 4 for f in features):
        reasons.append("feature maps must be 4-D (B, C, H, W)")
        return reasons
    dtypes = {f.dtype for f in features}
    if len(dtypes) != 1 or not dtypes <= set(FAST_DTYPES):
        reasons.append(f"feature maps must share one of fp32/fp16/bf16, got {sorted(str(d) for d in dtypes)}")
    if len({f.shape[0] for f in features}) != 1:
        reasons.append("feature maps differ in batch size")
    if torch.is_grad_enabled() and any(f.requires_grad for f in features):
        reasons.append("the fused kernels are inference-only (no backward): call under torch.no_grad()")
    return reasons


def _triton_reasons(*features: torch.Tensor, auto: bool = False) -> list[str]:
    return _common_reasons(features) + triton_tensor_reasons(*features, auto=auto)


def _cuda_reasons(*features: torch.Tensor, auto: bool = False) -> list[str]:
    from .cuda_ext import extension_reasons

    reasons = _common_reasons(features) + extension_reasons()
    if not reasons and {f.device.type for f in features} != {"cuda"}:
        reasons.append("the CUDA kernel takes CUDA tensors")
    return reasons


def _with_view(tokens: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, _, d = tokens.shape
    return tokens, tokens.transpose(1, 2).view(b, d, h, w)  # channels-last (B, D, h, w) view


def _downsample_concat_triton(*features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from . import _library

    tokens = _library.downsample_concat_triton(*features)
    return _with_view(tokens, *features[-1].shape[-2:])


def _downsample_concat_cuda(*features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.ops.lcie_fast.downsample_concat_cuda(*features)
    return _with_view(tokens, *features[-1].shape[-2:])


DOWNSAMPLE_CONCAT = FastOp(
    name="downsample_concat",
    ref=downsample_concat_ref,
    impls={"cuda": _downsample_concat_cuda, "triton": _downsample_concat_triton},
    checks={"cuda": _cuda_reasons, "triton": _triton_reasons},
)


def downsample_concat(*features: torch.Tensor, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """MLFF in one pass where a fast kernel can run; see :func:`downsample_concat_ref`.

    Args:
        *features: (B, C_i, H_i, W_i) maps, NCHW or channels-last; fp32, fp16 or bf16.
        impl: ``auto`` | ``ref`` | ``triton`` | ``cuda`` (see :mod:`lcie_fast.ops.dispatch`).

    Returns:
        ``(tokens (B, h*w, D), x_ml (B, D, h, w))``; from a fast kernel, ``tokens`` is
        contiguous and ``x_ml`` its channels-last view.
    """
    return DOWNSAMPLE_CONCAT.choose(impl, *features)(*features)
