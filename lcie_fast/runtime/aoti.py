"""AOTInductor backend: a ``.pt2`` package compiled by ``lcie-fast export --aoti``, run without the model's code.

The package is a zip archive (torch's PT2 archive) holding one compiled model, ``model``: a
shared library with the weights appended, its C++ sources, and a ``*_metadata.json`` that
AOTInductor writes from ``aot_inductor.metadata``. lcie-fast stores its
:class:`~lcie_fast.metadata.ModelMetadata` there under :data:`~lcie_fast.artifacts.METADATA_KEY`
(with the I/O contract and the build's device, precision and batch range), beside torch's own
keys (``AOTI_DEVICE_KEY``, ``AOTI_CPU_ISA``, ``AOTI_COMPUTE_CAPABILITY`` ...). Everything a
loader checks is read from that JSON before the library is loaded: loading a library built
for another device, CPU or GPU would crash the process, not raise, so such a package is
refused with the reason instead, as is an archive whose entries fail their CRC (a damaged
library crashes the process too).

A package is native code: loading it runs the library inside it. Like a version-compatible
TensorRT bundle (:func:`~lcie_fast.artifacts.host_code_decision`) it is loaded only when the
caller opts in with ``allow_host_code=True``, for packages from a source they trust.

Torch APIs used (present from torch 2.6; the project runs 2.11 and 2.14):
``torch._inductor.aoti_load_package``; the runner's ``__call__``.
"""

from __future__ import annotations

import inspect
import platform
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._inductor

from ..artifacts import (  # noqa: F401 - re-exported: the package contract lives in artifacts
    AOTI_FORMAT,
    AOTI_FORMAT_VERSION,
    AOTI_MODEL_NAME,
    METADATA_KEY,
    PackageError,
    _lcie_metadata,
    read_aoti_info,
    read_aoti_metadata,
)
from ..errors import InvalidInputError
from .base import Backend, BackendError

# torch's ISA names (``str(torch._inductor.cpu_vec_isa.pick_vec_isa())``) -> /proc/cpuinfo flags
_ISA_FLAGS = {"AVX2": ("avx2",), "AVX512": ("avx512f",), "AVX512_VNNI": ("avx512_vnni", "avx512vnni"),
              "AMX_TILE": ("amx_tile",), "AVX512_BF16": ("avx512_bf16",), "AVX512_FP16": ("avx512_fp16",)}


class AotiError(BackendError, PackageError):
    """A ``.pt2`` package that is damaged, not from lcie-fast, or built for another machine."""


HOST_CODE_REASON = ("a .pt2 package is a compiled native library that runs in this process; load it only from a "
                    "source you trust, opting in with --allow-host-code (lcie-fast tag / bench / parity), "
                    "open_backend(path, allow_host_code=True) or Tagger.load(path, allow_host_code=True)")


def aoti_device_problems(info: dict[str, Any], device: str) -> list[str]:
    """Why the package described by ``info`` must not be loaded on ``device`` here (empty when it may).

    Checked: the device type it was compiled for, the platform and machine, on the CPU the
    vector ISA its kernels use, on a GPU that one is visible and has the same compute capability.
    """
    problems = []
    built = str(info.get("AOTI_DEVICE_KEY", "?"))
    target = device.split(":")[0]
    if built != target:
        problems.append(f"it was compiled for {built}, not {target}; export it again with --device {target}")
    if info.get("AOTI_PLATFORM", sys.platform) != sys.platform or \
            info.get("AOTI_MACHINE", platform.machine()) != platform.machine():
        problems.append(f"it was compiled on {info.get('AOTI_PLATFORM')}-{info.get('AOTI_MACHINE')}, "
                        f"this is {sys.platform}-{platform.machine()}")
    if built == "cpu" and target == "cpu":
        from ..cpu import cpu_flags

        flags = cpu_flags()
        missing = [isa for isa in str(info.get("AOTI_CPU_ISA", "")).split()
                   if isa in _ISA_FLAGS and flags and not flags & set(_ISA_FLAGS[isa])]
        if missing:
            problems.append(f"its kernels use {' '.join(missing)}, which this CPU lacks; export it on this machine")
    if built == "cuda" and target == "cuda":
        if not torch.cuda.is_available():
            problems.append("no CUDA GPU is visible")
        else:
            index = int(device.split(":")[1]) if ":" in device else 0
            major, minor = torch.cuda.get_device_capability(index)
            built_cc = str(info.get("AOTI_COMPUTE_CAPABILITY", ""))
            if built_cc and built_cc != f"{major}{minor}":
                problems.append(f"it was compiled for compute capability {built_cc}, this "
                                f"{torch.cuda.get_device_name(index)} is {major}{minor}; export it on this GPU")
    return problems


