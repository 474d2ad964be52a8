"""What this machine can run: versions, devices, and every optional backend with its reason."""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any

from ._optional import probe
from .cpu import cpu_has_native_bf16, cpu_has_vnni


@dataclass(frozen=True)
class BackendStatus:
    """One optional backend: can it run here, which version, and why (not)."""

    name: str
    available: bool
    version: str
    detail: str


def devices() -> dict[str, Any]:
    """CPU and CUDA devices visible to torch."""
    import os

    import torch

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_vnni": cpu_has_vnni(),
        "cpu_bf16": cpu_has_native_bf16(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_build": torch.version.cuda,
        "gpus": [],
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append(
                {
                    "index": index,
                    "name": props.name,
                    "compute_capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                }
            )
    return info


def backend_status() -> list[BackendStatus]:
    """Availability of DALI, Triton, the CUDA extension, ONNX Runtime, ModelOpt and TensorRT."""
    import torch

    has_gpu = torch.cuda.is_available()
    rows = []

    dali, reason = probe("nvidia.dali")
    if dali is None:
        rows.append(BackendStatus("DALI", False, "", reason))
    else:
        detail = "GPU decode (mixed)" if has_gpu else "CPU-only pipelines (no CUDA GPU: device_id=None)"
        rows.append(BackendStatus("DALI", True, getattr(dali, "__version__", "?"), detail))

    triton, reason = probe("triton")
    if triton is None:
        rows.append(BackendStatus("Triton", False, "", reason))
    else:
        from .ops.triton_support import triton_runtime_reasons

        reasons = triton_runtime_reasons()
        detail = "runs on the GPU" if not reasons else "; ".join(reasons)
        rows.append(BackendStatus("Triton", not reasons, triton.__version__, detail))

    from .ops.cuda_ext import extension_reasons, extension_version

    reasons = extension_reasons()
    rows.append(BackendStatus(
        "CUDA extension (lcie_fast._C)", not reasons, extension_version(),
        "loaded, runs on the GPU" if not reasons else "; ".join(reasons),
    ))

    ort, reason = probe("onnxruntime")
    if ort is None:
        rows.append(BackendStatus("ONNX Runtime", False, "", reason))
    else:
        providers = ", ".join(ort.get_available_providers())
        rows.append(BackendStatus("ONNX Runtime", True, ort.__version__,
                                  f"providers: {providers}; on this CPU: {cpu_graph_advice()}"))

    modelopt, reason = probe("modelopt")
    rows.append(BackendStatus(
        "ModelOpt", modelopt is not None, getattr(modelopt, "__version__", ""),
        "FP16 AutoCast and INT8 PTQ of ONNX graphs (runs on the CPU)" if modelopt else reason,
    ))

    trt, reason = probe("tensorrt")
    if trt is not None and not has_gpu:
        rows.append(BackendStatus("TensorRT", False, trt.__version__, "imports, but there is no CUDA GPU to build or run engines"))
    else:
        rows.append(BackendStatus("TensorRT", trt is not None, getattr(trt, "__version__", ""),
                                  "builds and runs engines" if trt else reason))

    torch_trt, reason = probe("torch_tensorrt")
    rows.append(BackendStatus(
        "torch-tensorrt", torch_trt is not None and has_gpu, getattr(torch_trt, "__version__", ""),
        ("compiles on the GPU" if has_gpu else "imports, but there is no CUDA GPU") if torch_trt else reason,
    ))
    return rows


def cpu_graph_advice() -> str:
    """Which exported graph precision to run on this CPU, and why (``info`` and ``bench`` print it)."""
    int8 = ("the CPU-target INT8 graph (export --int8 --target cpu) runs as integer kernels on its VNNI; the "
            "TensorRT-target one runs as dequantise + float ops" if cpu_has_vnni() else
            "no VNNI: the CPU-target INT8 graph is quantised with reduce_range; TensorRT-target INT8 graphs run at "
            "ORT_ENABLE_BASIC (ORT's fused int8 kernels saturate without VNNI)")
    return ("FP32 graph by default; FP16 graphs run slower than FP32 on x86 CPUs (no FP16 arithmetic; measured "
            "in the README), so the CPU backend opens the FP32 sibling instead; " + int8)


def versions() -> dict[str, str]:
    """Versions of Python and the core dependencies."""
    import numpy
    import timm
    import torch

    from . import __version__

    return {
        "lcie_fast": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
    }


def environment_report() -> dict[str, Any]:
    """Versions, devices and backends as plain data (what ``lcie-fast info --json`` prints)."""
    return {
        "versions": versions(),
        "devices": devices(),
        "backends": [asdict(row) for row in backend_status()],
    }


def format_environment(report: dict[str, Any]) -> str:
    """Human-readable form of :func:`environment_report`."""
    lines = ["versions:"]
    lines += [f"  {k:<10} {v}" for k, v in report["versions"].items()]
    dev = report["devices"]
    lines.append("devices:")
    lines.append(f"  cpu        {dev['cpu']} ({dev['cpu_count']} cores, torch threads {dev['cpu_threads']}, "
                 f"VNNI {'yes' if dev['cpu_vnni'] else 'no'}, native bf16 {'yes' if dev['cpu_bf16'] else 'no'})")
    if dev["gpus"]:
        for gpu in dev["gpus"]:
            lines.append(f"  cuda:{gpu['index']}     {gpu['name']} (sm {gpu['compute_capability']}, {gpu['memory_gib']} GiB)")
    else:
        lines.append(f"  cuda       none (torch CUDA build: {dev['cuda_build'] or 'no'})")
    lines.append("backends:")
    for row in report["backends"]:
        mark = "yes" if row["available"] else "no "
        version = f" {row['version']}" if row["version"] else ""
        lines.append(f"  [{mark}] {row['name']}{version}: {row['detail']}")
    return "\n".join(lines)


def model_report(name: str, num_classes: int | None = None) -> dict[str, Any]:
    """Parameters and FLOPs of preset ``name`` at its input size, measured (not computed)."""
    from .models import create_model
    from .models.flops import measure_cost

    model = create_model(name, num_classes=num_classes)
    cost = measure_cost(model)
    return {
        "model": name,
        "backbone": model.config.backbone,
        "input_size": cost.input_size,
        "num_classes": model.num_classes,
        "D": model.dim,
        "E": model.fused_dim,
        "tokens": f"{model.token_hw[0]}x{model.token_hw[1]}",
        "params_M": cost.params / 1e6,
        "backbone_params_M": cost.backbone_params / 1e6,
        "gflops": cost.gflops,
        "backbone_gflops": cost.backbone_gflops,
        "head_gflops": cost.head_gflops,
    }


def format_model_report(report: dict[str, Any]) -> str:
    return (
        f"{report['model']}: backbone {report['backbone']}, input {report['input_size']}x{report['input_size']}, "
        f"C={report['num_classes']}, D={report['D']}, E={report['E']}, tokens {report['tokens']}\n"
        f"  parameters  {report['params_M']:.2f} M  (backbone {report['backbone_params_M']:.2f} M)\n"
        f"  GFLOPs      {report['gflops']:.2f} per image  (backbone {report['backbone_gflops']:.2f}, "
        f"heads {report['head_gflops']:.2f}; FLOP = 2 x multiply-add, torch FLOP counter, batch 1)"
    )
