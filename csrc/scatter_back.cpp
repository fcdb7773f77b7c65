// Scatter-back ops of the fused GLA pipeline: schemas, argument checks and CPU implementations.
//
// The attention core produces, per hash round r, results in sorted order: O [N, h, L, C] and
// lse [N, h, L]. For each position pos, s_r = inv[n, r, pos] is its slot in round r and
//   w_r = softmax_r(lse[n, r, s_r]),  out[n, pos] = sum_r w_r O[n, r, s_r],
//   LSE[n, pos] = logsumexp_r lse[n, r, s_r],  y = res_scale * out (as NCHW) + residual.
// Semantics and signatures: docs/internals.md. Autograd and fake (meta) implementations are
// registered in Python (dlsn/ops/scatter.py); the CUDA implementations live in csrc/cuda/.
#include "scatter_back.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace dlsn {
namespace {

// Positions per CPU task: out rows are built for a block of positions, then the block's NCHW
// columns are read or written position-contiguously.
constexpr int64_t kBlock = 16;

bool is_element_dtype(c10::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

void check_same_device(const at::Tensor& t, const char* op, const char* name, const at::Tensor& O) {
  TORCH_CHECK_VALUE(t.device() == O.device(), op, ": ", name, " must be on the device of O (", O.device(),
                    "), got ", t.device());
}

void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous (call .contiguous())");
}

void check_shape(const at::Tensor& t, const char* op, const char* name, at::IntArrayRef expected,
                 const char* layout) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": ", name, " must have shape ", layout, " = ", expected,
                    ", got ", t.sizes());
}

void check_lse_dtype(const at::Tensor& lse, const at::Tensor& O, const char* op) {
  TORCH_CHECK_TYPE(lse.scalar_type() == at::kFloat || (lse.scalar_type() == at::kDouble && O.scalar_type() == at::kDouble),
                   op, ": lse must be float32 (float64 is accepted when O is float64), got ",
                   lse.scalar_type(), " with O ", O.scalar_type());
}

}  // namespace

c10::ScalarType lse_dtype_for(c10::ScalarType element) {
  return element == at::kDouble ? at::kDouble : at::kFloat;
}

namespace {

// Checks shared by the forward and the backward; `image` is the [N, C, H, W] tensor (residual in
// the forward, grad_y in the backward).
MergeSizes check_merge_args(const char* op, const at::Tensor& O, const at::Tensor& lse, const at::Tensor& inv,
                            const at::Tensor& image, const char* image_name) {
  TORCH_CHECK_VALUE(O.dim() == 4, op, ": O must be 4-D [N, h, L, C], got shape ", O.sizes());
  const MergeSizes sz{O.size(0), O.size(1), O.size(2), O.size(3)};
  TORCH_CHECK_VALUE(sz.h >= 1, op, ": O must hold at least one hash round (O.size(1) >= 1), got shape ",
                    O.sizes());
  TORCH_CHECK_VALUE(sz.L <= std::numeric_limits<int32_t>::max(), op, ": L = ", sz.L,
                    " positions do not fit the int32 indices of inv");
  TORCH_CHECK_TYPE(is_element_dtype(O.scalar_type()), op,
                   ": O must be float32, float16, bfloat16 or float64, got ", O.scalar_type());
  check_lse_dtype(lse, O, op);
  TORCH_CHECK_TYPE(inv.scalar_type() == at::kInt, op, ": inv must be int32, got ", inv.scalar_type());
  TORCH_CHECK_TYPE(image.scalar_type() == O.scalar_type(), op, ": ", image_name, " must have the dtype of O (",
                   O.scalar_type(), "), got ", image.scalar_type());
  check_same_device(lse, op, "lse", O);
  check_same_device(inv, op, "inv", O);
  check_same_device(image, op, image_name, O);
  check_shape(lse, op, "lse", {sz.N, sz.h, sz.L}, "[N, h, L]");
  check_shape(inv, op, "inv", {sz.N, sz.h, sz.L}, "[N, h, L]");
  TORCH_CHECK_VALUE(image.dim() == 4 && image.size(0) == sz.N && image.size(1) == sz.C &&
                        image.size(2) * image.size(3) == sz.L,
                    op, ": ", image_name, " must have shape [N, C, H, W] with N = ", sz.N, ", C = ", sz.C,
                    " and H * W = L = ", sz.L, ", got ", image.sizes());
  check_contiguous(O, op, "O");
  check_contiguous(lse, op, "lse");
  check_contiguous(inv, op, "inv");
  check_contiguous(image, op, image_name);
  return sz;
}

}  // namespace

