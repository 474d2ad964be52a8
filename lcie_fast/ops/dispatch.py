"""Choosing an implementation for each fast op: ``auto`` | ``ref`` | ``triton`` | ``cuda``.

Rules (as in flash-attention / xformers):

- every op is a :class:`FastOp`: a plain-PyTorch ``ref`` twin, always available, and fast
  ``impls`` by name, each with the reasons it cannot run on given inputs;
- ``auto`` takes the first fast implementation whose ``not_supported_reasons`` is empty and
  otherwise falls back to ``ref``, never to another fast path silently failing;
- an explicit ``impl`` that cannot run raises :class:`NotSupportedError` listing the reasons;
- the switch that ``impl="auto"`` follows is :func:`use_impl` (a context manager over a
  :class:`contextvars.ContextVar`, so each thread and asyncio task sees its own), falling back
  to the process default of :func:`set_impl`; the environment variable ``LCIE_FAST_FORCE_REF=1``
  forces the reference path everywhere (export always uses it).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

from ..errors import UserError

IMPLS = ("auto", "ref", "triton", "cuda")
FORCE_REF_ENV = "LCIE_FAST_FORCE_REF"

# set once by set_impl (configuration), never per call
_default_impl = "auto"
# set per call by use_impl; None: follow _default_impl
_context_impl: contextvars.ContextVar[str | None] = contextvars.ContextVar("lcie_fast_impl", default=None)


class NotSupportedError(UserError, RuntimeError):
    """An explicitly requested implementation cannot run on these inputs or this machine."""


def set_impl(impl: str) -> None:
    """Set the process default that ``impl="auto"`` follows outside any :func:`use_impl` block.

    Meant for configuration at start-up; code that switches per call uses :func:`use_impl`,
    which is local to the thread or task.
    """
    global _default_impl
    _check(impl)
    _default_impl = impl


def get_impl() -> str:
    """The implementation ``impl="auto"`` follows here: the innermost :func:`use_impl` of this
    context, else the :func:`set_impl` default; ``ref`` when forced by the environment."""
    if os.environ.get(FORCE_REF_ENV, "") not in ("", "0"):
        return "ref"
    impl = _context_impl.get()
    return _default_impl if impl is None else impl


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
    """Within the block, in this thread or asyncio task only, ops called with ``impl="auto"``
    follow ``impl``."""
    _check(impl)
    token = _context_impl.set(impl)
    try:
        yield
    finally:
        _context_impl.reset(token)


def _check(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


@dataclass(frozen=True, eq=False)
class FastOp:
    """One op: its reference twin, its fast implementations and why each cannot run.

    Attributes:
        name: The op's name, in error messages.
        ref: The plain-PyTorch reference; runs on any input.
        impls: Fast implementations by name (``"cuda"``, ``"triton"``), in the order ``auto``
            tries them; each takes the op's arguments.
        checks: For each name in ``impls``, ``check(*args, auto: bool) -> list[str]``: the
            reasons it cannot run on ``args`` (empty when it can). ``auto`` selection may be
            stricter (the Triton interpreter runs only when asked for by name).
    """

    name: str
    ref: Callable
    impls: Mapping[str, Callable]
    checks: Mapping[str, Callable[..., list[str]]]

    def __post_init__(self) -> None:
        if set(self.impls) != set(self.checks) or not set(self.impls) <= set(IMPLS) - {"auto", "ref"}:
            raise ValueError(f"{self.name}: impls {sorted(self.impls)} and checks {sorted(self.checks)} must name "
                             f"the same fast implementations, from {IMPLS[2:]}")

    def not_supported_reasons(self, impl: str, *args: object, auto: bool = False) -> list[str]:
        """Why ``impl`` cannot run on ``args`` (empty when it can): for dispatch, reports and tests."""
        _check(impl)
        if impl in ("auto", "ref"):  # auto falls back to ref, which always runs
            return []
        if impl not in self.impls:
            return [f"no {impl!r} implementation exists (available: ref, {', '.join(self.impls)})"]
        return self.checks[impl](*args, auto=auto)

    def choose(self, impl: str, *args: object) -> Callable:
        """The function that runs this op for ``impl`` on ``args``.

        Raises:
            ValueError: ``impl`` is not one of :data:`IMPLS`.
            NotSupportedError: ``impl`` names a fast implementation that cannot run; the
                message lists every reason.
        """
        _check(impl)
        if impl == "auto":
            impl = get_impl()
        if impl == "ref":
            return self.ref
        if impl == "auto":
            for name, fn in self.impls.items():
                if not self.checks[name](*args, auto=True):
                    return fn
            return self.ref
        reasons = self.not_supported_reasons(impl, *args)
        if reasons:
            raise NotSupportedError(f"{self.name}: impl={impl!r} cannot run: " + "; ".join(reasons))
        return self.impls[impl]
