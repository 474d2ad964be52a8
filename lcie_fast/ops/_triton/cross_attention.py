"""Triton attention for few queries, few keys and wide heads (the LCIE decoder and encoder).

The decoder attends C = 80 label queries to h*w = 196 (448) or 324 (576) image tokens with
4 heads of 896 dims; the encoder attends 80 tokens to each other with heads of 945. Flash
attention does not take heads that wide. Keys are few, so each program holds the whole
score row: pass 1 accumulates S = Q K^T over head-dim chunks, a full-row softmax in fp32,
pass 2 writes O = P V chunk by chunk. Inputs are (B, H, L, Dh) views with any strides (the
slices of the fused key/value GEMM output are read in place); the output is written as
(B, Lq, H, Dh), i.e. already in the (B, Lq, H*Dh) layout the output projection reads.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    Lq, Lk, Dh, H, scale,
    sqb, sqh, sql, sqd,
    skb, skh, skl, skd,
    svb, svh, svl, svd,
    sob, soh, sol, sod,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Lq
    mask_n = offs_n < Lk
    q_base = q_ptr + b * sqb + h * sqh + offs_m[:, None] * sql
    k_base = k_ptr + b * skb + h * skh + offs_n[:, None] * skl
    v_base = v_ptr + b * svb + h * svh + offs_n[:, None] * svl
    o_base = o_ptr + b * sob + h * soh + offs_m[:, None] * sol

    scores = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, Dh, BLOCK_D):
        mask_d = (d0 + offs_d) < Dh
        q = tl.load(q_base + (d0 + offs_d)[None, :] * sqd, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        k = tl.load(k_base + (d0 + offs_d)[None, :] * skd, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        if IEEE:
            scores += tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            scores += tl.dot(q, tl.trans(k))
    scores = scores * scale
    scores = tl.where(mask_n[None, :], scores, float("-inf"))
    row_max = tl.max(scores, axis=1)
    p = tl.exp(scores - row_max[:, None])
    p = p / tl.sum(p, axis=1)[:, None]
    p = p.to(v_ptr.dtype.element_ty)

    for d0 in range(0, Dh, BLOCK_D):
        mask_d = (d0 + offs_d) < Dh
        v = tl.load(v_base + (d0 + offs_d)[None, :] * svd, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        if IEEE:
            out = tl.dot(p, v, input_precision="ieee")
        else:
            out = tl.dot(p, v)
        tl.store(o_base + (d0 + offs_d)[None, :] * sod, out.to(o_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & mask_d[None, :])


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None,
                     block_m: int = 16, block_d: int = 64) -> torch.Tensor:
    """softmax(Q K^T / sqrt(Dh)) V for (B, H, L, Dh) inputs -> (B, H, Lq, Dh) (a view of a
    (B, Lq, H, Dh) buffer, or ``out``). fp32 inputs use IEEE fp32 dot products; fp16/bf16
    accumulate in fp32."""
    b, heads, lq, dh = q.shape
    lk = k.shape[2]
    if out is None:
        out = torch.empty(b, lq, heads, dh, device=q.device, dtype=q.dtype).transpose(1, 2)  # (B, H, Lq, Dh)
    block_n = max(16, triton.next_power_of_2(lk))
    grid = (b * heads, triton.cdiv(lq, block_m))
    _attention_kernel[grid](
        q, k, v, out, lq, lk, dh, heads, 1.0 / math.sqrt(dh),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, IEEE=q.dtype == torch.float32,
    )
    return out
