"""Triton MLFF: X3, X4, X5 -> bilinear to X5's size -> concatenated tokens, in one launch.

Each program writes a (BLOCK_P positions x BLOCK_C channels) tile of the (B, h*w, D) output,
contiguous along channels; the program's channel block selects the source level, so every
input element is read once and every output element written once. Source coordinates follow
``F.interpolate(mode="bilinear", align_corners=False)`` exactly: src = (dst + 0.5) * in/out
- 0.5, clamped at 0; interpolation in fp32. Inputs may be NCHW or channels-last (strides are
passed); channels-last reads are coalesced.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _level_tile(x_ptr, out_ptr, b, p_start, c_start, c_offset, C, H_in, W_in, w_out, P,
                sxb, sxc, sxh, sxw, sob, sop, scale_h, scale_w, copy,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_p = p_start + tl.arange(0, BLOCK_P)
    offs_c = c_start + tl.arange(0, BLOCK_C)
    mask = (offs_p < P)[:, None] & (offs_c < C)[None, :]
    oy = offs_p // w_out
    ox = offs_p % w_out
    base = x_ptr + b * sxb + offs_c[None, :] * sxc
    out = out_ptr + b * sob + offs_p[:, None] * sop + (c_offset + offs_c)[None, :]
    if copy:  # same size: a gather, no arithmetic
        value = tl.load(base + oy[:, None] * sxh + ox[:, None] * sxw, mask=mask)
        tl.store(out, value, mask=mask)
    else:
        sy = tl.maximum((oy.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
        sx = tl.maximum((ox.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
        y0 = sy.to(tl.int32)
        x0 = sx.to(tl.int32)
        y1 = tl.minimum(y0 + 1, H_in - 1)
        x1 = tl.minimum(x0 + 1, W_in - 1)
        ly = (sy - y0.to(tl.float32))[:, None]
        lx = (sx - x0.to(tl.float32))[:, None]
        v00 = tl.load(base + y0[:, None] * sxh + x0[:, None] * sxw, mask=mask).to(tl.float32)
        v01 = tl.load(base + y0[:, None] * sxh + x1[:, None] * sxw, mask=mask).to(tl.float32)
        v10 = tl.load(base + y1[:, None] * sxh + x0[:, None] * sxw, mask=mask).to(tl.float32)
        v11 = tl.load(base + y1[:, None] * sxh + x1[:, None] * sxw, mask=mask).to(tl.float32)
        value = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
        tl.store(out, value.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _downsample_concat_kernel(
    x3, x4, x5, out,
    C3, H3, W3, s3b, s3c, s3h, s3w, sh3, sw3, copy3, nb3,
    C4, H4, W4, s4b, s4c, s4h, s4w, sh4, sw4, copy4, nb4,
    C5, H5, W5, s5b, s5c, s5h, s5w, sh5, sw5, copy5,
    w_out, P, sob, sop,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0)
    p_start = tl.program_id(1) * BLOCK_P
    block = tl.program_id(2)
    if block < nb3:
        _level_tile(x3, out, b, p_start, block * BLOCK_C, 0, C3, H3, W3, w_out, P,
                    s3b, s3c, s3h, s3w, sob, sop, sh3, sw3, copy3, BLOCK_P, BLOCK_C)
    elif block < nb3 + nb4:
        _level_tile(x4, out, b, p_start, (block - nb3) * BLOCK_C, C3, C4, H4, W4, w_out, P,
                    s4b, s4c, s4h, s4w, sob, sop, sh4, sw4, copy4, BLOCK_P, BLOCK_C)
    else:
        _level_tile(x5, out, b, p_start, (block - nb3 - nb4) * BLOCK_C, C3 + C4, C5, H5, W5, w_out, P,
                    s5b, s5c, s5h, s5w, sob, sop, sh5, sw5, copy5, BLOCK_P, BLOCK_C)


def downsample_concat_triton(x3: torch.Tensor, x4: torch.Tensor, x5: torch.Tensor, out: torch.Tensor | None = None,
                             block_p: int = 16, block_c: int = 64) -> torch.Tensor:
    """Tokens (B, h*w, C3+C4+C5) of the bilinear MLFF, in the inputs' dtype (into ``out`` if given)."""
    b, _, h, w = x5.shape
    channels = [x.shape[1] for x in (x3, x4, x5)]
    if out is None:
        out = torch.empty(b, h * w, sum(channels), device=x5.device, dtype=x5.dtype)
    level_args, blocks = [], []
    for x in (x3, x4, x5):
        _, c, hin, win = x.shape
        level_args += [c, hin, win, *x.stride(), hin / h, win / w, hin == h and win == w]
        blocks.append(triton.cdiv(c, block_c))
    args3, args4, args5 = level_args[:10], level_args[10:20], level_args[20:30]
    grid = (b, triton.cdiv(h * w, block_p), sum(blocks))
    _downsample_concat_kernel[grid](
        x3, x4, x5, out,
        *args3, blocks[0],
        *args4, blocks[1],
        *args5,
        w, h * w, out.stride(0), out.stride(1),
        BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return out
