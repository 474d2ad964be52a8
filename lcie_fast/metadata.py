"""The metadata every checkpoint, ONNX graph and engine bundle carries, as plain data.

Preprocessing is defined here once (through :class:`~lcie_fast.config.PreprocessConfig`) and
read back from this metadata by every backend, so a graph cannot be fed differently from
how its model was trained.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import ModelConfig, PreprocessConfig, from_dict, to_dict
from .errors import UserError

FORMAT_VERSION = 1

# Model fields added after format 1 was fixed, with the value that reproduces an artefact
# written before they existed (its weights were built and trained that way).
LEGACY_MODEL_FIELDS: dict[str, Any] = {"branch_init": "paper", "spatial_norm": "none", "fused_norm": False}

# Bounds on the sizes an artefact's metadata may ask for, far beyond any real model: a file
# from an untrusted source must not make the loader allocate gigabytes before any weight
# is compared with the architecture it claims.
MODEL_LIMITS: dict[str, tuple[int, int]] = {
    "img_size": (1, 4096),
    "num_classes": (1, 100_000),
    "decoder_layers": (0, 64),
    "encoder_layers": (0, 64),
    "num_heads": (1, 256),
    "ffn_dim": (1, 65_536),
}


class MetadataError(UserError, ValueError):
    """Metadata that is missing or malformed, with the field named."""


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to rebuild, feed and interpret a model.

    Attributes:
        preset: Registered preset name the model was built from.
        label_names: Name of each of the C outputs, in logit order.
        model_config: The resolved :class:`~lcie_fast.config.ModelConfig`.
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``: what the artefact computes in.
        lcie_fast_version: Version of lcie_fast that wrote the artefact.
        extra: Free-form plain data (epoch, metrics, calibration manifest, TensorRT build info).
    """

    preset: str
    label_names: tuple[str, ...]
    model_config: ModelConfig
    precision: str = "fp32"
    lcie_fast_version: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.label_names) != self.model_config.num_classes:
            raise MetadataError(
                f"label_names has {len(self.label_names)} names but the model has "
                f"{self.model_config.num_classes} classes"
            )
        if self.model_config.preprocess is None:
            raise MetadataError("model_config.preprocess must be resolved (build the model first)")
        for name, (low, high) in MODEL_LIMITS.items():
            value = getattr(self.model_config, name)
            if not low <= value <= high:
                raise MetadataError(f"model_config.{name}={value} is outside [{low}, {high}]")
        size = self.model_config.preprocess.input_size
        if not 1 <= size <= MODEL_LIMITS["img_size"][1]:
            raise MetadataError(f"preprocess.input_size={size} is outside [1, {MODEL_LIMITS['img_size'][1]}]")

    @property
    def preprocess(self) -> PreprocessConfig:
        """Input preprocessing: size, mean, std, resize rule."""
        assert self.model_config.preprocess is not None
        return self.model_config.preprocess

    @property
    def num_classes(self) -> int:
        return self.model_config.num_classes

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the preprocessing also spelled out at the top level for readers."""
        data = to_dict(self)
        data["format_version"] = FORMAT_VERSION
        data["preprocess"] = to_dict(self.preprocess)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMetadata":
        """Inverse of :meth:`to_dict`; raises :class:`MetadataError` naming a bad field."""
        if not isinstance(data, dict):
            raise MetadataError(f"metadata must be a mapping, got {type(data).__name__}")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise MetadataError(
                f"metadata format_version {version!r} is newer than this lcie_fast understands "
                f"({FORMAT_VERSION}); upgrade lcie-fast"
            )
        missing = [k for k in ("preset", "label_names", "model_config") if k not in data]
        if missing:
            raise MetadataError(f"metadata lacks field(s) {missing}")
        try:
            model_config = data["model_config"]
            if isinstance(model_config, dict):
                model_config = {**LEGACY_MODEL_FIELDS, **model_config}
            config = from_dict(ModelConfig, model_config, where="model_config.")
            return cls(
                preset=str(data["preset"]),
                label_names=tuple(str(n) for n in data["label_names"]),
                model_config=config,
                precision=str(data.get("precision", "fp32")),
                lcie_fast_version=str(data.get("lcie_fast_version", "")),
                extra=dict(data.get("extra") or {}),
            )
        except (ValueError, TypeError) as err:
            raise MetadataError(f"bad metadata: {err}") from err


def metadata_for(model: Any, label_names: list[str] | tuple[str, ...] | None = None,
                 precision: str = "fp32", extra: dict[str, Any] | None = None) -> ModelMetadata:
    """Metadata of a built model (``model.config``, ``model.preset``) and its label names."""
    from . import __version__

    config: ModelConfig = model.config
    names = tuple(label_names) if label_names is not None else tuple(f"class_{i}" for i in range(config.num_classes))
    return ModelMetadata(
        preset=getattr(model, "preset", "custom"),
        label_names=names,
        model_config=config,
        precision=precision,
        lcie_fast_version=__version__,
        extra=dict(extra or {}),
    )
