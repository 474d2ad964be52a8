"""Benchmarks users can trust (issue 11): interleaved repetitions, medians with an interval,
noisy rows re-measured then flagged, thread counts and CPU flags in every table, and peak
memory per variant (a fresh process per variant on the CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lcie_fast import benchmark
from lcie_fast.runtime.base import Backend
from lcie_fast.runtime.variants import Variant


class FakeClock:
    """A timer that only moves when a fake backend runs: every timing is exactly what the test sets."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeBackend(Backend):
    """Logs each call; each call takes ``delay(call_number)`` seconds of the fake clock."""

    name = "fake"

    def __init__(self, tag: str, log: list, clock: FakeClock | None = None, delay=lambda call: 0.01,
                 allocate_mib: int = 0) -> None:
        self.tag, self.log, self.clock, self.delay, self.calls = tag, log, clock, delay, 0
        self.ballast = np.ones(allocate_mib * 2**18, np.float32)  # touched pages: resident memory
        self.log.append(("build", tag))

    def infer(self, images):
        self.log.append(("infer", self.tag, len(images)))
        if self.clock is not None:
            self.clock.now += self.delay(self.calls)
        self.calls += 1
        return torch.zeros(len(images), 5)


def fake_variants(log, clock=None, delays=None) -> list[Variant]:
    delays = delays or {}
    return [Variant(f"eager fp32 {tag}" if i == 0 else tag, "fp32",
                    lambda tag=tag: FakeBackend(tag, log, clock, delays.get(tag, lambda call: 0.01)))
            for i, tag in enumerate(["A", "B", "C"])]


def bench_with(monkeypatch, variants, **kwargs):
    """run_bench on the tiny preset, with its variants replaced by ``variants`` and no memory pass."""
    monkeypatch.setattr(benchmark, "bench_variants", lambda *args, **kw: variants)
    return benchmark.run_bench("lcie_tiny", device="cpu", progress=False, memory=False, **kwargs)


def test_repetitions_are_interleaved_round_robin_after_per_variant_warmup(monkeypatch):
    log: list = []
    clock = FakeClock()  # steady calls: no row is timed again
    bench_with(monkeypatch, fake_variants(log, clock), batch_sizes=[1, 2], reps=3, warmup=2, timer=clock)
    builds = [entry for entry in log if entry[0] == "build"]
    assert log[:3] == builds == [("build", "A"), ("build", "B"), ("build", "C")]  # every backend built first
    calls = [(tag, batch) for _, tag, batch in log[3:]]
    rows = [(tag, batch) for tag in "ABC" for batch in (1, 2)]
    warmups = [row for row in rows for _ in range(2)]
    assert calls[:len(warmups)] == warmups
    assert calls[len(warmups):] == rows * 3  # rep 1 of every row, then rep 2, then rep 3


def test_a_noisy_row_is_remeasured_then_flagged_and_ratios_come_from_medians(monkeypatch):
    clock = FakeClock()
    warmup, reps = 1, 5

    def always_noisy(call):
        return 0.1 if call % 2 else 0.3

    def noisy_at_first(call):  # a burst during the first pass, steady when re-measured
        return (0.1 if call % 2 else 0.3) if call < warmup + reps else 0.2

    delays = {"A": lambda call: 0.1, "B": noisy_at_first, "C": always_noisy}
    report = bench_with(monkeypatch, fake_variants([], clock, delays), batch_sizes=[1], reps=reps, warmup=warmup,
                        timer=clock)
    rows = {r["backend"].split()[-1]: r for r in report["rows"]}
    assert report["noise_bound"] == pytest.approx(0.10) and "25-75%" in report["interval"]
    steady, burst, noisy = rows["A"], rows["B"], rows["C"]
    assert not steady["remeasured"] and not steady["noisy"] and steady["relative_spread"] == pytest.approx(0.0)
    assert steady["images_per_s"] == pytest.approx(10.0) and steady["samples"] == reps
    assert burst["remeasured"] and not burst["noisy"] and burst["images_per_s"] == pytest.approx(5.0)
    assert burst["samples"] == 2 * reps and burst["first_relative_spread"] > 0.10
    assert noisy["remeasured"] and noisy["noisy"] and noisy["relative_spread"] > 0.10
    assert noisy["images_per_s_p25"] < noisy["images_per_s"] < noisy["images_per_s_p75"]
    # ratios are of medians, each against the baseline timed in the same pass
    assert burst["x_eager_fp32"] == pytest.approx(0.5) and steady["x_eager_fp32"] == pytest.approx(1.0)
    text = benchmark.markdown(report)
    noisy_line = next(line for line in text.splitlines() if line.startswith("| C "))
    burst_line = next(line for line in text.splitlines() if line.startswith("| B "))
    assert "noisy" in noisy_line and "noisy" not in burst_line and "| 0.50 (of 10.0 re-timed) |" in burst_line
    assert "ratio of medians" in text and "(p75-p25)/median > 0.10" in text


