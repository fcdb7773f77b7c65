// CUDA implementations of the scatter-back op and attention_grad_rows: argument checks, device guard, current stream,
// and dispatch to the raw-pointer launchers of scatter_back_kernels.cu. Compiled only in CUDA
// builds (setup.py defines DLSN_WITH_CUDA); uses c10/cuda headers only, not ATen/cuda.
#ifdef DLSN_WITH_CUDA

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../scatter_back.h"
#include "scatter_back_kernels.h"

namespace dlsn {
namespace {

cuda::ElementType element_type(const at::Tensor& t, const char* op, const char* name) {
  const c10::ScalarType st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op, ": on CUDA ", name,
                   " must be float32, float16 or bfloat16, got ", st);
  if (st == at::kHalf) return cuda::ElementType::kFloat16;
  if (st == at::kBFloat16) return cuda::ElementType::kBFloat16;
  return cuda::ElementType::kFloat32;
}

void check_cuda(const at::Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": the CUDA implementation got tensors on ", t.device());
}

void check_rounds(const MergeSizes& sz, const char* op) {
  TORCH_CHECK_VALUE(sz.h <= cuda::kMaxRounds, op, ": the CUDA kernels take at most ", cuda::kMaxRounds,
                    " hash rounds, got h = ", sz.h);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> scatter_back_cuda(
    const at::Tensor& O, const at::Tensor& round_max, const at::Tensor& round_sum, const at::Tensor& inv,
    const at::Tensor& residual, double res_scale) {
  const MergeSizes sz = check_scatter_back_args(O, round_max, round_sum, inv, residual);
  check_cuda(O, "scatter_back");
  check_rounds(sz, "scatter_back");
  const cuda::ElementType type = element_type(O, "scatter_back", "O");
  const c10::cuda::CUDAGuard guard(O.device());
  at::Tensor y = at::empty_like(residual);
  at::Tensor out = at::empty({sz.N, sz.L, sz.C}, O.options());
  at::Tensor lse_max = at::empty({sz.N, sz.L}, round_max.options());
  at::Tensor lse_sum = at::empty({sz.N, sz.L}, round_max.options());
  C10_CUDA_CHECK(cuda::scatter_back_fwd(type, O.data_ptr(), round_max.data_ptr<float>(), round_sum.data_ptr<float>(),
                                        inv.data_ptr<int32_t>(), residual.data_ptr(), y.data_ptr(), out.data_ptr(),
                                        lse_max.data_ptr<float>(), lse_sum.data_ptr<float>(), sz.N, sz.h, sz.L, sz.C,
                                        static_cast<float>(res_scale),
                                        c10::cuda::getCurrentCUDAStream(O.device().index()).stream()));
  return {y, out, lse_max, lse_sum};
}

std::tuple<at::Tensor, at::Tensor> attention_grad_rows_cuda(const at::Tensor& grad_y, const at::Tensor& out,
                                                            double res_scale) {
  const MergeSizes sz = check_attention_grad_rows_args(grad_y, out);
  check_cuda(out, "attention_grad_rows");
  const cuda::ElementType type = element_type(out, "attention_grad_rows", "out");
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor g = at::empty_like(out);
  at::Tensor D = at::empty({sz.N, sz.L}, out.options().dtype(at::kFloat));
  C10_CUDA_CHECK(cuda::attention_grad_rows(type, grad_y.data_ptr(), out.data_ptr(), g.data_ptr(),
                                           D.data_ptr<float>(), sz.N, sz.L, sz.C, static_cast<float>(res_scale),
                                           c10::cuda::getCurrentCUDAStream(out.device().index()).stream()));
  return {g, D};
}

}  // namespace
}  // namespace dlsn

TORCH_LIBRARY_IMPL(dlsn, CUDA, m) {
  m.impl("scatter_back", &dlsn::scatter_back_cuda);
  m.impl("attention_grad_rows", &dlsn::attention_grad_rows_cuda);
}

#endif  // DLSN_WITH_CUDA
