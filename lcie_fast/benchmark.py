"""``lcie-fast bench``: throughput of every backend that can run, side by side with eager FP32.

For a model (a preset with random weights, a checkpoint, an ONNX graph or an engine bundle)
and batch sizes: images/s (median and 25-75% range over repetitions), latency p50/p99 at
batch 1, peak memory per backend; eager FP32 in the same run and every ratio to it. With
``--data`` (a folder of images): decoding alone and end-to-end tagging against model-only.
Writes Markdown, JSON and a PNG bar chart, with device, CPU flags, thread counts, dtype,
memory format and versions.

Honest-benchmark rules (STYLE.md 10), and how this file keeps them:

- Every backend is built once, first, and warmed up at each batch size. Then the repetitions
  are interleaved: round r times one call of every (backend, batch) row in turn, so that
  drift over the run (other processes, thermal limits, frequency scaling) hits every row
  alike. All backends are held at once because rebuilding per round would repeat builds
  that take minutes (torch.compile, TensorRT) and their warm-up, which is not what is measured.
- Each row reports the median with its 25-75% range. A row whose relative spread
  (p75 - p25) / median exceeds ``NOISE_BOUND`` is timed again with twice the repetitions,
  beside the baseline of its batch; a row still above the bound is marked noisy.
- Ratios to eager FP32 are ratios of medians timed in the same pass.
- Peak memory is measured per backend: on the CPU each backend is rebuilt alone in a fresh
  Python process that runs one batch (its peak resident memory, and the growth over the
  process after loading the model); on a GPU, the caching allocator's peak while a backend
  is built and runs one batch, above what was allocated before.
- Device synchronisation around every timed call.
"""

from __future__ import annotations

import gc
import importlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputNotFoundError, InvalidInputError
from .runtime.base import Backend
from .runtime.variants import Variant
from .timing import (
    INTERVAL,
    NOISE_BOUND,
    cpu_features,
    machine_caption,
    spread,
    thread_counts,
    time_interleaved,
)

# probe(index of the variant, the variant, batch) -> {"peak_rss_mib" | "peak_mib", "growth_mib", "method"}
MemoryProbe = Callable[[int, Variant, int], dict]
_MEMORY_MARK = "LCIE_FAST_MEMORY "


def _rss_mib(field: str) -> float | None:
    """``VmRSS`` or ``VmHWM`` of this process from /proc/self/status, in MiB (None off Linux)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _ru_maxrss_mib() -> float:
    scale = 2**20 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return _rss_mib("VmHWM") is not None


def _memory_child(spec: dict[str, Any]) -> None:
    """Body of :func:`peak_memory_in_subprocess`, in the fresh process: print one marked JSON line."""
    module, _, name = spec["setup"].partition(":")
    build, images = getattr(importlib.import_module(module), name)(**spec["kwargs"])
    gc.collect()
    if _reset_peak_rss():
        baseline = _rss_mib("VmRSS")
        method = "VmHWM after a clear_refs reset"
    else:
        baseline = _ru_maxrss_mib()
        method = "ru_maxrss (growth: over the peak after loading, an underestimate when loading peaked higher)"
    backend = build()
    backend.infer(images)
    backend.synchronize()
    peak = _rss_mib("VmHWM") if method.startswith("VmHWM") else _ru_maxrss_mib()
    backend.close()
    print(_MEMORY_MARK + json.dumps({"peak_rss_mib": peak, "baseline_rss_mib": baseline,
                                     "growth_mib": peak - baseline, "method": method}), flush=True)


def peak_memory_in_subprocess(setup: str, kwargs: Mapping[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Peak resident memory of building one backend and running one batch, alone in a fresh Python.

    ``setup`` (``"module:function"``, importable with this process's ``sys.path``) is called there
    with ``kwargs`` (JSON values) and returns ``(build, images)``. What it loads (imports, the
    model) is the baseline; then the kernel's peak-RSS counter is reset (Linux), the backend is
    built and runs ``images`` once.

    Returns:
        ``peak_rss_mib`` (the process's peak RSS while building and running), ``baseline_rss_mib``
        (its RSS before building), ``growth_mib`` (the difference) and ``method``.

    Raises:
        RuntimeError: the process failed (its last stderr lines) or ran past ``timeout`` seconds.
    """
    spec = json.dumps({"setup": setup, "kwargs": dict(kwargs), "path": sys.path})
    code = ("import json, sys; spec = json.loads(sys.argv[1]); sys.path[:0] = spec['path']; "
            "from lcie_fast.benchmark import _memory_child; _memory_child(spec)")
    try:
        done = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"memory probe {setup} ran past {timeout:.0f} s") from err
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MEMORY_MARK)]
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"memory probe {setup} exited with {done.returncode}: {tail}")
    return json.loads(lines[-1][len(_MEMORY_MARK):])


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
                   compile_: bool, aoti: Sequence[str] = (), allow_host_code: bool = False) -> list[Variant]:
    """Eager FP32 first (the baseline), then every backend that can run here."""
    from .artifacts import artifact_kind, graph_paths
    from .runtime.variants import backend_variants

    graphs = [path] if path is not None and artifact_kind(path) == "onnx" else []
    if onnx:  # the FP32 graph, its FP16 and INT8 siblings, and the CPU-target INT8 graph where they exist
        graphs += [*graph_paths(onnx).values(), graph_paths(onnx, int8_target="cpu")["int8"]]
    bundles = ([path] if path is not None and artifact_kind(path) == "engine" else []) + list(engines)
    packages = ([path] if path is not None and artifact_kind(path) == "aoti" else []) + list(aoti)
    return backend_variants(model, meta, device, graphs=graphs, engines=bundles, compile_=compile_,
                            memory_formats=True, aoti=packages, allow_host_code=allow_host_code)


