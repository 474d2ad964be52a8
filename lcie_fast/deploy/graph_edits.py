"""Edits that turn an exported graph into what a serving stack feeds and reads directly.

- :func:`fold_normalisation`: a new input takes raw 0-255 RGB and the model's own
  ``(x / 255 - mean) / std`` runs inside the graph, in FP32, before every existing consumer of
  the input: before the first Q/DQ pair of an INT8 graph (whose input scale was calibrated on
  normalised values) and before the cast of an FP16 graph. DeepStream's nvinfer can only apply
  one scalar scale (``net-scale-factor``), so the per-channel std must live in the graph.
- :func:`add_probs_output`: a ``Sigmoid`` over the logits as output :data:`PROBS_NAME` (nvinfer
  never applies one; Triton's classification extension then reports probabilities).

Both work on a loaded ``onnx.ModelProto`` in place and keep the graph's metadata; the caller
saves and checks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._optional import require
from ..artifacts import INPUT_NAME, OUTPUT_NAME, PROBS_NAME, GraphError

NORMALISED_NAME = "images_normalised"  # the tensor the original graph reads after fold_normalisation


def _value_info(proto: Any, name: str, outputs: bool = False) -> Any:
    values = proto.graph.output if outputs else proto.graph.input
    for value in values:
        if value.name == name:
            return value
    kind = "output" if outputs else "input"
    raise GraphError(f"the graph has no {kind} {name!r}; it was not exported by lcie-fast export")


def fold_normalisation(proto: Any, mean: Sequence[float], std: Sequence[float]) -> None:
    """Make input :data:`INPUT_NAME` take raw float 0-255 RGB (N, 3, S, S): ``x * 1/(255 std) - mean/std``
    runs as one Mul and one Add (FP32) in front of everything that read the input.

    Raises:
        GraphError: the graph has no float32 input ``images``, or was already edited.
    """
    onnx = require("onnx", "editing ONNX graphs")
    from onnx import helper, numpy_helper

    graph_input = _value_info(proto, INPUT_NAME)
    if graph_input.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise GraphError(f"input {INPUT_NAME!r} is not float32: normalisation is folded in front of a float32 input only")
    if any(NORMALISED_NAME in node.input for node in proto.graph.node):
        raise GraphError("the graph already holds a folded normalisation")
    for node in proto.graph.node:
        node.input[:] = [NORMALISED_NAME if name == INPUT_NAME else name for name in node.input]
    for output in proto.graph.output:  # an identity graph would read its input directly
        if output.name == INPUT_NAME:
            raise GraphError(f"input {INPUT_NAME!r} is also a graph output")
    scale = np.array([1.0 / (255.0 * s) for s in std], np.float32).reshape(1, 3, 1, 1)
    shift = np.array([-m / s for m, s in zip(mean, std)], np.float32).reshape(1, 3, 1, 1)
    proto.graph.initializer.extend([numpy_helper.from_array(scale, "lcie_norm_scale"),
                                    numpy_helper.from_array(shift, "lcie_norm_shift")])
    nodes = [helper.make_node("Mul", [INPUT_NAME, "lcie_norm_scale"], ["lcie_norm_scaled"], name="lcie_norm_mul"),
             helper.make_node("Add", ["lcie_norm_scaled", "lcie_norm_shift"], [NORMALISED_NAME], name="lcie_norm_add")]
    existing = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes + existing)  # topological order: the new nodes come first


def add_probs_output(proto: Any, keep_logits: bool = True) -> None:
    """Add output :data:`PROBS_NAME` = ``Sigmoid(logits)`` (same shape, float32); ``keep_logits=False``
    leaves ``probs`` as the only output.

    Raises:
        GraphError: no output ``logits``, or a ``probs`` output already there.
    """
    require("onnx", "editing ONNX graphs")
    from onnx import helper

    logits = _value_info(proto, OUTPUT_NAME, outputs=True)
    if any(output.name == PROBS_NAME for output in proto.graph.output):
        raise GraphError(f"the graph already has an output {PROBS_NAME!r}")
    proto.graph.node.append(helper.make_node("Sigmoid", [OUTPUT_NAME], [PROBS_NAME], name="lcie_sigmoid"))
    probs = proto.graph.output.add()
    probs.CopyFrom(logits)
    probs.name = PROBS_NAME
    if not keep_logits:
        proto.graph.output.remove(logits)


DOWNSCALED_NAME = "images_downscaled"


def reduction_taps_2x(size: int, interpolation: str = "bilinear") -> tuple[np.ndarray, int, np.ndarray]:
    """The 2x reduction torch's antialiased resize (the model's own, :func:`~lcie_fast.data.transforms.resize_image`)
    applies from 2 ``size`` to ``size`` pixels, as a convolution: its 1-D taps, the padding that centres them
    at stride 2, and per output position the factor that renormalises the taps cut off at an edge.

    Taken from torch itself (the resize of every unit impulse) and checked to reproduce its whole
    resampling matrix (bilinear: ``[1, 3, 3, 1] / 8``; bicubic: 8 taps).

    Raises:
        GraphError: the resize is not such a convolution (it always is for these filters).
    """
    import torch
    import torch.nn.functional as F

    impulses = torch.eye(2 * size, dtype=torch.float64).view(2 * size, 1, 1, 2 * size)
    matrix = F.interpolate(impulses, size=(1, size), mode=interpolation, align_corners=False,
                           antialias=True)[:, 0, 0, :].T.numpy()  # (size, 2 size): output i <- inputs
    middle = size // 2
    row = matrix[middle]
    support = np.flatnonzero(np.abs(row) > 1e-12)
    taps = row[support[0]:support[-1] + 1]
    pad = 2 * middle - int(support[0])
    rebuilt = np.zeros_like(matrix)
    for i in range(size):
        for k, tap in enumerate(taps):
            j = 2 * i - pad + k
            if 0 <= j < 2 * size:
                rebuilt[i, j] = tap
    inside = rebuilt.sum(1)
    if np.abs(rebuilt / inside[:, None] - matrix).max() > 1e-9:
        raise GraphError(f"torch's antialiased {interpolation} 2x reduction is not a renormalised convolution here")
    return taps.astype(np.float32), pad, (1.0 / inside).astype(np.float32)


def prepend_downscale_2x(proto: Any, interpolation: str = "bilinear") -> int:
    """Make input :data:`INPUT_NAME` twice as large: the model's own antialiased 2x reduction
    (:func:`reduction_taps_2x`: a fixed depthwise convolution at stride 2, edges renormalised as torch
    does) runs in front of everything that read the input, in FP32. A scaler upstream (nvinfer's)
    then only has to halve the ratio it shrinks by, where its lack of antialiasing costs little; the
    rest is the filter the model was trained with.

    Returns:
        The new input side (2 S).

    Raises:
        GraphError: the input has no fixed square spatial size.
    """
    require("onnx", "editing ONNX graphs")
    from onnx import helper, numpy_helper

    graph_input = _value_info(proto, INPUT_NAME)
    dims = graph_input.type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[2].dim_value or dims[2].dim_value != dims[3].dim_value:
        raise GraphError(f"input {INPUT_NAME!r} needs a fixed square size to be downscaled in the graph")
    size = dims[2].dim_value
    for node in proto.graph.node:
        node.input[:] = [DOWNSCALED_NAME if name == INPUT_NAME else name for name in node.input]
    taps, pad, edges = reduction_taps_2x(size, interpolation)
    width = len(taps)
    kernel = np.broadcast_to(np.outer(taps, taps), (3, 1, width, width)).astype(np.float32)
    correction = np.outer(edges, edges).reshape(1, 1, size, size).astype(np.float32)
    end_pad = 2 * (size - 1) - pad + width - 2 * size  # inputs past the end the last output reads
    proto.graph.initializer.extend([numpy_helper.from_array(kernel, "lcie_down_kernel"),
                                    numpy_helper.from_array(correction, "lcie_down_edges")])
    nodes = [helper.make_node("Conv", [INPUT_NAME, "lcie_down_kernel"], ["lcie_down_conv"], name="lcie_down_conv",
                              group=3, kernel_shape=[width, width], strides=[2, 2],
                              pads=[pad, pad, max(end_pad, 0), max(end_pad, 0)]),
             helper.make_node("Mul", ["lcie_down_conv", "lcie_down_edges"], [DOWNSCALED_NAME], name="lcie_down_edges")]
    existing = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes + existing)
    dims[2].dim_value = dims[3].dim_value = 2 * size
    return 2 * size
