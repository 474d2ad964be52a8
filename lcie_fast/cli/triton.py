"""``lcie-fast export-triton`` and ``lcie-fast check-triton``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._options import unwind_on_sigterm


def add_export_triton_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-triton", help="write a Triton Inference Server model repository from graphs and engines",
                       description="One model folder per artefact (ONNX graphs served by ONNX Runtime; TensorRT "
                                   "bundles of one graph for several GPUs in one folder, mapped by compute capability) "
                                   "with config.pbtxt, labels.txt and lcie_metadata.json; the folders are checked "
                                   "with check-triton before they are moved into the repository.")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="ONNX graphs (lcie-fast export) and/or engine bundles (.engine + sidecar, lcie-fast build-engine)")
    p.add_argument("-o", "--output", required=True, metavar="REPO", help="the model repository folder")
    p.add_argument("--name", help="prefix of the model names (default lcie: lcie_onnx_fp16, lcie_trt_int8 ...)")
    p.add_argument("--max-batch", type=int, metavar="N",
                   help="max_batch_size (default: the engines' profile max batch, or 64 for ONNX graphs)")
    p.add_argument("--preferred", type=int, nargs="+", default=[], metavar="N",
                   help="preferred batch sizes of the dynamic batcher (each at most --max-batch)")
    p.add_argument("--queue-delay-us", type=int, default=100, metavar="US",
                   help="how long the dynamic batcher waits to fill a batch (microseconds)")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances per device")
    p.add_argument("--kind", choices=["gpu", "cpu"], default="gpu", help="instance kind (cpu: ONNX graphs only)")
    p.add_argument("--ort-trt", choices=["fp16", "int8"],
                   help="run ONNX graphs with ONNX Runtime's TensorRT execution provider (int8: model.int8.onnx only)")
    p.add_argument("--with-probs", action="store_true",
                   help="also serve probs = sigmoid(logits), and attach the labels to it")
    p.add_argument("--thresholds", metavar="FILE", help="per-label thresholds recorded in lcie_metadata.json for clients")
    p.add_argument("--overwrite", action="store_true", help="replace model folders of the same name")
    p.set_defaults(func=_run_export_triton)


def _run_export_triton(args: argparse.Namespace) -> int:
    from ..deploy.triton import export_triton
    from ..deploy.triton_check import format_check

    unwind_on_sigterm()  # a kill removes the staging folders as Ctrl-C does
    report = export_triton(args.models, args.output, name=args.name, max_batch=args.max_batch, preferred=args.preferred,
                           queue_delay_us=args.queue_delay_us, instances=args.instances, kind=args.kind,
                           ort_trt=args.ort_trt, with_probs=args.with_probs, thresholds=args.thresholds,
                           overwrite=args.overwrite)
    print(f"written to {report['repository']}:")
    print(_tree(Path(report["repository"]), report["models"]))
    print()
    print(format_check(report["check"]))
    for note in report["notes"]:
        print(f"note: {note}")
    return 0


def _tree(repo: Path, models: list[dict[str, Any]]) -> str:
    """The files written, one model folder after the other, with their sizes."""
    lines = []
    for model in models:
        lines.append(f"  {model['name']}/  ({model['kind']} {model['precision']}, max batch {model['max_batch_size']})")
        for file in model["files"]:
            relative = file.split("/", 1)[1]
            lines.append(f"    {relative}  ({_size((repo / file).stat().st_size)})")
    return "\n".join(lines)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def add_check_triton_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-triton", help="check a Triton model repository (configs, files, dims, labels, batch)",
                       description="Parse every config.pbtxt with Triton's own schema and check names, version "
                                   "folders, model files, dims and data types against the ONNX graph or the engine "
                                   "sidecars, label files, lcie_metadata.json and batch sizes against engine "
                                   "profiles. Exit 1 on any problem.")
    p.add_argument("repo", metavar="REPO", help="the model repository folder")
    p.add_argument("--json", action="store_true", help="print the JSON view of each config and the problems")
    p.set_defaults(func=_run_check_triton)


def _run_check_triton(args: argparse.Namespace) -> int:
    from ..deploy.triton_check import check_triton, format_check

    result = check_triton(args.repo)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_check(result))
    if result["problems"]:
        if args.json:  # the table already lists them; the JSON reader may only watch stderr
            print(f"check-triton: {len(result['problems'])} problem(s) in {args.repo}", file=sys.stderr)
        return 1
    return 0