def _bench_images(batch: int, size: int, device: str) -> torch.Tensor:
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))  # (B, 3, S, S)
    return images.to(device) if device.startswith("cuda") else images


def _bench_memory_setup(model_spec: str, num_classes: int | None, device: str, onnx: str | None, engines: list[str],
                        compile_: bool, index: int, label: str, batch: int, aoti: Sequence[str] = (),
                        allow_host_code: bool = False):
    """:func:`peak_memory_in_subprocess` entry for ``bench``: the model loaded, variant ``index`` unbuilt."""
    model, meta, path = _model_and_meta(model_spec, num_classes)
    variant = bench_variants(model, meta, path, device, onnx, engines, compile_, aoti, allow_host_code)[index]
    if variant.label != label:
        raise RuntimeError(f"variant {index} is {variant.label!r} here, expected {label!r}")
    return variant.build, _bench_images(batch, meta.preprocess.input_size, device)


def _cuda_peak_while(build: Callable[[], Backend], images: torch.Tensor) -> tuple[Backend, dict[str, Any]]:
    """Build a backend and run one batch of ``images`` (at most its max batch), measuring the CUDA
    caching allocator's peak above what was allocated before (the images and other backends)."""
    device = images.device
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    backend = build()
    backend.infer(images[:backend.max_batch or len(images)])  # a view: nothing new allocated for it
    backend.synchronize()
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return backend, {"peak_mib": peak, "growth_mib": peak, "method": "cuda allocator"}


def _check_arguments(batch_sizes: Sequence[int], reps: int, warmup: int, noise_bound: float) -> None:
    if not batch_sizes or any(int(b) != b or b < 1 for b in batch_sizes):
        raise InvalidInputError(f"--batch-sizes {' '.join(map(str, batch_sizes))}: expected whole numbers >= 1")
    if int(reps) != reps or reps < 1:
        raise InvalidInputError(f"--reps {reps}: expected a whole number >= 1")
    if int(warmup) != warmup or warmup < 0:
        raise InvalidInputError(f"warmup {warmup}: expected a whole number >= 0")
    if not noise_bound > 0:
        raise InvalidInputError(f"noise_bound {noise_bound}: expected a number > 0")


