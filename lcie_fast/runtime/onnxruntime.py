"""ONNX Runtime backend (CPU): runs the FP32, FP16 and INT8 graphs TensorRT would compile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..artifacts import INPUT_NAME, OUTPUT_NAME, graph_has_qdq, read_onnx_metadata
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
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeBackend(Backend):
    """An ONNX graph exported by lcie-fast, run by ONNX Runtime on the CPU.

    Q/DQ graphs run at ``ORT_ENABLE_BASIC`` on CPUs without VNNI (detected), where ORT's fused
    int8 kernels saturate (notes/tensorrt.md).

    Args:
        path: The ``.onnx`` file (its embedded metadata gives labels, preprocessing, precision).
        threads: Intra-op threads (default: ORT's choice).
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

    @property
    def label(self) -> str:
        level = ", ORT_ENABLE_BASIC (no VNNI)" if self.basic_optimizations else ""
        return f"{self.name} {self.precision} (cpu{level})"

    def infer(self, images: Any) -> np.ndarray:
        if hasattr(images, "detach"):
            images = images.detach().float().cpu().numpy()
        array = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0]

    def close(self) -> None:
        self.session = None