def _onnx_identity(path) -> str:
    onnx = pytest.importorskip("onnx", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_every_table_names_threads_and_cpu_flags(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")
    from lcie_fast.cpu import cpu_flags
    from lcie_fast.runtime.onnxruntime import ort_session

    graph = _onnx_identity(tmp_path / "identity.onnx")

    def ort_like():
        backend = FakeBackend("ort", [])
        backend.session = ort_session(graph, threads=1)
        return backend

    variants = [Variant("eager fp32 A", "fp32", lambda: FakeBackend("A", [])), Variant("ort", "fp32", ort_like)]
    report = bench_with(monkeypatch, variants, batch_sizes=[1], reps=2)
    text = benchmark.markdown(report)
    print(text)
    assert report["threads"]["torch_intra_op"] == torch.get_num_threads()
    assert report["threads"]["torch_inter_op"] == torch.get_num_interop_threads()
    assert report["threads"]["onnxruntime_intra_op"] == {"ort": 1}
    assert f"torch threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op" in text
    assert "ONNX Runtime intra-op threads: ort 1" in text
    flags = cpu_flags()
    assert report["cpu"]["flags"]["AVX2"] == ("avx2" in flags)
    assert report["cpu"]["flags"]["AVX-512"] == ("avx512f" in flags)
    for name in ("AVX2", "AVX-512", "VNNI", "BF16"):
        assert f"{name} {'yes' if report['cpu']['flags'][name] else 'no'}" in text
    json.dumps(report)  # the JSON report carries the same


def allocating_setup(mib: int):
    """Entry for the memory probe: a variant whose backend holds ``mib`` MiB, and one batch."""
    return (lambda: FakeBackend(f"{mib} MiB", [], allocate_mib=mib)), torch.zeros(1, 3, 8, 8)


def test_peak_memory_is_measured_per_variant_in_a_fresh_process(monkeypatch):
    def probe(index: int, variant: Variant, batch: int) -> dict:
        return benchmark.peak_memory_in_subprocess(f"{__name__}:allocating_setup", {"mib": [20, 220][index]})

    log: list = []
    variants = [Variant("eager fp32 small", "fp32", lambda: FakeBackend("small", log)),
                Variant("large", "fp32", lambda: FakeBackend("large", log))]
    report = bench_with(monkeypatch, variants, batch_sizes=[1, 2], reps=2)
    assert report["memory_method"] is None and all(r["peak_memory_mib"] is None for r in report["rows"])
    monkeypatch.setattr(benchmark, "bench_variants", lambda *args, **kw: variants)
    report = benchmark.run_bench("lcie_tiny", device="cpu", progress=False, batch_sizes=[1, 2], reps=2, memory=probe)
    growth = {r["backend"]: r["memory_growth_mib"] for r in report["rows"]}
    peak = {r["backend"]: r["peak_memory_mib"] for r in report["rows"]}
    print(growth, peak)
    assert 150 < growth["large"] - growth["eager fp32 small"] < 260
    assert peak["large"] - peak["eager fp32 small"] > 150
    assert 15 < growth["eager fp32 small"] < 80
    assert "peak RSS" in benchmark.markdown(report) and "fresh process" in report["memory_method"]


def test_the_default_cpu_memory_probe_rebuilds_the_variant_in_a_fresh_process():
    result = benchmark.peak_memory_in_subprocess(f"{__name__}:allocating_setup", {"mib": 64})
    assert 50 < result["growth_mib"] < 120 and result["peak_rss_mib"] > result["growth_mib"]
    assert result["method"]


def test_parity_timings_have_an_interval_noise_flag_threads_and_cpu_flags():
    from lcie_fast import create_model
    from lcie_fast.data.transforms import Preprocess
    from lcie_fast.deploy.parity import ParityRow, markdown_table, run_backend
    from lcie_fast.metadata import metadata_for

    preprocess = Preprocess(metadata_for(create_model("lcie_tiny", num_classes=5)).preprocess)
    images = torch.zeros(9, 3, 8, 8, dtype=torch.uint8)  # four full batches of 2 and one of 1
    clock = FakeClock()
    steady = FakeBackend("steady", [], clock, lambda call: 0.1)
    logits, rate = run_backend(steady, images, preprocess, 2, progress=False, timer=clock)
    assert logits.shape == (9, 5) and rate["images_per_s"] == pytest.approx(20.0)
    assert not rate["noisy"] and not rate["remeasured"]
    noisy = FakeBackend("noisy", [], clock, lambda call: 0.1 if call % 2 else 0.4)
    _, noisy_rate = run_backend(noisy, images, preprocess, 2, progress=False, timer=clock)
    assert noisy_rate["remeasured"] and noisy_rate["noisy"]
    assert noisy_rate["images_per_s_p25"] < noisy_rate["images_per_s"] < noisy_rate["images_per_s_p75"]

    def row(label, rate):
        return ParityRow(label=label, precision="fp32", mAP=50.0, dmAP=0.0, max_abs=0.0, mean_abs=0.0, cosine=1.0,
                         min_cosine=1.0, agreement=1.0, images_per_s=rate["images_per_s"], passed=True, gate={},
                         timing=rate)

    text = markdown_table({"rows": [row("steady", rate), row("noisy", noisy_rate)], "source": "x", "images": 9,
                           "batch_size": 2, "threshold": 0.5, "failed": [], "bootstrap_draws": 0})
    print(text)
    assert f"torch threads: {torch.get_num_threads()} intra-op" in text and "VNNI" in text and "AVX2" in text
    noisy_line = next(line for line in text.splitlines() if line.startswith("| noisy "))
    assert "noisy" in noisy_line.split("|")[9] and "25-75%" in text


def test_a_noisy_baseline_retimes_its_whole_batch_and_its_ratios_carry_the_caveat(monkeypatch):
    clock = FakeClock()
    delays = {"A": lambda call: 0.1 if call % 2 else 0.3, "B": lambda call: 0.2, "C": lambda call: 0.2}
    report = bench_with(monkeypatch, fake_variants([], clock, delays), batch_sizes=[1], reps=4, warmup=1, timer=clock)
    rows = {r["backend"].split()[-1]: r for r in report["rows"]}
    assert rows["A"]["noisy"] and all(r["remeasured"] and r["samples"] == 8 for r in rows.values())
    assert not rows["B"]["noisy"] and not rows["B"]["ratio_reliable"]
    assert "| ~" in next(line for line in benchmark.markdown(report).splitlines() if line.startswith("| B "))


def test_parity_json_keeps_the_timing_behind_each_median(tmp_path):
    from lcie_fast.deploy.parity import ParityRow, write_report

    timing = {"images_per_s": 12.5, "images_per_s_p25": 5.0, "images_per_s_p75": 20.0, "relative_spread": 1.2,
              "timed_batches": 8, "remeasured": True, "noisy": True, "threads": {"torch_intra_op": 1}}
    row = ParityRow(label="x", precision="fp32", mAP=50.0, dmAP=0.0, max_abs=0.0, mean_abs=0.0, cosine=1.0,
                    min_cosine=1.0, agreement=1.0, images_per_s=12.5, passed=True, gate={}, timing=timing)
    report = {"rows": [row], "logits": {"x": np.zeros((2, 3))}, "source": "x", "images": 2, "batch_size": 2,
              "threshold": 0.5, "failed": [], "bootstrap_draws": 0}
    paths = write_report(report, tmp_path)
    saved = json.loads(paths["json"].read_text())["rows"][0]
    assert saved["images_per_s"] == 12.5 and saved["timing"]["noisy"] is True
    assert saved["timing"]["images_per_s_p25"] == 5.0