def _check_crcs(path: Path) -> None:
    """Every entry of the archive against its CRC-32 (a damaged library would crash the loader)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise AotiError(f"{path} is not a valid .pt2 package (a zip archive): {err}") from None
    if bad is not None:
        raise AotiError(f"{path} is damaged: its entry {bad} fails its CRC check; export or copy it again")


class AotiBackend(Backend):
    """An AOTInductor package exported by lcie-fast, loaded without lcie-fast's model code.

    Args:
        path: The ``.pt2`` package (its metadata gives labels, preprocessing, precision).
        device: ``cpu`` or ``cuda[:N]`` (default: the device it was compiled for).
        allow_host_code: The caller trusts the package's native library (refused otherwise).

    Raises:
        AotiError: a damaged package, one built for another device, CPU or GPU (every reason
            named), one the caller did not allow to run, or one torch cannot load.
        MetadataError: a package without lcie-fast metadata.
    """

    name = "aoti"

    def __init__(self, path: str | Path, device: str | None = None, *, allow_host_code: bool = False) -> None:
        self.path = Path(path)
        info = read_aoti_info(self.path)
        self.meta = _lcie_metadata(info, self.path)
        build = info[METADATA_KEY].get("build", {})
        self.precision = self.meta.precision
        built = str(info.get("AOTI_DEVICE_KEY", "cpu"))
        device = device or built
        problems = aoti_device_problems(info, device) + ([] if allow_host_code else [HOST_CODE_REASON])
        if problems:
            raise AotiError(f"{self.path} is refused on {device}: " + "; ".join(problems))
        self.torch_device = torch.device(device)
        self.device = str(self.torch_device)
        self._max_batch = int(build.get("max_batch", 0)) or None
        _check_crcs(self.path)
        options = {}
        if self.torch_device.index is not None:  # cuda:N; older torch loads on the current GPU only
            if "device_index" not in inspect.signature(torch._inductor.aoti_load_package).parameters:
                raise AotiError(f"{self.path}: torch {torch.__version__} cannot choose the GPU a package loads on; "
                                f"use device cuda (the current GPU) or a newer torch")
            options["device_index"] = self.torch_device.index
        try:
            self.runner = torch._inductor.aoti_load_package(str(self.path), **options)
        except Exception as err:  # noqa: BLE001 - the loader raises RuntimeError, OSError, zip errors
            raise AotiError(f"{self.path}: torch {torch.__version__} cannot load it "
                            f"({type(err).__name__}: {' '.join(str(err).split())[:400]})") from None

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def _prepare(self, images: Any) -> Any:
        x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        size = self.meta.preprocess.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise InvalidInputError(f"{self.path}: expected images of shape (N, 3, {size}, {size}), "
                                    f"got {tuple(x.shape)}")
        # the compiled kernels index an NCHW-contiguous float32 input
        return x.to(self.torch_device, dtype=torch.float32, non_blocking=True).contiguous()

    def infer(self, images: Any) -> Any:
        """Normalised (N, 3, S, S) images -> (N, C) float32 logits (torch, on the backend's device);
        batches beyond the compiled range run in chunks."""
        x = self._prepare(images)  # (N, 3, S, S)
        step = self._max_batch or len(x)
        with torch.inference_mode():
            if len(x) == 0:
                return torch.empty(0, self.meta.num_classes, device=self.torch_device)
            outputs = [self._run(x[start:start + step].contiguous()) for start in range(0, len(x), step)]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # (N, C)

    def _run(self, chunk: Any) -> Any:
        out = self.runner(chunk)
        out = out[0] if isinstance(out, (list, tuple)) else out
        if out.ndim != 2 or out.shape[1] != self.meta.num_classes:
            raise AotiError(f"{self.path}: the compiled model returned {tuple(out.shape)}, expected "
                            f"({len(chunk)}, {self.meta.num_classes}) for the metadata's labels")
        return out.float()

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def close(self) -> None:
        self.runner = None
