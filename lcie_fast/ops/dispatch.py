"""Choosing an implementation for each fast op: ``auto`` | ``ref`` | ``triton`` | ``cuda``.

Rules (as in flash-attention / xformers):

- every op has a plain-PyTorch ``*_ref`` twin, always available;
- ``auto`` takes the first fast implementation whose ``not_supported_reasons`` is empty and
  otherwise falls back to ``ref``, never to another fast path silently failing;
- an explicit ``impl`` that cannot run raises :class:`NotSupportedError` listing the reasons;
- one global switch (:func:`set_impl` / :func:`use_impl`) and the environment variable
  ``LCIE_FAST_FORCE_REF=1`` force the reference path everywhere (export always uses it).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from ..errors import UserError

IMPLS = ("auto", "ref", "triton", "cuda")
FORCE_REF_ENV = "LCIE_FAST_FORCE_REF"

_global_impl = "auto"


class NotSupportedError(UserError, RuntimeError):
    """An explicitly requested implementation cannot run on these inputs or this machine."""


@dataclass(frozen=True)
class Implementation:
    """One fast implementation of an op: how to run it and why it could not."""

    name: str
    fn: Callable
    # called as not_supported_reasons(*args, auto=bool): auto selection may be stricter
    # (e.g. the Triton interpreter only runs when asked for by name)
    not_supported_reasons: Callable[..., list[str]]


def set_impl(impl: str) -> None:
    """Set the process-wide default implementation used when an op is called with ``impl="auto"``."""
    global _global_impl
    _check(impl)
    _global_impl = impl


def get_impl() -> str:
    """The process-wide default implementation (``ref`` when forced by the environment)."""
    if os.environ.get(FORCE_REF_ENV, "") not in ("", "0"):
        return "ref"
    return _global_impl


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
    """Temporarily set the process-wide default implementation."""
    global _global_impl
    _check(impl)
    previous, _global_impl = _global_impl, impl
    try:
        yield
    finally:
        _global_impl = previous


def _check(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def not_supported_reasons(fast: Sequence[Implementation], impl: str, *args: object) -> list[str]:
    """Why ``impl`` cannot run on ``args`` (empty when it can): for reports and tests."""
    for candidate in fast:
        if candidate.name == impl:
            return candidate.not_supported_reasons(*args, auto=False)
    return [f"no {impl!r} implementation exists"]


def choose(
    op: str,
    impl: str,
    fast: Sequence[Implementation],
    ref: Callable,
    *args: object,
) -> Callable:
    """The function that runs ``op`` for ``impl`` on ``args``.

    Raises:
        NotSupportedError: ``impl`` names a fast implementation that cannot run; the message
            lists every reason.
    """
    _check(impl)
    if impl == "auto":
        impl = get_impl()
    if impl == "ref":
        return ref
    if impl == "auto":
        for candidate in fast:
            if not candidate.not_supported_reasons(*args, auto=True):
                return candidate.fn
        return ref
    for candidate in fast:
        if candidate.name == impl:
            reasons = candidate.not_supported_reasons(*args, auto=False)
            if reasons:
                raise NotSupportedError(f"{op}: impl={impl!r} cannot run: " + "; ".join(reasons))
            return candidate.fn
    raise NotSupportedError(f"{op}: no {impl!r} implementation exists (available: ref"
                            + "".join(f", {c.name}" for c in fast) + ")")
