// Argument checks of the scatter-back ops shared by the CPU and CUDA implementations.
// Each returns the sizes it validated; device-kind and dtype-support checks that differ between
// backends stay in the backend files.
#pragma once

#include <ATen/core/Tensor.h>

namespace dlsn {

struct MergeSizes {
  int64_t N;  // batch
  int64_t h;  // hash rounds
  int64_t L;  // positions, H * W
  int64_t C;  // value channels
};

// O [N, h, L, C], round_max / round_sum [N, h, L], inv [N, h, L] int32, residual [N, C, H, W]
// with H * W == L.
MergeSizes check_scatter_back_args(const at::Tensor& O, const at::Tensor& round_max, const at::Tensor& round_sum,
                                   const at::Tensor& inv, const at::Tensor& residual);

// grad_y [N, C, H, W], out [N, L, C] with H * W == L; h is reported as 0.
MergeSizes check_attention_grad_rows_args(const at::Tensor& grad_y, const at::Tensor& out);

// dtype of the softmax statistics (lse_max, lse_sum, D) for element type `element`: float32, or
// float64 for float64 elements.
c10::ScalarType stats_dtype_for(c10::ScalarType element);

}  // namespace dlsn
