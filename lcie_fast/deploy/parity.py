"""Accuracy parity of every backend and precision against eager FP32, on real images.

For each variant: mAP and its difference to eager FP32 with a paired 95% bootstrap interval,
max and mean |logit difference|, cosine similarity of each image's logit vector (mean and
worst), tag agreement at the threshold (pairs whose reference probability lies within
``margin`` of the threshold are left out: they flip on noise), and model-only images/s.

Gates per precision (configurable) decide pass or fail; ``lcie-fast parity`` exits non-zero
when one fails. A variant passes when its mean cosine and its tag agreement reach the gate's
minimums and its mAP difference is either within ``max_abs_dmap`` or, up to three times that,
not distinguishable from zero (the paired interval contains 0). On a small validation set a few
reordered near-ties move mAP by more than the tolerance while cosine stays at 0.99999: that is
noise and passes. Real damage moves the logits (cosine, agreement) and shifts mAP consistently
across resamples, and fails. A small set cannot show a small real loss: the interval says how
much the set can tell, so judge parity on a few hundred images or more.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.datasets import MultiLabelSet
from ..data.transforms import ImageDecodeError, Preprocess
from ..errors import InputNotFoundError, InvalidInputError
from ..io import write_json
from ..metrics import multilabel_metrics, sigmoid
from ..runtime.base import Backend
from ..runtime.variants import Variant
from ..timing import NOISE_BOUND
from .pipeline import CalibrationOptions

# per precision: largest |mAP - mAP(eager FP32)| in points (unless the paired interval holds 0),
# smallest mean per-image cosine, smallest tag agreement
DEFAULT_GATES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_dmap": 0.01, "min_cosine": 0.99999, "min_agreement": 0.999},
    "fp16": {"max_abs_dmap": 0.1, "min_cosine": 0.999, "min_agreement": 0.99},
    "bf16": {"max_abs_dmap": 0.3, "min_cosine": 0.995, "min_agreement": 0.98},
    "int8": {"max_abs_dmap": 0.5, "min_cosine": 0.99, "min_agreement": 0.97},
}
GATE_KEYS = ("max_abs_dmap", "min_cosine", "min_agreement")
# an interval holding 0 excuses a |dmAP| over the tolerance only up to this many tolerances: a
# larger move fails however few images could show it
NOISE_EXCUSE = 3.0


def parse_gates(overrides: Sequence[str]) -> dict[str, dict[str, float]]:
    """:data:`DEFAULT_GATES` with ``PRECISION.KEY=VALUE`` overrides applied (``int8.max_abs_dmap=0.3``)."""
    gates = {k: dict(v) for k, v in DEFAULT_GATES.items()}
    for text in overrides:
        key, _, value = text.partition("=")
        precision, _, name = key.partition(".")
        try:
            number = float(value)
        except ValueError:
            number = None
        if precision not in gates or name not in GATE_KEYS or number is None:
            raise InvalidInputError(f"--gate {text!r}: expected PRECISION.KEY=X with KEY in {', '.join(GATE_KEYS)} "
                                    f"and PRECISION in {sorted(gates)}")
        gates[precision][name] = number
    return gates


def check_parity(checkpoint: str | Path, data_spec: str | Path, out_dir: str | Path, *,
                 graphs: str | Path | None = None, calibration: CalibrationOptions | None = None,
                 batch_size: int = 16, max_images: int = 0, device: str | None = None,
                 engines: Sequence[str | Path] = (), aoti: Sequence[str | Path] = (), allow_host_code: bool = False,
                 bf16: bool = False,
                 gates: dict[str, dict[str, float]] | None = None, draws: int = 1000,
                 progress: bool = True) -> dict[str, Any]:
    """Score every backend of a checkpoint against its eager FP32 on labelled images; write the report.

    Args:
        checkpoint: The ``.pt`` checkpoint.
        data_spec: Labelled evaluation images.
        out_dir: Report folder (parity.md, parity.json, parity_scatter.png; ``graphs/`` when exporting).
        graphs: An exported ``model.onnx`` whose ``.fp16`` / ``.int8`` siblings exist (default:
            export them now into ``out_dir/graphs`` with ``calibration``).
        batch_size, max_images: Batch of every backend; score only the first N images (0: all).
        device: ``cpu`` or ``cuda`` (default: a GPU when visible).
        engines: TensorRT bundles to score too.
        aoti: AOTInductor packages (``.pt2``) to score too.
        allow_host_code: Let those packages (and version-compatible bundles) run the native code they carry.
        bf16: Also score eager BF16 autocast on the CPU.
        gates, draws, progress: as :func:`run_parity`.

    Raises:
        InputNotFoundError: ``graphs`` lacks a sibling.
    """
    from ..artifacts import graph_paths
    from ..data.datasets import load_data_spec
    from ..models.checkpoint import model_from_checkpoint
    from ..runtime.variants import backend_variants
    from .pipeline import export_graphs

    out_dir = Path(out_dir)
    if graphs:
        paths = graph_paths(graphs)
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise InputNotFoundError(f"--graphs {graphs}: missing {missing} (create them with lcie-fast export --fp16 --int8)")
    else:
        paths = graph_paths(out_dir / "graphs" / "model.onnx")
        export_graphs(checkpoint, paths["fp32"], int8_targets=("tensorrt", "cpu"), calibration=calibration)
    model, meta = model_from_checkpoint(checkpoint)
    data = load_data_spec(str(data_spec), label_names=meta.label_names)
    if max_images:
        data = data.subset(range(min(max_images, len(data))))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    graphs = [*paths.values(), graph_paths(paths["fp32"], int8_target="cpu")["int8"]]  # missing ones are left out
    variants = backend_variants(model, meta, device, graphs=graphs, engines=engines, compile_=device.startswith("cuda"),
                                bf16=bf16, aoti=aoti, allow_host_code=allow_host_code)
    report = run_parity(variants, data, Preprocess(meta.preprocess), batch_size=batch_size, gates=gates,
                        progress=progress, draws=draws)
    report["written"] = write_report(report, out_dir)
    report["graphs"] = paths
    return report


@dataclasses.dataclass
class ParityRow:
    label: str
    precision: str
    mAP: float
    dmAP: float
    max_abs: float
    mean_abs: float
    cosine: float
    min_cosine: float
    agreement: float
    images_per_s: float
    passed: bool
    gate: dict[str, float]
    dmAP_ci95: tuple[float, float] | None = None
    failed_checks: tuple[str, ...] = ()
    timing: dict[str, Any] = dataclasses.field(default_factory=dict)  # how images_per_s was measured (run_backend)


def load_images(data: MultiLabelSet, preprocess: Preprocess, progress: bool = True) -> tuple[torch.Tensor, np.ndarray, list]:
    """Decode and resize every image once: uint8 (N, 3, S, S), kept indices, failures."""
    images, kept, failed = [], [], []
    for index, path in enumerate(tqdm(data.paths, desc="decode", unit="img", disable=not progress, leave=False)):
        try:
            images.append(preprocess.load(path))
            kept.append(index)
        except ImageDecodeError as err:
            failed.append({"path": path, "reason": str(err)})
    if not images:
        raise InvalidInputError(f"no image of {data.source} could be decoded")
    return torch.stack(images), np.array(kept), failed


# fewer timed batches than this (a small set) and the batches are timed over again
MIN_TIMED_BATCHES = 5


def run_backend(backend: Backend, images: torch.Tensor, preprocess: Preprocess, batch_size: int,
                progress: bool = True, timer: Callable[[], float] = time.perf_counter,
                noise_bound: float = NOISE_BOUND) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits of every image and the model-only throughput (normalisation and copies excluded).

    The throughput: median images/s over the full batches (a last, smaller batch runs at another
    rate) with its 25-75% range; passes over the batches are added until at least
    :data:`MIN_TIMED_BATCHES` are timed; when (p75 - p25) / median exceeds ``noise_bound`` the
    batches are timed again over two passes, and a throughput still above it is marked noisy.

    Returns:
        The (N, C) logits, and the timing: ``images_per_s`` (the median), ``images_per_s_p25``,
        ``images_per_s_p75``, ``relative_spread``, ``timed_batches``, ``remeasured``, ``noisy``
        and the ``threads`` the backend ran with.
    """
    from ..timing import spread, thread_counts, time_interleaved

    max_batch = backend.max_batch or batch_size
    batch_size = min(batch_size, max_batch)
    batches = [preprocess.normalize(images[i:i + batch_size], channels_last=False)
               for i in range(0, len(images), batch_size)]
    backend.infer(batches[0])  # warm-up (lazy init, autotuning, compilation)
    backend.synchronize()
    outputs, seconds = [], []
    for batch in tqdm(batches, desc=backend.label, unit="batch", disable=not progress, leave=False):
        start = timer()
        out = backend.infer(batch)
        backend.synchronize()
        seconds.append(timer() - start)
        outputs.append(out.detach().float().cpu().numpy() if hasattr(out, "detach") else np.asarray(out, np.float32))
    full = [i for i, batch in enumerate(batches) if len(batch) == len(batches[0])]
    calls = [(lambda batch=batches[i]: backend.infer(batch), backend.synchronize) for i in full]
    rates = [len(batches[i]) / max(seconds[i], 1e-9) for i in full]
    if len(rates) < MIN_TIMED_BATCHES:
        passes = -(-(MIN_TIMED_BATCHES - len(rates)) // len(full))
        rates += [len(batches[0]) / max(t, 1e-9) for t in np.ravel(time_interleaved(calls, passes, 0, timer))]
    stats, remeasured = spread(rates), False
    if stats["relative_spread"] > noise_bound:
        again = np.ravel(time_interleaved(calls, 2, 0, timer))
        stats, remeasured = spread([len(batches[0]) / max(t, 1e-9) for t in again]), True
    timing = {"images_per_s": stats["median"], "images_per_s_p25": stats["p25"], "images_per_s_p75": stats["p75"],
              "relative_spread": stats["relative_spread"], "timed_batches": len(again) if remeasured else len(rates),
              "remeasured": remeasured, "noisy": stats["relative_spread"] > noise_bound,
              "threads": thread_counts({backend.label: backend})}
    return np.concatenate(outputs), timing


def compare(reference: np.ndarray, logits: np.ndarray, targets: np.ndarray, label_names: list[str],
            threshold: float = 0.5, margin: float = 0.02) -> dict[str, float]:
    """Parity numbers of ``logits`` against ``reference`` (both (N, C))."""
    logits = logits.astype(np.float64)
    diff = np.abs(logits - reference)
    dot = (logits * reference).sum(1)
    norms = np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = dot / np.maximum(norms, 1e-12)
    p_ref, p = sigmoid(reference), sigmoid(logits)
    decided = np.abs(p_ref - threshold) > margin
    agreement = ((p_ref >= threshold) == (p >= threshold))[decided].mean() if decided.any() else 1.0
    metrics = multilabel_metrics(logits, targets, from_logits=True, class_names=label_names, threshold=threshold)
    return {"mAP": metrics["mAP"], "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "cosine": float(cosine.mean()), "min_cosine": float(cosine.min()), "agreement": float(agreement)}


def gate_checks(gate: dict[str, float], dmap: float, interval: tuple[float, float] | None,
                numbers: dict[str, float]) -> list[str]:
    """The checks of ``gate`` a variant fails (empty: it passes); see the module docstring.
    Without an interval (no bootstrap) the mAP check is the plain tolerance."""
    failed = []
    tolerance = gate.get("max_abs_dmap", float("inf"))
    if not abs(dmap) <= tolerance:  # NaN fails too
        if interval is None:
            failed.append(f"|dmAP| {abs(dmap):.3f} > {tolerance}")
        elif not abs(dmap) <= NOISE_EXCUSE * tolerance:
            failed.append(f"|dmAP| {abs(dmap):.3f} > {NOISE_EXCUSE:g} x the tolerance {tolerance}")
        elif not interval[0] <= 0.0 <= interval[1]:
            failed.append(f"|dmAP| {abs(dmap):.3f} > {tolerance} and its 95% interval "
                          f"[{interval[0]:+.3f}, {interval[1]:+.3f}] excludes 0")
    if not numbers["cosine"] >= gate.get("min_cosine", -1.0):
        failed.append(f"mean cosine {numbers['cosine']:.6f} < {gate['min_cosine']}")
    if not numbers["agreement"] >= gate.get("min_agreement", 0.0):
        failed.append(f"tag agreement {100 * numbers['agreement']:.2f}% < {100 * gate['min_agreement']:.2f}%")
    return failed


def run_parity(variants: list[Variant], data: MultiLabelSet, preprocess: Preprocess, *, batch_size: int = 16,
               gates: dict[str, dict[str, float]] | None = None, threshold: float = 0.5,
               progress: bool = True, draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Score every variant; the first is the reference (eager FP32).

    ``draws`` resamples of the images (seeded) give each variant's paired interval of dmAP.
    """
    from ..metrics import bootstrap_interval

    gates = {k: dict(v) for k, v in (gates or DEFAULT_GATES).items()}
    images, kept, failed = load_images(data, preprocess, progress)
    targets = data.targets[kept]
    rows: list[ParityRow] = []
    logits_by_label: dict[str, np.ndarray] = {}
    reference = None
    for variant in variants:
        backend = variant.build()
        try:
            logits, timing = run_backend(backend, images, preprocess, batch_size, progress)
        finally:
            backend.close()
        if reference is None:
            reference = logits.astype(np.float64)
        numbers = compare(reference, logits, targets, list(data.label_names), threshold)
        gate = gates.get(variant.precision, {})
        dmap = numbers["mAP"] - rows[0].mAP if rows else 0.0
        interval = (bootstrap_interval(logits, targets, reference=reference, draws=draws, seed=seed)
                    if rows and draws else None)
        failed_checks = gate_checks(gate, dmap, interval, numbers)
        rows.append(ParityRow(label=variant.label, precision=variant.precision, dmAP=dmap, images_per_s=timing["images_per_s"], timing=timing,
                              passed=not failed_checks, gate=gate, dmAP_ci95=interval,
                              failed_checks=tuple(failed_checks), **numbers))
        logits_by_label[variant.label] = logits
    return {"rows": rows, "logits": logits_by_label, "images": int(len(kept)), "failed": failed,
            "source": data.source, "batch_size": batch_size, "threshold": threshold, "gates": gates,
            "bootstrap_draws": draws}


def timing_caption(rows: Sequence[ParityRow]) -> str:
    """How the images/s column was measured, with the CPU's flags and every thread count."""
    from ..timing import INTERVAL, cpu_features, machine_caption, thread_counts

    threads = thread_counts()
    for row in rows:  # as recorded while each backend ran
        recorded = row.timing.get("threads") or {}
        threads = {**threads, **{k: v for k, v in recorded.items() if k != "onnxruntime_intra_op"}}
        threads["onnxruntime_intra_op"] = {**threads["onnxruntime_intra_op"], **recorded.get("onnxruntime_intra_op", {})}
    return (f"images/s is model-only: median [{INTERVAL}] over the full batches of one pass (passes added up to "
            f"{MIN_TIMED_BATCHES} batches); where (p75-p25)/median > {NOISE_BOUND:.2f} the batches are timed again over "
            f"two passes, and a spread still above is marked noisy. Backends are timed one after another (each is "
            f"built, scored and closed in turn), not interleaved: x ref is a ratio of medians, ~ where a noisy one is "
            f"involved; `lcie-fast bench` gives interleaved timings. Machine: "
            f"{machine_caption(threads, cpu_features())}.")


def markdown_table(report: dict[str, Any]) -> str:
    rows: list[ParityRow] = report["rows"]
    base = rows[0].images_per_s
    lines = [
        f"Parity on {report['source']}: {report['images']} images, batch {report['batch_size']}, "
        f"threshold {report['threshold']}; reference: {rows[0].label}. dmAP interval: "
        f"paired 95% bootstrap ({report.get('bootstrap_draws', 0)} resamples of the images). A gate passes when "
        f"cosine and tag agreement reach their minimums and |dmAP| is within its tolerance or its interval holds 0.",
        timing_caption(rows),
        "",
        "| backend | precision | mAP | dmAP [95% interval] | max abs dlogit | mean abs dlogit | cosine (mean / min) | "
        "tag agreement | images/s median [25-75%] | x ref | gate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_noisy = rows[0].timing.get("noisy", False)
    for r in rows:
        limits = (f"|dmAP|<={r.gate.get('max_abs_dmap', '-')}, cos>={r.gate.get('min_cosine', '-')}, "
                  f"agree>={r.gate.get('min_agreement', '-')}")
        gate = f"PASS ({limits})" if r.passed else "FAIL: " + "; ".join(r.failed_checks)
        interval = "[{:+.3f}, {:+.3f}]".format(*r.dmAP_ci95) if r.dmAP_ci95 else ""
        timing = r.timing
        rate = f"{r.images_per_s:.1f}"
        if timing:
            rate += f" [{timing['images_per_s_p25']:.1f}-{timing['images_per_s_p75']:.1f}]"
            rate += " noisy" if timing["noisy"] else ""
        caveat = "~" if timing.get("noisy") or base_noisy else ""
        lines.append(
            f"| {r.label} | {r.precision} | {r.mAP:.2f} | {r.dmAP:+.3f} {interval} | {r.max_abs:.2e} | "
            f"{r.mean_abs:.2e} | {r.cosine:.6f} / {r.min_cosine:.6f} | {100 * r.agreement:.2f}% | "
            f"{rate} | {caveat}{r.images_per_s / base:.2f} | {gate} |")
    if report["failed"]:
        lines.append(f"\n{len(report['failed'])} unreadable image(s) left out: "
                     + ", ".join(f["path"] for f in report["failed"][:5]))
    return "\n".join(lines) + "\n"


def scatter_plot(report: dict[str, Any], path: str | Path) -> Path:
    """PNG: each variant's logits against the reference's, one panel per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[ParityRow] = report["rows"]
    reference = report["logits"][rows[0].label].ravel()
    others = rows[1:] or rows[:1]
    fig, axes = plt.subplots(1, len(others), figsize=(4 * len(others), 4), squeeze=False)
    low, high = float(reference.min()), float(reference.max())
    for ax, row in zip(axes[0], others):
        values = report["logits"][row.label].ravel()
        ax.scatter(reference, values, s=3, alpha=0.4)
        ax.plot([low, high], [low, high], color="black", linewidth=0.8)
        ax.set_title(f"{row.label}\nmax |d| {row.max_abs:.2e}, dmAP {row.dmAP:+.3f}", fontsize=9)
        ax.set_xlabel(f"{rows[0].label} logit")
        ax.set_ylabel("logit")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """parity.md, parity.json and parity_scatter.png under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "parity.md", "json": out_dir / "parity.json", "png": out_dir / "parity_scatter.png"}
    paths["markdown"].write_text(markdown_table(report))
    rows = [dataclasses.asdict(r) for r in report["rows"]]
    write_json({k: v for k, v in report.items() if k != "logits"} | {"rows": rows}, paths["json"])
    scatter_plot(report, paths["png"])
    return paths
