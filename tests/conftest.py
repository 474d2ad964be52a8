"""Test conventions.

Markers (declared in pyproject.toml), each skipping with its reason where it cannot run:
``gpu`` (no CUDA GPU), ``tensorrt`` (TensorRT not importable), ``dali`` (DALI not
installed), ``triton`` (no Triton, or neither a GPU nor the interpreter), ``interpreter``
(Triton kernels on the CPU: TRITON_INTERPRET=1 must be set before Triton is first imported,
so ``make test`` runs these in a second pytest pass), ``slow`` (about 20 s or more on 2 cores;
runs by default; ``--fast`` skips it, as ``make test`` does; ``make test-slow`` runs only these).

Real-data tests find ``traffic5`` through ``LCIE_FAST_DATA`` (default ``../shared/data``
beside the repository root) and skip with the path they looked at when it is absent.
Nothing here queries a device at import time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "LCIE_FAST_DATA"
# read once, before any test imports Triton: the interpreter cannot be switched on later
INTERPRETER_AT_START = os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def data_root() -> Path:
    return Path(os.environ.get(DATA_ENV) or REPO_ROOT.parent / "shared" / "data")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", help="skip tests marked slow")


def _skip_reason(marker: str, config: pytest.Config) -> str | None:
    if marker == "slow":
        return "slow test skipped by --fast" if config.getoption("--fast") else None
    if marker == "gpu":
        import torch

        return None if torch.cuda.is_available() else "needs a CUDA GPU; none is visible"
    if marker == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return "needs TensorRT, which cannot be installed on the project's machines (notes/tensorrt.md)"
        try:
            import tensorrt  # noqa: F401
        except Exception as err:  # noqa: BLE001
            return f"TensorRT does not import here: {err}"
        return None
    if marker == "dali":
        return None if importlib.util.find_spec("nvidia.dali") else "needs NVIDIA DALI: pip install 'lcie-fast[dali]'"
    if marker == "interpreter":
        if importlib.util.find_spec("triton") is None:
            return "needs Triton (it ships with the CUDA builds of torch)"
        if not INTERPRETER_AT_START:
            return "Triton interpreter tests need TRITON_INTERPRET=1 set before pytest starts (make test runs them)"
        return None
    if marker == "ray":
        return None if importlib.util.find_spec("ray") else "needs Ray Data: pip install 'lcie-fast[ray]'"
    if marker == "triton":
        from lcie_fast.ops.triton_support import triton_runtime_reasons

        reasons = triton_runtime_reasons()
        return "; ".join(reasons) if reasons else None
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache: dict[str, str | None] = {}
    for item in items:
        for marker in ("slow", "gpu", "tensorrt", "dali", "triton", "interpreter", "ray"):
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in cache:
                cache[marker] = _skip_reason(marker, config)
            if cache[marker]:
                item.add_marker(pytest.mark.skip(reason=cache[marker]))


@pytest.fixture(scope="session")
def traffic5() -> Path:
    """Root of the real traffic5 photo set; skips with the path searched when absent."""
    root = data_root() / "traffic5"
    if not (root / "train" / "labels.csv").is_file():
        pytest.skip(f"traffic5 not found at {root} (set {DATA_ENV} to the folder holding traffic5/)")
    return root


@pytest.fixture(scope="session")
def tiny5_checkpoint(tmp_path_factory) -> Path:
    """A saved ``lcie_tiny`` checkpoint with fixed random weights and traffic5's five labels."""
    import torch

    from lcie_fast import create_model
    from lcie_fast.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", create_model("lcie_tiny", num_classes=5),
                           label_names=["bus", "car", "motorbike", "person", "truck"])


@pytest.fixture(scope="session")
def tiny5_onnx(tiny5_checkpoint, tmp_path_factory) -> Path:
    """:func:`tiny5_checkpoint` exported once to an FP32 ``model.onnx`` (needs the deploy extra)."""
    pytest.importorskip("onnx", reason="needs onnx: pip install 'lcie-fast[deploy]'")
    from lcie_fast.deploy.export import export_onnx
    from lcie_fast.models.checkpoint import model_from_checkpoint

    model, meta = model_from_checkpoint(tiny5_checkpoint)
    return export_onnx(model, meta, tmp_path_factory.mktemp("tiny5_graph") / "model.onnx")


@pytest.fixture(scope="session")
def tiny5_tagger(tiny5_checkpoint):
    """A tagger of :func:`tiny5_checkpoint` at threshold 0.45 (its random scores sit near 0.5: some labels kept)."""
    from lcie_fast.tagger import Tagger

    return Tagger.load(tiny5_checkpoint, thresholds=0.45)


@pytest.fixture
def tiny_model():
    """A fresh ``lcie_tiny`` model with fixed random weights."""
    import torch

    from lcie_fast import create_model

    torch.manual_seed(0)
    return create_model("lcie_tiny")
