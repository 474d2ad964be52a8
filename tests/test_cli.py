"""The lcie-fast command line: info, models, errors."""

from __future__ import annotations

import json
import subprocess
import sys

from lcie_fast.cli import main


def test_info_lists_every_optional_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for backend in ("DALI", "Triton", "CUDA extension", "ONNX Runtime", "ModelOpt", "TensorRT", "torch-tensorrt"):
        assert backend in out
    assert "torch" in out and "devices:" in out


def test_info_json_gives_a_reason_for_every_unavailable_backend(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["versions"]["lcie_fast"]
    for row in report["backends"]:
        assert row["detail"], row  # available or not, there is always a reason


def test_info_model_measures_parameters_and_flops(capsys):
    assert main(["info", "--model", "lcie_tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "lcie_tiny"
    assert report["gflops"] > 0 and report["params_M"] > 0
    assert report["E"] == report["D"] + 4  # 2x2 image tokens at 64x64


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["info", "--model", "lcie_nope"]) == 1
    err = capsys.readouterr().err
    assert "unknown model preset 'lcie_nope'" in err and "lcie_tiny" in err


def test_models_subcommand(capsys):
    assert main(["models"]) == 0
    assert "lcie_r101_448" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "lcie_fast", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("lcie-fast ")


def test_importing_the_package_imports_no_heavy_optional_module():
    code = (
        "import sys, lcie_fast, lcie_fast.models, lcie_fast.metrics, lcie_fast.ops;"
        "heavy = [m for m in ('tensorrt', 'nvidia.dali', 'triton', 'modelopt', 'onnxruntime', 'lcie_fast._C') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
