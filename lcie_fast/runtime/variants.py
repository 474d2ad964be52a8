"""Every backend worth comparing for one model, in one list: for ``bench``, ``parity`` and the demo.

Eager FP32 comes first: it is the baseline of every ratio and the reference of every parity
gate. Then, as the device allows: the other memory format, the fast ops, AMP, torch.compile,
the exported ONNX graphs and TensorRT engine bundles. Nothing is built until asked for
(:attr:`Variant.build`, through :func:`~lcie_fast.runtime.open_backend`), so listing a backend
that cannot run here costs nothing.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..artifacts import read_engine_metadata, read_onnx_metadata
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
                     bf16: bool = False) -> list[Variant]:
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
    variants += engine_variants(engines)
    return variants


def graph_variants(graphs: Iterable[Path]) -> list[Variant]:
    """ONNX Runtime (CPU) for each existing graph, once each, labelled by the precision in its metadata."""
    from . import open_backend

    variants, seen = [], set()
    for graph in graphs:
        graph = Path(graph)
        if not graph.is_file() or graph.resolve() in seen:
            continue
        seen.add(graph.resolve())
        precision = read_onnx_metadata(graph).precision
        variants.append(Variant(f"onnxruntime {precision} graph (cpu)", precision,
                                lambda graph=graph: open_backend(graph, "onnxruntime")))
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
