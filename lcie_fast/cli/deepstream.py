"""``lcie-fast export-deepstream``: a bundle for DeepStream's nvinfer."""

from __future__ import annotations

import argparse

from ..errors import InvalidInputError
from ._options import unwind_on_sigterm


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = (int(width), int(height or width))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W or WxH in pixels, got {text!r}") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return size


def _class_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", ";").split(";") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class ids like 0;2 or 0,2, got {text!r}") from None


def add_export_deepstream_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-deepstream", help="write a DeepStream (nvinfer) bundle: graph, config, labels, parser, probe",
                       description="Write a folder that drops into a DeepStream pipeline: lcie_ds.onnx (normalisation "
                                   "and sigmoid inside), config_infer_lcie.txt (documented nvinfer keys only), "
                                   "labels.txt, the C++ multi-label parser, a pyds probe and a README.")
    p.add_argument("model", help="an exported FP32 model.onnx (the precision's sibling is used) or a .pt checkpoint")
    p.add_argument("-o", "--output", required=True, help="bundle folder")
    p.add_argument("--profile", metavar="YAML", help="take --precision and --batch-size (its max batch) from an engine "
                                                     "profile, e.g. engines/profiles/edge-int8.yaml")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="default fp16 (or the profile's)")
    p.add_argument("--batch-size", type=int, help="nvinfer batch-size: frames, or objects in secondary mode (default 8, "
                                                  "or the profile's max batch)")
    p.add_argument("--input-scale", type=int, choices=[1, 2], default=2,
                   help="2: nvinfer scales frames to twice the model's size and the graph halves them with the model's "
                        "own antialiased filter (closer to training; nvinfer's scaler does not antialias); 1: nvinfer "
                        "scales to the model's size (super-sampling)")
    p.add_argument("--mode", choices=["primary", "secondary"], default="primary",
                   help="primary: whole frames; secondary: objects of an upstream detector")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="one score threshold for every label (default 0.5)")
    group.add_argument("--thresholds", metavar="FILE", help="per-label thresholds (lcie-fast eval --fit-thresholds JSON, "
                                                            "{label: t} JSON, or one number per line)")
    p.add_argument("--top-k", type=int, help="at most K tags per frame or object")
    p.add_argument("--engine", metavar="BUNDLE", help="an engine bundle built from this lcie_ds.onnx to ship with it "
                                                      "(default: nvinfer builds one on first start)")
    p.add_argument("--parser", choices=["cpp", "tensor-meta"], default="cpp",
                   help="cpp: the multi-label parser library (classifier metadata); tensor-meta: raw scores as "
                        "tensor metadata, thresholds applied by the probe")
    p.add_argument("--gie-id", type=int, help="gie-unique-id of this nvinfer (default 1 primary, 2 secondary)")
    p.add_argument("--operate-on-gie-id", type=int, default=1, help="secondary mode: the detector's gie-unique-id")
    p.add_argument("--operate-on-class-ids", type=_class_ids, default=[], metavar="IDS",
                   help="secondary mode: detector classes to classify, e.g. 0;2 (default all)")
    p.add_argument("--min-object-size", type=_size, default=(16, 16), metavar="WxH",
                   help="secondary mode: smaller objects are not classified (default 16x16)")
    p.add_argument("--gpu-id", type=int, default=0)
    p.add_argument("--calib-data", metavar="SPEC", help="calibration images when an INT8 graph is exported from a checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(func=_run_export_deepstream)


def _run_export_deepstream(args: argparse.Namespace) -> int:
    from ..deploy.deepstream.bundle import export_deepstream

    unwind_on_sigterm()  # a kill removes the staging folder as Ctrl-C does
    if args.mode == "primary" and (args.operate_on_class_ids or args.min_object_size != (16, 16)):
        raise InvalidInputError("--operate-on-class-ids and --min-object-size apply to --mode secondary only")
    precision, batch_size = args.precision, args.batch_size
    if args.profile:
        from ..deploy.tensorrt import load_profile

        profile = load_profile(args.profile)
        if precision and precision != profile.precision:
            raise InvalidInputError(f"--precision {precision} contradicts profile {args.profile} ({profile.precision})")
        precision = profile.precision
        batch_size = profile.max_batch if batch_size is None else batch_size
    report = export_deepstream(args.model, args.output, precision=precision or "fp16",
                               batch_size=8 if batch_size is None else batch_size,
                               input_scale=args.input_scale, mode=args.mode, threshold=args.threshold,
                               thresholds=args.thresholds, top_k=args.top_k, engine=args.engine, parser=args.parser, gie_id=args.gie_id,
                               operate_on_gie_id=args.operate_on_gie_id, operate_on_class_ids=args.operate_on_class_ids,
                               min_object_size=args.min_object_size, gpu_id=args.gpu_id, calib_data=args.calib_data,
                               overwrite=args.overwrite)
    print(f"DeepStream bundle ({report['precision']}, {report['mode']} mode, parser {report['parser']}) -> {report['folder']}")
    for name in report["files"]:
        print(f"  {name}")
    print(f"next: cd {report['folder']}/parser && make CUDA_VER=<your CUDA>  (see README.md)"
          if report["parser"] == "cpp" else f"next: see {report['folder']}/README.md")
    return 0
