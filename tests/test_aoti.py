"""AOTInductor packages (``.pt2``): export, parity with eager, dynamic batch, metadata, loading
without the model's code, refusals.

One package of ``lcie_tiny`` (5 labels, 64x64) is compiled for the whole module (about 30 s on
2 CPU cores). Tolerance contract: FP32 package vs eager FP32 on the same CPU, max |dlogit| <= 1e-4.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lcie_fast import create_model
from lcie_fast.deploy.aoti import export_aoti
from lcie_fast.deploy.export import ExportError
from lcie_fast.errors import InvalidInputError, UserError
from lcie_fast.metadata import MetadataError, metadata_for
from lcie_fast.runtime import BackendError, open_backend
from lcie_fast.runtime.aoti import AotiBackend, AotiError, aoti_device_problems, read_aoti_info, read_aoti_metadata
from lcie_fast.runtime.variants import backend_variants

REPO = Path(__file__).resolve().parents[1]
LABELS = [f"shape{k}" for k in range(5)]
SIZE = 64  # lcie_tiny's input size
MAX_BATCH = 4  # small, so that a batch of 7 runs in two chunks
FP32_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """lcie_tiny (5 labels), its metadata, its .pt2 package (CPU, FP32, batch 1-4) and the export summary."""
    torch.manual_seed(0)
    model = create_model("lcie_tiny", num_classes=5).eval()
    meta = metadata_for(model, LABELS)
    path = tmp_path_factory.mktemp("aoti") / "model.pt2"
    summary = export_aoti(model, meta, path, max_batch=MAX_BATCH, log=lambda *_: None)
    print(f"AOTInductor package of lcie_tiny: export {summary['export_seconds']} s, "
          f"compile {summary['compile_seconds']} s")
    return model, meta, path, summary


def _eager(model, images: torch.Tensor) -> np.ndarray:
    from lcie_fast import ops

    with ops.use_impl("ref"), torch.no_grad():
        return model(images).numpy()


def test_export_checks_the_package_against_eager(package):
    _, _, path, summary = package
    assert path.is_file() and summary["path"] == str(path)
    assert summary["device"] == "cpu" and summary["precision"] == "fp32" and summary["batch"] == [1, MAX_BATCH]
    assert summary["check"]["images"] == 11 and summary["check"]["max_abs"] <= summary["check"]["tolerance"]


@pytest.mark.parametrize("batch", [1, 3])
def test_parity_with_eager_at_dynamic_batch(package, batch):
    model, _, path, _ = package
    images = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))  # (B, 3, S, S)
    backend = open_backend(path, allow_host_code=True)
    logits = backend.infer_numpy(images)  # (B, C)
    diff = np.abs(logits - _eager(model, images))
    print(f"batch {batch}: max |dlogit| {diff.max():.3g}, mean {diff.mean():.3g}")
    assert logits.shape == (batch, 5)
    assert diff.max() <= FP32_TOLERANCE


def test_batches_beyond_the_compiled_range_run_in_chunks(package):
    model, _, path, _ = package
    images = torch.randn(2 * MAX_BATCH - 1, 3, SIZE, SIZE)  # (7, 3, S, S)
    backend = AotiBackend(path, allow_host_code=True)
    assert backend.max_batch == MAX_BATCH
    diff = np.abs(backend.infer_numpy(images.numpy()) - _eager(model, images))
    print(f"batch {len(images)} in chunks: max |dlogit| {diff.max():.3g}, mean {diff.mean():.3g}")
    assert diff.max() <= FP32_TOLERANCE
    assert backend.infer_numpy(images[:0]).shape == (0, 5)


def test_wrong_image_size_is_refused_before_running(package):
    backend = AotiBackend(package[2], allow_host_code=True)
    with pytest.raises(InvalidInputError, match=rf"\(N, 3, {SIZE}, {SIZE}\)"):
        backend.infer(torch.randn(1, 3, SIZE + 1, SIZE + 1))


def test_metadata_round_trip(package):
    _, meta, path, _ = package
    read = read_aoti_metadata(path)
    assert read == meta and read.label_names == tuple(LABELS) and read.precision == "fp32"
    info = read_aoti_info(path)
    assert info["AOTI_DEVICE_KEY"] == "cpu"
    assert info["lcie_fast"]["io"]["input"]["max"] == [MAX_BATCH, 3, SIZE, SIZE]
    backend = open_backend(path, allow_host_code=True)
    assert backend.name == "aoti" and backend.meta == meta and backend.label == "aoti fp32 (cpu)"


def test_bench_and_parity_list_the_package(package):
    model, meta, path, _ = package
    variants = backend_variants(model, meta, "cpu", aoti=[path, path, path.with_name("missing.pt2")],
                                allow_host_code=True)
    assert variants[0].label == "eager fp32 (cpu)"
    listed = [v for v in variants if v.label.startswith("aoti")]
    assert [(v.label, v.precision) for v in listed] == [("aoti fp32 (cpu)", "fp32")]
    assert listed[0].build().infer_numpy(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 5)


def test_the_artefact_runs_with_torch_alone(package, tmp_path):
    """The package needs neither lcie_fast nor its model code: torch loads and runs it."""
    model, _, path, _ = package
    images = torch.randn(3, 3, SIZE, SIZE)
    np.save(tmp_path / "images.npy", images.numpy())
    script = textwrap.dedent(f"""
        import json, sys, zipfile
        import numpy as np, torch, torch._inductor
        runner = torch._inductor.aoti_load_package({str(path)!r})
        logits = runner(torch.from_numpy(np.load({str(tmp_path / 'images.npy')!r})))
        np.save({str(tmp_path / 'torch_only.npy')!r}, logits.numpy())
        assert not [name for name in sys.modules if name.startswith(("lcie_fast", "timm"))], "model code was imported"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    diff = np.abs(np.load(tmp_path / "torch_only.npy") - _eager(model, images))
    assert diff.max() <= FP32_TOLERANCE


