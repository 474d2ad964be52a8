"""The compiled CUDA extension ``lcie_fast._C`` (built by CMakeLists.txt), loaded lazily."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

BUILD_HINT = (
    "build it with: cmake -S . -B build -DCMAKE_PREFIX_PATH=$(python -c 'import torch;print(torch.utils.cmake_prefix_path)') "
    "&& cmake --build build -j && cmake --install build"
)


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    try:
        module = importlib.import_module("lcie_fast._C")
    except ImportError as err:
        return None, f"lcie_fast._C is not built or does not load ({err}); {BUILD_HINT}"
    from ._library import register_cuda_fakes

    register_cuda_fakes()
    return module, ""


@functools.cache
def _reasons() -> tuple[str, ...]:
    module, reason = _load()
    if module is None:
        return (reason,)
    import torch

    if not torch.cuda.is_available():
        return ("lcie_fast._C is built, but there is no CUDA GPU to run it",)
    return ()


def extension() -> ModuleType | None:
    """The loaded extension module, or None."""
    return _load()[0]


def extension_version() -> str:
    """The loaded extension's ``__version__``, or ``""`` when it is not loaded."""
    module = extension()
    return getattr(module, "__version__", "") if module else ""


def extension_reasons() -> list[str]:
    """Reasons the CUDA extension cannot run in this process (empty when it can); probed once
    per process (built and loadable, a CUDA GPU visible)."""
    return list(_reasons())
