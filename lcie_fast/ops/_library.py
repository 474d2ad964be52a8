"""The fast kernels as torch ops in the ``lcie_fast::`` namespace, each registered once with a
fake (meta) implementation, so ``torch.compile`` and ``torch.export`` can trace through them.

- ``lcie_fast::downsample_concat_triton`` and ``lcie_fast::attention_triton`` (Triton; defined
  here, Triton imported at first call);
- ``lcie_fast::downsample_concat_cuda`` (CUDA C++ in ``kernels/``; defined by the compiled
  extension, its fake registered by :func:`register_cuda_fakes` when the extension loads).

All are inference-only: they have no backward.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("lcie_fast::downsample_concat_triton", mutates_args=())
def downsample_concat_triton(x3: torch.Tensor, x4: torch.Tensor, x5: torch.Tensor) -> torch.Tensor:
    from ._triton.downsample_concat import downsample_concat_triton as kernel

    return kernel(x3, x4, x5)


def _downsample_concat_fake(x3: torch.Tensor, x4: torch.Tensor, x5: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x5.shape
    return x5.new_empty(b, h * w, x3.shape[1] + x4.shape[1] + x5.shape[1])


downsample_concat_triton.register_fake(_downsample_concat_fake)


@torch.library.custom_op("lcie_fast::attention_triton", mutates_args=())
def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from ._triton.cross_attention import attention_triton as kernel

    return kernel(q, k, v)


@attention_triton.register_fake
def _attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, heads, lq, dh = q.shape
    return q.new_empty(b, lq, heads, dh).transpose(1, 2)


_cuda_fakes_registered = False


def register_cuda_fakes() -> None:
    """Fake implementation of the CUDA extension's op (once, after the extension loaded)."""
    global _cuda_fakes_registered
    if not _cuda_fakes_registered:
        torch.library.register_fake("lcie_fast::downsample_concat_cuda")(_downsample_concat_fake)
        _cuda_fakes_registered = True
