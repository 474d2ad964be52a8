"""Fast ops against their references.

Contract (STYLE.md 5), stated once in ``tests/tolerance.py``'s ``TOLERANCE``: fp32 kernels
match the fp32 reference within an absolute bound; fp16/bf16 kernels have at most 2x the error
of PyTorch in the same dtype, both measured against an fp32 reference, plus a small absolute
floor. Every comparison prints its max and mean error first. Outputs are poisoned with NaN
first, so an element a kernel forgets to write fails. Fresh random inputs, odd sizes, both
memory formats.

The dispatch contract runs everywhere, Triton or not. On the CPU the Triton kernels run in
Triton's interpreter (TRITON_INTERPRET=1) on small shapes; GPU tests (marker ``gpu``) run the
presets' shapes, read from their backbones' ``feature_info``, in every dtype.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from tolerance import assert_parity

from lcie_fast import create_model, ops
from lcie_fast.models import preset_config
from lcie_fast.ops.attention import ATTENTION, attention_ref
from lcie_fast.ops.dispatch import NotSupportedError
from lcie_fast.ops.downsample_concat import DOWNSAMPLE_CONCAT, downsample_concat_ref
from lcie_fast.ops.shapes import OpShapes, op_shapes

REPO = Path(__file__).resolve().parents[1]
TRITON_MODULES = ("lcie_fast.ops._triton.downsample_concat", "lcie_fast.ops._triton.cross_attention")
# the presets whose shapes the GPU tests run, read from their backbones' feature_info
GPU_PRESETS = ("lcie_r101_448", "lcie_r101_576", "lcie_effl0_448")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def interpreter():
    """The Triton kernel modules, run by Triton's interpreter (tests marked ``interpreter``
    skip unless TRITON_INTERPRET=1 was set before pytest started; ``make test`` runs them)."""
    pytest.importorskip("triton", reason="Triton is not installed (it ships with CUDA builds of torch)")
    return {name.rsplit(".", 1)[-1]: importlib.import_module(name) for name in TRITON_MODULES}


def _levels(b, levels, dtype=torch.float32, channels_last=False, device="cpu", seed=0):
    """Random (B, C_i, H_i, W_i) maps for ``levels`` = ((C_i, H_i, W_i), ...)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    maps = [torch.randn(b, c, h, w, generator=g).to(device=device, dtype=dtype) for c, h, w in levels]
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    return maps


@functools.cache
def preset_shapes(preset: str) -> OpShapes:
    """The fast-op shapes of ``preset``, read from a build on the meta device (no weights)."""
    with torch.device("meta"):
        return op_shapes(create_model(preset))


def _tiny_maps(**kwargs):
    """One image's backbone levels of ``lcie_tiny`` (the test preset), fresh random values."""
    return _levels(1, preset_shapes("lcie_tiny").levels, **kwargs)


