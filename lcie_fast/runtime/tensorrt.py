"""TensorRT backend: an engine bundle run without torch (tensorrt + cuda-python + NumPy).

I/O is name-based (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), the
API TensorRT 10.x and 11.x share. Without torch: pinned host buffers and device buffers
sized for the profile's largest batch, asynchronous copies on one stream. Inside a torch
process, CUDA torch tensors are used as I/O directly (no host round trip).

The bundle's sidecar is checked against this TensorRT and this GPU before deserializing,
and a null engine from ``deserialize_cuda_engine`` is refused: there is no preflight API.
Host code embedded in an engine (version-compatible bundles) runs only when the caller
opts in with ``allow_host_code=True``: a sidecar cannot widen what an engine may run.

TensorRT cannot be installed on the project's machines; this runs on a user's GPU box.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..artifacts import EngineError, check_bundle, host_code_decision, is_deepstream_io, sidecar_path
from ..metadata import ModelMetadata
from .base import Backend


def trt_module():
    """``import tensorrt``, or an error that says how to get it."""
    return require("tensorrt", "building and running TensorRT engines")


def current_gpu(device: int = 0) -> dict[str, str]:
    """Name and compute capability of CUDA device ``device`` (torch when present, else cuda-python)."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(device)
            return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}"}
    except ImportError:
        pass
    cudart = require("cuda.bindings.runtime", "querying the GPU without torch")
    err, props = cudart.cudaGetDeviceProperties(device)
    if err != cudart.cudaError_t.cudaSuccess:
        raise EngineError(f"no usable CUDA device {device}: {err}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def _cuda_call(result):
    """Unpack a cuda-python ``(err, value...)`` tuple, raising on error."""
    cudart = require("cuda.bindings.runtime", "the TensorRT backend")
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise EngineError(f"CUDA error: {err}")
    return values[0] if len(values) == 1 else values


class TensorRTBackend(Backend):
    """A lcie-fast engine bundle (``model.engine`` + ``model.engine.json``).

    Args:
        engine_path: The ``.engine`` file.
        device: CUDA device index.
        allow_host_code: Trust the bundle to run host code embedded in it, which
            version-compatible engines need (they are refused without it). Only for bundles
            from a trusted source: the sidecar that asks for it is not proof of anything.

    Raises:
        EngineError: a malformed sidecar (the field named), a bundle built for another GPU,
            TensorRT or platform, a version-compatible bundle without ``allow_host_code``.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: int = 0, *, allow_host_code: bool = False) -> None:
        trt = trt_module()
        self.engine_path = Path(engine_path)
        self.gpu = current_gpu(device)
        self.sidecar = check_bundle(self.engine_path, trt.__version__, self.gpu, allow_host_code=allow_host_code)
        if is_deepstream_io(self.sidecar["io"]):
            raise EngineError(f"{self.engine_path} is a DeepStream engine (raw pixels in, probs out) for nvinfer; "
                              f"tag with an engine built from model.onnx instead")
        self.meta = ModelMetadata.from_dict(self.sidecar["metadata"])
        self.precision = self.meta.precision
        self.device = f"cuda:{device}"
        self.device_index = device
        self.input_name = self.sidecar["io"]["input"]["name"]
        self.output_name = self.sidecar["io"]["output"]["name"]
        self._max_batch = int(self.sidecar["io"]["input"]["max"][0])

        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        host_code, _ = host_code_decision(self.sidecar, allow_host_code, sidecar_path(self.engine_path))
        if host_code:  # version-compatible engines embed a lean runtime; the caller opted in
            self.runtime.engine_host_code_allowed = True
        engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise EngineError(f"{self.engine_path}: TensorRT {trt.__version__} could not deserialize it on "
                              f"{self.gpu['name']} (corrupt file, or built for another GPU/version)")
        self.engine = engine
        self.context = engine.create_execution_context()
        self._torch = None
        self._buffers: dict[str, Any] = {}
        self._stream = None

    @property
    def max_batch(self) -> int:
        return self._max_batch

    # ------------------------------------------------------------------ torch tensors as I/O
    def _infer_torch(self, images):
        torch = self._torch
        x = images.to(device=self.device, dtype=torch.float32).contiguous()
        out = torch.empty((x.shape[0], self.meta.num_classes), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device)
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"{self.engine_path}: execute_async_v3 failed")
        return out

    # ---------------------------------------------------------- NumPy + cuda-python, no torch
    def _allocate(self) -> None:
        cudart = require("cuda.bindings.runtime", "the TensorRT backend without torch")
        _cuda_call(cudart.cudaSetDevice(self.device_index))
        self._stream = _cuda_call(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        size = self.meta.preprocess.input_size
        shapes = {self.input_name: (self._max_batch, 3, size, size),
                  self.output_name: (self._max_batch, self.meta.num_classes)}
        for name, shape in shapes.items():
            nbytes = int(np.prod(shape)) * 4
            host_ptr = _cuda_call(cudart.cudaMallocHost(nbytes))  # pinned: asynchronous copies
            host = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctypes.POINTER(ctypes.c_float)), shape=shape)
            device_ptr = _cuda_call(cudart.cudaMalloc(nbytes))
            self._buffers[name] = (host_ptr, host, device_ptr)
            self.context.set_tensor_address(name, device_ptr)

    def _infer_numpy(self, images: np.ndarray) -> np.ndarray:
        cudart = require("cuda.bindings.runtime", "the TensorRT backend without torch")
        if not self._buffers:
            self._allocate()
        batch = images.shape[0]
        _, host_in, device_in = self._buffers[self.input_name]
        _, host_out, device_out = self._buffers[self.output_name]
        host_in[:batch] = images
        nbytes_in = images[:batch].size * 4
        _cuda_call(cudart.cudaMemcpyAsync(device_in, host_in.ctypes.data, nbytes_in,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
        self.context.set_input_shape(self.input_name, tuple(images.shape))
        if not self.context.execute_async_v3(int(self._stream)):
            raise EngineError(f"{self.engine_path}: execute_async_v3 failed")
        nbytes_out = batch * self.meta.num_classes * 4
        _cuda_call(cudart.cudaMemcpyAsync(host_out.ctypes.data, device_out, nbytes_out,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
        _cuda_call(cudart.cudaStreamSynchronize(self._stream))
        return host_out[:batch].copy()

    def infer(self, images: Any) -> Any:
        if images.shape[0] > self._max_batch:
            raise EngineError(f"{self.engine_path}: batch {images.shape[0]} exceeds the profile's max_batch {self._max_batch}")
        if hasattr(images, "data_ptr"):
            import torch

            self._torch = torch
            return self._infer_torch(images)
        return self._infer_numpy(np.ascontiguousarray(images, dtype=np.float32))

    def synchronize(self) -> None:
        if self._torch is not None:
            self._torch.cuda.synchronize(self.device)
        elif self._stream is not None:
            cudart = require("cuda.bindings.runtime", "the TensorRT backend")
            _cuda_call(cudart.cudaStreamSynchronize(self._stream))

    def close(self) -> None:
        if self._buffers:
            cudart = require("cuda.bindings.runtime", "the TensorRT backend")
            for host_ptr, _, device_ptr in self._buffers.values():
                cudart.cudaFreeHost(host_ptr)
                cudart.cudaFree(device_ptr)
            self._buffers = {}
        if self._stream is not None:
            cudart = require("cuda.bindings.runtime", "the TensorRT backend")
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self.context = self.engine = None
