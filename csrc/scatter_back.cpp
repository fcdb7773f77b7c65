// The scatter-back op of the fused GLA pipeline: schemas, argument checks and CPU implementations.
//
// The window attention produces, per hash round r and in sorted order, the round outputs
// O [N, h, L, C] and the softmax statistics of each query: round_max (the largest score m_r) and
// round_sum (sum_j exp(s_j - m_r) >= 1), so that the round's log-sum-exp is m_r + log(round_sum)
// without ever being rounded at score magnitude. For each position pos, s_r = inv[n, r, pos] is its
// slot in round r and
//   lse_max = max_r m_r,  lse_sum = sum_r round_sum_r exp(m_r - lse_max),
//   w_r = round_sum_r exp(m_r - lse_max) / lse_sum       (the weights sum to 1 at any magnitude)
//   out[n, pos] = sum_r w_r O[n, r, s_r],  y = res_scale * out (as NCHW) + residual.
// The merged log-sum-exp is lse_max + log(lse_sum); the fused backward takes the pair as it is.
// Semantics and signatures: docs/internals.md. Fake (meta) implementations are registered in
// Python (dlsn/ops/scatter.py); the CUDA implementations live in csrc/cuda/.
#include "scatter_back.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
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

void check_stats_dtype(const at::Tensor& t, const at::Tensor& O, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || (t.scalar_type() == at::kDouble && O.scalar_type() == at::kDouble),
                   op, ": ", name, " must be float32 (float64 is accepted when O is float64), got ",
                   t.scalar_type(), " with O ", O.scalar_type());
}

}  // namespace

c10::ScalarType stats_dtype_for(c10::ScalarType element) {
  return element == at::kDouble ? at::kDouble : at::kFloat;
}

MergeSizes check_scatter_back_args(const at::Tensor& O, const at::Tensor& round_max, const at::Tensor& round_sum,
                                   const at::Tensor& inv, const at::Tensor& residual) {
  constexpr const char* op = "scatter_back";
  TORCH_CHECK_VALUE(O.dim() == 4, op, ": O must be 4-D [N, h, L, C], got shape ", O.sizes());
  const MergeSizes sz{O.size(0), O.size(1), O.size(2), O.size(3)};
  TORCH_CHECK_VALUE(sz.h >= 1, op, ": O must hold at least one hash round (O.size(1) >= 1), got shape ",
                    O.sizes());
  TORCH_CHECK_VALUE(sz.L <= std::numeric_limits<int32_t>::max(), op, ": L = ", sz.L,
                    " positions do not fit the int32 indices of inv");
  TORCH_CHECK_TYPE(is_element_dtype(O.scalar_type()), op,
                   ": O must be float32, float16, bfloat16 or float64, got ", O.scalar_type());
  check_stats_dtype(round_max, O, op, "round_max");
  check_stats_dtype(round_sum, O, op, "round_sum");
  TORCH_CHECK_TYPE(inv.scalar_type() == at::kInt, op, ": inv must be int32, got ", inv.scalar_type());
  TORCH_CHECK_TYPE(residual.scalar_type() == O.scalar_type(), op, ": residual must have the dtype of O (",
                   O.scalar_type(), "), got ", residual.scalar_type());
  check_same_device(round_max, op, "round_max", O);
  check_same_device(round_sum, op, "round_sum", O);
  check_same_device(inv, op, "inv", O);
  check_same_device(residual, op, "residual", O);
  check_shape(round_max, op, "round_max", {sz.N, sz.h, sz.L}, "[N, h, L]");
  check_shape(round_sum, op, "round_sum", {sz.N, sz.h, sz.L}, "[N, h, L]");
  check_shape(inv, op, "inv", {sz.N, sz.h, sz.L}, "[N, h, L]");
  TORCH_CHECK_VALUE(residual.dim() == 4 && residual.size(0) == sz.N && residual.size(1) == sz.C &&
                        residual.size(2) * residual.size(3) == sz.L,
                    op, ": residual must have shape [N, C, H, W] with N = ", sz.N, ", C = ", sz.C,
                    " and H * W = L = ", sz.L, ", got ", residual.sizes());
  check_contiguous(O, op, "O");
  check_contiguous(round_max, op, "round_max");
  check_contiguous(round_sum, op, "round_sum");
  check_contiguous(inv, op, "inv");
  check_contiguous(residual, op, "residual");
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

// Slot offsets and round weights of one position: off[r] = row of O[n, r, s_r], w[r] = w_r.
// Returns (lse_max, lse_sum). A NaN statistic makes every weight of the position NaN (std::max
// skips it, the sum does not); all rounds at -inf give NaN weights, as softmax_r does.
template <typename acc_t>
std::pair<acc_t, acc_t> round_weights(const acc_t* round_max, const acc_t* round_sum, const int32_t* inv,
                                      int64_t n, int64_t pos, int64_t h, int64_t L, int64_t* off, acc_t* w) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t r = 0; r < h; ++r) {
    off[r] = (n * h + r) * L + inv[(n * h + r) * L + pos];
    m = std::max(m, round_max[off[r]]);
  }
  acc_t sum = 0;
  for (int64_t r = 0; r < h; ++r) {
    w[r] = round_sum[off[r]] * std::exp(round_max[off[r]] - m);
    sum += w[r];
  }
  for (int64_t r = 0; r < h; ++r) w[r] /= sum;
  return {m, sum};
}

