// Raw-pointer launchers of the scatter-back CUDA kernels.
//
// This header and scatter_back_kernels.cu include no torch header: they compile with nvcc alone
// (CI has a CPU torch whose headers lack the CUDA-generated ones). The torch glue that checks
// tensors, picks the current stream and registers the ops is csrc/cuda/scatter_back_cuda.cpp.
//
// Layouts (docs/internals.md): O [N, h, L, C] in sorted order, round_max / round_sum [N, h, L]
// float32, inv [N, h, L] int32, residual / y / grad_y [N, C, L] (NCHW with L = H*W), out / g
// [N, L, C], lse_max / lse_sum / D [N, L] float32. All tensors contiguous. Every launcher enqueues on `stream`
// and returns the launch status (cudaGetLastError), cudaSuccess when there is nothing to do.
// `inv` must hold, per (n, r), a permutation of [0, L) (it is not checked here: that would need a
// device sync); an entry outside [0, L) is never dereferenced, its position gets NaN results.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace dlsn {
namespace cuda {

enum class ElementType { kFloat32, kFloat16, kBFloat16 };

// Most hash rounds the kernels take (per-round weights live in shared memory); launchers return
// cudaErrorInvalidValue beyond it.
constexpr int64_t kMaxRounds = 16;

// y = res_scale * out (as NCHW) + residual, out[n, pos] = sum_r w_r O[n, r, s_r] with s_r = inv[n, r, pos],
// lse_max[n, pos] = max_r round_max[n, r, s_r], lse_sum[n, pos] = sum_r round_sum_r exp(round_max_r - lse_max),
// w_r = round_sum_r exp(round_max_r - lse_max) / lse_sum.
cudaError_t scatter_back_fwd(ElementType type, const void* O, const float* round_max, const float* round_sum,
                             const int32_t* inv, const void* residual, void* y, void* out, float* lse_max,
                             float* lse_sum, int64_t N, int64_t h, int64_t L, int64_t C, float res_scale,
                             cudaStream_t stream);

// g[n, pos] = res_scale * grad_y[n, :, pos] (rows, rounded to the element type),
// D[n, pos] = g[n, pos] . out[n, pos] in fp32 (from the rounded g).
cudaError_t attention_grad_rows(ElementType type, const void* grad_y, const void* out, void* g,
                                float* D, int64_t N, int64_t L, int64_t C, float res_scale,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace dlsn
