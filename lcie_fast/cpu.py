"""What the CPU can do: feature flags that decide kernels, autocast and graph settings."""

from __future__ import annotations

import functools
import os
import platform


@functools.cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI, which ONNX Runtime's int8 kernels need."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "avx512vnni"})


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX): bf16 autocast then
    roughly doubles CPU training speed; elsewhere it is emulated and slower than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_description() -> str:
    """E.g. ``CPU x86_64 (2 cores, AVX-512 VNNI)``: the flags every CPU figure must name."""
    flags = cpu_flags()
    named = [label for flag, label in (("avx512_vnni", "AVX-512 VNNI"), ("avx512_bf16", "AVX512_BF16"))
             if flag in flags]
    if not named:
        named = ["AVX2"] if "avx2" in flags else []
    extra = "".join(f", {label}" for label in named)
    return f"CPU {platform.machine()} ({os.cpu_count()} cores{extra})"
