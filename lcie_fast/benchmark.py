"""``lcie-fast bench``: throughput of every backend that can run, side by side with eager FP32.

For a model (a preset with random weights, a checkpoint, an ONNX graph or an engine bundle)
and batch sizes: images/s (median and spread over repetitions), latency p50/p99 at batch 1,
peak memory; eager FP32 in the same run and every ratio to it. With ``--data`` (a folder of
images): decoding alone and end-to-end tagging against model-only. Writes Markdown, JSON
and a PNG bar chart, with device, dtype, memory format and versions.

Honest-benchmark rules (STYLE.md 10): warm-up, repetitions, medians, device synchronisation,
every backend measured in the same process and run.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import InputNotFoundError, InvalidInputError
from .runtime.variants import Variant


def time_calls(fn: Callable[[], object], synchronize: Callable[[], None], reps: int, warmup: int = 2) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn`` after ``warmup`` calls, synchronised."""
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def _model_and_meta(model_spec: str, num_classes: int | None):
    """(model or None, metadata, path or None) for a preset name, a checkpoint, or a graph/engine."""
    from .artifacts import artifact_kind, read_artifact_metadata
    from .metadata import metadata_for
    from .models import create_model, list_models

    if model_spec in list_models():
        torch.manual_seed(0)
        model = create_model(model_spec, num_classes=num_classes)
        return model, metadata_for(model), None
    path = Path(model_spec)
    if not path.is_file():
        raise InputNotFoundError(f"{model_spec} is neither a preset ({', '.join(list_models())}) nor a file")
    if artifact_kind(path) != "checkpoint":
        return None, read_artifact_metadata(path), path
    from .models.checkpoint import model_from_checkpoint

    model, meta = model_from_checkpoint(path)
    return model, meta, path


def bench_variants(model, meta, path: Path | None, device: str, onnx: str | None, engines: list[str],
                   compile_: bool) -> list[Variant]:
    """Eager FP32 first (the baseline), then every backend that can run here."""
    from .artifacts import artifact_kind, graph_paths
    from .runtime.variants import backend_variants

    graphs = [path] if path is not None and artifact_kind(path) == "onnx" else []
    if onnx:
        graphs += graph_paths(onnx).values()
    bundles = ([path] if path is not None and artifact_kind(path) == "engine" else []) + list(engines)
    return backend_variants(model, meta, device, graphs=graphs, engines=bundles, compile_=compile_,
                            memory_formats=True)


