"""FP16 and INT8 ONNX graphs: exactly what TensorRT compiles, and what ONNX Runtime scores here.

- FP16: ModelOpt AutoCast, FP32 inputs and outputs. Real calibration images drive its
  reference run, so every node whose values exceed FP16's safe range (``data_max``) or whose
  weights would overflow stays FP32; :func:`fp16_report` counts them and the conversion checks
  that the FP16 graph's logits stay finite on those images.
- INT8 for TensorRT (target ``tensorrt``, ``model.int8.onnx``): ModelOpt ONNX post-training
  quantisation with explicit Q/DQ nodes, calibrated on real images through the model's own
  preprocessing: symmetric (zero point 0), per-channel weights, no int32 bias Q/DQ (what
  TensorRT 10 and 11 accept). :func:`qdq_report` checks all three.
- INT8 for ONNX Runtime on the CPU (target ``cpu``, ``model.int8-cpu.onnx``): ONNX Runtime's own
  static quantisation (:func:`quantize_int8_cpu`), whose Q/DQ placement (int32 bias, quantised
  Add/Clip/Concat...) ORT's CPU provider fuses into integer kernels (QLinearConv, QLinearMatMul),
  where it runs TensorRT's graph as dequantise + float ops, slower than FP32. Never given to TensorRT.

The calibration set is drawn with a fixed seed; its manifest (files and sha256) is written
beside each graph that used it. Both INT8 graphs record their ``target`` and the sha256 of the
FP32 graph they were made from (``extra["int8"]["source_sha256"]``): the ONNX Runtime backend
swaps one for the other only when both came from the same FP32 graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..artifacts import INPUT_NAME, OUTPUT_NAME, calibration_manifest_path, read_onnx_metadata, write_onnx_metadata
from ..data.datasets import MultiLabelSet
from ..data.transforms import ImageDecodeError, Preprocess
from ..io import sha256_file, write_json
from ..runtime.onnxruntime import ort_session
from .export import ExportError


@dataclasses.dataclass
class CalibrationSet:
    """Preprocessed calibration images and where they came from."""

    images: np.ndarray  # (N, 3, S, S) float32, normalised
    manifest: dict[str, Any]


def calibration_set(data: MultiLabelSet, preprocess: Preprocess, count: int = 128, seed: int = 0) -> CalibrationSet:
    """Draw ``count`` images of ``data`` with ``seed``, preprocessed exactly as for inference.

    Unreadable images are skipped (and listed in the manifest); the draw continues in the
    seeded order until ``count`` images decode.
    """
    import torch

    order = np.random.default_rng(seed).permutation(len(data))
    images, files, skipped = [], [], []
    for index in order:
        if len(images) == count:
            break
        path = data.paths[int(index)]
        try:
            images.append(preprocess.load(path))
        except ImageDecodeError as err:
            skipped.append({"path": path, "reason": str(err)})
            continue
        files.append({"path": path, "sha256": sha256_file(path)})
    if not images:
        raise ExportError(f"no calibration image could be decoded from {data.source}")
    batch = preprocess.normalize(torch.stack(images), channels_last=False).numpy()
    manifest = {"source": data.source, "seed": seed, "count": len(files), "requested": count,
                "preprocess": dataclasses.asdict(preprocess.config), "files": files, "skipped": skipped}
    return CalibrationSet(images=np.ascontiguousarray(batch, dtype=np.float32), manifest=manifest)


class _DropNvmlProbe(logging.Filter):
    """ModelOpt logs an ERROR when it probes for GPUs on a machine without NVML; that is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "NVML" not in record.getMessage()


@contextlib.contextmanager
def _quiet_modelopt():
    """ModelOpt at WARNING level; the calibration's progress output is captured and shown only
    when the conversion fails."""
    from modelopt.onnx.logging_config import configure_logging, logger

    configure_logging(logging.WARNING)
    for handler in logger.handlers:
        handler.addFilter(_DropNvmlProbe())
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue()[-5000:])
        raise


