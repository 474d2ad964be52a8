"""ONNX export of the inference path, with the model's metadata embedded.

The graph: input ``images`` (N, 3, H, W) float32, normalised as the metadata says; output
``logits`` (N, C) float32; dynamic batch; reference ops only (no custom kernels); the
partial-label branch never reaches it (eval mode). Exported with torch's ``torch.export``-based
exporter at opset 18; checked with ``onnx.checker`` and against eager PyTorch with ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .._optional import require
from ..errors import UserError
from ..metadata import MetadataError, ModelMetadata

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
METADATA_KEY = "lcie_fast"
DEFAULT_OPSET = 18


class ExportError(UserError, RuntimeError):
    """An export or conversion that failed or does not match the eager model."""


def write_metadata(model_proto, meta: ModelMetadata) -> None:
    """Store ``meta`` (and the I/O contract) as JSON in the graph's ``metadata_props``."""
    data = meta.to_dict()
    data["io"] = {"input": INPUT_NAME, "output": OUTPUT_NAME, "layout": "NCHW", "dtype": "float32",
                  "normalised": True}
    for prop in list(model_proto.metadata_props):
        if prop.key == METADATA_KEY:
            model_proto.metadata_props.remove(prop)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(data)


def read_metadata(path_or_proto) -> ModelMetadata:
    """The ModelMetadata embedded in an ONNX file (or ModelProto) by :func:`export_onnx`.

    Raises:
        MetadataError: the graph carries no lcie_fast metadata.
    """
    onnx = require("onnx", "reading ONNX metadata")
    proto = path_or_proto
    if not hasattr(proto, "metadata_props"):
        proto = onnx.load(str(path_or_proto), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return ModelMetadata.from_dict(json.loads(prop.value))
    raise MetadataError(f"{path_or_proto if isinstance(path_or_proto, (str, Path)) else 'graph'} carries no "
                        f"'{METADATA_KEY}' metadata: it was not exported by lcie-fast")


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
    write_metadata(proto, meta)
    proto.producer_name = "lcie-fast"
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


def ort_session(path: str | Path, *, basic_optimizations: bool | None = None, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path``.

    Q/DQ (INT8) graphs run at ``ORT_ENABLE_BASIC`` on CPUs without VNNI: ORT's fused int8
    kernels saturate there (logit error about 0.4 instead of 0.01-0.03; notes/tensorrt.md).
    ``basic_optimizations=None`` decides that from the graph and the CPU.
    """
    ort = require("onnxruntime", "running ONNX graphs")
    options = ort.SessionOptions()
    if basic_optimizations is None:
        from ..info import cpu_has_vnni

        basic_optimizations = graph_has_qdq(path) and not cpu_has_vnni()
    if basic_optimizations:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_has_qdq(path: str | Path) -> bool:
    """True when the graph holds QuantizeLinear/DequantizeLinear nodes (an INT8 graph)."""
    onnx = require("onnx", "inspecting ONNX graphs")
    proto = onnx.load(str(path), load_external_data=False)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in proto.graph.node)


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
