"""pytest-benchmark timings of the pieces every run depends on (not part of ``make test``).

    pytest benchmarks/ --benchmark-only                       # CPU pieces; GPU ones when visible
    pytest benchmarks/ --benchmark-only --benchmark-json bench.json

The whole-model, every-backend comparison is ``lcie-fast bench`` (it prints ratios to eager
FP32 in one run); fast ops against the measured roofline are ``benchmarks/bench_ops.py``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from lcie_fast import create_model, ops
from lcie_fast.config import PreprocessConfig
from lcie_fast.data.transforms import Preprocess
from lcie_fast.metrics import multilabel_metrics


def test_metrics_at_coco_val_scale(benchmark):
    """multilabel_metrics on 40,504 images x 80 labels (MS-COCO val2014)."""
    rng = np.random.default_rng(0)
    scores = rng.random((40504, 80), dtype=np.float32)
    targets = (rng.random((40504, 80)) < 0.036).astype(np.int8)
    result = benchmark(multilabel_metrics, scores, targets)
    assert 0 < result["mAP"] < 100


@pytest.fixture(scope="module")
def jpeg_640() -> bytes:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (640, 640, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(3))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("size", [256, 448])
def test_decode_and_resize_a_640_jpeg(benchmark, jpeg_640, size):
    """What each decoder thread does per image: decode, EXIF, resize to the input (uint8)."""
    preprocess = Preprocess(PreprocessConfig(input_size=size))
    out = benchmark(preprocess.load, jpeg_640)
    assert out.shape == (3, size, size)


@pytest.mark.parametrize("impl", ["ref", "fused"])
def test_edge_preset_forward_cpu(benchmark, impl):
    """lcie_effl0_448 at 256x256, batch 8, eager FP32 on the CPU, with and without fused projections."""
    from lcie_fast.models.fused import fuse_for_inference

    torch.manual_seed(0)
    model = create_model("lcie_effl0_448", num_classes=5, img_size=256).eval().to(memory_format=torch.channels_last)
    if impl == "fused":
        fuse_for_inference(model)
    images = torch.randn(8, 3, 256, 256).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = benchmark(model, images)
    assert out.shape == (8, 5)


def test_downsample_concat_reference_cpu(benchmark):
    maps = [torch.randn(8, c, s, s).contiguous(memory_format=torch.channels_last)
            for c, s in ((40, 56), (112, 28), (320, 14))]
    tokens, _ = benchmark(ops.downsample_concat, *maps, impl="ref")
    assert tokens.shape == (8, 196, 472)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_r101_attention_gpu(benchmark, impl):
    q = torch.randn(16, 4, 80, 896, device="cuda", dtype=torch.float16)
    k = torch.randn(16, 4, 196, 896, device="cuda", dtype=torch.float16)

    def run():
        out = ops.attention(q, k, k, impl=impl)
        torch.cuda.synchronize()
        return out

    with torch.no_grad():
        benchmark(run)
