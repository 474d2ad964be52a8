"""One prepared script for the GPU checks of the training, deployment, kernels and tagging issues.

Parity first, then timings, every variant side by side in one process, then one table:

1. fast ops (Triton / CUDA) against their references at the presets' shapes, and their speed
   against the roofline measured on this GPU (``bench_ops.py``);
2. the whole model (default ``lcie_r101_448``) at batch 1/16/64: eager FP32, AMP FP16
   channels-last, AMP FP16 + fast ops, torch.compile FP16, torch.compile + CUDA graphs (the
   library's list, ``lcie_fast.runtime.variants.backend_variants``):
   logit parity against eager FP32, images/s, latency p50/p99 at batch 1, peak memory;
3. training steps: AMP + channels-last against FP32 contiguous (images/s, peak memory);
4. end-to-end tagging from JPEG files against model-only.

    PYTHONPATH=. python benchmarks/gpu_report.py --output gpu_report        # ~8 min on an H100
    PYTHONPATH=. python benchmarks/gpu_report.py --device cpu --preset lcie_tiny --quick   # smoke run

Writes ``gpu_report.md`` and ``gpu_report.json`` to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def timed(fn, device: torch.device, reps: int, warmup: int = 3) -> list[float]:
    """Seconds of each timed call, synchronised (lcie_fast.timing.time_calls)."""
    from lcie_fast.timing import time_calls

    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return time_calls(fn, synchronize, reps, warmup)


def model_section(args, device, lines, report) -> None:
    from lcie_fast import create_model
    from lcie_fast.metadata import metadata_for
    from lcie_fast.runtime.variants import backend_variants

    torch.manual_seed(0)
    model = create_model(args.preset)
    meta = metadata_for(model)
    size = meta.preprocess.input_size
    gpu = device.type == "cuda"
    # the library's one list of backends (eager FP32 channels-last first: the baseline)
    variants = [(v.label, v.build) for v in backend_variants(model, meta, str(device), compile_=True,
                                                             memory_formats=True, bf16=not gpu)]
    images = torch.randn(max(args.batches), 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    parity_images = images[:8]
    rows, reference = [], None
    for name, build in variants:
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        backend = build()
        logits = backend.infer(parity_images).float().cpu()
        if reference is None:
            reference = logits
        cosine = torch.nn.functional.cosine_similarity(logits, reference, dim=1)
        parity = {"max_abs": (logits - reference).abs().max().item(), "min_cosine": cosine.min().item()}
        for batch in args.batches:
            if "compile" in name and batch not in args.compile_batches:
                continue
            x = images[:batch].contiguous(memory_format=torch.channels_last)
            times = timed(lambda: backend.infer(x), device, args.reps)
            row = {"variant": name, "batch": batch, "images_per_s": batch / statistics.median(times),
                   "p50_ms": 1e3 * float(np.percentile(times, 50)), "p99_ms": 1e3 * float(np.percentile(times, 99)),
                   "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if gpu else float("nan"), **parity}
            rows.append(row)
            print(f"  {name:40s} b{batch:<3d} {row['images_per_s']:9.1f} img/s", file=sys.stderr, flush=True)
        backend.close()
    base = {r["batch"]: r["images_per_s"] for r in rows if r["variant"] == variants[0][0]}
    lines += [f"## {args.preset}: whole model ({size}x{size}), parity on 8 random inputs vs {variants[0][0]}", "",
              "| variant | batch | images/s | x eager fp32 | p50 / p99 ms | peak MiB | max abs dlogit | min cosine |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['batch']} | {r['images_per_s']:.1f} | {r['images_per_s'] / base[r['batch']]:.2f} | "
                     f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {r['peak_mib']:.0f} | {r['max_abs']:.2e} | {r['min_cosine']:.6f} |")
    lines.append("")
    report["model"] = rows


def training_section(args, device, lines, report) -> None:
    from lcie_fast import create_model
    from lcie_fast.models.losses import LCIELoss

    rows = []
    gpu = device.type == "cuda"
    for name, amp, channels_last in (("fp32 contiguous", None, False),
                                     ("AMP " + ("bf16" if gpu and torch.cuda.is_bf16_supported() else "fp16")
                                      + " channels-last", "amp", True)):
        torch.manual_seed(0)
        model = create_model(args.preset).to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        size = model.img_size
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        dtype = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float16
        images = torch.randn(args.train_batch, 3, size, size, device=device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = (torch.rand(args.train_batch, model.num_classes, device=device) < 0.05).float()
        criterion = LCIELoss()
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=amp is not None):
                out = model(images)
            criterion(out, targets).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = timed(step, device, args.train_steps, warmup=5)
        rows.append({"variant": name, "steps": args.train_steps, "batch": args.train_batch,
                     "images_per_s": args.train_batch * len(times) / sum(times),
                     "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if gpu else float("nan")})
        model = optimizer = step = None  # free this variant's weights before the next is built
    lines += [f"## training steps: {args.preset}, batch {args.train_batch}, {args.train_steps} timed steps (SGD)", "",
              "| variant | images/s | x fp32 | peak MiB |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['images_per_s']:.1f} | {r['images_per_s'] / rows[0]['images_per_s']:.2f} | "
                     f"{r['peak_mib']:.0f} |")
    lines.append("")
    report["training"] = rows


def tagging_section(args, device, lines, report, out: Path) -> None:
    from lcie_fast import create_model
    from lcie_fast.data.synthetic import make_synthetic_set
    from lcie_fast.demo import find_traffic5
    from lcie_fast.inputs import expand_inputs
    from lcie_fast.metadata import metadata_for
    from lcie_fast.runtime import open_backend
    from lcie_fast.tagger import Tagger

    traffic5 = find_traffic5()
    folder = traffic5 / "valid" / "images" if traffic5 else make_synthetic_set(out / "jpegs", splits={"set": 256},
                                                                                 size=640) / "set" / "images"
    files = list(expand_inputs(str(folder)))[: args.tag_images]
    torch.manual_seed(0)
    model = create_model(args.preset)
    precision = "fp16" if device.type == "cuda" else "fp32"
    tagger = Tagger(open_backend(model, "eager", str(device), meta=metadata_for(model), precision=precision))
    batch = 64 if device.type == "cuda" else 8
    list(tagger.tag(files[:batch], batch_size=batch, decoder="threads"))  # warm-up
    start = time.perf_counter()
    records = list(tagger.tag(files, batch_size=batch, decoder="threads"))
    end_to_end = len(records) / (time.perf_counter() - start)
    images = torch.stack([tagger.preprocess.load(f) for f in files[:batch]])
    times = timed(lambda: tagger.logits(images), device, args.reps)
    model_only = batch / statistics.median(times)
    row = {"images": len(files), "source": str(folder), "backend": tagger.backend.label, "batch": batch,
           "end_to_end_images_per_s": end_to_end, "model_only_images_per_s": model_only}
    lines += ["## end-to-end tagging from JPEG files", "",
              f"{len(files)} JPEGs from {folder}, {tagger.backend.label}, batch {batch}, decoder threads: "
              f"end-to-end {end_to_end:.1f} img/s, model-only {model_only:.1f} img/s "
              f"(ratio {end_to_end / model_only:.2f}).", ""]
    report["tagging"] = row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="lcie_r101_448")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--compile-batches", type=int, nargs="+", default=[1, 64],
                        help="torch.compile recompiles per batch size: time these only")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--tag-images", type=int, default=483)
    parser.add_argument("--skip", nargs="*", default=[], choices=["ops", "model", "training", "tagging"])
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--output", default="gpu_report")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.compile_batches, args.reps = [1, 4], [4], 3
        args.train_steps, args.train_batch, args.tag_images = 3, 4, 16
    device = torch.device(args.device)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"# GPU report: {name}, torch {torch.__version__}", ""]
    report: dict = {"device": name, "torch": torch.__version__, "args": vars(args)}
    sections = [("model", model_section), ("training", training_section)]
    if "ops" not in args.skip:
        command = [sys.executable, str(HERE / "bench_ops.py"), "--device", args.device, "--output", str(out / "ops.json"),
                   "--reps", str(args.reps), "--batches", *map(str, args.batches)]
        if args.quick:
            command += ["--presets", "lcie_effl0_448"]
        result = subprocess.run(command, capture_output=True, text=True)
        lines += ["## fast ops", "", result.stdout.strip() or result.stderr[-3000:], ""]
        if (out / "ops.json").is_file():
            report["ops"] = json.loads((out / "ops.json").read_text())
    for key, section in sections:
        if key not in args.skip:
            section(args, device, lines, report)
    if "tagging" not in args.skip:
        tagging_section(args, device, lines, report, out)
    (out / "gpu_report.md").write_text("\n".join(lines) + "\n")
    (out / "gpu_report.json").write_text(json.dumps(report, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
