"""MLFF (paper eq. 1): bilinearly downsample X3, X4 to X5's size, concatenate, emit tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import Implementation, choose

# Fast implementations register themselves here (see lcie_fast.ops.__init__).
FAST_IMPLS: list[Implementation] = []


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


def downsample_concat(*features: torch.Tensor, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """MLFF in one pass where a fast kernel can run; see :func:`downsample_concat_ref`.

    Args:
        *features: (B, C_i, H_i, W_i) maps, NCHW or channels-last; fp32, fp16 or bf16.
        impl: ``auto`` | ``ref`` | ``triton`` | ``cuda`` (see :mod:`lcie_fast.ops.dispatch`).

    Returns:
        ``(tokens (B, h*w, D), x_ml (B, D, h, w))``.
    """
    fn = choose("downsample_concat", impl, FAST_IMPLS, downsample_concat_ref, *features)
    return fn(*features)