def test_backend_loads_without_the_model_code(package, tmp_path):
    """lcie_fast.models is replaced by an empty stub (``import lcie_fast`` reads two names from it):
    any import of the model's code (lcie_fast.models.*, timm) fails or shows in sys.modules."""
    model, meta, path, _ = package
    images = torch.randn(3, 3, SIZE, SIZE)
    np.save(tmp_path / "images.npy", images.numpy())
    script = textwrap.dedent(f"""
        import sys, types
        import numpy as np
        stub = types.ModuleType("lcie_fast.models")  # no __path__: lcie_fast.models.* cannot be imported
        stub.create_model = stub.list_models = None
        sys.modules["lcie_fast.models"] = stub
        from lcie_fast.runtime import open_backend
        backend = open_backend({str(path)!r}, allow_host_code=True)
        np.save({str(tmp_path / 'logits.npy')!r}, backend.infer_numpy(np.load({str(tmp_path / 'images.npy')!r})))
        print(backend.label, ",".join(backend.meta.label_names))
        loaded = [name for name in sys.modules if name.startswith(("lcie_fast.models.", "timm"))]
        assert not loaded, loaded
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"aoti fp32 (cpu) {','.join(meta.label_names)}" in result.stdout
    diff = np.abs(np.load(tmp_path / "logits.npy") - _eager(model, images))
    assert diff.max() <= FP32_TOLERANCE


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty zip", "flipped byte"])
def test_corrupt_package_is_refused_with_a_clear_error(package, tmp_path, damage):
    bad = tmp_path / "bad.pt2"
    if damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "truncated":
        bad.write_bytes(package[2].read_bytes()[: package[2].stat().st_size // 2])
    elif damage == "empty zip":
        with zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("model/version", "1")
    else:  # one flipped byte in the middle of the library: its CRC no longer matches
        data = bytearray(package[2].read_bytes())
        with zipfile.ZipFile(package[2]) as archive:
            library = next(item for item in archive.infolist() if item.filename.endswith(".so"))
        start = library.header_offset + 30 + len(library.filename.encode()) + len(library.extra)
        data[start + library.file_size // 2] ^= 0xFF
        bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match=re.escape(str(bad))) as caught:
        open_backend(bad, allow_host_code=True)
    print(caught.value)
    assert any(reason in str(caught.value) for reason in ("valid .pt2", "no AOTInductor model", "fails its CRC"))


def test_package_runs_only_when_the_caller_trusts_its_native_code(package):
    _, _, path, _ = package
    with pytest.raises(BackendError, match="compiled native library.*--allow-host-code"):
        open_backend(path)
    variant = next(v for v in backend_variants(None, None, "cpu", aoti=[path]) if v.label == "aoti fp32 (cpu)")
    with pytest.raises(BackendError, match="allow_host_code=True"):
        variant.build()


def _rewritten(path: Path, out: Path, edit, library=lambda data: data) -> Path:
    """A copy of the package whose compiled-model metadata JSON went through ``edit``, its library through ``library``."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("_metadata.json"):
                data = json.dumps(edit(json.loads(data))).encode()
            elif item.filename.endswith(".so"):
                data = library(data)
            target.writestr(item, data)
    return out


def test_package_for_another_device_is_refused_before_loading(package, tmp_path):
    cuda = _rewritten(package[2], tmp_path / "cuda.pt2", lambda info: {**info, "AOTI_DEVICE_KEY": "cuda"})
    with pytest.raises(AotiError, match="compiled for cuda, not cpu"):
        AotiBackend(cuda, "cpu")
    with pytest.raises(BackendError, match="aoti runs .pt2"):
        open_backend(REPO / "pyproject.toml", "aoti")
    with pytest.raises(BackendError, match="runs checkpoints"):
        open_backend(package[2], "eager", "cpu")


def test_package_needing_another_cpu_is_refused(monkeypatch):
    import lcie_fast.cpu

    monkeypatch.setattr(lcie_fast.cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    info = {"AOTI_DEVICE_KEY": "cpu", "AOTI_CPU_ISA": "AVX512 AVX512_VNNI", "AOTI_PLATFORM": sys.platform}
    problems = aoti_device_problems(info, "cpu")
    assert problems == ["its kernels use AVX512 AVX512_VNNI, which this CPU lacks; export it on this machine"]
    assert aoti_device_problems({**info, "AOTI_CPU_ISA": "AVX2"}, "cpu") == []
    assert "compiled on" in aoti_device_problems({**info, "AOTI_MACHINE": "aarch64-elsewhere"}, "cpu")[0]


def test_package_without_lcie_metadata_is_refused(package, tmp_path):
    foreign = _rewritten(package[2], tmp_path / "foreign.pt2",
                         lambda info: {k: v for k, v in info.items() if k != "lcie_fast"})
    with pytest.raises(MetadataError, match="not exported by lcie-fast"):
        open_backend(foreign, allow_host_code=True)


def test_export_refuses_a_package_that_does_not_match_its_model(package, tmp_path, monkeypatch):
    """A package over the tolerance is refused: here the compile step hands back another model's package."""
    _, meta, path, _ = package
    torch.manual_seed(1)
    other = create_model("lcie_tiny", num_classes=5).eval()
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package",
                        lambda program, package_path, inductor_configs: shutil.copy(path, package_path))
    with pytest.raises(ExportError, match="over the tolerance"):
        export_aoti(other, meta, tmp_path / "other.pt2", max_batch=MAX_BATCH, log=lambda *_: None)


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"precision": "fp16"}, "CPUs have no FP16 arithmetic"),
    ({"precision": "int8"}, "precision must be one of"),
    ({"device": "tpu"}, "device must be cpu or cuda"),
    ({"max_batch": 0}, "max_batch must be"),
])
def test_export_refuses_settings_it_cannot_build(package, tmp_path, kwargs, reason):
    model, meta, _, _ = package
    with pytest.raises(InvalidInputError, match=reason):
        export_aoti(model, meta, tmp_path / "model.pt2", log=lambda *_: None, **kwargs)
