"""``lcie-fast bench``: parse, call :func:`lcie_fast.benchmark.run_bench`, write and print the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import benchmark
from ._options import add_allow_host_code


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput of every backend that can run, against eager FP32",
                       description=benchmark.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a preset (random weights), a checkpoint, an ONNX graph, an engine bundle or an AOTInductor package")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 16 64 on a GPU, 1 8 on the CPU")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--reps", type=int, default=10, help="timed calls per backend and batch, interleaved (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per backend and batch first (default 2)")
    p.add_argument("--noise-bound", type=float, default=benchmark.NOISE_BOUND,
                   help="a row whose (p75-p25)/median exceeds this is timed again, then marked noisy "
                        f"(default {benchmark.NOISE_BOUND})")
    p.add_argument("--no-memory", action="store_true",
                   help="skip peak memory per backend (on the CPU: one fresh process per backend)")
    p.add_argument("--onnx", metavar="MODEL_ONNX", help="also run these graphs (model.onnx and its .fp16/.int8 siblings)")
    p.add_argument("--engines", nargs="*", default=[], help="also run these TensorRT bundles")
    p.add_argument("--aoti", nargs="*", default=[], metavar="PT2", help="also run these AOTInductor packages")
    add_allow_host_code(p)
    p.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compilation)")
    p.add_argument("--data", help="a folder of images: decode alone and end-to-end tagging vs model-only")
    p.add_argument("--workers", type=int, help="decoder threads for --data")
    p.add_argument("--num-classes", type=int, help="labels of a preset built with random weights")
    p.add_argument("--output", default="bench_out", help="folder for bench.md, bench.json, bench.png")
    p.set_defaults(func=_run_bench_command)


def _run_bench_command(args: argparse.Namespace) -> int:
    import torch

    from ..benchmark import bar_chart, markdown, run_bench
    from ..io import write_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch_sizes = args.batch_sizes or ([1, 16, 64] if device == "cuda" else [1, 8])
    report = run_bench(args.model, batch_sizes=batch_sizes, device=device, reps=args.reps, onnx=args.onnx,
                       engines=args.engines, data=args.data, compile_=args.compile, num_classes=args.num_classes,
                       workers=args.workers, warmup=args.warmup, noise_bound=args.noise_bound,
                       memory=not args.no_memory, aoti=args.aoti, allow_host_code=args.allow_host_code)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(markdown(report))
    write_json(report, out / "bench.json")
    bar_chart(report, out / "bench.png")
    print(markdown(report))
    print(f"written: {out / 'bench.md'}, {out / 'bench.json'}, {out / 'bench.png'}")
    return 0