MergeSizes check_scatter_back_args(const at::Tensor& O, const at::Tensor& lse, const at::Tensor& inv,
                                   const at::Tensor& residual) {
  return check_merge_args("scatter_back", O, lse, inv, residual, "residual");
}

MergeSizes check_scatter_back_backward_args(const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_out,
                                            const at::Tensor& O, const at::Tensor& lse, const at::Tensor& inv,
                                            const at::Tensor& out, const at::Tensor& LSE) {
  constexpr const char* op = "scatter_back_backward";
  const MergeSizes sz = check_merge_args(op, O, lse, inv, grad_y, "grad_y");
  TORCH_CHECK_TYPE(out.scalar_type() == O.scalar_type(), op, ": out must have the dtype of O (",
                   O.scalar_type(), "), got ", out.scalar_type());
  TORCH_CHECK_TYPE(LSE.scalar_type() == lse_dtype_for(O.scalar_type()), op, ": LSE must be ",
                   lse_dtype_for(O.scalar_type()), " for O of dtype ", O.scalar_type(), ", got ",
                   LSE.scalar_type());
  check_same_device(out, op, "out", O);
  check_same_device(LSE, op, "LSE", O);
  check_shape(out, op, "out", {sz.N, sz.L, sz.C}, "[N, L, C]");
  check_shape(LSE, op, "LSE", {sz.N, sz.L}, "[N, L]");
  check_contiguous(out, op, "out");
  check_contiguous(LSE, op, "LSE");
  if (grad_out.has_value()) {
    TORCH_CHECK_TYPE(grad_out->scalar_type() == O.scalar_type(), op, ": grad_out must have the dtype of O (",
                     O.scalar_type(), "), got ", grad_out->scalar_type());
    check_same_device(*grad_out, op, "grad_out", O);
    check_shape(*grad_out, op, "grad_out", {sz.N, sz.L, sz.C}, "[N, L, C]");
    check_contiguous(*grad_out, op, "grad_out");
  }
  return sz;
}

MergeSizes check_attention_grad_rows_args(const at::Tensor& grad_y, const at::Tensor& out) {
  constexpr const char* op = "attention_grad_rows";
  TORCH_CHECK_VALUE(out.dim() == 3, op, ": out must be 3-D [N, L, C], got shape ", out.sizes());
  const MergeSizes sz{out.size(0), 0, out.size(1), out.size(2)};
  TORCH_CHECK_TYPE(is_element_dtype(out.scalar_type()), op,
                   ": out must be float32, float16, bfloat16 or float64, got ", out.scalar_type());
  TORCH_CHECK_TYPE(grad_y.scalar_type() == out.scalar_type(), op, ": grad_y must have the dtype of out (",
                   out.scalar_type(), "), got ", grad_y.scalar_type());
  TORCH_CHECK_VALUE(grad_y.device() == out.device(), op, ": grad_y must be on the device of out (", out.device(),
                    "), got ", grad_y.device());
  TORCH_CHECK_VALUE(grad_y.dim() == 4 && grad_y.size(0) == sz.N && grad_y.size(1) == sz.C &&
                        grad_y.size(2) * grad_y.size(3) == sz.L,
                    op, ": grad_y must have shape [N, C, H, W] with N = ", sz.N, ", C = ", sz.C,
                    " and H * W = L = ", sz.L, ", got ", grad_y.sizes());
  check_contiguous(grad_y, op, "grad_y");
  check_contiguous(out, op, "out");
  return sz;
}

