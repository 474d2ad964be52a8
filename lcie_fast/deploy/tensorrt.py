"""TensorRT engine bundles built from ``engines/profiles/*.yaml``.

Written only to the API that TensorRT 10.x and 11.x share (``notes/tensorrt.md``): strongly
typed networks (precision comes from the FP16 / INT8 ONNX graphs, never from builder flags),
``build_serialized_network``, optimisation profiles, timing cache, memory pool limits,
version- and hardware-compatibility. ``tests/test_tensorrt_api.py`` checks every ``trt.``
name used here against identifier lists taken from the real 10.16 and 11.4 bindings wheels.

A bundle = ``model.engine`` + ``model.engine.json`` (sidecar): the model metadata, TensorRT
version, GPU name and compute capability, platform, profile, ONNX sha256 and I/O contract.
Bundles are cached under ``engines/build/<key>/`` where the key hashes every input of the
build; a bundle built for another GPU or TensorRT version is refused with the reason.

TensorRT cannot be installed on the project's machines; this code runs on a user's GPU box.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from ..artifacts import (
    INPUT_NAME,
    EngineError,
    check_bundle,
    check_onnx_graph,
    engine_sidecar,
    platform_tag,
    read_onnx_io,
)
from ..config import ConfigError, from_dict, load_yaml
from ..io import atomic_write, sha256_file, write_json
from ..runtime.tensorrt import current_gpu, trt_module

DEFAULT_CACHE = Path("engines") / "build"


@dataclasses.dataclass(frozen=True)
class EngineProfile:
    """One ``engines/profiles/*.yaml`` file.

    Attributes:
        name: Profile name (the file's stem by default).
        precision: Which graph is compiled: ``fp32``, ``fp16`` or ``int8``.
        min_batch, opt_batch, max_batch: Optimisation-profile batch range (opt is tuned for).
        workspace_mib: Builder workspace memory pool limit.
        optimization_level: ``builder_optimization_level`` 0-5 (3 is TensorRT's default).
        timing_cache: Keep a timing cache beside the engine cache and reuse it across builds.
        compatibility: ``none``, ``version`` (runs on later TensorRT of the same major version)
            or ``hardware`` (Ampere and newer GPUs).
    """

    name: str = "default"
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 64
    workspace_mib: int = 4096
    optimization_level: int = 3
    timing_cache: bool = True
    compatibility: str = "none"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"profile {self.name}: precision must be fp32, fp16 or int8, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"profile {self.name}: need 1 <= min_batch <= opt_batch <= max_batch")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"profile {self.name}: optimization_level must be 0-5")
        if self.compatibility not in ("none", "version", "hardware"):
            raise ConfigError(f"profile {self.name}: compatibility must be none, version or hardware")


def load_profile(path: str | Path) -> EngineProfile:
    """Read an engine profile YAML (unknown fields are errors naming the file)."""
    path = Path(path)
    data = load_yaml(path)
    data.setdefault("name", path.stem)
    try:
        return from_dict(EngineProfile, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def bundle_key(onnx_sha256: str, profile: EngineProfile, trt_version: str, gpu: dict[str, str]) -> str:
    """Hash of every input of a build: graph, profile, TensorRT version, GPU, platform."""
    target = gpu["compute_capability"] if profile.compatibility != "hardware" else "ampere_plus"
    payload = json.dumps({"onnx": onnx_sha256, "profile": dataclasses.asdict(profile), "trt": trt_version,
                          "gpu": target, "platform": platform_tag()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_engine(onnx_path: str | Path, profile: EngineProfile, *, cache_dir: str | Path = DEFAULT_CACHE,
                 device: int = 0, force: bool = False) -> Path:
    """Build (or reuse from the cache) the engine bundle of ``onnx_path`` under ``profile``.

    Returns:
        Path of ``model.engine`` (its sidecar is ``model.engine.json``).

    Raises:
        EngineError: the graph's precision differs from the profile's, parsing or building fails.
        GraphError: the graph is damaged or its I/O shapes contradict its metadata.
    """
    trt = trt_module()
    meta = check_onnx_graph(onnx_path)  # a graph whose shapes contradict its metadata is refused here
    if meta.precision != profile.precision:
        raise EngineError(f"profile {profile.name} compiles {profile.precision} graphs; {onnx_path} is "
                          f"{meta.precision} (export it with lcie-fast export --{profile.precision})")
    gpu = current_gpu(device)
    onnx_sha = sha256_file(onnx_path)
    key = bundle_key(onnx_sha, profile, trt.__version__, gpu)
    folder = Path(cache_dir) / key
    engine_path = folder / "model.engine"
    if engine_path.is_file() and not force:
        # the profile asked for a version-compatible engine: its host code is this build's own
        check_bundle(engine_path, trt.__version__, gpu, allow_host_code=profile.compatibility == "version")
        return engine_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: every tensor keeps the type the ONNX graph gives it (FP16 / Q/DQ INT8).
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT cannot parse {onnx_path}: " + "; ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mib << 20)
    config.builder_optimization_level = profile.optimization_level
    if profile.compatibility == "version":
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    elif profile.compatibility == "hardware":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS

    graph_io = read_onnx_io(onnx_path)  # a DeepStream graph takes its own (larger) input side
    size = int(graph_io.get("input_size", meta.preprocess.input_size))
    optimization = builder.create_optimization_profile()
    optimization.set_shape(INPUT_NAME, (profile.min_batch, 3, size, size), (profile.opt_batch, 3, size, size),
                           (profile.max_batch, 3, size, size))
    config.add_optimization_profile(optimization)

    cache_file = Path(cache_dir) / f"timing-{gpu['compute_capability']}-trt{trt.__version__}.cache"
    timing_cache = None
    if profile.timing_cache:
        timing_cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(timing_cache, ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {onnx_path} with profile {profile.name} (see its log above)")
    seconds = time.perf_counter() - start

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(engine_path, "wb") as handle:
        handle.write(memoryview(serialized))
    if timing_cache is not None:
        with atomic_write(cache_file, "wb") as handle:
            handle.write(memoryview(config.get_timing_cache().serialize()))
    sidecar = engine_sidecar(meta, trt_version=trt.__version__, gpu=gpu, profile=dataclasses.asdict(profile),
                             onnx_path=onnx_path, onnx_sha256=onnx_sha, build_seconds=seconds, key=key,
                             graph_io=graph_io)
    write_json(sidecar, str(engine_path) + ".json")
    return engine_path
