"""How lcie-fast times things: interleaved repetitions, medians with their spread, and the
machine facts (CPU flags, thread counts) every timing table names. Shared by ``bench`` and
``parity``; see :mod:`lcie_fast.benchmark` for the rules it keeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

# (p75 - p25) / median above which a row is timed again, then marked noisy
NOISE_BOUND = 0.10
INTERVAL = "25-75% range"


def time_interleaved(calls: Sequence[tuple[Callable[[], object], Callable[[], None]]], reps: int, warmup: int = 2,
                     timer: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """Seconds of ``reps`` interleaved calls of each ``(fn, synchronize)`` pair.

    Each pair is first called ``warmup`` times (in order, synchronised). Then round r times one
    call of every pair in order: repetition 1 of all of them, then repetition 2, and so on.
    """
    for fn, synchronize in calls:
        for _ in range(warmup):
            fn()
        synchronize()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(reps):
        for index, (fn, synchronize) in enumerate(calls):
            start = timer()
            fn()
            synchronize()
            times[index].append(timer() - start)
    return times


def time_calls(fn: Callable[[], object], synchronize: Callable[[], None], reps: int, warmup: int = 2,
               timer: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn`` after ``warmup`` calls, synchronised."""
    return time_interleaved([(fn, synchronize)], reps, warmup, timer)[0]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, 25th and 75th percentiles of ``values`` and their relative spread (p75 - p25) / median."""
    p25, median, p75 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    relative = (p75 - p25) / median if median > 0 else float("inf")
    return {"median": median, "p25": p25, "p75": p75, "relative_spread": relative}


def onnxruntime_threads(backend: Any) -> int | None:
    """Intra-op threads of an ONNX Runtime backend's session, as the session reports them
    (0: ORT's default, one per physical core); None for a backend without an ORT session."""
    session = getattr(backend, "session", None)
    if session is None or not hasattr(session, "get_session_options"):
        return None
    return int(session.get_session_options().intra_op_num_threads)


def thread_counts(backends: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Torch intra- and inter-op threads, and each ONNX Runtime backend's intra-op threads by label."""
    ort = {label: n for label, backend in (backends or {}).items()
           if (n := onnxruntime_threads(backend)) is not None}
    return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
            "onnxruntime_intra_op": ort}


def cpu_features() -> dict[str, Any]:
    """The CPU's description and the flags that decide kernels (AVX2, AVX-512, VNNI, native BF16)."""
    from .cpu import cpu_description, cpu_flags, cpu_has_native_bf16, cpu_has_vnni

    flags = cpu_flags()
    return {"description": cpu_description(),
            "flags": {"AVX2": "avx2" in flags, "AVX-512": "avx512f" in flags, "VNNI": cpu_has_vnni(),
                      "BF16": cpu_has_native_bf16()}}


def machine_caption(threads: Mapping[str, Any], cpu: Mapping[str, Any]) -> str:
    """One line for a table caption: CPU, its flags, torch threads, ONNX Runtime threads."""
    flags = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in cpu["flags"].items())
    text = (f"{cpu['description']}; CPU flags: {flags}; torch threads: {threads['torch_intra_op']} intra-op, "
            f"{threads['torch_inter_op']} inter-op")
    ort = threads.get("onnxruntime_intra_op") or {}
    if ort:
        text += "; ONNX Runtime intra-op threads: " + ", ".join(
            f"{label} {n if n else '0 (ORT default: one per physical core)'}" for label, n in ort.items())
    return text
