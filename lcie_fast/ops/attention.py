"""Multi-head attention core: softmax(Q K^T / sqrt(d)) V, with fast paths for inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import Implementation, choose

FAST_IMPLS: list[Implementation] = []


def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """Reference attention: ``F.scaled_dot_product_attention`` (no mask, not causal).

    Args:
        q: (B, H, Lq, Dh) queries.
        k: (B, H, Lk, Dh) keys.
        v: (B, H, Lk, Dh) values.
        dropout_p: Dropout on the attention weights (training only).

    Returns:
        (B, H, Lq, Dh).
    """
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, impl: str = "auto"
) -> torch.Tensor:
    """Attention over (B, H, L, Dh) tensors; fast kernels serve inference (``dropout_p == 0``)."""
    fn = choose("attention", impl, FAST_IMPLS, attention_ref, q, k, v, dropout_p)
    return fn(q, k, v, dropout_p)