namespace {

void check_cpu(const at::Tensor& O, const char* op) {
  TORCH_CHECK_VALUE(O.device().is_cpu(), op, ": the CPU implementation got tensors on ", O.device());
}

// Races and wrong answers follow from a bad inv, and checking it costs O(N h L) next to the
// O(N h L C) merge, so the CPU ops verify that every inv[n, r] is a permutation of [0, L).
void check_inverse_permutations(const at::Tensor& inv, const char* op) {
  const int64_t rows = inv.size(0) * inv.size(1);
  const int64_t L = inv.size(2);
  const int32_t* data = inv.data_ptr<int32_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> seen(L);
    for (int64_t row = begin; row < end; ++row) {
      std::fill(seen.begin(), seen.end(), 0);
      const int32_t* slots = data + row * L;
      for (int64_t pos = 0; pos < L; ++pos) {
        const int64_t s = slots[pos];
        TORCH_CHECK_VALUE(s >= 0 && s < L, op, ": inv[", row / inv.size(1), ", ", row % inv.size(1), ", ", pos,
                          "] = ", s, " is outside [0, L = ", L, "): inv[n, r] must be a permutation of [0, L)");
        TORCH_CHECK_VALUE(!seen[s], op, ": slot ", s, " appears twice in inv[", row / inv.size(1), ", ",
                          row % inv.size(1), "]: inv[n, r] must be a permutation of [0, L)");
        seen[s] = 1;
      }
    }
  });
}

// Iterations of parallel_for over blocks of kBlock positions so that one task does roughly
// GRAIN_SIZE multiply-adds.
int64_t block_grain(int64_t h, int64_t C) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / (kBlock * std::max<int64_t>(1, h * C)));
}

// Slot offsets and weights of one position: off[r] = row of O[n, r, s_r], w[r] = w_r. With
// merged == nullptr LSE is computed from lse (forward) and returned; otherwise w_r = exp(lse_r - *merged).
template <typename acc_t>
acc_t round_weights(const acc_t* lse, const int32_t* inv, int64_t n, int64_t pos, int64_t h, int64_t L,
                    const acc_t* merged, int64_t* off, acc_t* w) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t r = 0; r < h; ++r) {
    off[r] = (n * h + r) * L + inv[(n * h + r) * L + pos];
    w[r] = lse[off[r]];
    m = std::max(m, w[r]);
  }
  acc_t total;
  if (merged == nullptr) {
    acc_t sum = 0;
    for (int64_t r = 0; r < h; ++r) sum += std::exp(w[r] - m);
    total = m + std::log(sum);
  } else {
    total = *merged;
  }
  for (int64_t r = 0; r < h; ++r) w[r] = std::exp(w[r] - total);
  return total;
}

template <typename scalar_t>
void scatter_back_cpu_kernel(const scalar_t* O, const at::opmath_type<scalar_t>* lse, const int32_t* inv,
                             const scalar_t* residual, scalar_t* y, scalar_t* out,
                             at::opmath_type<scalar_t>* LSE, const MergeSizes& sz, double res_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t h = sz.h, L = sz.L, C = sz.C;
  const int64_t blocks_per_image = (L + kBlock - 1) / kBlock;
  const acc_t scale = static_cast<acc_t>(res_scale);
  at::parallel_for(0, sz.N * blocks_per_image, block_grain(h, C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> rows(kBlock * C);
    std::vector<acc_t> w(h);
    std::vector<int64_t> off(h);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n = block / blocks_per_image;
      const int64_t p0 = (block % blocks_per_image) * kBlock;
      const int64_t count = std::min(kBlock, L - p0);
      for (int64_t p = 0; p < count; ++p) {
        const int64_t pos = p0 + p;
        LSE[n * L + pos] = round_weights<acc_t>(lse, inv, n, pos, h, L, nullptr, off.data(), w.data());
        acc_t* __restrict__ row = rows.data() + p * C;
        std::fill(row, row + C, acc_t(0));
        for (int64_t r = 0; r < h; ++r) {
          const scalar_t* __restrict__ src = O + off[r] * C;
          const acc_t weight = w[r];
          for (int64_t c = 0; c < C; ++c) row[c] += weight * static_cast<acc_t>(src[c]);
        }
        scalar_t* dst = out + (n * L + pos) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(row[c]);
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t base = (n * C + c) * L + p0;
        for (int64_t p = 0; p < count; ++p) {
          y[base + p] = static_cast<scalar_t>(scale * rows[p * C + c] + static_cast<acc_t>(residual[base + p]));
        }
      }
    }
  });
}