template <typename scalar_t>
void scatter_back_cpu_kernel(const scalar_t* O, const at::opmath_type<scalar_t>* round_max,
                             const at::opmath_type<scalar_t>* round_sum, const int32_t* inv,
                             const scalar_t* residual, scalar_t* y, scalar_t* out,
                             at::opmath_type<scalar_t>* lse_max, at::opmath_type<scalar_t>* lse_sum,
                             const MergeSizes& sz, double res_scale) {
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
        const auto stats = round_weights<acc_t>(round_max, round_sum, inv, n, pos, h, L, off.data(), w.data());
        lse_max[n * L + pos] = stats.first;
        lse_sum[n * L + pos] = stats.second;
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> scatter_back_cpu(
    const at::Tensor& O, const at::Tensor& round_max, const at::Tensor& round_sum, const at::Tensor& inv,
    const at::Tensor& residual, double res_scale) {
  const MergeSizes sz = check_scatter_back_args(O, round_max, round_sum, inv, residual);
  check_cpu(O, "scatter_back");
  check_inverse_permutations(inv, "scatter_back");
  const c10::ScalarType stats_dtype = stats_dtype_for(O.scalar_type());
  const at::Tensor max_acc = round_max.to(stats_dtype);
  const at::Tensor sum_acc = round_sum.to(stats_dtype);
  at::Tensor y = at::empty_like(residual);
  at::Tensor out = at::empty({sz.N, sz.L, sz.C}, O.options());
  at::Tensor lse_max = at::empty({sz.N, sz.L}, max_acc.options());
  at::Tensor lse_sum = at::empty({sz.N, sz.L}, max_acc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, O.scalar_type(), "scatter_back_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scatter_back_cpu_kernel<scalar_t>(O.data_ptr<scalar_t>(), max_acc.data_ptr<acc_t>(), sum_acc.data_ptr<acc_t>(),
                                      inv.data_ptr<int32_t>(), residual.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                      out.data_ptr<scalar_t>(), lse_max.data_ptr<acc_t>(), lse_sum.data_ptr<acc_t>(),
                                      sz, res_scale);
  });
  return {y, out, lse_max, lse_sum};
}

std::tuple<at::Tensor, at::Tensor> attention_grad_rows_cpu(const at::Tensor& grad_y, const at::Tensor& out,
                                                           double res_scale) {
  const MergeSizes sz = check_attention_grad_rows_args(grad_y, out);
  check_cpu(out, "attention_grad_rows");
  at::Tensor g = at::empty_like(out);
  at::Tensor D = at::empty({sz.N, sz.L}, out.options().dtype(stats_dtype_for(out.scalar_type())));
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
  // Fake implementations are registered by this Python module.
  m.set_python_module("dlsn.ops.scatter");
  m.def(
      "scatter_back(Tensor O, Tensor round_max, Tensor round_sum, Tensor inv, Tensor residual, float res_scale) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("attention_grad_rows(Tensor grad_y, Tensor out, float res_scale) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dlsn, CPU, m) {
  m.impl("scatter_back", &dlsn::scatter_back_cpu);
  m.impl("attention_grad_rows", &dlsn::attention_grad_rows_cpu);
}
