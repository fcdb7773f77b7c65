// Raw-pointer launchers of the scatter-back CUDA kernels.
//
// This header and scatter_back_kernels.cu include no torch header: they compile with nvcc alone
// (CI has a CPU torch whose headers lack the CUDA-generated ones). The torch glue that checks
// tensors, picks the current stream and registers the ops is csrc/cuda/scatter_back_cuda.cpp.
//
// Layouts (docs/internals.md): O [N, h, L, C] in sorted order, lse [N, h, L] float32,
// inv [N, h, L] int32, residual / y / grad_y [N, C, L] (NCHW with L = H*W), out / grad_out / g
// [N, L, C], LSE / D [N, L] float32. All tensors contiguous. Every launcher enqueues on `stream`
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

// y = res_scale * out (as NCHW) + residual, out[n, pos] = sum_r w_r O[n, r, inv[n, r, pos]],
// w_r = softmax_r(lse[n, r, inv[n, r, pos]]), LSE[n, pos] = logsumexp_r lse[n, r, inv[n, r, pos]].
cudaError_t scatter_back_fwd(ElementType type, const void* O, const float* lse, const int32_t* inv,
                             const void* residual, void* y, void* out, float* LSE, int64_t N,
                             int64_t h, int64_t L, int64_t C, float res_scale, cudaStream_t stream);

// With G[pos] = res_scale * grad_y[:, :, pos] + grad_out[pos] (grad_out may be null: zero) and
// w_r = exp(lse[r, s_r] - LSE[pos]), s_r = inv[r, pos]:
// grad_O[r, s_r] = w_r G[pos], grad_lse[r, s_r] = w_r (G[pos] . (O[r, s_r] - out[pos])).
cudaError_t scatter_back_bwd(ElementType type, const void* grad_y, const void* grad_out,
                             const void* O, const float* lse, const int32_t* inv, const void* out,
                             const float* LSE, void* grad_O, float* grad_lse, int64_t N, int64_t h,
                             int64_t L, int64_t C, float res_scale, cudaStream_t stream);

// g[n, pos] = res_scale * grad_y[n, :, pos] (rows, rounded to the element type),
// D[n, pos] = g[n, pos] . out[n, pos] in fp32 (from the rounded g).
cudaError_t attention_grad_rows(ElementType type, const void* grad_y, const void* out, void* g,
                                float* D, int64_t N, int64_t L, int64_t C, float res_scale,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace dlsn
