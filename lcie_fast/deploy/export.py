"""ONNX export of the inference path, with the model's metadata embedded.

The graph: input ``images`` (N, 3, H, W) float32, normalised as the metadata says; output
``logits`` (N, C) float32; dynamic batch; reference ops only (no custom kernels); the
partial-label branch never reaches it (eval mode). Exported with torch's ``torch.export``-based
exporter at opset 18; checked with ``onnx.checker`` and against eager PyTorch with ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .._optional import require
from ..artifacts import INPUT_NAME, OUTPUT_NAME, write_onnx_metadata
from ..errors import UserError
from ..metadata import ModelMetadata
from ..runtime.onnxruntime import ort_session

DEFAULT_OPSET = 18


class ExportError(UserError, RuntimeError):
    """An export or conversion that failed or does not match the eager model."""


def export_onnx(model: torch.nn.Module, meta: ModelMetadata, path: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model``'s inference path to ``path`` (FP32, dynamic batch) and check it.

    Args:
        model: An LCIE model (any device or memory format; a CPU FP32 copy is exported).
        meta: Its metadata, embedded in the graph.
        path: Output ``.onnx`` file.
        opset: ONNX opset (>= 17).
    """
    from .. import ops

    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export (torch's exporter)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = meta.preprocess.input_size
    model = model.float().to("cpu", memory_format=torch.contiguous_format).eval()
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with ops.use_impl("ref"), torch.no_grad():
        program = torch.onnx.export(
            model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
            dynamo=True, dynamic_shapes={"images": {0: batch}}, verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    write_onnx_metadata(proto, meta)
    proto.producer_name = "lcie-fast"
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


def compare_with_eager(path: str | Path, model: torch.nn.Module, images: np.ndarray, batch_size: int = 8) -> dict[str, float]:
    """Max and mean |logit difference| of the graph (ONNX Runtime) against eager FP32 PyTorch."""
    session = ort_session(path)
    model = model.float().to("cpu").eval()
    diffs = []
    for start in range(0, len(images), batch_size):
        chunk = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
        graph = session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0]
        with torch.no_grad():
            eager = model(torch.from_numpy(chunk)).numpy()
        diffs.append(np.abs(graph.astype(np.float64) - eager))
    diff = np.concatenate(diffs)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "images": int(len(images))}
