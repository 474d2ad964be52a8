"""AOTInductor export of the inference path: a ``.pt2`` package that runs without the model's code.

The package: input (N, 3, S, S) float32 NCHW, normalised as the metadata says, N from 1 to
``max_batch`` (a dynamic dimension); output (N, C) float32 logits. It is traced with
``torch.export`` on the reference ops (no custom kernels; the partial-label branch never
reaches it, eval mode), compiled by AOTInductor for one device and packaged with the model's
metadata inside (``aot_inductor.metadata``: read back by
:func:`~lcie_fast.runtime.aoti.read_aoti_info` without loading the library). The package is
then loaded as :class:`~lcie_fast.runtime.aoti.AotiBackend` would load it and compared with
eager FP32 PyTorch; an export over the tolerance is refused.

Torch APIs used (present from torch 2.6; the project runs 2.11 and 2.14):
``torch.export.export`` with ``torch.export.Dim``, ``torch._inductor.aoti_compile_and_package``
(``package_path``, ``inductor_configs``) and ``torch._inductor.aoti_load_package``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._inductor

from ..artifacts import AOTI_FORMAT, AOTI_FORMAT_VERSION, INPUT_NAME, METADATA_KEY, OUTPUT_NAME
from ..errors import InvalidInputError
from ..metadata import ModelMetadata
from ..runtime.aoti import AotiBackend
from .export import ExportError

DEFAULT_MAX_BATCH = 64
# max |logit - eager FP32 logit| a package may show on the check inputs, by precision
TOLERANCE = {"fp32": 1e-4, "bf16": 0.25, "fp16": 0.05}
# Inductor settings of every package: freezing folds the weights into the graph as constants,
# which lets the CPU backend pre-pack them for oneDNN convolutions and GEMMs
INDUCTOR_CONFIGS: dict[str, Any] = {"freezing": True}

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class _Boundary(torch.nn.Module):
    """``model`` in ``dtype`` and memory format behind the package's contract: float32 NCHW images
    in, float32 logits out. The conversions are traced into the package, where Inductor fuses them."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(dtype=dtype, memory_format=self.memory_format)
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float32 -> (N, C) float32."""
        x = images.to(dtype=self.dtype, memory_format=self.memory_format)  # (N, 3, S, S)
        return self.model(x).float()  # (N, C)


def aoti_problems(device: str, precision: str) -> list[str]:
    """Why a package for ``device`` at ``precision`` cannot be built here (empty when it can)."""
    problems = []
    target = device.split(":")[0]
    if target not in ("cpu", "cuda"):
        problems.append(f"device must be cpu or cuda[:N], got {device!r}")
    elif target == "cuda" and not torch.cuda.is_available():
        problems.append("device cuda: no CUDA GPU is visible (a GPU package is compiled on the GPU it runs on)")
    if precision not in _DTYPES:
        problems.append(f"precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
    elif precision == "fp16" and target == "cpu":
        problems.append("fp16 on the CPU: CPUs have no FP16 arithmetic, it runs slower than fp32 (use fp32 or bf16)")
    if not hasattr(torch.export, "Dim"):
        problems.append(f"torch {torch.__version__} has no torch.export.Dim (AOTInductor packages need torch >= 2.6)")
    for name in ("aoti_compile_and_package", "aoti_load_package"):
        if not hasattr(torch._inductor, name):
            problems.append(f"torch {torch.__version__} has no torch._inductor.{name} (AOTInductor packages "
                            f"need torch >= 2.6)")
    return problems


def export_aoti(model: torch.nn.Module, meta: ModelMetadata, path: str | Path, *, device: str = "cpu",
                precision: str = "fp32", channels_last: bool = True, max_batch: int = DEFAULT_MAX_BATCH,
                tolerance: float | None = None, check_images: np.ndarray | torch.Tensor | None = None,
                inductor_configs: Mapping[str, Any] | None = None, log: Any = print) -> dict[str, Any]:
    """Compile ``model``'s inference path into an AOTInductor package at ``path`` and check it against eager.

    Args:
        model: An LCIE model (any device or memory format; a contiguous copy on ``device`` is exported).
        meta: Its metadata, embedded in the package (with ``precision``).
        path: Output ``.pt2`` file.
        device: ``cpu`` or ``cuda[:N]``: the package runs there only.
        precision: ``fp32``; ``bf16``, or ``fp16`` on a GPU: the whole model in that dtype behind
            float32 inputs and logits.
        channels_last: Run the model channels-last inside the package (its input stays NCHW).
        max_batch: Largest batch the package accepts (the dynamic batch runs from 1).
        tolerance: Max |logit difference| to eager FP32 on the check inputs (default :data:`TOLERANCE`).
        check_images: Normalised (N, 3, S, S) images to compare on (default: 11 random images),
            run in batches of 1, 2, 3 and 5.
        inductor_configs: Inductor settings over :data:`INDUCTOR_CONFIGS`.
        log: Progress lines (``print``; ``lambda *_: None`` for none).

    Returns:
        A summary: path, device, precision, batch range, export and compile seconds, and the check
        (``max_abs``, ``mean_abs``, ``images``, ``tolerance``).

    Raises:
        InvalidInputError: a device, precision or batch range that cannot be built here (every reason).
        ExportError: ``torch.export`` or AOTInductor failed, or the package is over the tolerance.
    """
    from .. import ops

    problems = aoti_problems(device, precision)
    if int(max_batch) != max_batch or max_batch < 1:
        problems.append(f"max_batch must be a whole number >= 1, got {max_batch!r}")
    if problems:
        raise InvalidInputError("cannot export an AOTInductor package: " + "; ".join(problems))
    path = Path(path)
    if path.suffix != ".pt2":
        raise InvalidInputError(f"{path}: an AOTInductor package must end in .pt2")
    path.parent.mkdir(parents=True, exist_ok=True)
    target = torch.device(device)
    size = meta.preprocess.input_size
    # a copy: the caller's model stays on its device, in its dtype and memory format
    model = copy.deepcopy(model).float().to(target, memory_format=torch.contiguous_format).eval()
    wrapped = _Boundary(copy.deepcopy(model), _DTYPES[precision], channels_last)
    meta = dataclasses.replace(meta, precision=precision)
    configs = {**INDUCTOR_CONFIGS, **(inductor_configs or {}),
               "aot_inductor.metadata": {METADATA_KEY: json.dumps(_package_entry(meta, max_batch))}}

    example = torch.randn(min(2, max_batch), 3, size, size, device=target)  # (2, 3, S, S)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    log(f"torch.export of {meta.preset} ({precision}, {target}, batch 1-{max_batch}) ...")
    start = time.perf_counter()
    try:
        with ops.use_impl("ref"), torch.no_grad():
            program = torch.export.export(wrapped, (example,), dynamic_shapes=({0: batch},))
    except Exception as err:  # noqa: BLE001 - torch.export raises many kinds; the message is what matters
        raise ExportError(f"torch.export failed: {type(err).__name__}: {err}") from err
    export_seconds = time.perf_counter() - start
    log(f"AOTInductor compile to {path} (minutes on a CPU) ...")
    start = time.perf_counter()
    try:
        # no_grad: Inductor applies freezing (BN folding, oneDNN weight pre-packing) only without autograd
        with ops.use_impl("ref"), torch.no_grad():
            written = torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                               inductor_configs=configs)
    except Exception as err:  # noqa: BLE001 - Inductor and the C++ compiler raise many kinds
        raise ExportError(f"AOTInductor compile failed: {type(err).__name__}: {err}") from err
    compile_seconds = time.perf_counter() - start
    if Path(written).resolve() != path.resolve():
        raise ExportError(f"AOTInductor wrote {written}, not {path}")

    check = compare_aoti_with_eager(path, model, _check_inputs(check_images, size, max_batch), device)
    check["tolerance"] = TOLERANCE[precision] if tolerance is None else float(tolerance)
    log(f"package vs eager FP32: max |dlogit| {check['max_abs']:.3g}, mean {check['mean_abs']:.3g} "
        f"on {check['images']} images (tolerance {check['tolerance']:g})")
    if not check["max_abs"] <= check["tolerance"]:
        raise ExportError(f"{path}: max |logit difference| to eager FP32 is {check['max_abs']:.3g}, over the "
                          f"tolerance {check['tolerance']:g} for {precision}")
    return {"path": str(path), "device": str(target), "precision": precision, "channels_last": channels_last,
            "batch": [1, max_batch],
            "torch_version": torch.__version__, "export_seconds": round(export_seconds, 1),
            "compile_seconds": round(compile_seconds, 1),
            "inductor_configs": {**INDUCTOR_CONFIGS, **(inductor_configs or {})}, "check": check}


def compare_aoti_with_eager(path: str | Path, model: torch.nn.Module, images: np.ndarray | torch.Tensor,
                            device: str = "cpu") -> dict[str, float]:
    """Max and mean |logit difference| of the package (as :class:`AotiBackend` loads it) against eager FP32."""
    from .. import ops

    backend = AotiBackend(path, device, allow_host_code=True)  # the library it has just compiled
    model = model.float().to(backend.torch_device).eval()
    x = torch.as_tensor(images, dtype=torch.float32)  # (N, 3, S, S)
    try:
        with ops.use_impl("ref"), torch.no_grad():
            diffs = [(backend.infer(chunk) - model(chunk.to(backend.torch_device))).abs().double().cpu()
                     for chunk in x.split(_odd_batches(len(x)))]  # (n, C) each
    finally:
        backend.close()
    diff = torch.cat(diffs)  # (N, C)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "images": int(len(x))}


def _odd_batches(count: int) -> list[int]:
    """``count`` split into batches of 1, 2, 3, 5, 1, 2 ...: several sizes of the dynamic batch."""
    sizes, cycle = [], (1, 2, 3, 5)
    while count > 0:
        sizes.append(min(cycle[len(sizes) % len(cycle)], count))
        count -= sizes[-1]
    return sizes


def _check_inputs(images: np.ndarray | torch.Tensor | None, size: int, max_batch: int) -> torch.Tensor:
    """The given images, or 11 fresh random ones (never zeros)."""
    if images is not None:
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size) or len(x) == 0:
            raise InvalidInputError(f"check_images: expected (N, 3, {size}, {size}) with N >= 1, got {tuple(x.shape)}")
        return x
    generator = torch.Generator().manual_seed(0)
    return torch.randn(11, 3, size, size, generator=generator)  # (N, 3, S, S)


def _package_entry(meta: ModelMetadata, max_batch: int) -> dict[str, Any]:
    """What the package carries under METADATA_KEY: the metadata, the I/O contract and the build."""
    size = meta.preprocess.input_size
    return {"format": AOTI_FORMAT, "format_version": AOTI_FORMAT_VERSION, "metadata": meta.to_dict(),
            "io": {"input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "min": [1, 3, size, size],
                             "max": [max_batch, 3, size, size]},
                   "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", meta.num_classes]},
                   "normalised": True},
            "build": {"max_batch": max_batch, "precision": meta.precision, "torch_version": torch.__version__}}
