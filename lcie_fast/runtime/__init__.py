"""Inference backends behind one interface, and the one public way to get one: :func:`open_backend`.

A backend takes a normalised float32 (N, 3, S, S) batch and returns (N, C) logits
(:class:`~lcie_fast.runtime.base.Backend`). :func:`open_backend` picks the best backend that can
run a checkpoint, an ONNX graph, an AOTInductor package or an engine bundle here (or the one asked for), or
the :class:`~lcie_fast.runtime.triton_client.TritonBackend` of a model served by Triton (an ``http(s)://`` URL), and
:func:`~lcie_fast.runtime.variants.backend_variants` lists every backend worth comparing for
benchmarks and parity. The tagger, ``bench``, ``parity`` and the demo all go through these two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import artifact_kind
from .base import Backend, BackendError
from .triton_client import URL_FORM, is_server_url

BACKENDS = ("auto", "tensorrt", "compiled", "eager", "onnxruntime", "aoti", "triton")

__all__ = ["BACKENDS", "Backend", "BackendError", "is_server_url", "open_backend"]


def open_backend(model: str | Path | Any, backend: str = "auto", device: str | None = None, *,
                 meta: Any = None, precision: str | None = None, fast_ops: str = "auto", channels_last: bool = True,
                 cuda_graphs: bool = False, allow_host_code: bool = False) -> Backend:
    """The named backend, or the first of the ``auto`` order that builds here.

    ``auto`` order: TensorRT for engine bundles, ONNX Runtime for graphs, AOTInductor for
    ``.pt2`` packages, Triton for ``http(s)://`` URLs; for checkpoints (and in-memory models)
    torch.compile on a GPU, eager on a GPU, eager on the CPU.

    Args:
        model: A ``.pt`` checkpoint, an ``.onnx`` graph or a ``.pt2`` AOTInductor package exported
            by lcie-fast, an ``.engine`` bundle, an in-memory LCIE model (then ``meta`` is required), or
            the URL ``http[s]://HOST:PORT/MODEL[/VERSION]`` of a model on a Triton Inference Server
            exported by ``lcie-fast export-triton`` (a string; only the ``triton`` backend takes one).
        backend: ``auto`` (for an ``.onnx`` graph: the sibling graph suited to the CPU, see
            :mod:`lcie_fast.runtime.onnxruntime`), ``tensorrt``, ``compiled``, ``eager``, ``onnxruntime``, ``aoti``
            or ``triton``.
        device: ``cpu`` or ``cuda[:N]`` (default: a GPU when visible, for torch backends; the
            device it was compiled for, for ``.pt2`` packages). Not used for a Triton URL: images are
            normalised on the CPU here and the server runs the model on its own devices.
        meta: The metadata of an in-memory ``model``.
        precision: For torch backends: ``fp32``, ``fp16`` or ``bf16`` (default fp16 on a GPU,
            fp32 on the CPU). Graphs, packages and engines carry their own precision.
        fast_ops: ``auto`` (fused projections and kernels) or ``ref`` for torch backends.
        channels_last: Torch backends run channels-last (else contiguous NCHW).
        cuda_graphs: ``compiled`` on a GPU also captures CUDA graphs.
        allow_host_code: Let a version-compatible TensorRT bundle, or an AOTInductor package (a
            native library), run the host code embedded in it (only for files from a source you
            trust; refused otherwise, with the reason).

    Raises:
        FileNotFoundError: ``model`` is a path that does not exist.
        BackendError: the named backend cannot run here, or no backend fits (every reason named); a URL
            given to another backend than ``triton``, or a file to ``triton``; for a URL, every reason
            of :class:`~lcie_fast.runtime.triton_client.TritonBackend` (malformed, server unreachable,
            model unknown or not exported by lcie-fast).
    """
    import torch

    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if is_server_url(model):
        if backend not in ("auto", "triton"):
            raise BackendError(f"{model} is the URL of a model on a Triton server: backend {backend!r} runs local "
                               "files; use backend 'triton' (or 'auto')")
        from .triton_client import TritonBackend

        return TritonBackend(model)
    if backend == "triton":
        raise BackendError(f"backend 'triton' runs a model on a Triton Inference Server: pass its URL {URL_FORM}, "
                           f"not {str(model) if isinstance(model, (str, Path)) else type(model).__name__!r}")
    if isinstance(model, (str, Path)):
        model = Path(model)
        if not model.is_file():
            from ..errors import ModelNotFoundError

            raise ModelNotFoundError(f"model not found: {model}")
        kind = artifact_kind(model)
    elif meta is None:
        raise BackendError("an in-memory model needs its metadata: open_backend(model, meta=metadata_for(model))")
    else:
        kind = "module"
    if backend != "auto":
        order = [backend]
    elif kind == "engine":
        order = ["tensorrt"]
    elif kind == "onnx":
        order = ["onnxruntime"]
    elif kind == "aoti":
        order = ["aoti"]
    else:
        candidates = ([("compiled", "cuda"), ("eager", "cuda")] if torch.cuda.is_available() else []) + [("eager", "cpu")]
        order = [name for name, dev in candidates if device is None or dev == device.split(":")[0]]
        if not order:
            raise BackendError(f"no backend can run on device {device!r} here: no CUDA GPU is visible")
    errors = []
    for name in order:
        try:
            return _make(model, kind, name, device, meta, precision, fast_ops, channels_last, cuda_graphs,
                         allow_host_code, as_given=backend != "auto")
        except (BackendError, ImportError, RuntimeError) as err:
            errors.append(f"{name}: {err or type(err).__name__}")
    where = model if kind != "module" else "this model"
    raise BackendError(f"no backend can run {where} here: " + "; ".join(errors))


def _make(model: Any, kind: str, name: str, device: str | None, meta: Any, precision: str | None,
          fast_ops: str, channels_last: bool, cuda_graphs: bool, allow_host_code: bool, as_given: bool) -> Backend:
    import torch

    if name == "tensorrt":
        if kind != "engine":
            raise BackendError("tensorrt runs engine bundles: build one with lcie-fast build-engine")
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(model, device=int(device.split(":")[1]) if device and ":" in device else 0,
                               allow_host_code=allow_host_code)
    if name == "onnxruntime":
        if kind != "onnx":
            raise BackendError("onnxruntime runs .onnx graphs: export one with lcie-fast export")
        from .onnxruntime import OnnxRuntimeBackend

        # auto: the sibling suited to a CPU (CPU-target INT8 for TensorRT's, FP32 for FP16);
        # asked for by name: the file as given
        return OnnxRuntimeBackend(model, prefer_cpu_graph=not as_given)
    if name == "aoti":
        if kind != "aoti":
            raise BackendError("aoti runs .pt2 AOTInductor packages: export one with lcie-fast export --aoti")
        from .aoti import AotiBackend

        return AotiBackend(model, device, allow_host_code=allow_host_code)
    if kind not in ("checkpoint", "module"):
        raise BackendError(f"{name} runs checkpoints (.pt), not {model.suffix} files")
    from .torch_backends import CompiledBackend, EagerBackend

    if kind == "checkpoint":
        from ..models.checkpoint import model_from_checkpoint

        model, meta = model_from_checkpoint(model)
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    chosen = precision or ("fp16" if target.startswith("cuda") else "fp32")
    if name == "compiled":  # auto picks it on GPUs only; asked for by name it also compiles for the CPU
        return CompiledBackend(model, meta, target, chosen, channels_last, cuda_graphs, fast_ops)
    return EagerBackend(model, meta, target, chosen, channels_last, fast_ops)
