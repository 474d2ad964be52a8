"""ONNX Runtime backend (CPU): runs the FP32, FP16 and INT8 graphs TensorRT would compile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..deploy.export import INPUT_NAME, OUTPUT_NAME, graph_has_qdq, ort_session, read_metadata
from .base import Backend


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
        from ..info import cpu_has_vnni

        self.path = Path(path)
        self.meta = read_metadata(self.path)
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
