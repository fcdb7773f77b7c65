// Argument checks of the scatter-back ops shared by the CPU and CUDA implementations.
// Each returns the sizes it validated; device-kind and dtype-support checks that differ between
// backends stay in the backend files.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace dlsn {

struct MergeSizes {
  int64_t N;  // batch
  int64_t h;  // hash rounds
  int64_t L;  // positions, H * W
  int64_t C;  // value channels
};

// O [N, h, L, C], lse [N, h, L], inv [N, h, L] int32, residual [N, C, H, W] with H * W == L.
MergeSizes check_scatter_back_args(const at::Tensor& O, const at::Tensor& lse, const at::Tensor& inv,
                                   const at::Tensor& residual);

// The forward's inputs plus grad_y [N, C, H, W], grad_out [N, L, C] (optional), out [N, L, C],
// LSE [N, L].
MergeSizes check_scatter_back_backward_args(const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_out,
                                            const at::Tensor& O, const at::Tensor& lse, const at::Tensor& inv,
                                            const at::Tensor& out, const at::Tensor& LSE);

// grad_y [N, C, H, W], out [N, L, C] with H * W == L; h is reported as 0.
MergeSizes check_attention_grad_rows_args(const at::Tensor& grad_y, const at::Tensor& out);

// dtype of the merged log-sum-exp (LSE, grad_lse) for element type `element`: float32, or float64
// for float64 elements.
c10::ScalarType lse_dtype_for(c10::ScalarType element);

}  // namespace dlsn
