"""Whether Triton kernels can run here: on a CUDA GPU, or under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import functools
import importlib.util
import os


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its NumPy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


@functools.cache
def _runtime_reasons() -> tuple[str, ...]:
    if importlib.util.find_spec("triton") is None:
        return ("triton is not installed (it ships with the CUDA builds of torch)",)
    if interpreter_enabled():
        return ()
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA GPU (set TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter)",)
    return ()


def triton_runtime_reasons() -> list[str]:
    """Reasons Triton kernels cannot run in this process (empty when they can).

    Probed once per process: whether Triton is installed, the interpreter is on (Triton reads
    ``TRITON_INTERPRET`` when its kernels are first defined) and a CUDA GPU is visible.
    """
    return list(_runtime_reasons())


def triton_tensor_reasons(*tensors, auto: bool = False) -> list[str]:
    """Reasons Triton cannot take these tensors: device, and the runtime reasons above.

    The interpreter (``TRITON_INTERPRET=1``) is for tests on small shapes: it runs only when
    Triton is asked for by name, never through ``auto``.
    """
    reasons = triton_runtime_reasons()
    if reasons:
        return reasons
    devices = {t.device.type for t in tensors}
    if interpreter_enabled():
        if auto:
            return ["the Triton interpreter (TRITON_INTERPRET=1) runs only when impl='triton' is asked for"]
        if devices != {"cpu"}:
            return [f"the Triton interpreter takes CPU tensors, got {sorted(devices)}"]
        return []
    if devices != {"cuda"}:
        return [f"Triton kernels take CUDA tensors, got {sorted(devices)}"]
    return []
