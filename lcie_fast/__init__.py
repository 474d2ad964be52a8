"""lcie_fast: fast multi-label image tagging with the LCIE recogniser (ECCV 2024).

Importing this package imports torch and timm only; TensorRT, DALI, Triton, ModelOpt,
ONNX Runtime and the compiled extension load at first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .models import create_model, list_models


def __getattr__(name: str):
    # lcie_fast.Tagger without importing the tagging machinery at package import
    if name == "Tagger":
        from .tagger import Tagger

        return Tagger
    raise AttributeError(f"module 'lcie_fast' has no attribute {name!r}")


__all__ = ["Tagger", "__version__", "create_model", "list_models"]
