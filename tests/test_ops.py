"""Fast ops against their references.

Contract (STYLE.md 5): fp32 kernels match the reference within 1e-5 (absolute, on values of
order 1); fp16/bf16 kernels have at most 2x the error of PyTorch in the same dtype, both
measured against an fp32 reference, plus a small absolute floor. Outputs are poisoned with NaN
first, so an element a kernel forgets to write fails. Fresh random inputs, odd sizes, both
memory formats.

On the CPU the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1) on small
shapes; GPU tests (marker ``gpu``) run the full preset shapes in every dtype.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcie_fast import create_model, ops
from lcie_fast.ops.attention import attention_ref
from lcie_fast.ops.dispatch import NotSupportedError, not_supported_reasons
from lcie_fast.ops.downsample_concat import FAST_IMPLS as DC_IMPLS
from lcie_fast.ops.downsample_concat import downsample_concat_ref

REPO = Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton", reason="Triton is not installed (it ships with CUDA builds of torch)")

TRITON_MODULES = ("lcie_fast.ops._triton.downsample_concat", "lcie_fast.ops._triton.cross_attention")


@pytest.fixture(scope="module")
def interpreter():
    """The Triton kernel modules, run by Triton's interpreter (tests marked ``interpreter``
    skip unless TRITON_INTERPRET=1 was set before pytest started; ``make test`` runs them)."""
    return {name.rsplit(".", 1)[-1]: importlib.import_module(name) for name in TRITON_MODULES}


def _levels(b, channels, sizes, dtype=torch.float32, channels_last=False, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    maps = [torch.randn(b, c, h, w, generator=g).to(device=device, dtype=dtype) for c, (h, w) in zip(channels, sizes)]
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    return maps


def _report(name, err, ref_err=None):
    extra = f", PyTorch's own error {ref_err:.2e}" if ref_err is not None else ""
    print(f"{name}: max error {err:.2e}{extra}")


# downsample-concat shapes: (batch, channels, level sizes); 2x and 4x factors (448), 4x/2x of
# 72->18 / 36->18 (576) at small scale, a non-integer factor, non-square maps, odd channel counts
DC_CASES = [
    (2, (5, 7, 9), ((12, 16), (6, 8), (3, 4))),
    (1, (3, 70, 11), ((20, 13), (9, 7), (5, 3))),
    (3, (13, 17, 19), ((16, 16), (8, 8), (4, 4))),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", DC_CASES, ids=["x4x2", "fractional", "square"])
def test_downsample_concat_triton_interpreter(interpreter, case, channels_last):
    b, channels, sizes = case
    maps = _levels(b, channels, sizes, channels_last=channels_last, seed=len(channels) + b)
    reference, _ = downsample_concat_ref(*maps)
    out = torch.full_like(reference.contiguous(), float("nan"))
    interpreter["downsample_concat"].downsample_concat_triton(*maps, out=out, block_p=4, block_c=8)
    err = (out - reference).abs().max().item()
    _report("downsample_concat triton (interpreter, fp32)", err)
    assert not out.isnan().any()
    assert err <= 1e-5


@pytest.mark.interpreter
def test_downsample_concat_triton_interpreter_fp16(interpreter):
    maps32 = _levels(2, (6, 10, 12), ((12, 12), (6, 6), (3, 3)), seed=5)
    maps16 = [m.half() for m in maps32]
    reference, _ = downsample_concat_ref(*maps32)
    torch_err = (downsample_concat_ref(*maps16)[0].float() - reference).abs().max().item()
    out = torch.full((2, 9, 28), float("nan"), dtype=torch.float16)
    interpreter["downsample_concat"].downsample_concat_triton(*maps16, out=out, block_p=4, block_c=8)
    err = (out.float() - reference).abs().max().item()
    _report("downsample_concat triton (interpreter, fp16)", err, torch_err)
    assert err <= 2 * torch_err + 1e-3


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
    err = (out - reference).abs().max().item()
    _report("attention triton (interpreter, fp32)", err)
    assert not out.isnan().any() and err <= 1e-5


@pytest.mark.interpreter
def test_dispatch_explicit_triton_runs_the_interpreter_and_auto_never_does(interpreter):
    maps = _levels(1, (4, 6, 8), ((8, 8), (4, 4), (2, 2)))
    with torch.no_grad():
        tokens, x_ml = ops.downsample_concat(*maps, impl="triton")
        ref_tokens, ref_x_ml = ops.downsample_concat(*maps, impl="ref")
    torch.testing.assert_close(tokens, ref_tokens, rtol=0, atol=1e-5)
    torch.testing.assert_close(x_ml, ref_x_ml, rtol=0, atol=1e-5)
    assert x_ml.is_contiguous(memory_format=torch.channels_last)  # a view of the token buffer
    reasons = DC_IMPLS[1].not_supported_reasons(*maps, auto=True)
    assert any("interpreter" in r for r in reasons)


@pytest.mark.interpreter
def test_triton_custom_op_fake_implementation(interpreter):
    maps = _levels(2, (3, 5, 7), ((8, 6), (4, 3), (2, 3)))
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
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(images)
        with ops.use_impl("triton"):
            fast = model(images)
    err = (fast - reference).abs().max().item()
    _report("lcie_tiny logits, every op through Triton (interpreter)", err)
    assert err <= 1e-4


# ----------------------------------------------------------------------- dispatch contract
def test_explicit_impl_that_cannot_run_raises_with_reasons():
    maps = _levels(1, (4, 6, 8), ((8, 8), (4, 4), (2, 2)))
    with pytest.raises(NotSupportedError, match="impl='cuda' cannot run"):
        ops.downsample_concat(*maps, impl="cuda")
    assert not_supported_reasons(DC_IMPLS, "cuda", *maps)
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.downsample_concat(*maps, impl="fast")


def test_auto_falls_back_to_ref_and_reasons_cover_training():
    maps = [m.requires_grad_() for m in _levels(1, (4, 6, 8), ((8, 8), (4, 4), (2, 2)))]
    reasons = not_supported_reasons(DC_IMPLS, "triton", *maps)
    assert any("inference-only" in r for r in reasons)
    tokens, _ = ops.downsample_concat(*maps)  # auto: ref, with gradients
    tokens.sum().backward()
    assert maps[0].grad is not None


def test_environment_switch_forces_the_reference(monkeypatch):
    monkeypatch.setenv("LCIE_FAST_FORCE_REF", "1")
    with ops.use_impl("triton"):
        assert ops.get_impl() == "ref"
    monkeypatch.delenv("LCIE_FAST_FORCE_REF")
    with ops.use_impl("triton"):
        assert ops.get_impl() == "triton"


# ------------------------------------------------------------------- fused projections
@pytest.mark.parametrize("switches", [{}, {"decoder_pos_embed": "sine"}, {"spatial": False, "full": False,
                                                                          "partial": False}, {"lcie": False}],
                         ids=["paper", "sine_keys", "no_spatial", "no_decoder"])
def test_fused_projections_give_the_unfused_logits_and_keep_the_state_dict(switches):
    from lcie_fast.models.fused import fuse_for_inference

    torch.manual_seed(0)
    model = create_model("lcie_tiny", **switches).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        reference = model(images)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        fuse_for_inference(model)
        fused = model(images)
    err = (fused - reference).abs().max().item()
    _report(f"fused projections {switches}", err)
    assert err <= 1e-5
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
GPU_DC_SHAPES = {"r101_448": ((512, 56), (1024, 28), (2048, 14)), "r101_576": ((512, 72), (1024, 36), (2048, 18)),
                 "effl0_448": ((40, 56), (112, 28), (320, 14))}
TOLERANCE = {torch.float32: 1e-5}


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", GPU_DC_SHAPES.values(), ids=GPU_DC_SHAPES.keys())
def test_downsample_concat_gpu_full_shapes(impl, dtype, channels_last, shape):
    reasons = not_supported_reasons(DC_IMPLS, impl, *_levels(1, (1, 1, 1), ((4, 4), (2, 2), (1, 1)), device="cuda"))
    if reasons:
        pytest.skip("; ".join(reasons))
    channels = [c for c, _ in shape]
    sizes = [(s, s) for _, s in shape]
    maps32 = _levels(4, channels, sizes, channels_last=channels_last, device="cuda")
    maps = [m.to(dtype) for m in maps32]
    reference, _ = downsample_concat_ref(*maps32)
    with torch.no_grad():
        out, x_ml = ops.downsample_concat(*maps, impl=impl)
    err = (out.float() - reference).abs().max().item()
    if dtype == torch.float32:
        _report(f"downsample_concat {impl} fp32", err)
        assert err <= 1e-5
    else:
        torch_err = (downsample_concat_ref(*maps)[0].float() - reference).abs().max().item()
        _report(f"downsample_concat {impl} {dtype}", err, torch_err)
        assert err <= 2 * torch_err + 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", [(8, 4, 80, 196, 896), (8, 4, 80, 324, 896), (8, 4, 80, 80, 945), (8, 4, 80, 196, 118)],
                         ids=["r101_448_decoder", "r101_576_decoder", "r101_encoder", "effl0_decoder"])
def test_attention_gpu_full_shapes(dtype, case):
    b, heads, lq, lk, dh = case
    q32, k32, v32 = (torch.randn(b, heads, n, dh, device="cuda") for n in (lq, lk, lk))
    reference = attention_ref(q32, k32, v32)
    q, k, v = (t.to(dtype) for t in (q32, k32, v32))
    with torch.no_grad():
        out = ops.attention(q, k, v, impl="triton")
    err = (out.float() - reference).abs().max().item()
    if dtype == torch.float32:
        _report("attention triton fp32", err)
        assert err <= 1e-5
    else:
        torch_err = (attention_ref(q, k, v).float() - reference).abs().max().item()
        _report(f"attention triton {dtype}", err, torch_err)
        assert err <= 2 * torch_err + 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["lcie_effl0_448", "lcie_r101_448"])
def test_whole_model_fast_ops_on_vs_off_gpu(preset):
    from lcie_fast.models.fused import fuse_for_inference

    torch.manual_seed(0)
    model = create_model(preset).cuda().eval().to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 448, 448, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        with ops.use_impl("ref"):
            reference = model(images).float()
        fuse_for_inference(model)
        fast = model(images).float()
    cosine = torch.nn.functional.cosine_similarity(fast, reference, dim=1).min().item()
    err = (fast - reference).abs().max().item()
    print(f"{preset} fp16 fast ops vs ref: max |d| {err:.3e}, min cosine {cosine:.6f}")
    assert cosine > 0.999
