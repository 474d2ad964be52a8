"""The export pipeline: a checkpoint to its FP32, FP16 and INT8 ONNX graphs, each checked.

Used by ``lcie-fast export``, ``lcie-fast parity`` (when it exports first) and the demo.
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..artifacts import INT8_TARGETS, graph_paths
from ..errors import InvalidInputError


@dataclasses.dataclass(frozen=True)
class CalibrationOptions:
    """Which real images calibrate the FP16 and INT8 graphs, and how INT8 is quantised.

    The CPU-target INT8 graph uses the same images (and manifest) as the TensorRT-target one.

    Attributes:
        data: Calibration images (a data spec; default: the checkpoint's training data).
        images: Images drawn for INT8 calibration (their activations are all kept in memory).
        seed: Seed of the draw.
        method: INT8 calibration: ``max`` or ``entropy`` (both targets); ``percentile`` (CPU target only).
        int8_high_precision: Precision of the ops INT8 does not cover.
        quantize_depthwise: Also quantise depthwise convolutions (kept in high precision by default).
        fp16_reference_images: Images FP16's range check runs (it keeps every activation).
    """

    data: str | None = None
    images: int = 64
    seed: int = 0
    method: Literal["max", "entropy", "percentile"] = "max"
    int8_high_precision: Literal["fp32", "fp16"] = "fp32"
    quantize_depthwise: bool = False
    fp16_reference_images: int = 16


def export_graphs(checkpoint: str | Path, onnx_path: str | Path, *, fp16: bool = True, int8: bool = True,
                  int8_targets: tuple[str, ...] = ("tensorrt",), calibration: CalibrationOptions | None = None,
                  verify_data: str | None = None, verify_images: int = 16, tolerance: float = 1e-4,
                  log=print) -> dict[str, Any]:
    """Export a checkpoint to the FP32 graph and (optionally) its FP16 and INT8 graphs.

    The FP32 graph is compared with eager PyTorch on real images (``verify_data``, else the
    calibration images): :class:`ExportError` when the max |logit difference| exceeds
    ``tolerance``.

    Args:
        checkpoint: The ``.pt`` checkpoint to export.
        onnx_path: The FP32 graph's path; the FP16 / INT8 graphs are its siblings (:func:`graph_paths`).
        fp16, int8: Also write the FP16 / INT8 graph.
        int8_targets: Which INT8 graphs: ``tensorrt`` (ModelOpt Q/DQ, ``model.int8.onnx``) and / or
            ``cpu`` (ONNX Runtime static quantisation, ``model.int8-cpu.onnx``).
        calibration: Calibration images and quantisation settings (default :class:`CalibrationOptions`).
        verify_data, verify_images: Real images to compare the FP32 graph with eager on.
        tolerance: Largest max |logit difference| of the FP32 graph to eager.
        log: Where progress lines go.
    """
    opts = calibration or CalibrationOptions()
    from ..data.datasets import load_data_spec
    from ..data.transforms import Preprocess
    from ..models.checkpoint import model_from_checkpoint
    from .export import ExportError, compare_with_eager, export_onnx
    from .graphs import calibration_set, convert_fp16, quantize_int8, quantize_int8_cpu

    unknown = [t for t in int8_targets if t not in INT8_TARGETS]
    if unknown or not int8_targets:
        raise InvalidInputError(f"int8 targets {list(int8_targets)}: expected one or more of {INT8_TARGETS}")
    if opts.method == "percentile" and int8 and "tensorrt" in int8_targets:
        raise InvalidInputError("calibration method percentile is for the cpu target only (ModelOpt: max or entropy)")
    model, meta = model_from_checkpoint(checkpoint)
    preprocess = Preprocess(meta.preprocess)
    paths = graph_paths(onnx_path)
    calib_spec = opts.data or meta.extra.get("train_data")
    if int8 and not calib_spec:
        raise InvalidInputError("INT8 needs real calibration images: pass --calib-data SPEC (e.g. the training split)")
    summary: dict[str, Any] = {"graphs": {}}

    log(f"export {checkpoint} -> {paths['fp32']}")
    export_onnx(model, meta, paths["fp32"])
    summary["graphs"]["fp32"] = str(paths["fp32"])

    calibration = None
    if calib_spec:
        calib_set = load_data_spec(calib_spec)  # images only: its labels need not be the model's
        calibration = calibration_set(calib_set, preprocess, opts.images, opts.seed)
        log(f"calibration: {calibration.manifest['count']} images of {calib_spec} (seed {opts.seed})")
    if verify_data:
        verify = calibration_set(load_data_spec(verify_data), preprocess, verify_images, seed=1).images
        verified_on = f"{len(verify)} images of {verify_data}"
    elif calibration is not None:
        verify, verified_on = calibration.images[:verify_images], f"{min(verify_images, len(calibration.images))} calibration images"
    else:
        size = meta.preprocess.input_size
        verify = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
        verified_on = "4 random inputs (no image data given: pass --verify-data for real images)"
    check = compare_with_eager(paths["fp32"], model, verify)
    del model  # the graph conversions below hold several copies of the graph: free the torch one
    gc.collect()
    summary["fp32_check"] = {**check, "on": verified_on, "tolerance": tolerance}
    log(f"FP32 graph vs eager on {verified_on}: max |dlogit| {check['max_abs']:.2e}, mean {check['mean_abs']:.2e}")
    if check["max_abs"] > tolerance:
        raise ExportError(f"{paths['fp32']}: max |logit difference| {check['max_abs']:.3g} to eager exceeds {tolerance}")

    if fp16:
        report = convert_fp16(paths["fp32"], paths["fp16"], calibration, reference_images=opts.fp16_reference_images)
        summary["graphs"]["fp16"], summary["fp16"] = str(paths["fp16"]), report
        log(f"FP16 graph -> {paths['fp16']}: {report['fp16_nodes']} of {report['compute_nodes']} compute nodes in "
            f"FP16, kept FP32: {report['kept_fp32'] or 'none'}; I/O {report['io']}")
    if int8 and "tensorrt" in int8_targets:
        report = quantize_int8(paths["fp32"], paths["int8"], calibration, method=opts.method,
                               high_precision=opts.int8_high_precision, quantize_depthwise=opts.quantize_depthwise)
        summary["graphs"]["int8"], summary["int8"] = str(paths["int8"]), report
        log(f"INT8 graph -> {paths['int8']}: {report['quantize_nodes']} Q / {report['dequantize_nodes']} DQ nodes, "
            f"quantised {report['quantized_compute']}, {report['per_channel_weights']} per-channel weights, "
            f"symmetric, no int32 bias")
    if int8 and "cpu" in int8_targets:
        path = graph_paths(onnx_path, int8_target="cpu")["int8"]
        report = quantize_int8_cpu(paths["fp32"], path, calibration, method=opts.method)
        summary["graphs"]["int8-cpu"], summary["int8-cpu"] = str(path), report
        log(f"CPU INT8 graph -> {path}: {report['quantize_nodes']} Q / {report['dequantize_nodes']} DQ nodes, "
            f"integer {report['integer_compute']}, float {report['float_compute']}")
    return summary
