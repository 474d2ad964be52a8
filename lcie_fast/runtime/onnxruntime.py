"""ONNX Runtime backend (CPU): runs the FP32, FP16 and INT8 graphs TensorRT would compile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..artifacts import (
    INPUT_NAME,
    OUTPUT_NAME,
    GraphError,
    graph_has_qdq,
    onnx_io_problems,
    output_width_problem,
    read_onnx_metadata,
)
from ..cpu import cpu_has_vnni
from .base import Backend


def ort_session(path: str | Path, *, basic_optimizations: bool | None = None, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path``.

    Q/DQ (INT8) graphs run at ``ORT_ENABLE_BASIC`` on CPUs without VNNI: ORT's fused int8
    kernels saturate there (logit error about 0.4 instead of 0.01-0.03; notes/tensorrt.md).
    ``basic_optimizations=None`` decides that from the graph and the CPU.
    """
    ort = require("onnxruntime", "running ONNX graphs")
    options = ort.SessionOptions()
    if basic_optimizations is None:
        basic_optimizations = graph_has_qdq(path) and not cpu_has_vnni()
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

    Q/DQ graphs run at ``ORT_ENABLE_BASIC`` on CPUs without VNNI (detected), where ORT's fused
    int8 kernels saturate (notes/tensorrt.md).

    Args:
        path: The ``.onnx`` file (its embedded metadata gives labels, preprocessing, precision).
        threads: Intra-op threads (default: ORT's choice).

    Raises:
        GraphError: a file that is not ONNX, or whose input size or output width contradicts
            its metadata (checked at load; a symbolic output width on every result).
        MetadataError: a graph without lcie-fast metadata.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.meta = read_onnx_metadata(self.path)
        self.precision = self.meta.precision
        self.device = "cpu"
        self.qdq = graph_has_qdq(self.path)
        self.basic_optimizations = self.qdq and not cpu_has_vnni()
        self.session = ort_session(self.path, basic_optimizations=self.basic_optimizations, threads=threads)
        shapes = {value.name: list(value.shape) for value in (*self.session.get_inputs(), *self.session.get_outputs())}
        problems = onnx_io_problems(self.meta, shapes.get(INPUT_NAME), shapes.get(OUTPUT_NAME))
        if problems:
            raise GraphError(f"{self.path}: " + "; ".join(problems))

    @property
    def label(self) -> str:
        level = ", ORT_ENABLE_BASIC (no VNNI)" if self.basic_optimizations else ""
        return f"{self.name} {self.precision} (cpu{level})"

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