def run_bench(model_spec: str, *, batch_sizes: list[int], device: str | None = None, reps: int = 10,
              onnx: str | None = None, engines: list[str] | None = None, data: str | None = None,
              compile_: bool = False, num_classes: int | None = None, workers: int | None = None,
              progress: bool = True, warmup: int = 2, noise_bound: float = NOISE_BOUND,
              memory: bool | MemoryProbe = True, timer: Callable[[], float] = time.perf_counter,
              aoti: Sequence[str] = (), allow_host_code: bool = False) -> dict[str, Any]:
    """Measure every variant at every batch size; with ``data``, decoding and end-to-end tagging.

    Args:
        model_spec: A preset (random weights), a checkpoint, an ONNX graph or an engine bundle.
        batch_sizes: Batch sizes to time.
        device: ``cpu`` or ``cuda[:N]`` (default: a GPU when visible).
        reps: Timed calls per (backend, batch) row, interleaved across rows (module docstring).
        onnx, engines, compile_: Further backends to time (``--onnx``, ``--engines``, ``--compile``).
        data, workers: A folder of images for the pipeline section, and its decoder threads.
        num_classes: Labels of a preset built with random weights.
        progress: Print each row's median on stderr.
        warmup: Untimed calls per row before the timed rounds.
        noise_bound: Relative spread (p75 - p25) / median above which a row is timed again.
        memory: True: peak memory per backend (a fresh process per backend on the CPU, the CUDA
            allocator on a GPU); False: none; or a probe ``(index, variant, batch) -> dict``.
        timer: The clock (seconds).

    Returns:
        The report (``markdown`` renders it): rows, skipped backends with their reason, threads,
        CPU flags, versions, and how each number was measured.

    Raises:
        InvalidInputError: a batch size, ``reps`` or ``warmup`` out of range (before any model loads).
    """
    _check_arguments(batch_sizes, reps, warmup, noise_bound)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    model, meta, path = _model_and_meta(model_spec, num_classes)
    size = meta.preprocess.input_size
    variants = bench_variants(model, meta, path, device, onnx, engines or [], compile_, [str(a) for a in aoti],
                              allow_host_code)
    largest = max(batch_sizes)
    skipped: dict[str, str] = {}
    memory_by_label: dict[str, dict[str, Any]] = {}
    probe: MemoryProbe | None = memory if callable(memory) else None
    if memory is True and not cuda:
        def probe(index: int, variant: Variant, batch: int) -> dict:
            return peak_memory_in_subprocess("lcie_fast.benchmark:_bench_memory_setup", {
                "model_spec": model_spec, "num_classes": num_classes, "device": device, "onnx": onnx,
                "engines": [str(e) for e in engines or []], "compile_": compile_, "index": index,
                "label": variant.label, "batch": batch, "aoti": [str(a) for a in aoti],
                "allow_host_code": allow_host_code})
    if probe is not None:
        # before this process holds every backend: each probe measures its backend alone
        for index, variant in enumerate(variants):
            try:
                memory_by_label[variant.label] = probe(index, variant, largest)
            except Exception as err:  # noqa: BLE001 - a missing number is reported, not fatal
                skipped[f"{variant.label} (peak memory)"] = f"{type(err).__name__}: {err}"

    backends: dict[str, Backend] = {}
    try:
        for variant in variants:
            try:
                if memory is True and cuda:
                    backends[variant.label], memory_by_label[variant.label] = _cuda_peak_while(
                        variant.build, _bench_images(largest, size, device))
                else:
                    backends[variant.label] = variant.build()
            except Exception as err:  # noqa: BLE001 - a backend that cannot run is reported, not fatal
                skipped[variant.label] = f"{type(err).__name__}: {err}"
        rows = _timed_rows(variants, backends, batch_sizes, size, reps, warmup, noise_bound, timer, skipped)
        threads = thread_counts(backends)
    finally:
        for backend in backends.values():
            backend.close()
    for row in rows:
        measured = memory_by_label.get(row["backend"], {})
        row["peak_memory_mib"] = measured.get("peak_rss_mib", measured.get("peak_mib"))
        row["memory_growth_mib"] = measured.get("growth_mib")
        if progress:
            print(f"  {row['backend']:48s} batch {row['batch']:3d}: {row['images_per_s']:9.1f} img/s "
                  f"[{row['images_per_s_p25']:.1f}-{row['images_per_s_p75']:.1f}]{' noisy' if row['noisy'] else ''}",
                  file=sys.stderr)
    report: dict[str, Any] = {
        "model": model_spec, "device": _device_name(device), "input_size": size, "reps": reps, "warmup": warmup,
        "rows": rows, "skipped": skipped, "versions": _versions(), "cpu": cpu_features(), "threads": threads,
        "timing": "interleaved: every backend built once and warmed up, then round r times one call of every row",
        "interval": f"{INTERVAL} of the timed calls", "noise_bound": noise_bound,
        "memory_method": _memory_method(memory_by_label, cuda, largest),
    }
    if data and rows:
        # the pipeline runs the backend that was fastest at the largest batch
        largest_run = max(r["batch"] for r in rows)
        fastest = max((r for r in rows if r["batch"] == largest_run), key=lambda r: r["images_per_s"])
        variant = next(v for v in variants if v.label == fastest["backend"])
        report["pipeline"] = _pipeline_bench(variant, data, largest_run, workers)
    return report