def convert_fp16(fp32_path: str | Path, out_path: str | Path, calibration: CalibrationSet | None = None,
                 *, data_max: float = 512.0, reference_images: int = 16) -> dict[str, Any]:
    """FP16 graph with FP32 I/O via ModelOpt AutoCast; returns :func:`fp16_report` of it.

    Args:
        fp32_path: The exported FP32 graph.
        out_path: Where the FP16 graph goes.
        calibration: Real images for AutoCast's reference run (random data without them).
        data_max: Nodes whose inputs or outputs exceed this magnitude stay FP32.
        reference_images: How many calibration images AutoCast's reference run sees: it keeps
            every intermediate tensor of every image, so memory grows with this number.

    Raises:
        ExportError: the FP16 graph gives non-finite logits on the calibration images.
    """
    onnx = require("onnx", "FP16 conversion")
    require("modelopt.onnx", "FP16 conversion (ModelOpt AutoCast)")
    from modelopt.onnx.autocast import convert_to_mixed_precision

    out_path = Path(out_path)
    meta = read_onnx_metadata(fp32_path)
    with tempfile.TemporaryDirectory() as tmp, _quiet_modelopt():
        calib_file = None
        if calibration is not None:
            calib_file = str(Path(tmp) / "calibration.npz")
            np.savez(calib_file, **{INPUT_NAME: calibration.images[:reference_images]})
        proto = convert_to_mixed_precision(
            str(fp32_path), low_precision_type="fp16", keep_io_types=True, calibration_data=calib_file,
            data_max=data_max, providers=["cpu"],
        )
    write_onnx_metadata(proto, dataclasses.replace(meta, precision="fp16", extra={
        **meta.extra, "fp16": {"data_max": data_max,
                               "reference_images": min(reference_images, len(calibration.images)) if calibration else 0}}))
    onnx.save(proto, str(out_path))
    onnx.checker.check_model(str(out_path))
    if calibration is not None:
        write_json(calibration.manifest, calibration_manifest_path(out_path))
        logits = ort_session(out_path).run([OUTPUT_NAME], {INPUT_NAME: calibration.images[:16]})[0]
        if not np.isfinite(logits).all():
            raise ExportError(f"{out_path}: the FP16 graph gives non-finite logits on calibration images")
    return fp16_report(out_path)


def depthwise_conv_nodes(path: str | Path) -> list[str]:
    """Names of the depthwise (grouped) Conv nodes of a graph."""
    onnx = require("onnx", "inspecting ONNX graphs")
    proto = onnx.load(str(path), load_external_data=False)
    return [n.name for n in proto.graph.node
            if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: CalibrationSet, *,
                  method: str = "max", high_precision: str = "fp32", quantize_depthwise: bool = False) -> dict[str, Any]:
    """INT8 Q/DQ graph by ModelOpt PTQ on ``calibration``; returns :func:`qdq_report` of it.

    Args:
        fp32_path: The exported FP32 graph.
        out_path: Where the INT8 graph goes.
        calibration: Real images through the model's preprocessing.
        method: ``max`` or ``entropy`` activation calibration.
        high_precision: Precision of the unquantised ops: ``fp32`` (parity isolates the INT8
            error) or ``fp16`` (faster in TensorRT).
        quantize_depthwise: Also quantise depthwise convolutions. Off by default: with
            per-tensor activations they carry most of the INT8 error of MobileNet-style
            backbones (EfficientNet-Lite), and being memory-bound they gain little from INT8.

    Raises:
        ExportError: the graph breaks a TensorRT rule (asymmetric, per-tensor weights, int32 bias).
    """
    require("onnx", "INT8 quantisation")
    require("modelopt.onnx", "INT8 quantisation (ModelOpt PTQ)")
    from modelopt.onnx.quantization import quantize

    out_path = Path(out_path)
    meta = read_onnx_metadata(fp32_path)
    kept = [] if quantize_depthwise else depthwise_conv_nodes(fp32_path)
    with _quiet_modelopt():
        quantize(
            str(fp32_path), quantize_mode="int8", calibration_data={INPUT_NAME: calibration.images},
            calibration_method=method, calibration_eps=["cpu"], output_path=str(out_path),
            high_precision_dtype=high_precision, log_level="WARNING",
            nodes_to_exclude=[f"^{name}$" for name in kept] or None,
        )
    _finish_int8_graph(out_path, fp32_path, meta, calibration, "tensorrt",
                       {"method": method, "high_precision": high_precision, "depthwise_kept_in_high_precision": len(kept)})
    report = qdq_report(out_path)
    if report["problems"]:
        raise ExportError(f"{out_path}: not a TensorRT-ready Q/DQ graph: " + "; ".join(report["problems"]))
    return report


