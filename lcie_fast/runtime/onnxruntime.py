"""ONNX Runtime backend (CPU): runs the FP32, FP16 and INT8 graphs TensorRT would compile, and
the INT8 graph quantised for ONNX Runtime's own CPU kernels.

Which graph runs (``prefer_cpu_graph=True``, what ``open_backend(path)`` does by default):
- asked for the TensorRT-target graph ``model.int8.onnx``, the backend runs its CPU-target
  sibling ``model.int8-cpu.onnx`` instead when that file exists, is a CPU-target INT8 graph and
  was made from the same FP32 graph (equal ``source_sha256``). TensorRT's Q/DQ placement runs
  here as dequantise + float ops (slower than FP32); the CPU graph runs as fused integer kernels.
- asked for ``model.fp16.onnx``, it runs the FP32 sibling ``model.onnx`` when that exists and
  describes the same model (labels, preprocessing): a CPU has no FP16 arithmetic, and the FP16
  graph runs slower than FP32 there (``lcie-fast info`` says so).
The label then names the graph it runs. ``prefer_cpu_graph=False`` (``open_backend(path,
"onnxruntime")``, and every variant ``bench`` and ``parity`` measure) runs the file as given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..artifacts import (
    INPUT_NAME,
    OUTPUT_NAME,
    GraphError,
    cpu_int8_sibling,
    fp32_sibling,
    graph_has_qdq,
    graph_target,
    is_deepstream_io,
    load_onnx,
    onnx_io_problems,
    output_width_problem,
    read_onnx_io,
    read_onnx_metadata,
)
from ..cpu import cpu_has_vnni
from ..metadata import MetadataError
from .base import Backend


def cpu_graph_for(path: str | Path) -> Path:
    """The graph the backend runs on a CPU for ``path`` (module docstring): the CPU-target INT8
    sibling of a TensorRT-target INT8 graph, the FP32 sibling of an FP16 graph, or ``path``."""
    path = Path(path)
    int8_sibling, fp32 = cpu_int8_sibling(path), fp32_sibling(path)
    sibling = int8_sibling or fp32
    if sibling is None or not sibling.is_file():
        return path
    try:
        meta, other = read_onnx_metadata(path), read_onnx_metadata(sibling)
    except (GraphError, MetadataError):
        return path  # a damaged sibling is never swapped in; a damaged `path` fails where it is loaded
    if fp32 is not None:
        same_model = (other.precision == "fp32" and meta.precision == "fp16"
                      and other.label_names == meta.label_names and other.preprocess == meta.preprocess)
        return sibling if same_model else path
    source = meta.extra.get("int8", {}).get("source_sha256")
    same_source = source and other.extra.get("int8", {}).get("source_sha256") == source
    if graph_target(meta) == "tensorrt" and graph_target(other) == "cpu" and same_source:
        return sibling
    return path


def needs_basic_optimizations(path: str | Path) -> bool:
    """Whether a graph must run at ``ORT_ENABLE_BASIC`` here: a Q/DQ graph on a CPU without VNNI,
    where ORT's fused int8 kernels saturate on 8-bit weights (logit error about 0.4 instead of
    0.01-0.03; notes/tensorrt.md), unless it is a CPU-target graph quantised with 7-bit weights
    (``reduce_range``), which those kernels run exactly."""
    if cpu_has_vnni() or not graph_has_qdq(path):
        return False
    try:
        meta = read_onnx_metadata(path)
    except MetadataError:
        return True
    return not (graph_target(meta) == "cpu" and meta.extra.get("int8", {}).get("reduce_range"))


def ort_session(path: str | Path, *, basic_optimizations: bool | None = None, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path``.

    ``basic_optimizations=None`` decides the optimisation level from the graph and the CPU
    (:func:`needs_basic_optimizations`).
    """
    ort = require("onnxruntime", "running ONNX graphs")
    options = ort.SessionOptions()
    if basic_optimizations is None:
        basic_optimizations = needs_basic_optimizations(path)
    if basic_optimizations:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own classes for invalid graphs
        raise GraphError(f"{path}: ONNX Runtime cannot load it: {' '.join(str(err).split())[:500]}") from None


class OnnxRuntimeBackend(Backend):
    """An ONNX graph exported by lcie-fast, run by ONNX Runtime on the CPU.

    With ``prefer_cpu_graph``, a TensorRT-target INT8 graph is replaced by its CPU-target
    sibling, and an FP16 graph by its FP32 sibling, when one fits (:func:`cpu_graph_for`, the
    module docstring). Q/DQ graphs run at ``ORT_ENABLE_BASIC`` on
    CPUs without VNNI (detected), where ORT's fused int8 kernels saturate, unless quantised
    for them (:func:`needs_basic_optimizations`).

    Args:
        path: The ``.onnx`` file (its embedded metadata gives labels, preprocessing, precision).
        threads: Intra-op threads (default: ORT's choice).
        prefer_cpu_graph: Run the sibling suited to a CPU when one fits (default); False runs
            ``path`` as given.

    Raises:
        GraphError: a file that is not ONNX, or whose input size or output width contradicts
            its metadata (checked at load; a symbolic output width on every result).
        MetadataError: a graph without lcie-fast metadata.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, prefer_cpu_graph: bool = True) -> None:
        self.requested = Path(path)
        proto = load_onnx(self.requested)
        self.meta = read_onnx_metadata(proto, self.requested)
        if is_deepstream_io(read_onnx_io(proto)):
            raise GraphError(f"{self.requested} is a DeepStream graph (raw 0-255 pixels in, sigmoid scores out) for "
                             f"nvinfer; tag with the model.onnx it was exported from")
        del proto
        self.path = cpu_graph_for(self.requested) if prefer_cpu_graph else self.requested
        if self.path != self.requested:
            self.meta = read_onnx_metadata(self.path)
        self.precision = self.meta.precision
        self.target = graph_target(self.meta)
        self.device = "cpu"
        self.qdq = graph_has_qdq(self.path)
        self.basic_optimizations = needs_basic_optimizations(self.path)
        self.session = ort_session(self.path, basic_optimizations=self.basic_optimizations, threads=threads)
        shapes = {value.name: list(value.shape) for value in (*self.session.get_inputs(), *self.session.get_outputs())}
        problems = onnx_io_problems(self.meta, shapes.get(INPUT_NAME), shapes.get(OUTPUT_NAME))
        if problems:
            raise GraphError(f"{self.path}: " + "; ".join(problems))

    @property
    def label(self) -> str:
        target = f", {self.target}-target graph" if self.target else ""
        swapped = "" if self.path == self.requested else f"{' ' if target else ', '}{self.path.name} for {self.requested.name}"
        level = ", ORT_ENABLE_BASIC (no VNNI)" if self.basic_optimizations else ""
        return f"{self.name} {self.precision} (cpu{target}{swapped}{level})"

    def infer(self, images: Any) -> np.ndarray:
        if hasattr(images, "detach"):
            images = images.detach().float().cpu().numpy()
        array = np.ascontiguousarray(images, dtype=np.float32)
        logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0]
        if logits.ndim != 2 or logits.shape[1] != self.meta.num_classes:  # a symbolic width, seen only now
            raise GraphError(f"{self.path}: {output_width_problem(logits.shape[-1] if logits.ndim else 0, self.meta)}")
        return logits

    def close(self) -> None:
        self.session = None
