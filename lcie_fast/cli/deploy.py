"""``lcie-fast export``, ``lcie-fast parity`` and ``lcie-fast build-engine``."""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

import numpy as np


def graph_paths(onnx_path: str | Path) -> dict[str, Path]:
    """``model.onnx`` -> its FP16 and INT8 siblings ``model.fp16.onnx``, ``model.int8.onnx``."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.name[:-5] if onnx_path.name.endswith(".onnx") else onnx_path.name
    return {"fp32": onnx_path, "fp16": onnx_path.with_name(f"{stem}.fp16.onnx"),
            "int8": onnx_path.with_name(f"{stem}.int8.onnx")}


def export_graphs(checkpoint: str | Path, onnx_path: str | Path, *, fp16: bool = True, int8: bool = True,
                  calib_data: str | None = None, calib_images: int = 64, calib_seed: int = 0,
                  calib_method: str = "max", int8_high_precision: str = "fp32", quantize_depthwise: bool = False,
                  fp16_reference_images: int = 16, verify_data: str | None = None,
                  verify_images: int = 16, tolerance: float = 1e-4, log=print) -> dict[str, Any]:
    """Export a checkpoint to the FP32 graph and (optionally) its FP16 and INT8 graphs.

    The FP32 graph is compared with eager PyTorch on real images (``verify_data``, else the
    calibration images): :class:`ExportError` when the max |logit difference| exceeds
    ``tolerance``.
    """
    from ..data.datasets import load_data_spec
    from ..data.transforms import Preprocess
    from ..models.checkpoint import model_from_checkpoint
    from .export import ExportError, compare_with_eager, export_onnx
    from .graphs import calibration_set, convert_fp16, quantize_int8

    model, meta = model_from_checkpoint(checkpoint)
    preprocess = Preprocess(meta.preprocess)
    paths = graph_paths(onnx_path)
    calib_spec = calib_data or meta.extra.get("train_data")
    if int8 and not calib_spec:
        raise ValueError("INT8 needs real calibration images: pass --calib-data SPEC (e.g. the training split)")
    summary: dict[str, Any] = {"graphs": {}}

    log(f"export {checkpoint} -> {paths['fp32']}")
    export_onnx(model, meta, paths["fp32"])
    summary["graphs"]["fp32"] = str(paths["fp32"])

    calibration = None
    if calib_spec:
        calib_set = load_data_spec(calib_spec)  # images only: its labels need not be the model's
        calibration = calibration_set(calib_set, preprocess, calib_images, calib_seed)
        log(f"calibration: {calibration.manifest['count']} images of {calib_spec} (seed {calib_seed})")
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
        report = convert_fp16(paths["fp32"], paths["fp16"], calibration, reference_images=fp16_reference_images)
        summary["graphs"]["fp16"], summary["fp16"] = str(paths["fp16"]), report
        log(f"FP16 graph -> {paths['fp16']}: {report['fp16_nodes']} of {report['compute_nodes']} compute nodes in "
            f"FP16, kept FP32: {report['kept_fp32'] or 'none'}; I/O {report['io']}")
    if int8:
        report = quantize_int8(paths["fp32"], paths["int8"], calibration, method=calib_method,
                               high_precision=int8_high_precision, quantize_depthwise=quantize_depthwise)
        summary["graphs"]["int8"], summary["int8"] = str(paths["int8"]), report
        log(f"INT8 graph -> {paths['int8']}: {report['quantize_nodes']} Q / {report['dequantize_nodes']} DQ nodes, "
            f"quantised {report['quantized_compute']}, {report['per_channel_weights']} per-channel weights, "
            f"symmetric, no int32 bias")
    return summary


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-data", metavar="SPEC", help="calibration images (default: the checkpoint's training data)")
    p.add_argument("--calib-images", type=int, default=64,
                   help="calibration images (INT8; FP16's range check uses the first 16). Calibration keeps "
                        "activations of every image in memory: lower it for large models")
    p.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration draw")
    p.add_argument("--calib-method", choices=["max", "entropy"], default="max")
    p.add_argument("--int8-high-precision", choices=["fp32", "fp16"], default="fp32",
                   help="precision of the ops INT8 does not cover")
    p.add_argument("--int8-depthwise", action="store_true",
                   help="also quantise depthwise convolutions (kept in high precision by default)")
    p.add_argument("--fp16-reference-images", type=int, default=16,
                   help="calibration images FP16's range check runs (it keeps every activation: lower it for "
                        "large models)")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (FP32, and FP16 / INT8 graphs)",
                       description="Export the inference path to ONNX (dynamic batch, metadata embedded), check it "
                                   "against eager PyTorch, and build the FP16 (ModelOpt AutoCast) and INT8 "
                                   "(ModelOpt PTQ, explicit Q/DQ) graphs TensorRT compiles.")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True, help="the FP32 graph, e.g. model.onnx (siblings: .fp16/.int8)")
    p.add_argument("--fp16", action="store_true", help="also write the FP16 graph")
    p.add_argument("--int8", action="store_true", help="also write the INT8 graph (needs calibration images)")
    _add_calibration_args(p)
    p.add_argument("--verify-data", metavar="SPEC", help="real images to compare the FP32 graph with eager on")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |logit difference| of the FP32 graph")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ..io import write_json

    summary = export_graphs(args.checkpoint, args.output, fp16=args.fp16, int8=args.int8, calib_data=args.calib_data,
                            calib_images=args.calib_images, calib_seed=args.calib_seed, calib_method=args.calib_method,
                            int8_high_precision=args.int8_high_precision, quantize_depthwise=args.int8_depthwise,
                            fp16_reference_images=args.fp16_reference_images, verify_data=args.verify_data,
                            tolerance=args.tolerance)
    report = Path(args.output).with_suffix(".export.json")
    write_json(summary, report)
    print(f"summary written to {report}")
    return 0


def add_parity_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="accuracy parity of every backend and precision against eager FP32",
                       description="Score eager FP32, the ONNX FP32/FP16/INT8 graphs (ONNX Runtime) and, on a GPU, "
                                   "AMP, torch.compile and TensorRT engines on real images; write Markdown, JSON "
                                   "and a PNG scatter; exit 1 when a gate fails.")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="labelled evaluation images")
    p.add_argument("--output", help="report folder (default: <checkpoint folder>/parity)")
    p.add_argument("--graphs", metavar="ONNX", help="an exported model.onnx with .fp16/.int8 siblings (default: export now)")
    _add_calibration_args(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-images", type=int, default=0, help="score only the first N images (0 = all)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: a GPU when visible")
    p.add_argument("--engines", nargs="*", default=[], metavar="ENGINE", help="TensorRT bundles to score too")
    p.add_argument("--with-bf16", action="store_true", help="also score eager BF16 autocast")
    p.add_argument("--gate", action="append", default=[], metavar="PRECISION.KEY=VALUE",
                   help="override a gate, e.g. int8.max_abs_dmap=0.3, fp16.min_cosine=0.9995 or "
                        "int8.min_agreement=0.98")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="DRAWS",
                   help="resamples of the images for the paired interval of each dmAP (0: none, and then the "
                        "mAP gate is the plain tolerance)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_parity)


def parse_gates(overrides: list[str]) -> dict[str, dict[str, float]]:
    from .parity import DEFAULT_GATES, GATE_KEYS

    gates = {k: dict(v) for k, v in DEFAULT_GATES.items()}
    for text in overrides:
        key, _, value = text.partition("=")
        precision, _, name = key.partition(".")
        if precision not in gates or name not in GATE_KEYS or not value:
            raise ValueError(f"--gate {text!r}: expected PRECISION.KEY=X with KEY in {', '.join(GATE_KEYS)} "
                             f"and PRECISION in {sorted(gates)}")
        gates[precision][name] = float(value)
    return gates


def parity_variants(model, meta, graphs: dict[str, Path], device: str, engines: list[str], with_bf16: bool):
    """Eager FP32 first (the reference), then every other backend that can run here."""
    import copy

    from ..runtime.onnxruntime import OnnxRuntimeBackend
    from ..runtime.torch_backends import CompiledBackend, EagerBackend
    from .parity import Variant

    def eager(precision: str, fast_ops: str = "ref"):
        return lambda: EagerBackend(copy.deepcopy(model), meta, device, precision, fast_ops=fast_ops)

    variants = [Variant(f"eager fp32 ({device})", "fp32", eager("fp32"))]
    variants.append(Variant(f"eager fp32 + fused projections ({device})", "fp32", eager("fp32", "auto")))
    if device.startswith("cuda"):
        variants.append(Variant(f"eager AMP fp16 channels-last ({device})", "fp16", eager("fp16")))
        variants.append(Variant(f"eager AMP fp16 + fast ops ({device})", "fp16", eager("fp16", "auto")))
        variants.append(Variant(f"eager AMP bf16 channels-last ({device})", "bf16", eager("bf16")))
        variants.append(Variant(f"torch.compile fp16 ({device})", "fp16",
                                lambda: CompiledBackend(copy.deepcopy(model), meta, device, "fp16")))
        variants.append(Variant(f"torch.compile + CUDA graphs fp16 ({device})", "fp16",
                                lambda: CompiledBackend(copy.deepcopy(model), meta, device, "fp16", cuda_graphs=True)))
    elif with_bf16:
        variants.append(Variant(f"eager AMP bf16 ({device})", "bf16", eager("bf16")))
    for precision, path in graphs.items():
        if path.is_file():
            variants.append(Variant(f"onnxruntime {precision} graph (cpu)", precision,
                                    lambda path=path: OnnxRuntimeBackend(path)))
    for engine in engines:
        from ..deploy.tensorrt import read_sidecar
        from ..runtime.tensorrt import TensorRTBackend

        precision = read_sidecar(engine)["metadata"]["precision"]
        variants.append(Variant(f"tensorrt {precision} ({Path(engine).parent.name})", precision,
                                lambda engine=engine: TensorRTBackend(engine)))
    return variants


def _run_parity(args: argparse.Namespace) -> int:
    import torch

    from ..data.datasets import load_data_spec
    from ..data.transforms import Preprocess
    from ..models.checkpoint import model_from_checkpoint
    from .parity import markdown_table, run_parity, write_report

    gates = parse_gates(args.gate)
    out_dir = Path(args.output) if args.output else Path(args.checkpoint).parent / "parity"
    if args.graphs:
        graphs = graph_paths(args.graphs)
        missing = [str(p) for p in graphs.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"--graphs {args.graphs}: missing {missing} (create them with lcie-fast export --fp16 --int8)")
    else:
        graphs = graph_paths(out_dir / "graphs" / "model.onnx")
        export_graphs(args.checkpoint, graphs["fp32"], calib_data=args.calib_data, calib_images=args.calib_images,
                      calib_seed=args.calib_seed, calib_method=args.calib_method,
                      int8_high_precision=args.int8_high_precision, quantize_depthwise=args.int8_depthwise,
                      fp16_reference_images=args.fp16_reference_images)
    model, meta = model_from_checkpoint(args.checkpoint)
    data = load_data_spec(args.data, label_names=meta.label_names)
    if args.max_images:
        data = data.subset(range(min(args.max_images, len(data))))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    variants = parity_variants(model, meta, graphs, device, args.engines, args.with_bf16)
    report = run_parity(variants, data, Preprocess(meta.preprocess), batch_size=args.batch_size, gates=gates,
                        progress=not args.no_progress, draws=args.bootstrap)
    paths = write_report(report, out_dir)
    print(markdown_table(report))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    failed = [r.label for r in report["rows"] if not r.passed]
    if failed:
        print(f"parity gate FAILED for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def add_build_engine_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engine", help="build a TensorRT engine bundle from a profile (needs TensorRT and a GPU)",
                       description="Compile an exported graph (the profile's precision picks model.onnx, "
                                   "model.fp16.onnx or model.int8.onnx) into engines/build/<key>/model.engine with "
                                   "its JSON sidecar; reuse the cached bundle when every input is unchanged.")
    p.add_argument("onnx", help="the FP32 graph model.onnx (its .fp16/.int8 siblings are found beside it)")
    p.add_argument("--profile", required=True, help="engines/profiles/<name>.yaml")
    p.add_argument("--cache-dir", default="engines/build")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even when a cached bundle exists")
    p.set_defaults(func=_run_build_engine)


def _run_build_engine(args: argparse.Namespace) -> int:
    from .tensorrt import build_engine, load_profile

    profile = load_profile(args.profile)
    onnx_path = graph_paths(args.onnx)[profile.precision]
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} not found: export it with lcie-fast export --{profile.precision}")
    engine = build_engine(onnx_path, profile, cache_dir=args.cache_dir, device=args.device, force=args.force)
    print(f"engine bundle: {engine} (+ {engine.name}.json)")
    return 0