def _memory_method(memory_by_label: Mapping[str, dict], cuda: bool, batch: int) -> str | None:
    """What the memory column is, in words (None when nothing was measured)."""
    if not memory_by_label:
        return None
    if cuda:
        return (f"peak GPU memory of the CUDA caching allocator while each backend is built and runs one batch of "
                f"{batch}, above what was allocated before (other backends' weights); allocations outside torch "
                f"(TensorRT's own, ONNX Runtime on the CPU) are not counted")
    how = sorted({m.get("method", "") for m in memory_by_label.values()})
    return (f"peak RSS of a fresh process that loads the model, builds this backend alone and runs one batch of "
            f"{batch}; + = its growth over the RSS after loading ({'; '.join(how)})")


def _timed_rows(variants: Sequence[Variant], backends: Mapping[str, Backend], batch_sizes: Sequence[int], size: int,
                reps: int, warmup: int, noise_bound: float, timer: Callable[[], float],
                skipped: dict[str, str]) -> list[dict[str, Any]]:
    """Interleaved timing of every (built backend, batch) row; noisy rows timed again (module docstring)."""
    plan: list[tuple[Variant, Backend, int]] = []
    images: dict[tuple[int, str], torch.Tensor] = {}
    for variant in variants:
        backend = backends.get(variant.label)
        if backend is None:
            continue
        for batch in batch_sizes:
            if backend.max_batch and batch > backend.max_batch:
                skipped[f"{variant.label} batch {batch}"] = f"over the engine's max batch {backend.max_batch}"
                continue
            key = (batch, "cuda" if backend.device.startswith("cuda") else "cpu")
            if key not in images:  # one input per batch and device, shared by every backend
                images[key] = _bench_images(batch, size, backend.device)
            plan.append((variant, backend, batch))
    calls = [(lambda b=backend, x=images[(batch, "cuda" if backend.device.startswith("cuda") else "cpu")]: b.infer(x),
              backend.synchronize) for _, backend, batch in plan]
    times = time_interleaved(calls, reps, warmup, timer)
    baseline = {batch: i for i, (variant, _, batch) in enumerate(plan) if variant.label == variants[0].label}
    stats = [spread([batch / t for t in row_times]) for (_, _, batch), row_times in zip(plan, times)]
    # each ratio divides two medians of one pass: the row's and its batch's baseline's
    reference = [stats[baseline[batch]] if batch in baseline else None for _, _, batch in plan]
    first_spread: dict[int, float] = {}
    flagged = {i for i, s in enumerate(stats) if s["relative_spread"] > noise_bound}
    # a noisy baseline makes every ratio of its batch unreliable: the whole batch is timed again
    redo = flagged | {i for i, (_, _, batch) in enumerate(plan) if baseline.get(batch) in flagged}
    if redo:
        again = sorted(redo | {baseline[plan[i][2]] for i in redo if plan[i][2] in baseline})
        retimed = dict(zip(again, time_interleaved([calls[i] for i in again], 2 * reps, 0, timer)))
        for i in sorted(redo):
            batch = plan[i][2]
            first_spread[i] = stats[i]["relative_spread"]
            times[i] = retimed[i]
            stats[i] = spread([batch / t for t in times[i]])
            if batch in baseline:
                reference[i] = spread([batch / t for t in retimed[baseline[batch]]])
    rows = []
    for i, ((variant, _, batch), row_times, s) in enumerate(zip(plan, times, stats)):
        rates = [batch / t for t in row_times]
        row = {"backend": variant.label, "precision": variant.precision, "memory_format": variant.memory_format,
               "batch": batch, "samples": len(row_times), "images_per_s": s["median"],
               "images_per_s_p25": s["p25"], "images_per_s_p75": s["p75"], "images_per_s_min": min(rates),
               "images_per_s_max": max(rates), "relative_spread": s["relative_spread"],
               "remeasured": i in first_spread, "noisy": s["relative_spread"] > noise_bound,
               "x_eager_fp32": s["median"] / reference[i]["median"] if reference[i] else None,
               "eager_fp32_same_pass": reference[i]["median"] if reference[i] else None,
               "ratio_reliable": bool(reference[i]) and max(s["relative_spread"],
                                                            reference[i]["relative_spread"]) <= noise_bound}
        if i in first_spread:
            row["first_relative_spread"] = first_spread[i]
        if batch == 1:
            row["latency_p50_ms"] = 1e3 * float(np.percentile(row_times, 50))
            row["latency_p99_ms"] = 1e3 * float(np.percentile(row_times, 99))
        rows.append(row)
    return rows


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
    """The report as Markdown: a caption that says how every number was measured, then the table."""
    bound = report.get("noise_bound", NOISE_BOUND)
    reps = report["reps"]
    lines = [
        f"Benchmark of {report['model']} on {report['device']}, input {report['input_size']}x{report['input_size']}; "
        f"torch {report['versions']['torch']}.",
        f"Machine: {machine_caption(report['threads'], report['cpu'])}.",
        f"Timing: every backend built once and warmed up ({report.get('warmup', 2)} calls per batch size), then "
        f"{reps} interleaved rounds, each timing one synchronised call of every row in turn, so drift hits all rows "
        f"alike. images/s: median [{INTERVAL}] of the timed calls. spread = (p75-p25)/median; a row with "
        f"(p75-p25)/median > {bound:.2f} (all rows of its batch when it is eager fp32) is timed again with {2 * reps} "
        f"calls beside the eager fp32 row of its batch, and marked noisy if it stays above. x eager fp32: ratio of "
        f"medians timed in the same pass; a ratio marked ~ involves a noisy median and is not reliable. p99 of {reps} calls is close to their maximum.",
    ]
    if report.get("memory_method"):
        lines.append(f"peak memory: {report['memory_method']}.")
    memory_header = ("peak GPU MiB" if "CUDA" in (report.get("memory_method") or "")
                     else "peak RSS MiB (+growth)" if report.get("memory_method") else "peak MiB")
    lines += ["", f"| backend | precision | memory format | batch | images/s median [25-75%] | spread | x eager fp32 | "
                  f"p50 / p99 ms (batch 1) | {memory_header} |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        ratio = "-"
        if r["x_eager_fp32"]:
            caveat = "" if r.get("ratio_reliable", True) else "~"
            ratio = f"{caveat}{r['x_eager_fp32']:.2f}"
            if r.get("remeasured") and r.get("eager_fp32_same_pass"):
                ratio += f" (of {r['eager_fp32_same_pass']:.1f} re-timed)"
        latency = f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f}" if "latency_p50_ms" in r else "-"
        spread_text = f"{100 * r['relative_spread']:.0f}%"
        if r.get("remeasured"):
            spread_text += f" (first {100 * r['first_relative_spread']:.0f}%, re-timed)"
        if r.get("noisy"):
            spread_text += " noisy"
        memory = "-"
        if r.get("peak_memory_mib") is not None:
            memory = f"{r['peak_memory_mib']:.0f}"
            if r.get("memory_growth_mib") is not None and "GPU" not in memory_header:
                memory += f" (+{r['memory_growth_mib']:.1f})"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['memory_format']} | {r['batch']} | "
                     f"{r['images_per_s']:.1f} [{r['images_per_s_p25']:.1f}-{r['images_per_s_p75']:.1f}] | "
                     f"{spread_text} | {ratio} | {latency} | {memory} |")
    if report.get("pipeline"):
        p = report["pipeline"]
        lines += ["", f"Pipeline on {p['images']} images ({p['backend']}, batch {p['batch_size']}, {p['workers']} decoder "
                      f"threads, median of {p['passes']} passes): decode alone {p['decode_images_per_s']:.1f} img/s, model-only "
                      f"{p['model_images_per_s']:.1f} img/s, end-to-end tagging {p['end_to_end_images_per_s']:.1f} img/s "
                      f"= {p['end_to_end_over_model']:.2f} x model-only."]
    for name, reason in report["skipped"].items():
        lines.append(f"not run: {name}: {reason}")
    graphs_on_cpu = [r for r in report["rows"] if r["backend"].startswith("onnxruntime")]
    if graphs_on_cpu:
        from .info import cpu_graph_advice

        lines.append(f"ONNX graphs on this CPU: {cpu_graph_advice()}.")
    return "\n".join(lines) + "\n"


def bar_chart(report: dict[str, Any], path: str | Path) -> Path:
    """PNG: median images/s per backend and batch, with the 25-75% range as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r["backend"] for r in report["rows"]))
    batches = sorted({r["batch"] for r in report["rows"]})
    width = 0.8 / max(len(batches), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(backends)), 4.5))
    for i, batch in enumerate(batches):
        found = [next((r for r in report["rows"] if r["backend"] == b and r["batch"] == batch), None) for b in backends]
        values = [r["images_per_s"] if r else 0 for r in found]
        low = [r["images_per_s"] - r["images_per_s_p25"] if r else 0 for r in found]
        high = [r["images_per_s_p75"] - r["images_per_s"] if r else 0 for r in found]
        ax.bar(np.arange(len(backends)) + i * width, values, width, yerr=[low, high], capsize=2, label=f"batch {batch}")
    ax.set_xticks(np.arange(len(backends)) + width * (len(batches) - 1) / 2)
    ax.set_xticklabels(backends, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(f"images/s (median, bars: {INTERVAL})")
    ax.set_title(f"{report['model']} on {report['device']}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
