"""``lcie-fast export``, ``lcie-fast parity`` and ``lcie-fast build-engine``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputNotFoundError
from ._options import add_allow_host_code


def _calibration(args: argparse.Namespace):
    from ..deploy.pipeline import CalibrationOptions

    return CalibrationOptions(data=args.calib_data, images=args.calib_images, seed=args.calib_seed,
                              method=args.calib_method, int8_high_precision=args.int8_high_precision,
                              quantize_depthwise=args.int8_depthwise,
                              fp16_reference_images=args.fp16_reference_images)


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-data", metavar="SPEC", help="calibration images (default: the checkpoint's training data)")
    p.add_argument("--calib-images", type=int, default=64,
                   help="calibration images (INT8; FP16's range check uses the first 16). Calibration keeps "
                        "activations of every image in memory: lower it for large models")
    p.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration draw")
    p.add_argument("--calib-method", choices=["max", "entropy", "percentile"], default="max",
                   help="INT8 activation calibration (percentile: --target cpu only)")
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
                                   "(ModelOpt PTQ, explicit Q/DQ) graphs TensorRT compiles; with --target cpu "
                                   "an INT8 graph for ONNX Runtime's CPU kernels instead (or as well).")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True, help="the FP32 graph, e.g. model.onnx (siblings: .fp16/.int8)")
    p.add_argument("--fp16", action="store_true", help="also write the FP16 graph")
    p.add_argument("--int8", action="store_true", help="also write the INT8 graph (needs calibration images)")
    p.add_argument("--target", nargs="+", choices=["tensorrt", "cpu"], default=["tensorrt"],
                   help="who the INT8 graph is for: tensorrt (ModelOpt Q/DQ, model.int8.onnx) and / or cpu "
                        "(ONNX Runtime static quantisation, model.int8-cpu.onnx; the onnxruntime backend runs "
                        "it in place of model.int8.onnx)")
    _add_calibration_args(p)
    p.add_argument("--verify-data", metavar="SPEC", help="real images to compare the FP32 graph with eager on")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |logit difference| of the FP32 graph")
    p.add_argument("--aoti", action="store_true",
                   help="also write an AOTInductor package model.pt2 beside the graph (torch.export + AOTInductor; "
                        "runs without the model's code; minutes of compilation)")
    p.add_argument("--aoti-device", default="cpu", help="device the package is compiled for: cpu or cuda[:N]")
    p.add_argument("--aoti-precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--aoti-max-batch", type=int, default=64, help="largest batch of the package (dynamic from 1)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ..deploy.pipeline import export_graphs
    from ..io import write_json

    summary = export_graphs(args.checkpoint, args.output, fp16=args.fp16, int8=args.int8,
                            int8_targets=tuple(dict.fromkeys(args.target)), calibration=_calibration(args),
                            verify_data=args.verify_data, tolerance=args.tolerance)
    if args.aoti:
        from ..deploy.aoti import export_aoti
        from ..models.checkpoint import model_from_checkpoint

        package = Path(args.output).with_suffix(".pt2")
        model, meta = model_from_checkpoint(args.checkpoint)
        summary["aoti"] = {"path": str(package), **export_aoti(model, meta, package, device=args.aoti_device,
                                                               precision=args.aoti_precision,
                                                               max_batch=args.aoti_max_batch)}
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
    p.add_argument("--aoti", nargs="*", default=[], metavar="PT2", help="AOTInductor packages to score too")
    add_allow_host_code(p)
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


def _run_parity(args: argparse.Namespace) -> int:
    from ..deploy.parity import check_parity, markdown_table, parse_gates

    out_dir = Path(args.output) if args.output else Path(args.checkpoint).parent / "parity"
    report = check_parity(args.checkpoint, args.data, out_dir, graphs=args.graphs, calibration=_calibration(args),
                          batch_size=args.batch_size, max_images=args.max_images, device=args.device,
                          engines=args.engines, aoti=args.aoti, allow_host_code=args.allow_host_code,
                          bf16=args.with_bf16, gates=parse_gates(args.gate), draws=args.bootstrap,
                          progress=not args.no_progress)
    print(markdown_table(report))
    print(f"written: {', '.join(str(p) for p in report['written'].values())}")
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
    p.add_argument("onnx", help="the FP32 graph model.onnx (its .fp16/.int8 siblings are found beside it), or a "
                                "DeepStream graph lcie_ds.onnx (compiled as given, for export-deepstream --engine)")
    p.add_argument("--profile", required=True, help="engines/profiles/<name>.yaml")
    p.add_argument("--cache-dir", default="engines/build")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even when a cached bundle exists")
    p.set_defaults(func=_run_build_engine)


def _run_build_engine(args: argparse.Namespace) -> int:
    from ..artifacts import graph_paths, is_deepstream_io, read_onnx_io
    from ..deploy.tensorrt import build_engine, load_profile

    profile = load_profile(args.profile)
    # a DeepStream graph (lcie_ds.onnx) is compiled as given; model.onnx picks the profile's sibling
    onnx_path = Path(args.onnx) if is_deepstream_io(read_onnx_io(args.onnx)) else graph_paths(args.onnx)[profile.precision]
    if not onnx_path.is_file():
        raise InputNotFoundError(f"{onnx_path} not found: export it with lcie-fast export --{profile.precision}")
    engine = build_engine(onnx_path, profile, cache_dir=args.cache_dir, device=args.device, force=args.force)
    print(f"engine bundle: {engine} (+ {engine.name}.json)")
    return 0
