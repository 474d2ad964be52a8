"""The fast ops' parity contract (STYLE.md 5): one tolerance table, and the assertion that
prints the error it measured before it judges it.

A fast result passes when every element satisfies
``|actual - expected| <= atol + vs_torch * torch_error + rtol * |expected|``, where
``expected`` is the fp32 reference and ``torch_error`` the max error of PyTorch's own result in
the same dtype against that reference (low precision: "at most 2x PyTorch's error, plus a small
floor"). The table is keyed by what is compared and its dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """One contract: ``atol + vs_torch * torch_error + rtol * |expected|`` per element, and for
    logits under autocast a least per-row cosine similarity."""

    atol: float
    rtol: float = 0.0
    vs_torch: float = 0.0
    min_cosine: float | None = None


TOLERANCE = {
    # one fast kernel against its reference, on values of order 1
    ("op", torch.float32): Tolerance(atol=1e-5),
    ("op", torch.float16): Tolerance(atol=1e-3, vs_torch=2.0),
    ("op", torch.bfloat16): Tolerance(atol=1e-3, vs_torch=2.0),
    # lcie_tiny's logits with every op through a fast kernel: errors add up over the layers
    ("model", torch.float32): Tolerance(atol=1e-4),
    # the same weights stacked into one GEMM: only the summation order changes
    ("fused_projections", torch.float32): Tolerance(atol=1e-5),
    # a full preset in fp16 autocast, fast ops on vs off: the logits' direction must agree
    ("model", torch.float16): Tolerance(atol=math.inf, min_cosine=0.999),
}


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected|, computed in fp64."""
    return (actual.double() - expected.double()).abs().max().item()


def assert_close_report(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    """Print the max and mean absolute error of ``actual`` against ``expected``, then assert
    ``|actual - expected| <= atol + rtol * |expected|`` everywhere (NaN fails), equal shapes
    and devices.

    Args:
        actual: The result under test, any dtype.
        expected: The reference, same shape (usually fp32).
        atol, rtol: The bound, as in :func:`torch.isclose`.
        what: Names the comparison in the report and the failure.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.device == expected.device, f"{what}: device {actual.device} != {expected.device}"
    diff = (actual.double() - expected.double()).abs()
    print(f"{what}: max abs error {diff.max().item():.2e}, mean {diff.mean().item():.2e} "
          f"(atol {atol:.2e}, rtol {rtol:.0e})")
    within = diff <= atol + rtol * expected.double().abs()
    assert within.all(), (f"{what}: {(~within).sum().item()} of {within.numel()} elements outside "
                          f"atol {atol:.2e} + rtol {rtol:.0e}; max abs error {diff.max().item():.2e}")


def assert_parity(actual: torch.Tensor, expected: torch.Tensor, key: tuple[str, torch.dtype], what: str,
                  torch_result: torch.Tensor | None = None) -> None:
    """:func:`assert_close_report` under ``TOLERANCE[key]``.

    Args:
        actual: The fast result.
        expected: The fp32 reference.
        key: ``(what is compared, dtype of actual)`` in :data:`TOLERANCE`.
        what: Names the comparison.
        torch_result: PyTorch's own result in ``actual``'s dtype, for a ``vs_torch`` contract.
    """
    tol = TOLERANCE[key]
    atol = tol.atol
    if tol.vs_torch:
        assert torch_result is not None, f"{what}: the {key} contract needs PyTorch's own result"
        torch_error = max_abs_error(torch_result, expected)
        atol += tol.vs_torch * torch_error
        what = f"{what} (PyTorch's own error {torch_error:.2e})"
    assert_close_report(actual, expected, atol, tol.rtol, what)
    if tol.min_cosine is not None:
        cosine = torch.nn.functional.cosine_similarity(actual.double(), expected.double(), dim=-1).min().item()
        print(f"{what}: min cosine {cosine:.6f}")
        assert cosine > tol.min_cosine, f"{what}: min cosine {cosine:.6f} <= {tol.min_cosine}"
