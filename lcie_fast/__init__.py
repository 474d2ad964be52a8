"""lcie_fast: fast multi-label image tagging with the LCIE recogniser (ECCV 2024).

Importing this package imports torch and timm only; TensorRT, DALI, Triton, ModelOpt,
ONNX Runtime and the compiled extension load at first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .models import create_model, list_models

__all__ = ["__version__", "create_model", "list_models"]