def _peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_bench(model_spec: str, *, batch_sizes: list[int], device: str | None = None, reps: int = 10,
              onnx: str | None = None, engines: list[str] | None = None, data: str | None = None,
              compile_: bool = False, num_classes: int | None = None, workers: int | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Measure every variant at every batch size; with ``data``, decoding and end-to-end tagging."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, meta, path = _model_and_meta(model_spec, num_classes)
    size = meta.preprocess.input_size
    variants = bench_variants(model, meta, path, device, onnx, engines or [], compile_)
    rows, skipped = [], {}
    for variant in variants:
        try:
            backend = variant.build()
        except Exception as err:  # noqa: BLE001 - a backend that cannot run is reported, not fatal
            skipped[variant.label] = f"{type(err).__name__}: {err}"
            continue
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for batch in batch_sizes:
            if backend.max_batch and batch > backend.max_batch:
                skipped[f"{variant.label} batch {batch}"] = f"over the engine's max batch {backend.max_batch}"
                continue
            images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
            if backend.device.startswith("cuda"):
                images = images.to(backend.device)
            times = time_calls(lambda: backend.infer(images), backend.synchronize, reps)
            rates = [batch / t for t in times]
            row = {"backend": variant.label, "precision": variant.precision, "memory_format": variant.memory_format,
                   "batch": batch, "images_per_s": statistics.median(rates), "images_per_s_min": min(rates),
                   "images_per_s_max": max(rates), "peak_memory_mib": _peak_memory_mib(device)}
            if batch == 1:
                row["latency_p50_ms"] = 1e3 * float(np.percentile(times, 50))
                row["latency_p99_ms"] = 1e3 * float(np.percentile(times, 99))
            rows.append(row)
            if progress:
                print(f"  {variant.label:48s} batch {batch:3d}: {row['images_per_s']:9.1f} img/s", file=sys.stderr)
        backend.close()
    baseline = {r["batch"]: r["images_per_s"] for r in rows if r["backend"] == variants[0].label} if variants else {}
    for row in rows:
        row["x_eager_fp32"] = row["images_per_s"] / baseline[row["batch"]] if row["batch"] in baseline else None
    report: dict[str, Any] = {
        "model": model_spec, "device": _device_name(device), "input_size": size, "reps": reps, "rows": rows,
        "skipped": skipped, "versions": _versions(),
    }
    if data and rows:
        # the pipeline runs the backend that was fastest at the largest batch
        largest = max(r["batch"] for r in rows)
        fastest = max((r for r in rows if r["batch"] == largest), key=lambda r: r["images_per_s"])
        variant = next(v for v in variants if v.label == fastest["backend"])
        report["pipeline"] = _pipeline_bench(variant, data, largest, workers)
    return report


def _pipeline_bench(variant: Variant, data: str, batch_size: int, workers: int | None,
                    passes: int = 3) -> dict[str, Any]:
    """Decoding alone, then model-only and end-to-end tagging of the images under ``data``
    (medians over ``passes`` alternating passes). Model-only includes what the tagger does
    besides decoding: batching, normalisation and the copy to the backend."""
    from .inputs import InputItem, decode_input, expand_inputs
    from .tagger import Tagger

    files = list(expand_inputs(data))
    if not files:
        raise InvalidInputError(f"--data {data}: no images found")
    backend = variant.build()
    tagger = Tagger(backend)
    import concurrent.futures
    import os

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        decoded = list(pool.map(lambda f: decode_input(InputItem(0, f, f), tagger.preprocess)[0], files))
    decode_s = time.perf_counter() - start
    images = torch.stack([d for d in decoded if d is not None])
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    tagger.logits(batches[0])  # warm-up
    backend.synchronize()
    model_rates, end_to_end_rates = [], []
    for _ in range(passes):  # alternate, so both see the same machine state
        start = time.perf_counter()
        for batch in batches:
            tagger.logits(batch)
        backend.synchronize()
        model_rates.append(len(images) / (time.perf_counter() - start))
        start = time.perf_counter()
        records = list(tagger.tag(files, batch_size=batch_size, workers=workers, decoder="threads"))
        end_to_end_rates.append(len(records) / (time.perf_counter() - start))
    model_rate, end_to_end = statistics.median(model_rates), statistics.median(end_to_end_rates)
    return {"images": len(files), "backend": backend.label, "batch_size": batch_size, "workers": workers or os.cpu_count(),
            "passes": passes, "decode_images_per_s": len(files) / decode_s, "model_images_per_s": model_rate,
            "end_to_end_images_per_s": end_to_end, "end_to_end_over_model": end_to_end / model_rate}


def _device_name(device: str) -> str:
    from .cpu import cpu_description

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_description()


def _versions() -> dict[str, str]:
    from .info import versions

    out = versions()
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Benchmark of {report['model']} on {report['device']}, input {report['input_size']}x{report['input_size']}, "
             f"median of {report['reps']} timed calls (spread = min-max); torch {report['versions']['torch']}.", "",
             "| backend | precision | memory format | batch | images/s (spread) | x eager fp32 | p50 / p99 ms (batch 1) | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        ratio = f"{r['x_eager_fp32']:.2f}" if r["x_eager_fp32"] else "-"
        latency = f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f}" if "latency_p50_ms" in r else "-"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['memory_format']} | {r['batch']} | "
                     f"{r['images_per_s']:.1f} ({r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f}) | {ratio} | "
                     f"{latency} | {r['peak_memory_mib']:.0f} |")
    if report.get("pipeline"):
        p = report["pipeline"]
        lines += ["", f"Pipeline on {p['images']} images ({p['backend']}, batch {p['batch_size']}, {p['workers']} decoder "
                      f"threads, median of {p['passes']} passes): decode alone {p['decode_images_per_s']:.1f} img/s, model-only "
                      f"{p['model_images_per_s']:.1f} img/s, end-to-end tagging {p['end_to_end_images_per_s']:.1f} img/s "
                      f"= {p['end_to_end_over_model']:.2f} x model-only."]
    for name, reason in report["skipped"].items():
        lines.append(f"not run: {name}: {reason}")
    if report["device"].startswith("CPU"):
        lines.append("peak MiB on the CPU is the process's peak resident memory so far (cumulative).")
    return "\n".join(lines) + "\n"


def bar_chart(report: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r["backend"] for r in report["rows"]))
    batches = sorted({r["batch"] for r in report["rows"]})
    width = 0.8 / max(len(batches), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(backends)), 4.5))
    for i, batch in enumerate(batches):
        values = [next((r["images_per_s"] for r in report["rows"] if r["backend"] == b and r["batch"] == batch), 0)
                  for b in backends]
        ax.bar(np.arange(len(backends)) + i * width, values, width, label=f"batch {batch}")
    ax.set_xticks(np.arange(len(backends)) + width * (len(batches) - 1) / 2)
    ax.set_xticklabels(backends, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("images/s")
    ax.set_title(f"{report['model']} on {report['device']}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
