// MLFF in one pass (paper eq. 1): X3, X4, X5 -> bilinear to X5's size -> concatenated
// decoder tokens (B, h*w, C3 + C4 + C5), the CUDA C++ twin of
// lcie_fast/ops/_triton/downsample_concat.py and of the reference
// F.interpolate(mode="bilinear", align_corners=False) + cat.
//
// One thread per output element, channels fastest, so writes are coalesced and, for
// channels-last inputs, so are reads. Interpolation runs in fp32 (opmath) for fp16/bf16.
// Registered as the torch op lcie_fast::downsample_concat_cuda (CUDA dispatch key); its fake
// (meta) implementation is registered from Python when the extension loads.

// Light headers only: no cuBLAS/cuSPARSE headers are needed (or present in a minimal toolkit).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include <cstdint>

namespace lcie_fast {
namespace {

struct LevelArgs {
  int64_t channels;
  int64_t height;
  int64_t width;
  int64_t stride_b;
  int64_t stride_c;
  int64_t stride_h;
  int64_t stride_w;
  int64_t channel_offset;  // first output column of this level
  float scale_h;           // input / output size, as F.interpolate computes it
  float scale_w;
  bool copy;               // same size as the output: a gather
};

template <typename scalar_t>
__global__ void downsample_concat_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ out,
                                         LevelArgs level, int64_t out_w, int64_t positions, int64_t dim,
                                         int64_t total) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t c = index % level.channels;
    const int64_t p = (index / level.channels) % positions;
    const int64_t b = index / (level.channels * positions);
    const int64_t oy = p / out_w;
    const int64_t ox = p % out_w;
    const scalar_t* base = input + b * level.stride_b + c * level.stride_c;
    scalar_t* target = out + (b * positions + p) * dim + level.channel_offset + c;
    if (level.copy) {
      *target = base[oy * level.stride_h + ox * level.stride_w];
      continue;
    }
    const opmath_t sy = fmaxf((static_cast<float>(oy) + 0.5f) * level.scale_h - 0.5f, 0.0f);
    const opmath_t sx = fmaxf((static_cast<float>(ox) + 0.5f) * level.scale_w - 0.5f, 0.0f);
    const int64_t y0 = static_cast<int64_t>(sy);
    const int64_t x0 = static_cast<int64_t>(sx);
    const int64_t y1 = y0 + (y0 < level.height - 1 ? 1 : 0);
    const int64_t x1 = x0 + (x0 < level.width - 1 ? 1 : 0);
    const opmath_t ly = sy - static_cast<opmath_t>(y0);
    const opmath_t lx = sx - static_cast<opmath_t>(x0);
    const opmath_t v00 = static_cast<opmath_t>(base[y0 * level.stride_h + x0 * level.stride_w]);
    const opmath_t v01 = static_cast<opmath_t>(base[y0 * level.stride_h + x1 * level.stride_w]);
    const opmath_t v10 = static_cast<opmath_t>(base[y1 * level.stride_h + x0 * level.stride_w]);
    const opmath_t v11 = static_cast<opmath_t>(base[y1 * level.stride_h + x1 * level.stride_w]);
    const opmath_t value = (1 - ly) * ((1 - lx) * v00 + lx * v01) + ly * ((1 - lx) * v10 + lx * v11);
    *target = static_cast<scalar_t>(value);
  }
}

LevelArgs level_args(const at::Tensor& x, int64_t out_h, int64_t out_w, int64_t channel_offset) {
  LevelArgs args;
  args.channels = x.size(1);
  args.height = x.size(2);
  args.width = x.size(3);
  args.stride_b = x.stride(0);
  args.stride_c = x.stride(1);
  args.stride_h = x.stride(2);
  args.stride_w = x.stride(3);
  args.channel_offset = channel_offset;
  args.scale_h = static_cast<float>(args.height) / static_cast<float>(out_h);
  args.scale_w = static_cast<float>(args.width) / static_cast<float>(out_w);
  args.copy = args.height == out_h && args.width == out_w;
  return args;
}

at::Tensor downsample_concat_cuda(const at::Tensor& x3, const at::Tensor& x4, const at::Tensor& x5) {
  const at::Tensor* levels[3] = {&x3, &x4, &x5};
  for (const at::Tensor* x : levels) {
    TORCH_CHECK(x->is_cuda(), "lcie_fast::downsample_concat_cuda: inputs must be CUDA tensors");
    TORCH_CHECK(x->dim() == 4, "lcie_fast::downsample_concat_cuda: inputs must be (B, C, H, W)");
    TORCH_CHECK(x->scalar_type() == x5.scalar_type(), "lcie_fast::downsample_concat_cuda: inputs must share a dtype");
    TORCH_CHECK(x->size(0) == x5.size(0), "lcie_fast::downsample_concat_cuda: inputs must share the batch size");
    TORCH_CHECK(x->device() == x5.device(), "lcie_fast::downsample_concat_cuda: inputs must be on one device");
  }
  const c10::cuda::CUDAGuard guard(x5.device());
  const int64_t batch = x5.size(0);
  const int64_t out_h = x5.size(2);
  const int64_t out_w = x5.size(3);
  const int64_t positions = out_h * out_w;
  const int64_t dim = x3.size(1) + x4.size(1) + x5.size(1);
  at::Tensor out = at::empty({batch, positions, dim}, x5.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) {
    return out;
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  int64_t offset = 0;
  constexpr int threads = 256;
  for (const at::Tensor* x : levels) {
    const LevelArgs args = level_args(*x, out_h, out_w, offset);
    const int64_t total = batch * positions * args.channels;
    const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535L * 32);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x->scalar_type(), "downsample_concat_cuda", [&] {
      downsample_concat_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
          x->const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), args, out_w, positions, dim, total);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    offset += args.channels;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lcie_fast, m) {
  m.def("downsample_concat_cuda(Tensor x3, Tensor x4, Tensor x5) -> Tensor");
}

TORCH_LIBRARY_IMPL(lcie_fast, CUDA, m) {
  m.impl("downsample_concat_cuda", &downsample_concat_cuda);
}

}  // namespace lcie_fast
