"""Multi-head attention core: softmax(Q K^T / sqrt(d)) V, with fast paths for inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import FastOp
from .triton_support import triton_tensor_reasons

FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def _triton_reasons(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                    auto: bool = False) -> list[str]:
    from ._triton_limits import MAX_HEAD_DIM, MAX_KEYS

    reasons = []
    if dropout_p:
        reasons.append("the Triton kernel has no attention dropout (inference only)")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        reasons.append("q, k, v must be (B, H, L, Dh)")
        return reasons
    if q.shape[-1] > MAX_HEAD_DIM:
        reasons.append(f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}")
    if k.shape[2] > MAX_KEYS:
        reasons.append(f"{k.shape[2]} keys > {MAX_KEYS} (the kernel keeps a whole score row)")
    if len({q.dtype, k.dtype, v.dtype}) != 1 or q.dtype not in FAST_DTYPES:
        reasons.append(f"q, k, v must share one of fp32/fp16/bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        reasons.append("the Triton kernel is inference-only (no backward): call under torch.no_grad()")
    return reasons + triton_tensor_reasons(q, k, v, auto=auto)


def _attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    from . import _library

    return _library.attention_triton(q, k, v)


ATTENTION = FastOp(name="attention", ref=attention_ref, impls={"triton": _attention_triton},
                   checks={"triton": _triton_reasons})


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, impl: str = "auto"
) -> torch.Tensor:
    """Attention over (B, H, L, Dh) tensors; the Triton kernel serves inference (``dropout_p == 0``)."""
    return ATTENTION.choose(impl, q, k, v, dropout_p)(q, k, v, dropout_p)
