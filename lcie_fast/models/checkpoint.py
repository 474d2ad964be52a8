"""Checkpoints: plain data only, loaded with ``torch.load(weights_only=True)``, written atomically.

Layout of a checkpoint file (a torch zip file holding one dict)::

    {"format": "lcie_fast.checkpoint", "format_version": 1,
     "meta": ModelMetadata.to_dict(),          # preset, labels, config, preprocessing
     "model": state_dict,                      # tensors
     "train_state": {...} or absent}           # optimiser, scheduler, scaler, EMA, RNG, epoch

Safe loading means a checkpoint from an untrusted source cannot run code: anything but
tensors, numbers, strings, lists and dicts is refused with an error.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..io import atomic_write
from ..metadata import MetadataError, ModelMetadata, metadata_for

CHECKPOINT_FORMAT = "lcie_fast.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(UserError, ValueError):
    """A file that is not a usable lcie_fast checkpoint; the message says which and why."""


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: metadata, model weights and (for training runs) the train state."""

    path: Path
    meta: ModelMetadata
    model_state: dict[str, torch.Tensor]
    train_state: dict[str, Any] | None


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    *,
    label_names: list[str] | tuple[str, ...] | None = None,
    meta: ModelMetadata | None = None,
    train_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and optionally a training state) to ``path`` atomically.

    Args:
        path: Destination; written through a temporary file and renamed, so a crash never
            leaves a truncated checkpoint where a good one was.
        model: A model built by :func:`lcie_fast.create_model` (it carries ``config``).
        label_names: Names of the C outputs (default ``class_0`` ...).
        meta: Metadata to write instead of deriving it from ``model`` and ``label_names``.
        train_state: Plain-data training state (see :mod:`lcie_fast.train`).
        extra: Free-form plain data stored in ``meta.extra`` (epoch, metrics ...).
    """
    meta = meta or metadata_for(_unwrap(model), label_names, extra=extra)
    if extra and meta.extra is not extra:
        meta = dataclasses.replace(meta, extra={**meta.extra, **extra})
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "meta": meta.to_dict(),
        "model": state,
    }
    if train_state is not None:
        payload["train_state"] = train_state
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)
    return path


def load_checkpoint(path: str | Path, *, expected_preset: str | None = None) -> Checkpoint:
    """Read and validate a checkpoint with safe (weights-only) loading.

    Raises:
        CheckpointError: the file is missing, not a torch file, holds objects safe loading
            refuses, is a torch file of another kind, or belongs to another preset.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err).lower() or "weights only" in str(err).lower():
            raise CheckpointError(
                f"{path} holds Python objects that safe loading refuses (a checkpoint from an "
                f"untrusted source could run code); lcie_fast checkpoints hold plain data only. "
                f"Detail: {str(err).splitlines()[0]}"
            ) from None
        raise CheckpointError(f"{path} is not a torch checkpoint file: {err}") from None
    except Exception as err:  # noqa: BLE001 - any decode failure means "not a checkpoint"
        raise CheckpointError(f"{path} is not a torch checkpoint file ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is a torch file but not an lcie_fast checkpoint (top-level: {keys}). "
            f"Backbone ImageNet weights go to create_model(..., pretrained=path) instead."
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {version!r} is newer than this lcie_fast reads")
    try:
        meta = ModelMetadata.from_dict(payload.get("meta"))
    except MetadataError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if expected_preset is not None and meta.preset != expected_preset:
        raise CheckpointError(
            f"{path} is a checkpoint of preset '{meta.preset}', not of '{expected_preset}'"
        )
    model_state = payload.get("model")
    if not isinstance(model_state, dict) or not all(isinstance(v, torch.Tensor) for v in model_state.values()):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict of tensors")
    return Checkpoint(path=path, meta=meta, model_state=model_state, train_state=payload.get("train_state"))


def model_from_checkpoint(
    checkpoint: Checkpoint | str | Path, *, expected_preset: str | None = None
) -> tuple[torch.nn.Module, ModelMetadata]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode, CPU).

    The architecture the metadata describes is first built on the meta device (no memory)
    and every weight's name and shape compared with it: metadata that claims a larger model
    than its weights is refused before anything is allocated.

    Files written while the shared correlation encoder was saved twice (``encoder.*`` and
    ``partial.encoder.*``) load too: the model's load-state-dict pre-hook drops the copy.

    Raises:
        CheckpointError: as :func:`load_checkpoint`, or weights that do not fit the config.
    """
    from . import lcie

    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint, expected_preset=expected_preset)
    meta = checkpoint.meta
    check_weights_fit(checkpoint)
    model = lcie.build(meta.model_config, pretrained=None, preset=meta.preset)
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint.path}: weights do not fit its own model config: {err}") from None
    return model.eval(), meta


def check_weights_fit(checkpoint: Checkpoint) -> None:
    """Compare the checkpoint's weights with the architecture its metadata implies, in no memory.

    Raises:
        CheckpointError: naming the file and the first weight whose shape differs, or the
            weights missing or left over.
    """
    from . import lcie

    meta = checkpoint.meta
    try:
        with torch.device("meta"):
            skeleton = lcie.build(meta.model_config, pretrained=None, preset=meta.preset)
    except UserError as err:
        raise CheckpointError(f"{checkpoint.path}: its metadata describes a model that cannot be built: {err}") from None
    except (RuntimeError, NotImplementedError):
        # a backbone whose constructor reads tensor values cannot be built on the meta device;
        # the metadata's size bounds (metadata.MODEL_LIMITS) still cap what the real build costs
        return
    state = checkpoint.model_state
    expected = skeleton.state_dict()
    mismatched = [key for key, tensor in expected.items() if key in state and state[key].shape != tensor.shape]
    if mismatched:
        key = mismatched[0]
        more = f" (and {len(mismatched) - 1} more weights)" if len(mismatched) > 1 else ""
        raise CheckpointError(
            f"{checkpoint.path}: weights do not fit the architecture its metadata describes "
            f"(ffn_dim={meta.model_config.ffn_dim}, num_heads={meta.model_config.num_heads}, "
            f"img_size={meta.model_config.img_size} ...): '{key}' is {tuple(state[key].shape)} in the file, "
            f"the metadata implies {tuple(expected[key].shape)}{more}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copies onto meta tensors are no-ops, and say so
            skeleton.load_state_dict(state)  # key check, with the model's own pre-hooks
    except RuntimeError as err:
        raise CheckpointError(
            f"{checkpoint.path}: weights do not fit the architecture its metadata describes: "
            f"{' '.join(str(err).split())[:800]}"
        ) from None


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
