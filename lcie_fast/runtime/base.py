"""One interface for every inference backend: normalised images in, logits out.

Input: a float32 (N, 3, S, S) batch, normalised with the model's own preprocessing (NumPy, or
a torch tensor on any device). Output: (N, C) float32 logits. Preprocessing never lives in
a backend: it is read from the model's metadata by the caller (:mod:`lcie_fast.tagger`).
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from ..errors import UserError
from ..metadata import ModelMetadata


class BackendError(UserError, RuntimeError):
    """A backend that cannot be built here, with the reason."""


class Backend(abc.ABC):
    """An inference engine for one model at one precision.

    Attributes:
        name: ``eager``, ``compiled``, ``onnxruntime`` or ``tensorrt``.
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``.
        device: ``cpu`` or ``cuda:N``.
        meta: The model's metadata (labels, preprocessing).
    """

    name: str = ""
    precision: str = "fp32"
    device: str = "cpu"
    meta: ModelMetadata

    @property
    def label(self) -> str:
        """Short description for tables, e.g. ``onnxruntime int8 (cpu)``."""
        return f"{self.name} {self.precision} ({self.device})"

    @property
    def max_batch(self) -> int | None:
        """Largest batch the backend accepts (None: any)."""
        return None

    @abc.abstractmethod
    def infer(self, images: Any) -> Any:
        """Normalised (N, 3, S, S) float32 images -> (N, C) logits (NumPy or torch)."""

    def infer_numpy(self, images: Any) -> np.ndarray:
        """Logits as a float32 NumPy array."""
        out = self.infer(images)
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    def synchronize(self) -> None:
        """Wait for queued device work (timing)."""

    def close(self) -> None:
        """Release device memory and sessions."""