template <typename scalar_t>
void scatter_back_backward_cpu_kernel(const scalar_t* grad_y, const scalar_t* grad_out, const scalar_t* O,
                                      const at::opmath_type<scalar_t>* lse, const int32_t* inv, const scalar_t* out,
                                      const at::opmath_type<scalar_t>* LSE, scalar_t* grad_O,
                                      at::opmath_type<scalar_t>* grad_lse, const MergeSizes& sz, double res_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t h = sz.h, L = sz.L, C = sz.C;
  const int64_t blocks_per_image = (L + kBlock - 1) / kBlock;
  const acc_t scale = static_cast<acc_t>(res_scale);
  at::parallel_for(0, sz.N * blocks_per_image, block_grain(h, C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> G(kBlock * C);
    std::vector<acc_t> w(h);
    std::vector<int64_t> off(h);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n = block / blocks_per_image;
      const int64_t p0 = (block % blocks_per_image) * kBlock;
      const int64_t count = std::min(kBlock, L - p0);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* src = grad_y + (n * C + c) * L + p0;
        for (int64_t p = 0; p < count; ++p) G[p * C + c] = scale * static_cast<acc_t>(src[p]);
      }
      for (int64_t p = 0; p < count; ++p) {
        const int64_t pos = p0 + p;
        acc_t* __restrict__ g = G.data() + p * C;
        if (grad_out != nullptr) {
          const scalar_t* __restrict__ src = grad_out + (n * L + pos) * C;
          for (int64_t c = 0; c < C; ++c) g[c] += static_cast<acc_t>(src[c]);
        }
        round_weights<acc_t>(lse, inv, n, pos, h, L, LSE + n * L + pos, off.data(), w.data());
        const scalar_t* __restrict__ merged = out + (n * L + pos) * C;
        for (int64_t r = 0; r < h; ++r) {
          const scalar_t* __restrict__ o = O + off[r] * C;
          scalar_t* __restrict__ go = grad_O + off[r] * C;
          const acc_t weight = w[r];
          acc_t dot = 0;
          for (int64_t c = 0; c < C; ++c) {
            dot += g[c] * (static_cast<acc_t>(o[c]) - static_cast<acc_t>(merged[c]));
            go[c] = static_cast<scalar_t>(weight * g[c]);
          }
          grad_lse[off[r]] = weight * dot;
        }
      }
    }
  });
}