# downsample-concat shapes: (batch, levels (C, H, W)); 2x and 4x factors (448), 4x/2x of
# 72->18 / 36->18 (576) at small scale, a non-integer factor, non-square maps, odd channel counts
DC_CASES = [
    (2, ((5, 12, 16), (7, 6, 8), (9, 3, 4))),
    (1, ((3, 20, 13), (70, 9, 7), (11, 5, 3))),
    (3, ((13, 16, 16), (17, 8, 8), (19, 4, 4))),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", DC_CASES, ids=["x4x2", "fractional", "square"])
def test_downsample_concat_triton_interpreter(interpreter, case, channels_last):
    b, levels = case
    maps = _levels(b, levels, channels_last=channels_last, seed=len(levels) + b)
    reference, _ = downsample_concat_ref(*maps)
    out = torch.full_like(reference.contiguous(), float("nan"))
    interpreter["downsample_concat"].downsample_concat_triton(*maps, out=out, block_p=4, block_c=8)
    assert not out.isnan().any()
    assert_parity(out, reference, ("op", torch.float32), "downsample_concat triton (interpreter, fp32)")


@pytest.mark.interpreter
def test_downsample_concat_triton_interpreter_fp16(interpreter):
    maps32 = _levels(2, ((6, 12, 12), (10, 6, 6), (12, 3, 3)), seed=5)
    maps16 = [m.half() for m in maps32]
    reference, _ = downsample_concat_ref(*maps32)
    out = torch.full(reference.shape, float("nan"), dtype=torch.float16)
    interpreter["downsample_concat"].downsample_concat_triton(*maps16, out=out, block_p=4, block_c=8)
    assert_parity(out, reference, ("op", torch.float16), "downsample_concat triton (interpreter, fp16)",
                  torch_result=downsample_concat_ref(*maps16)[0])


ATTN_CASES = [(2, 3, 7, 13, 37), (1, 2, 20, 5, 70), (2, 1, 16, 49, 16)]


@pytest.mark.interpreter
@pytest.mark.parametrize("case", ATTN_CASES, ids=["odd", "wide_head", "tokens_7x7"])
def test_attention_triton_interpreter_reads_strided_slices(interpreter, case):
    b, heads, lq, lk, dh = case
    d = heads * dh
    g = torch.Generator().manual_seed(sum(case))
    queries = torch.randn(b, lq, d, generator=g)
    projected = torch.randn(b, lk, 3 * d + 5, generator=g)  # like the fused GEMM output: K, V are column slices
    q = queries.view(b, lq, heads, dh).transpose(1, 2)
    k = projected[..., :d].view(b, lk, heads, dh).transpose(1, 2)
    v = projected[..., d:2 * d].view(b, lk, heads, dh).transpose(1, 2)
    reference = attention_ref(q, k, v)
    out = torch.full((b, lq, heads, dh), float("nan")).transpose(1, 2)
    interpreter["cross_attention"].attention_triton(q, k, v, out=out, block_m=16, block_d=16)
    assert not out.isnan().any()
    assert_parity(out, reference, ("op", torch.float32), "attention triton (interpreter, fp32)")


@pytest.mark.interpreter
def test_dispatch_explicit_triton_runs_the_interpreter_and_auto_never_does(interpreter):
    maps = _tiny_maps()
    with torch.no_grad():
        tokens, x_ml = ops.downsample_concat(*maps, impl="triton")
        ref_tokens, ref_x_ml = ops.downsample_concat(*maps, impl="ref")
    assert (tokens.dtype, x_ml.dtype) == (ref_tokens.dtype, ref_x_ml.dtype)
    assert_parity(tokens, ref_tokens, ("op", torch.float32), "downsample_concat impl='triton' tokens")
    assert_parity(x_ml, ref_x_ml, ("op", torch.float32), "downsample_concat impl='triton' x_ml")
    assert x_ml.is_contiguous(memory_format=torch.channels_last)  # a view of the token buffer
    reasons = DOWNSAMPLE_CONCAT.not_supported_reasons("triton", *maps, auto=True)
    assert any("interpreter" in r for r in reasons)


@pytest.mark.interpreter
def test_triton_custom_op_fake_implementation(interpreter):
    maps = _levels(2, ((3, 8, 6), (5, 4, 3), (7, 2, 3)))
    torch.library.opcheck(torch.ops.lcie_fast.downsample_concat_triton.default, maps,
                          test_utils=("test_schema", "test_faketensor"))
    q = torch.randn(1, 2, 5, 8)
    k = torch.randn(1, 2, 9, 8)
    torch.library.opcheck(torch.ops.lcie_fast.attention_triton.default, (q, k, k.clone()),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.interpreter
def test_whole_model_through_triton_matches_the_reference(interpreter):
    torch.manual_seed(0)
    model = create_model("lcie_tiny").eval()
    side = preset_config("lcie_tiny").img_size
    images = torch.randn(2, 3, side, side)
    with torch.no_grad():
        reference = model(images)
        with ops.use_impl("triton"):
            fast = model(images)
    assert_parity(fast, reference, ("model", torch.float32), "lcie_tiny logits, every op through Triton (interpreter)")


# ----------------------------------------------------------------------- dispatch contract
def test_explicit_impl_that_cannot_run_raises_with_reasons():
    maps = _tiny_maps()
    with pytest.raises(NotSupportedError, match="impl='cuda' cannot run"):
        ops.downsample_concat(*maps, impl="cuda")
    assert DOWNSAMPLE_CONCAT.not_supported_reasons("cuda", *maps)
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.downsample_concat(*maps, impl="fast")


def test_auto_falls_back_to_ref_and_reasons_cover_training():
    maps = [m.requires_grad_() for m in _tiny_maps()]
    reasons = DOWNSAMPLE_CONCAT.not_supported_reasons("triton", *maps)
    assert any("inference-only" in r for r in reasons)
    tokens, _ = ops.downsample_concat(*maps)  # auto: ref, with gradients
    tokens.sum().backward()
    assert maps[0].grad is not None


def test_every_op_has_its_ref_twin_and_names_what_it_lacks():
    assert DOWNSAMPLE_CONCAT.ref is downsample_concat_ref and ATTENTION.ref is attention_ref
    assert list(DOWNSAMPLE_CONCAT.impls) == ["cuda", "triton"] and list(ATTENTION.impls) == ["triton"]
    q = torch.randn(1, 2, 5, 8)
    assert ATTENTION.not_supported_reasons("ref", q, q, q, 0.0) == []
    assert ATTENTION.not_supported_reasons("cuda", q, q, q, 0.0) == ["no 'cuda' implementation exists (available: ref, triton)"]
    with pytest.raises(NotSupportedError, match="no 'cuda' implementation exists"):
        ops.attention(q, q, q, impl="cuda")
    with pytest.raises(ValueError, match="must name the same fast implementations"):
        ops.FastOp("broken", attention_ref, impls={"triton": attention_ref}, checks={})


def test_runtime_reasons_are_found_once(monkeypatch):
    from lcie_fast.ops import cuda_ext, triton_support

    triton_first, cuda_first = triton_support.triton_runtime_reasons(), cuda_ext.extension_reasons()
    triton_first.append("a caller's edit")  # callers get a copy: the cached answer stays as it was

    def asked_again(*args):
        raise AssertionError("runtime availability was probed again")

    monkeypatch.setattr(torch.cuda, "is_available", asked_again)
    monkeypatch.setattr(importlib.util, "find_spec", asked_again)
    monkeypatch.setattr(importlib, "import_module", asked_again)
    assert triton_support.triton_runtime_reasons() == triton_first[:-1]
    assert cuda_ext.extension_reasons() == cuda_first


def test_environment_switch_forces_the_reference(monkeypatch):
    monkeypatch.setenv("LCIE_FAST_FORCE_REF", "1")
    with ops.use_impl("triton"):
        assert ops.get_impl() == "ref"
    monkeypatch.delenv("LCIE_FAST_FORCE_REF")
    with ops.use_impl("triton"):
        assert ops.get_impl() == "triton"


def test_use_impl_is_local_to_each_thread(monkeypatch):
    monkeypatch.delenv("LCIE_FAST_FORCE_REF", raising=False)
    maps = _tiny_maps()
    both_inside = threading.Barrier(2, timeout=30)
    seen: dict[str, tuple[str, object]] = {}

    def serve(impl: str) -> None:
        with ops.use_impl(impl):
            both_inside.wait()  # the other thread has set its own impl by now
            # what auto runs under "cuda" depends on the machine; under "ref" it is the reference
            chosen = DOWNSAMPLE_CONCAT.choose("auto", *maps) if impl == "ref" else None
            seen[impl] = (ops.get_impl(), chosen)
            both_inside.wait()  # and keeps it until this thread has read its own

    threads = [threading.Thread(target=serve, args=(impl,)) for impl in ("ref", "cuda")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"ref": ("ref", downsample_concat_ref), "cuda": ("cuda", None)}
    assert ops.get_impl() == "auto"  # neither thread's switch reached this one


def test_set_impl_is_the_process_default_under_use_impl(monkeypatch):
    monkeypatch.delenv("LCIE_FAST_FORCE_REF", raising=False)
    ops.set_impl("ref")
    try:
        seen = []
        worker = threading.Thread(target=lambda: seen.append(ops.get_impl()))
        worker.start()
        worker.join()
        with ops.use_impl("cuda"):
            assert ops.get_impl() == "cuda"
        assert ops.get_impl() == "ref" and seen == ["ref"]  # the default reaches every thread
    finally:
        ops.set_impl("auto")


def test_op_shapes_are_the_maps_the_backbone_gives():
    torch.manual_seed(0)
    model = create_model("lcie_tiny").eval()
    with torch.no_grad():
        maps = model.backbone(torch.randn(1, 3, model.img_size, model.img_size))
    shapes = preset_shapes("lcie_tiny")
    assert shapes.levels == tuple(tuple(m.shape[1:]) for m in maps)
    tokens, _ = downsample_concat_ref(*maps)  # (1, h*w, D)
    assert (shapes.tokens, shapes.dim) == tuple(tokens.shape[1:])


# ------------------------------------------------------------------- fused projections
@pytest.mark.parametrize("switches", [{}, {"decoder_pos_embed": "sine"}, {"spatial": False, "full": False,
                                                                          "partial": False}, {"lcie": False}],
                         ids=["paper", "sine_keys", "no_spatial", "no_decoder"])
def test_fused_projections_give_the_unfused_logits_and_keep_the_state_dict(switches):
    from lcie_fast.models.fused import fuse_for_inference

    torch.manual_seed(0)
    model = create_model("lcie_tiny", **switches).eval()
    side = preset_config("lcie_tiny").img_size
    images = torch.randn(3, 3, side, side)
    with torch.no_grad():
        reference = model(images)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        fuse_for_inference(model)
        fused = model(images)
    assert_parity(fused, reference, ("fused_projections", torch.float32), f"fused projections {switches}")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    if model.decoder is not None:  # the layers' weights are views of the stacked matrix
        stacked = model.fused_projections.weight
        assert model.decoder.layers[0].cross_attn.k_proj.weight.data_ptr() == stacked.data_ptr()


# ------------------------------------------------------------------------------- CUDA C++
@pytest.mark.slow
def test_cuda_sources_compile_with_cmake_and_nvcc(tmp_path):
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        pytest.skip("needs cmake and nvcc on PATH to compile kernels/ (no GPU needed)")
    build = tmp_path / "build"
    env = {**os.environ}
    configure = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}",
                                "-DCMAKE_CUDA_ARCHITECTURES=90"], capture_output=True, text=True, env=env)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    compiled = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True, env=env)
    assert compiled.returncode == 0, compiled.stdout[-5000:] + compiled.stderr[-3000:]
    (module,) = build.glob("_C*.so")
    # the built module loads, registers lcie_fast::downsample_concat_cuda, and its fake works
    check = (
        "import importlib.util, torch, sys\n"
        f"spec = importlib.util.spec_from_file_location('lcie_fast._C', {str(module)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "from lcie_fast.ops._library import register_cuda_fakes; register_cuda_fakes()\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "with FakeTensorMode():\n"
        "    maps = [torch.empty(2, c, s, s, device='cuda') for c, s in ((3, 8), (5, 4), (7, 2))]\n"
        "    print(tuple(torch.ops.lcie_fast.downsample_concat_cuda(*maps).shape), mod.__version__)\n"
    )
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split()[:3] == ["(2,", "4,", "15)"]


