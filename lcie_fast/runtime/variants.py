"""Every backend worth comparing for one model, in one list: for ``bench``, ``parity`` and the demo.

Eager FP32 comes first: it is the baseline of every ratio and the reference of every parity
gate. Then, as the device allows: the other memory format, the fast ops, AMP, torch.compile,
the exported ONNX graphs, AOTInductor packages and TensorRT engine bundles. Nothing is built until asked for
(:attr:`Variant.build`, through :func:`~lcie_fast.runtime.open_backend`), so listing a backend
that cannot run here costs nothing.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..artifacts import graph_target, read_aoti_info, read_aoti_metadata, read_engine_metadata, read_onnx_metadata
from .base import Backend


@dataclasses.dataclass
class Variant:
    """A backend to measure: a label, its precision (selects the parity gate), its memory format, how to build it."""

    label: str
    precision: str
    build: Callable[[], Backend]
    memory_format: str = "contiguous"


def backend_variants(model: Any, meta: Any, device: str, *, graphs: Mapping[str, Path] | Iterable[Path] = (),
                     engines: Iterable[str | Path] = (), compile_: bool = False, memory_formats: bool = False,
                     bf16: bool = False, aoti: Iterable[str | Path] = (), allow_host_code: bool = False) -> list[Variant]:
    """Eager FP32 first (baseline and reference), then every other backend that may run here.

    Args:
        model: An LCIE model (each variant gets its own copy), or None for graphs / engines only.
        meta: Its metadata.
        device: ``cpu`` or ``cuda[:N]``.
        graphs: Exported ONNX graphs (any precision; missing files are left out).
        engines: TensorRT engine bundles.
        compile_: Add torch.compile (and, on a GPU, torch.compile + CUDA graphs).
        memory_formats: Add eager FP32 in contiguous NCHW beside channels-last.
        bf16: Add eager BF16 autocast on the CPU (on a GPU, AMP FP16 and BF16 are always listed).
        aoti: AOTInductor ``.pt2`` packages (missing files are left out).
        allow_host_code: The caller trusts the native code of the ``aoti`` packages (each is
            refused, with the reason, otherwise).
    """
    from . import open_backend

    cuda = device.startswith("cuda")
    variants: list[Variant] = []
    if model is not None:
        def eager(precision: str, fast_ops: str = "ref", channels_last: bool = True) -> Callable[[], Backend]:
            return lambda: open_backend(copy.deepcopy(model), "eager", device, meta=meta, precision=precision,
                                        fast_ops=fast_ops, channels_last=channels_last)

        def compiled(precision: str, cuda_graphs: bool = False) -> Callable[[], Backend]:
            return lambda: open_backend(copy.deepcopy(model), "compiled", device, meta=meta, precision=precision,
                                        fast_ops="ref", cuda_graphs=cuda_graphs)

        last = "channels-last"
        variants.append(Variant(f"eager fp32 ({device})", "fp32", eager("fp32"), last))
        if memory_formats:
            variants.append(Variant(f"eager fp32 contiguous ({device})", "fp32", eager("fp32", channels_last=False)))
        variants.append(Variant(f"eager fp32 + fast ops ({device})", "fp32", eager("fp32", "auto"), last))
        if cuda:
            variants.append(Variant(f"eager AMP fp16 ({device})", "fp16", eager("fp16"), last))
            variants.append(Variant(f"eager AMP fp16 + fast ops ({device})", "fp16", eager("fp16", "auto"), last))
        if cuda or bf16:
            variants.append(Variant(f"eager AMP bf16 ({device})", "bf16", eager("bf16"), last))
        if compile_:
            precision = "fp16" if cuda else "fp32"
            variants.append(Variant(f"torch.compile {precision} ({device})", precision, compiled(precision), last))
            if cuda:
                variants.append(Variant(f"torch.compile + CUDA graphs fp16 ({device})", "fp16",
                                        compiled("fp16", cuda_graphs=True), last))
    variants += graph_variants(graphs.values() if isinstance(graphs, Mapping) else graphs)
    variants += aoti_variants(aoti, allow_host_code)
    variants += engine_variants(engines)
    return variants


def graph_variants(graphs: Iterable[Path]) -> list[Variant]:
    """ONNX Runtime (CPU) for each existing graph as given, once each, labelled by the precision in
    its metadata (``int8-cpu`` for the INT8 graph quantised for ONNX Runtime's CPU kernels)."""
    from . import open_backend

    variants, seen = [], set()
    for graph in graphs:
        graph = Path(graph)
        if not graph.is_file() or graph.resolve() in seen:
            continue
        seen.add(graph.resolve())
        meta = read_onnx_metadata(graph)
        precision, kind = meta.precision, meta.precision + ("-cpu" if graph_target(meta) == "cpu" else "")
        variants.append(Variant(f"onnxruntime {kind} graph (cpu)", precision,
                                lambda graph=graph: open_backend(graph, "onnxruntime")))
    return variants


def aoti_variants(packages: Iterable[str | Path], allow_host_code: bool = False) -> list[Variant]:
    """AOTInductor for each existing ``.pt2`` package, once each, labelled by the precision and device
    in its metadata (read without loading the package: one built for another device, or not
    allowed to run its native code, is listed, and refused with the reason when built)."""
    from . import open_backend

    variants, seen = [], set()
    for package in packages:
        package = Path(package)
        if not package.is_file() or package.resolve() in seen:
            continue
        seen.add(package.resolve())
        precision = read_aoti_metadata(package).precision
        device = read_aoti_info(package).get("AOTI_DEVICE_KEY", "cpu")
        variants.append(Variant(f"aoti {precision} ({device})", precision,
                                lambda package=package: open_backend(package, "aoti",
                                                                     allow_host_code=allow_host_code)))
    return variants


def engine_variants(engines: Iterable[str | Path]) -> list[Variant]:
    """TensorRT for each engine bundle, labelled by its precision and its build folder."""
    from . import open_backend

    variants = []
    for engine in engines:
        precision = read_engine_metadata(engine).precision
        variants.append(Variant(f"tensorrt {precision} ({Path(engine).parent.name})", precision,
                                lambda engine=engine: open_backend(engine, "tensorrt")))
    return variants
