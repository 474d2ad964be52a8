"""Fast ops against their references at the presets' shapes, with the roofline of the same device.

For every preset (lcie_r101_448, lcie_r101_576, lcie_effl0_448; shapes read from the backbone's
``feature_info`` by :func:`lcie_fast.ops.shapes.op_shapes`) and batch (1, 16, 64):

- downsample_concat: ref / triton / cuda; achieved GB/s = (input bytes the op must read + output
  bytes) / time, against the measured device-copy bandwidth;
- the fused key/value (+ spatial) GEMM vs the seven separate projections; achieved TFLOP/s
  against a large FP16 GEMM measured here;
- attention (decoder: 80 labels x h*w tokens, 4 heads of 896; encoder: 80 x 80, heads of 945):
  ref (PyTorch SDPA) / triton.

Every fast op is first checked against its reference on the same inputs. Median of ``--reps``
timed runs after warm-up, with device synchronisation (CUDA events on a GPU). Prints a Markdown
table and writes JSON. On a machine without a GPU it times the reference paths and the fused
GEMM on the CPU and lists why the kernels cannot run.

    python benchmarks/bench_ops.py --output bench_ops.json            # GPU: fp16, channels-last
    python benchmarks/bench_ops.py --device cpu --batches 1 --reps 3   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

PRESETS = ("lcie_r101_448", "lcie_r101_576", "lcie_effl0_448")


def timer(device: torch.device, reps: int, warmup: int = 3) -> Callable[[Callable[[], object]], float]:
    """Median seconds of ``fn`` over ``reps`` runs, synchronised."""

    def run(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return run


def roofline(device: torch.device, dtype: torch.dtype, time_it) -> dict[str, float]:
    """Measured device-copy bandwidth (GB/s) and large-GEMM rate (TFLOP/s) in ``dtype``."""
    n = (1 << 28) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = time_it(lambda: dst.copy_(src))
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    gemm_s = time_it(lambda: a @ b)
    return {"copy_GBps": 2 * n / copy_s / 1e9, "gemm_TFLOPs": 2 * size**3 / gemm_s / 1e12}


def _touched(size: int, out: int) -> int:
    """How many of ``size`` input rows bilinear sampling down to ``out`` rows reads."""
    if size == out:
        return size
    scale = size / out
    return len({min(max(int(max((o + 0.5) * scale - 0.5, 0.0)) + k, 0), size - 1) for o in range(out) for k in (0, 1)})


def touched_input_bytes(levels, out_hw: tuple[int, int], batch: int, itemsize: int) -> int:
    """Bytes of the input pixels bilinear sampling reads (each unique pixel once) from
    ``levels`` = ((C, H, W), ...) down to ``out_hw``."""
    return sum(batch * c * _touched(h, out_hw[0]) * _touched(w, out_hw[1]) * itemsize for c, h, w in levels)


def check(name: str, fast: torch.Tensor, ref: torch.Tensor, results: list) -> None:
    err = (fast.float() - ref.float()).abs().max().item()
    results.append({"check": name, "max_abs_err": err})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None, help="default fp16 on GPU, fp32 on CPU")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--output", default="bench_ops.json")
    args = parser.parse_args()

    from lcie_fast import create_model, ops
    from lcie_fast.ops.shapes import op_shapes

    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    time_it = timer(device, args.reps)
    peak = roofline(device, dtype, time_it)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows, checks, skipped = [], [], {}
    torch.manual_seed(0)
    with torch.no_grad():
        for preset in args.presets:
            with torch.device("meta"):  # the shapes only: no weights, no memory
                shapes = op_shapes(create_model(preset))
            levels, d, tokens_hw = shapes.levels, shapes.dim, shapes.tokens
            heads, classes = shapes.num_heads, shapes.num_classes
            for batch in args.batches:
                maps = [torch.randn(batch, c, h, w, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
                        for c, h, w in levels]
                ref_tokens, _ = ops.downsample_concat(*maps, impl="ref")
                moved = (touched_input_bytes(levels, levels[-1][1:], batch, maps[0].element_size())
                         + ref_tokens.numel() * ref_tokens.element_size())
                for impl in ("ref", "triton", "cuda"):
                    reasons = ops.DOWNSAMPLE_CONCAT.not_supported_reasons(impl, *maps)
                    if reasons:
                        skipped[f"downsample_concat/{impl}"] = reasons
                        continue
                    if impl != "ref":
                        check(f"downsample_concat {impl} {preset} b{batch}", ops.downsample_concat(*maps, impl=impl)[0],
                              ref_tokens, checks)
                    seconds = time_it(lambda impl=impl: ops.downsample_concat(*maps, impl=impl))
                    rows.append({"op": "downsample_concat", "impl": impl, "preset": preset, "batch": batch,
                                 "ms": seconds * 1e3, "GBps": moved / seconds / 1e9,
                                 "of_peak": moved / seconds / 1e9 / peak["copy_GBps"]})

                # the decoder's K/V projections (3 layers) + the spatial conv: 7 GEMMs vs 1
                tokens = ref_tokens.reshape(batch * tokens_hw, d)
                weights = [torch.randn(d, d, device=device, dtype=dtype) * d**-0.5 for _ in range(6)]
                spatial = torch.randn(classes, d, device=device, dtype=dtype) * d**-0.5
                stacked = torch.cat(weights + [spatial])
                flops = 2 * tokens.shape[0] * stacked.shape[0] * d
                separate = time_it(lambda: [F.linear(tokens, w) for w in weights + [spatial]])
                fused = time_it(lambda: F.linear(tokens, stacked))
                check(f"fused KV GEMM {preset} b{batch}", F.linear(tokens, stacked)[:, :d], F.linear(tokens, weights[0]), checks)
                for impl, seconds in (("7 separate GEMMs", separate), ("1 fused GEMM", fused)):
                    rows.append({"op": "kv_projections", "impl": impl, "preset": preset, "batch": batch, "ms": seconds * 1e3,
                                 "TFLOPs": flops / seconds / 1e12, "of_peak": flops / seconds / 1e12 / peak["gemm_TFLOPs"]})

                for op, (lq, lk, dh) in (("decoder_attention", shapes.attention("decoder")),
                                         ("encoder_attention", shapes.attention("encoder"))):
                    q = torch.randn(batch, heads, lq, dh, device=device, dtype=dtype)
                    k = torch.randn(batch, heads, lk, dh, device=device, dtype=dtype)
                    v = torch.randn(batch, heads, lk, dh, device=device, dtype=dtype)
                    ref = ops.attention(q, k, v, impl="ref")
                    flops = 4 * batch * heads * lq * lk * dh
                    for impl in ("ref", "triton"):
                        reasons = ops.ATTENTION.not_supported_reasons(impl, q, k, v, 0.0)
                        if reasons:
                            skipped[f"attention/{impl}"] = reasons
                            continue
                        if impl != "ref":
                            check(f"{op} {impl} {preset} b{batch}", ops.attention(q, k, v, impl=impl), ref, checks)
                        seconds = time_it(lambda impl=impl: ops.attention(q, k, v, impl=impl))
                        rows.append({"op": op, "impl": impl, "preset": preset, "batch": batch, "ms": seconds * 1e3,
                                     "TFLOPs": flops / seconds / 1e12})

    header = (f"device {name}, {dtype}, channels-last inputs, torch {torch.__version__}; roofline: copy "
              f"{peak['copy_GBps']:.0f} GB/s, GEMM {peak['gemm_TFLOPs']:.1f} TFLOP/s; median of {args.reps}")
    lines = [header, "", "| op | impl | preset | batch | ms | GB/s or TFLOP/s | of roofline |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = f"{r['GBps']:.0f} GB/s" if "GBps" in r else f"{r['TFLOPs']:.2f} TFLOP/s"
        share = f"{100 * r['of_peak']:.0f}%" if "of_peak" in r else "-"
        lines.append(f"| {r['op']} | {r['impl']} | {r['preset']} | {r['batch']} | {r['ms']:.3f} | {rate} | {share} |")
    lines.append("")
    lines += [f"check {c['check']}: max |err| {c['max_abs_err']:.2e}" for c in checks]
    lines += [f"not run: {k}: {'; '.join(v)}" for k, v in skipped.items()]
    print("\n".join(lines))
    with open(args.output, "w") as handle:
        json.dump({"device": name, "dtype": str(dtype), "torch": torch.__version__, "roofline": peak, "rows": rows,
                   "checks": checks, "skipped": skipped}, handle, indent=2)


if __name__ == "__main__":
    main()