template <typename scalar_t>
void attention_grad_rows_cpu_kernel(const scalar_t* grad_y, const scalar_t* out, scalar_t* g,
                                    at::opmath_type<scalar_t>* D, const MergeSizes& sz, double res_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t L = sz.L, C = sz.C;
  const int64_t blocks_per_image = (L + kBlock - 1) / kBlock;
  const acc_t scale = static_cast<acc_t>(res_scale);
  at::parallel_for(0, sz.N * blocks_per_image, block_grain(1, C), [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n = block / blocks_per_image;
      const int64_t p0 = (block % blocks_per_image) * kBlock;
      const int64_t count = std::min(kBlock, L - p0);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* src = grad_y + (n * C + c) * L + p0;
        for (int64_t p = 0; p < count; ++p) {
          g[(n * L + p0 + p) * C + c] = static_cast<scalar_t>(scale * static_cast<acc_t>(src[p]));
        }
      }
      for (int64_t p = 0; p < count; ++p) {
        const int64_t row = (n * L + p0 + p) * C;
        acc_t dot = 0;
        for (int64_t c = 0; c < C; ++c) dot += static_cast<acc_t>(g[row + c]) * static_cast<acc_t>(out[row + c]);
        D[n * L + p0 + p] = dot;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scatter_back_cpu(const at::Tensor& O, const at::Tensor& lse,
                                                                const at::Tensor& inv, const at::Tensor& residual,
                                                                double res_scale) {
  const MergeSizes sz = check_scatter_back_args(O, lse, inv, residual);
  check_cpu(O, "scatter_back");
  check_inverse_permutations(inv, "scatter_back");
  const at::Tensor lse_acc = lse.to(lse_dtype_for(O.scalar_type()));
  at::Tensor y = at::empty_like(residual);
  at::Tensor out = at::empty({sz.N, sz.L, sz.C}, O.options());
  at::Tensor LSE = at::empty({sz.N, sz.L}, lse_acc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, O.scalar_type(), "scatter_back_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scatter_back_cpu_kernel<scalar_t>(O.data_ptr<scalar_t>(), lse_acc.data_ptr<acc_t>(), inv.data_ptr<int32_t>(),
                                      residual.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                      out.data_ptr<scalar_t>(), LSE.data_ptr<acc_t>(), sz, res_scale);
  });
  return {y, out, LSE};
}

std::tuple<at::Tensor, at::Tensor> scatter_back_backward_cpu(const at::Tensor& grad_y,
                                                             const c10::optional<at::Tensor>& grad_out,
                                                             const at::Tensor& O, const at::Tensor& lse,
                                                             const at::Tensor& inv, const at::Tensor& out,
                                                             const at::Tensor& LSE, double res_scale) {
  const MergeSizes sz = check_scatter_back_backward_args(grad_y, grad_out, O, lse, inv, out, LSE);
  check_cpu(O, "scatter_back_backward");
  check_inverse_permutations(inv, "scatter_back_backward");
  const at::Tensor lse_acc = lse.to(lse_dtype_for(O.scalar_type()));
  at::Tensor grad_O = at::empty_like(O);
  at::Tensor grad_lse = at::empty_like(lse_acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, O.scalar_type(), "scatter_back_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scatter_back_backward_cpu_kernel<scalar_t>(
        grad_y.data_ptr<scalar_t>(), grad_out.has_value() ? grad_out->data_ptr<scalar_t>() : nullptr,
        O.data_ptr<scalar_t>(), lse_acc.data_ptr<acc_t>(), inv.data_ptr<int32_t>(), out.data_ptr<scalar_t>(),
        LSE.data_ptr<acc_t>(), grad_O.data_ptr<scalar_t>(), grad_lse.data_ptr<acc_t>(), sz, res_scale);
  });
  return {grad_O, grad_lse};
}

std::tuple<at::Tensor, at::Tensor> attention_grad_rows_cpu(const at::Tensor& grad_y, const at::Tensor& out,
                                                           double res_scale) {
  const MergeSizes sz = check_attention_grad_rows_args(grad_y, out);
  check_cpu(out, "attention_grad_rows");
  at::Tensor g = at::empty_like(out);
  at::Tensor D = at::empty({sz.N, sz.L}, out.options().dtype(lse_dtype_for(out.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "attention_grad_rows_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    attention_grad_rows_cpu_kernel<scalar_t>(grad_y.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                             g.data_ptr<scalar_t>(), D.data_ptr<acc_t>(), sz, res_scale);
  });
  return {g, D};
}

}  // namespace
}  // namespace dlsn

TORCH_LIBRARY(dlsn, m) {
  // Fake implementations and autograd are registered by this Python module.
  m.set_python_module("dlsn.ops.scatter");
  m.def("scatter_back(Tensor O, Tensor lse, Tensor inv, Tensor residual, float res_scale) -> (Tensor, Tensor, Tensor)");
  m.def(
      "scatter_back_backward(Tensor grad_y, Tensor? grad_out, Tensor O, Tensor lse, Tensor inv, Tensor out, "
      "Tensor LSE, float res_scale) -> (Tensor, Tensor)");
  m.def("attention_grad_rows(Tensor grad_y, Tensor out, float res_scale) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dlsn, CPU, m) {
  m.impl("scatter_back", &dlsn::scatter_back_cpu);
  m.impl("scatter_back_backward", &dlsn::scatter_back_backward_cpu);
  m.impl("attention_grad_rows", &dlsn::attention_grad_rows_cpu);
}
