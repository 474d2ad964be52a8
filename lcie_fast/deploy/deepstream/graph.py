"""The DeepStream graph ``lcie_ds.onnx``: raw RGB in, sigmoid scores out.

nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` with one scalar scale, so the
project's per-channel std cannot be expressed there, and it never applies a sigmoid. The
DeepStream graph is an exported graph (FP32, FP16 or the TensorRT-target INT8 graph) with the
model's normalisation folded in front (:func:`~lcie_fast.deploy.graph_edits.fold_normalisation`,
before the first Q/DQ of an INT8 graph) and a ``Sigmoid`` as its only output ``probs``; nvinfer
then runs with ``net-scale-factor=1.0`` and ``offsets=0;0;0``.

With ``input_scale=2`` (the default of ``export-deepstream``) the graph takes frames at twice the
model's size and reduces them itself with the antialiased filter the model was trained with
(bilinear or bicubic, from its metadata) (:func:`~lcie_fast.deploy.graph_edits.prepend_downscale_2x`): nvinfer's scaler does not
antialias, and shrinking by half the ratio costs much less accuracy (measured in the README).

Input ``images``: float32 (batch, 3, N, N) with N = ``input_scale`` x S, RGB, values 0-255
(dynamic batch). Output ``probs``: float32 (batch, C). The embedded metadata says so under ``io`` (``normalised:
false``), so lcie-fast's own loaders refuse it by name instead of feeding it normalised images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..._optional import require
from ...artifacts import INPUT_NAME, PROBS_NAME, GraphError, load_onnx, read_onnx_metadata, write_onnx_metadata
from ...io import atomic_write, sha256_file
from ..graph_edits import add_probs_output, fold_normalisation, prepend_downscale_2x

DEEPSTREAM_IO = {"input": INPUT_NAME, "output": PROBS_NAME, "layout": "NCHW", "dtype": "float32", "normalised": False,
                 "input_range": [0, 255], "color": "RGB", "activation": "sigmoid", "consumer": "deepstream"}


INPUT_SCALES = (1, 2)


def build_deepstream_graph(source: str | Path, *, input_scale: int = 2, keep_logits: bool = False) -> Any:
    """The DeepStream ModelProto of an exported graph (not saved).

    Args:
        source: ``model.onnx``, ``model.fp16.onnx`` or ``model.int8.onnx`` written by ``lcie-fast export``.
        input_scale: 1 (network input = model input) or 2 (twice the size, reduced in the graph).
        keep_logits: Also keep output ``logits`` (for parity analysis; the bundle's graph has ``probs`` only).

    Raises:
        GraphError: not an lcie-fast graph, an INT8 graph made for ONNX Runtime's CPU kernels, or
            a graph already edited.
    """
    onnx = require("onnx", "writing the DeepStream graph")
    if input_scale not in INPUT_SCALES:
        raise GraphError(f"input_scale must be one of {INPUT_SCALES}, got {input_scale!r}")
    proto = load_onnx(source)
    meta = read_onnx_metadata(proto)
    if meta.precision == "int8" and meta.extra.get("target", "tensorrt") != "tensorrt":
        raise GraphError(f"{source} is the INT8 graph for ONNX Runtime's CPU kernels; DeepStream (TensorRT) needs "
                         f"the TensorRT-target model.int8.onnx")
    fold_normalisation(proto, meta.preprocess.mean, meta.preprocess.std)
    if input_scale == 2:
        prepend_downscale_2x(proto, meta.preprocess.interpolation)
    add_probs_output(proto, keep_logits=keep_logits)
    size = input_scale * meta.preprocess.input_size
    write_onnx_metadata(proto, meta, io={**DEEPSTREAM_IO, "input_size": size, "input_scale": input_scale})
    onnx.checker.check_model(proto)
    return proto


def write_deepstream_graph(source: str | Path, out: str | Path, input_scale: int = 2) -> dict[str, Any]:
    """Write ``lcie_ds.onnx`` (atomically) from an exported graph; its precision, sha256 and I/O."""
    proto = build_deepstream_graph(source, input_scale=input_scale)
    out = Path(out)
    with atomic_write(out, "wb") as handle:
        handle.write(proto.SerializeToString())
    meta = read_onnx_metadata(out)
    return {"path": str(out), "source": str(source), "precision": meta.precision, "sha256": sha256_file(out),
            "io": DEEPSTREAM_IO, "input_scale": input_scale, "input_size": input_scale * meta.preprocess.input_size}