# ---------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_downsample_concat_gpu_full_shapes(impl, dtype, channels_last, preset):
    reasons = DOWNSAMPLE_CONCAT.not_supported_reasons(impl, *_tiny_maps(device="cuda"))
    if reasons:
        pytest.skip("; ".join(reasons))
    maps32 = _levels(4, preset_shapes(preset).levels, channels_last=channels_last, device="cuda")
    maps = [m.to(dtype) for m in maps32]
    reference, _ = downsample_concat_ref(*maps32)
    with torch.no_grad():
        out, x_ml = ops.downsample_concat(*maps, impl=impl)
    assert_parity(out, reference, ("op", dtype), f"downsample_concat {impl} {dtype} {preset}",
                  torch_result=downsample_concat_ref(*maps)[0])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("which", ["decoder", "encoder"])
@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_attention_gpu_full_shapes(dtype, which, preset):
    shapes = preset_shapes(preset)
    b, heads, (lq, lk, dh) = 8, shapes.num_heads, shapes.attention(which)
    q32, k32, v32 = (torch.randn(b, heads, n, dh, device="cuda") for n in (lq, lk, lk))
    reference = attention_ref(q32, k32, v32)
    q, k, v = (t.to(dtype) for t in (q32, k32, v32))
    with torch.no_grad():
        out = ops.attention(q, k, v, impl="triton")
    assert_parity(out, reference, ("op", dtype), f"attention triton {dtype} {preset} {which}",
                  torch_result=attention_ref(q, k, v))


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["lcie_effl0_448", "lcie_r101_448"])
def test_whole_model_fast_ops_on_vs_off_gpu(preset):
    from lcie_fast.models.fused import fuse_for_inference

    torch.manual_seed(0)
    side = preset_config(preset).img_size
    model = create_model(preset).cuda().eval().to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, side, side, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        with ops.use_impl("ref"):
            reference = model(images).float()
        fuse_for_inference(model)
        fast = model(images).float()
    assert_parity(fast, reference, ("model", torch.float16), f"{preset} fp16 fast ops vs ref")