# Ops the CPU graph keeps in float. LayerNorm and the attention softmax: their outputs feed
# normalised, small-range values whose per-tensor 8-bit steps cost accuracy while the ops
# themselves are a sliver of the time. Measured on the edge preset at 448 (held-out slice of
# traffic5/train, 64 images): every op quantised, mean cosine 0.9969; these kept in float with
# the stem conv and the logit projection, 0.9977 at the same speed; only Conv/MatMul/Gemm
# quantised, 0.984 and slower than FP32 (a Q/DQ pair around every Clip/Add breaks ORT's fusions).
CPU_FLOAT_OP_TYPES = ("LayerNormalization", "Softmax")
CPU_CALIBRATION_METHODS = {"max": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Convolutions kept float from the input on: the stem alone with 8-bit weights; with 7-bit weights
# (reduce_range, CPUs without VNNI) the stem and the two after it. Measured on the demo's generated
# set (1 epoch at 128 px; its training split, AMD EPYC, AVX2, no VNNI), the fused reduce_range
# graph against the FP32 graph: stem only, mean cosine 0.99064 (the INT8 gate wants 0.99) and
# tag agreement 97.5%; the first 3 float, 0.99692 and 98.5%; the first 6, 0.99831; the first
# half, 0.99936 (each float layer gives back some of the integer kernels' speed). The error
# comes from the early layers: keeping the second half float instead changes nothing (0.99101).
CPU_FLOAT_LEADING_CONVS = {False: 1, True: 3}


def cpu_float_nodes(path: str | Path, reduce_range: bool = False) -> list[str]:
    """Names of the nodes :func:`quantize_int8_cpu` keeps in float: every LayerNorm and Softmax,
    the first Conv (the stem reads the normalised image, whose full range 8 bits cut coarsely;
    with ``reduce_range`` the first three, see :data:`CPU_FLOAT_LEADING_CONVS`) and the last
    MatMul/Gemm (it writes the logits every gate compares)."""
    onnx = require("onnx", "inspecting ONNX graphs")
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    kept = [n.name for n in nodes if n.op_type in CPU_FLOAT_OP_TYPES]
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    projections = [n.name for n in nodes if n.op_type in ("MatMul", "Gemm")]
    return kept + convs[:CPU_FLOAT_LEADING_CONVS[reduce_range]] + projections[-1:]


def quantize_int8_cpu(fp32_path: str | Path, out_path: str | Path, calibration: CalibrationSet, *,
                      method: str = "max", reduce_range: bool | None = None, quant_format: str = "qdq",
                      batch_size: int = 8) -> dict[str, Any]:
    """INT8 graph for ONNX Runtime's CPU kernels, by ORT static quantisation on ``calibration``.

    uint8 asymmetric activations and int8 symmetric per-channel weights (the U8S8 kernels ORT
    runs fastest on x86), int32 bias; :func:`cpu_float_nodes` stay float (two more convolutions
    with ``reduce_range``). Returns
    :func:`cpu_int8_report` of the graph.

    Args:
        fp32_path: The exported FP32 graph.
        out_path: Where the INT8 graph goes (``model.int8-cpu.onnx``).
        calibration: Real images through the model's preprocessing (the TensorRT graph's set).
        method: Activation calibration: ``max`` (MinMax), ``entropy`` or ``percentile``.
        reduce_range: 7-bit weights, so ORT's int8 kernels cannot saturate on CPUs without VNNI
            (default: on exactly when this CPU lacks VNNI). A graph built without it runs
            unfused (ORT_ENABLE_BASIC) on a CPU without VNNI (:mod:`lcie_fast.runtime.onnxruntime`).
        quant_format: ``qdq`` (Q/DQ pairs ORT fuses) or ``qoperator`` (QLinearConv... directly).
        batch_size: Images per calibration run.

    Raises:
        ExportError: the graph has no integer compute node or gives non-finite logits.
    """
    require("onnx", "INT8 quantisation")
    require("onnxruntime.quantization", "INT8 quantisation for the CPU (ONNX Runtime)")
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from ..cpu import cpu_has_vnni

    if method not in CPU_CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {tuple(CPU_CALIBRATION_METHODS)}, got {method!r}")
    if quant_format not in ("qdq", "qoperator"):
        raise ValueError(f"quant_format must be qdq or qoperator, got {quant_format!r}")
    reduce_range = not cpu_has_vnni() if reduce_range is None else reduce_range
    out_path = Path(out_path)
    meta = read_onnx_metadata(fp32_path)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "calibration.npy"
        np.save(images, calibration.images)
        # A fresh process: importing ModelOpt (the TensorRT graph) patches ORT's calibrators for
        # the rest of the process, and patched, quantize_static drops activation ranges.
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            kept = pool.submit(_ort_quantize_static, str(fp32_path), str(out_path), str(images), method,
                               quant_format, reduce_range, batch_size).result()
    _finish_int8_graph(out_path, fp32_path, meta, calibration, "cpu",
                       {"method": method, "format": quant_format, "reduce_range": reduce_range,
                        "activations": "uint8 asymmetric, per tensor", "weights": "int8 symmetric, per channel",
                        "kept_float": kept})
    report = cpu_int8_report(out_path)
    if not report["integer_compute"]:
        raise ExportError(f"{out_path}: no Conv/MatMul/Gemm was quantised")
    logits = ort_session(out_path).run([OUTPUT_NAME], {INPUT_NAME: calibration.images[:batch_size]})[0]
    if not np.isfinite(logits).all():
        raise ExportError(f"{out_path}: the CPU INT8 graph gives non-finite logits on calibration images")
    return report


def _ort_quantize_static(fp32_path: str, out_path: str, images_path: str, method: str, quant_format: str,
                         reduce_range: bool, batch_size: int) -> list[str]:
    """:func:`quantize_int8_cpu`'s ORT call (run in a child process); returns the nodes kept float."""
    from onnxruntime import quantization
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = np.load(images_path)  # (N, 3, S, S) float32
    batches = iter([{INPUT_NAME: images[i:i + batch_size]} for i in range(0, len(images), batch_size)])

    class Reader(quantization.CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    formats = {"qdq": quantization.QuantFormat.QDQ, "qoperator": quantization.QuantFormat.QOperator}
    with tempfile.TemporaryDirectory() as tmp, _quiet_logging():
        prepared = str(Path(tmp) / "prepared.onnx")
        # shape inference + constant folding ORT recommends; its symbolic pass crashes on this graph (notes)
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        kept = cpu_float_nodes(prepared, reduce_range)
        quantization.quantize_static(
            prepared, out_path, Reader(), quant_format=formats[quant_format], per_channel=True,
            reduce_range=reduce_range, activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, nodes_to_exclude=kept,
            calibrate_method=getattr(quantization.CalibrationMethod, CPU_CALIBRATION_METHODS[method]),
        )
    return kept


@contextlib.contextmanager
def _quiet_logging():
    """ORT's quantiser warns through the root logger for every LayerNorm weight it skips per channel."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def cpu_int8_report(path: str | Path) -> dict[str, Any]:
    """Integer compute of a CPU-target INT8 graph: Conv/MatMul/Gemm that run on int8 (QLinear*
    / *Integer operators, or fed only by DequantizeLinear in Q/DQ form) and those left in float."""
    onnx = require("onnx", "inspecting ONNX graphs")

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    producers = {out: n for n in nodes for out in n.output}
    integer, floating = {}, {}
    for node in nodes:
        if node.op_type in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm"):
            integer[node.op_type] = integer.get(node.op_type, 0) + 1
        elif node.op_type in ("Conv", "MatMul", "Gemm"):
            fed = [producers.get(name) for name in node.input[:2]]
            quantised = all(p is not None and p.op_type == "DequantizeLinear" for p in fed)
            bucket = integer if quantised else floating
            bucket[node.op_type] = bucket.get(node.op_type, 0) + 1
    return {"quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in nodes),
            "dequantize_nodes": sum(n.op_type == "DequantizeLinear" for n in nodes),
            "integer_compute": integer, "float_compute": floating}


def fp16_report(path: str | Path) -> dict[str, Any]:
    """How many compute nodes run in FP16 and which stayed FP32, with the I/O types."""
    onnx = require("onnx", "inspecting ONNX graphs")
    from onnx import TensorProto

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]}
    for init in proto.graph.initializer:
        types[init.name] = init.data_type
    compute = [n for n in proto.graph.node if n.op_type not in ("Cast", "Constant", "Shape", "Reshape", "Unsqueeze",
                                                                "Squeeze", "Transpose", "Concat", "Gather", "Slice")]
    fp16 = [n for n in compute if any(types.get(o) == TensorProto.FLOAT16 for o in n.output)]
    fp32 = [n for n in compute if any(types.get(o) == TensorProto.FLOAT for o in n.output)]
    io = {"inputs": {i.name: TensorProto.DataType.Name(i.type.tensor_type.elem_type) for i in proto.graph.input},
          "outputs": {o.name: TensorProto.DataType.Name(o.type.tensor_type.elem_type) for o in proto.graph.output}}
    return {"compute_nodes": len(compute), "fp16_nodes": len(fp16), "fp32_nodes": len(fp32),
            "kept_fp32": sorted({n.op_type for n in fp32}), "io": io}


def qdq_report(path: str | Path) -> dict[str, Any]:
    """Structure of a Q/DQ graph and every breach of TensorRT's rules.

    Checks: every zero point is 0 (symmetric); weights feeding Conv/MatMul/Gemm are
    dequantised per channel (a scale vector); no DequantizeLinear outputs from int32 (bias)
    inputs. Also counts the quantised compute nodes by type.
    """
    onnx = require("onnx", "inspecting ONNX graphs")
    from onnx import TensorProto, numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    constants = {n.output[0]: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant" and n.attribute}

    def tensor(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in constants:
            return numpy_helper.to_array(constants[name])
        return None

    producers = {out: n for n in proto.graph.node for out in n.output}
    problems, per_channel, per_tensor_weights, quantized = [], 0, [], {}
    q_nodes = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    for node in q_nodes:
        if len(node.input) > 2:
            zero = tensor(node.input[2])
            if zero is not None and np.any(zero != 0):
                problems.append(f"{node.name}: non-zero zero point (asymmetric)")
        if node.op_type == "DequantizeLinear":
            source = inits.get(node.input[0])
            if source is not None and source.data_type == TensorProto.INT32:
                problems.append(f"{node.name}: int32 (bias) dequantisation")
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        dq_inputs = [producers.get(name) for name in node.input[:2]]
        if all(p is not None and p.op_type == "DequantizeLinear" for p in dq_inputs):
            quantized[node.op_type] = quantized.get(node.op_type, 0) + 1
        weight_dq = producers.get(node.input[1])
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear":
            continue
        weight_source = producers.get(weight_dq.input[0])
        is_weight = weight_dq.input[0] in inits or (weight_source is not None and weight_source.input
                                                     and weight_source.input[0] in inits)
        if not is_weight:
            continue  # an activation x activation MatMul (attention)
        scale = tensor(weight_dq.input[1])
        if scale is not None and scale.size > 1:
            per_channel += 1
        else:
            per_tensor_weights.append(node.name)
    if per_tensor_weights:
        problems.append(f"{len(per_tensor_weights)} weight(s) quantised per tensor, e.g. {per_tensor_weights[:3]}")
    return {"quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in q_nodes),
            "dequantize_nodes": sum(n.op_type == "DequantizeLinear" for n in q_nodes),
            "quantized_compute": quantized, "per_channel_weights": per_channel, "problems": problems}


def _finish_int8_graph(out_path: Path, fp32_path: Path, meta: Any, calibration: Any, target: str,
                       settings: dict[str, Any]) -> None:
    """Embed an INT8 graph's metadata (its target, settings, source graph and calibration), check
    the graph and write its calibration manifest beside it."""
    onnx = require("onnx", "writing INT8 graphs")
    proto = onnx.load(str(out_path))
    extra = {**meta.extra, "target": target,
             "int8": {**settings, "source_sha256": sha256_file(fp32_path),
                      "calibration_images": calibration.manifest["count"], "calibration_seed": calibration.manifest["seed"]}}
    write_onnx_metadata(proto, dataclasses.replace(meta, precision="int8", extra=extra))
    onnx.save(proto, str(out_path))
    onnx.checker.check_model(str(out_path))
    write_json(calibration.manifest, calibration_manifest_path(out_path))
