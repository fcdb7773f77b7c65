// Scatter-back kernels: unsort and merge the h per-round attention results of every position
// (docs/internals.md, stage 4; the CPU twin is csrc/scatter_back.cpp).
//
// One block handles a tile of kTile positions of one image and loops over the channels in chunks
// of kLanes * VEC. Row-major tensors ([.., L, C]: O, out, grad_out, g) are read and written with
// VEC-wide vector accesses by kLanes threads per position; NCHW tensors (residual, y, grad_y) are
// staged through a shared-memory tile so that their accesses run along positions and coalesce.
// Row offsets are int64: N * h * L * C passes 2^31 at realistic sizes. Accumulation is fp32.
// Reductions over channels run in a fixed order (lane shuffles, then one owner thread per
// position), so results are deterministic.
#include "scatter_back_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace dlsn {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 64;   // positions per block
constexpr int kLanes = 8;   // threads sharing one position's channels
static_assert((kTile * kLanes) % kThreads == 0,
              "every thread must run the same number of row iterations: lane shuffles need the whole warp");
static_assert(32 % kLanes == 0, "the lanes of one position must sit in one warp");

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Packed {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* src, float (&dst)[VEC]) {
  const Packed<T, VEC> p = *reinterpret_cast<const Packed<T, VEC>*>(src);
#pragma unroll
  for (int j = 0; j < VEC; ++j) dst[j] = to_float(p.v[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* dst, const float (&src)[VEC]) {
  Packed<T, VEC> p;
#pragma unroll
  for (int j = 0; j < VEC; ++j) p.v[j] = from_float<T>(src[j]);
  *reinterpret_cast<Packed<T, VEC>*>(dst) = p;
}

__device__ __forceinline__ float lane_sum(float v) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset, kLanes);
  return v;
}

// Per-position round weights of the tile: off_sh[r * kTile + p] = row offset of O[n, r, s_r],
// w_sh[r * kTile + p] = w_r = round_sum_r exp(round_max_r - lse_max) / lse_sum, so the weights sum
// to 1 at any score magnitude; lse_max and lse_sum are written per position. A NaN statistic makes
// every weight of its position NaN (fmaxf skips it, the sum does not), as on the CPU. A position
// with an inv entry outside [0, L) gets off_sh = -1 and NaN weights: kernels skip its rows and
// report NaN.
__device__ void round_weights(const float* round_max, const float* round_sum, const int32_t* inv,
                              float* lse_max, float* lse_sum, int64_t n, int64_t p0, int64_t h, int64_t L,
                              int64_t C, int64_t* off_sh, float* w_sh) {
  for (int p = threadIdx.x; p < kTile; p += blockDim.x) {
    const int64_t pos = p0 + p;
    if (pos >= L) {
      for (int64_t r = 0; r < h; ++r) {
        off_sh[r * kTile + p] = -1;
        w_sh[r * kTile + p] = 0.f;
      }
      continue;
    }
    bool valid = true;
    for (int64_t r = 0; r < h; ++r) {
      const int64_t s = inv[(n * h + r) * L + pos];
      valid = valid && s >= 0 && s < L;
    }
    float m = -INFINITY;
    for (int64_t r = 0; r < h; ++r) {
      const int64_t slot = (n * h + r) * L + (valid ? inv[(n * h + r) * L + pos] : 0);
      off_sh[r * kTile + p] = valid ? slot * C : -1;
      m = fmaxf(m, round_max[slot]);
    }
    float sum = 0.f;
    for (int64_t r = 0; r < h; ++r) {
      const int64_t slot = (n * h + r) * L + (valid ? inv[(n * h + r) * L + pos] : 0);
      const float weight = round_sum[slot] * expf(round_max[slot] - m);
      w_sh[r * kTile + p] = weight;
      sum += weight;
    }
    if (!valid) sum = NAN;
    for (int64_t r = 0; r < h; ++r) w_sh[r * kTile + p] /= sum;
    lse_max[n * L + pos] = valid ? m : NAN;
    lse_sum[n * L + pos] = sum;
  }
}

// tile[p * (width + 1) + cc] = scale * src[n, c0 + cc, p0 + p] for a [C, L] plane (0 outside).
template <typename T>
__device__ void load_nchw_tile(const T* src, int64_t n, int64_t c0, int64_t p0, int64_t C, int64_t L,
                               int width, float scale, float* tile) {
  for (int item = threadIdx.x; item < width * kTile; item += blockDim.x) {
    const int cc = item / kTile;
    const int p = item % kTile;
    const int64_t c = c0 + cc;
    const int64_t pos = p0 + p;
    tile[p * (width + 1) + cc] = (c < C && pos < L) ? scale * to_float(src[(n * C + c) * L + pos]) : 0.f;
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    scatter_back_fwd_kernel(const T* __restrict__ O, const float* __restrict__ round_max,
                            const float* __restrict__ round_sum, const int32_t* __restrict__ inv,
                            const T* __restrict__ residual, T* __restrict__ y, T* __restrict__ out,
                            float* __restrict__ lse_max, float* __restrict__ lse_sum, int64_t h, int64_t L,
                            int64_t C, int64_t tiles_per_image, float res_scale) {
  constexpr int kWidth = kLanes * VEC;
  extern __shared__ float4 smem[];
  int64_t* off_sh = reinterpret_cast<int64_t*>(smem);
  float* w_sh = reinterpret_cast<float*>(off_sh + h * kTile);
  float* tile = w_sh + h * kTile;

  const int64_t n = blockIdx.x / tiles_per_image;
  const int64_t p0 = (blockIdx.x % tiles_per_image) * kTile;
  round_weights(round_max, round_sum, inv, lse_max, lse_sum, n, p0, h, L, C, off_sh, w_sh);
  __syncthreads();

  for (int64_t c0 = 0; c0 < C; c0 += kWidth) {
    for (int item = threadIdx.x; item < kTile * kLanes; item += kThreads) {
      const int p = item / kLanes;
      const int lane = item % kLanes;
      const int64_t pos = p0 + p;
      const int64_t c = c0 + lane * VEC;
      if (pos >= L || c >= C) continue;
      float acc[VEC] = {};
      for (int64_t r = 0; r < h; ++r) {
        const int64_t off = off_sh[r * kTile + p];
        const float w = w_sh[r * kTile + p];
        float o[VEC];
        if (off >= 0) {
          load_vec<T, VEC>(O + off + c, o);
        } else {
#pragma unroll
          for (int j = 0; j < VEC; ++j) o[j] = NAN;
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] += w * o[j];
      }
      store_vec<T, VEC>(out + (n * L + pos) * C + c, acc);
#pragma unroll
      for (int j = 0; j < VEC; ++j) tile[p * (kWidth + 1) + lane * VEC + j] = acc[j];
    }
    __syncthreads();
    for (int item = threadIdx.x; item < kWidth * kTile; item += kThreads) {
      const int cc = item / kTile;
      const int p = item % kTile;
      const int64_t c = c0 + cc;
      const int64_t pos = p0 + p;
      if (c >= C || pos >= L) continue;
      const int64_t idx = (n * C + c) * L + pos;
      y[idx] = from_float<T>(res_scale * tile[p * (kWidth + 1) + cc] + to_float(residual[idx]));
    }
    __syncthreads();
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    attention_grad_rows_kernel(const T* __restrict__ grad_y, const T* __restrict__ out, T* __restrict__ g,
                               float* __restrict__ D, int64_t L, int64_t C, int64_t tiles_per_image,
                               float res_scale) {
  constexpr int kWidth = kLanes * VEC;
  extern __shared__ float4 smem[];
  float* D_sh = reinterpret_cast<float*>(smem);
  float* tile = D_sh + kTile;

  const int64_t n = blockIdx.x / tiles_per_image;
  const int64_t p0 = (blockIdx.x % tiles_per_image) * kTile;
  for (int p = threadIdx.x; p < kTile; p += kThreads) D_sh[p] = 0.f;

  for (int64_t c0 = 0; c0 < C; c0 += kWidth) {
    load_nchw_tile(grad_y, n, c0, p0, C, L, kWidth, res_scale, tile);
    __syncthreads();
    for (int item = threadIdx.x; item < kTile * kLanes; item += kThreads) {
      const int p = item / kLanes;
      const int lane = item % kLanes;
      const int64_t pos = p0 + p;
      const int64_t c = c0 + lane * VEC;
      float dot = 0.f;
      if (pos < L && c < C) {
        float row[VEC];
        float o[VEC];
        Packed<T, VEC> rounded;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          rounded.v[j] = from_float<T>(tile[p * (kWidth + 1) + lane * VEC + j]);
          row[j] = to_float(rounded.v[j]);
        }
        *reinterpret_cast<Packed<T, VEC>*>(g + (n * L + pos) * C + c) = rounded;
        load_vec<T, VEC>(out + (n * L + pos) * C + c, o);
#pragma unroll
        for (int j = 0; j < VEC; ++j) dot += row[j] * o[j];
      }
      dot = lane_sum(dot);
      if (lane == 0 && pos < L) D_sh[p] += dot;
    }
    __syncthreads();
  }
  for (int p = threadIdx.x; p < kTile; p += kThreads) {
    if (p0 + p < L) D[n * L + p0 + p] = D_sh[p];
  }
}

bool aligned(const void* ptr, int bytes) {
  return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

// The widest vector (at most 16 bytes) that divides C and fits the alignment of every row pointer.
template <typename T>
int pick_vec(int64_t C, std::initializer_list<const void*> rows) {
  for (int vec = 16 / static_cast<int>(sizeof(T)); vec > 1; vec /= 2) {
    bool ok = C % vec == 0;
    for (const void* ptr : rows) ok = ok && aligned(ptr, vec * static_cast<int>(sizeof(T)));
    if (ok) return vec;
  }
  return 1;
}

template <typename T, typename Launch>
void with_vec(int vec, Launch&& launch) {
  switch (vec) {
    case 8:
      if constexpr (sizeof(T) <= 2) launch(std::integral_constant<int, 8>{});
      break;
    case 4: launch(std::integral_constant<int, 4>{}); break;
    case 2: launch(std::integral_constant<int, 2>{}); break;
    default: launch(std::integral_constant<int, 1>{}); break;
  }
}

template <typename Body>
cudaError_t with_type(ElementType type, Body&& body) {
  switch (type) {
    case ElementType::kFloat32: return body(float{});
    case ElementType::kFloat16: return body(__half{});
    case ElementType::kBFloat16: return body(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Grid of N * ceil(L / kTile) blocks in x; false when it does not fit a launch.
bool grid_for(int64_t N, int64_t L, int64_t* tiles_per_image, unsigned* blocks) {
  *tiles_per_image = (L + kTile - 1) / kTile;
  const int64_t total = N * *tiles_per_image;
  if (total > 0x7fffffffLL) return false;
  *blocks = static_cast<unsigned>(total);
  return true;
}

size_t tile_bytes(int vec) { return sizeof(float) * kTile * (kLanes * vec + 1); }

}  // namespace

cudaError_t scatter_back_fwd(ElementType type, const void* O, const float* round_max, const float* round_sum,
                             const int32_t* inv, const void* residual, void* y, void* out, float* lse_max,
                             float* lse_sum, int64_t N, int64_t h, int64_t L, int64_t C, float res_scale,
                             cudaStream_t stream) {
  if (h < 1 || h > kMaxRounds || C < 0) return cudaErrorInvalidValue;
  int64_t tiles_per_image;
  unsigned blocks;
  if (!grid_for(N, L, &tiles_per_image, &blocks)) return cudaErrorInvalidValue;
  if (blocks == 0) return cudaSuccess;
  return with_type(type, [&](auto zero) {
    using T = decltype(zero);
    with_vec<T>(pick_vec<T>(C, {O, out}), [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      const size_t smem = sizeof(int64_t) * h * kTile + sizeof(float) * h * kTile + tile_bytes(VEC);
      scatter_back_fwd_kernel<T, VEC><<<blocks, kThreads, smem, stream>>>(
          static_cast<const T*>(O), round_max, round_sum, inv, static_cast<const T*>(residual),
          static_cast<T*>(y), static_cast<T*>(out), lse_max, lse_sum, h, L, C, tiles_per_image, res_scale);
    });
    return cudaGetLastError();
  });
}

cudaError_t attention_grad_rows(ElementType type, const void* grad_y, const void* out, void* g,
                                float* D, int64_t N, int64_t L, int64_t C, float res_scale,
                                cudaStream_t stream) {
  if (C < 0) return cudaErrorInvalidValue;
  int64_t tiles_per_image;
  unsigned blocks;
  if (!grid_for(N, L, &tiles_per_image, &blocks)) return cudaErrorInvalidValue;
  if (blocks == 0) return cudaSuccess;
  return with_type(type, [&](auto zero) {
    using T = decltype(zero);
    with_vec<T>(pick_vec<T>(C, {out, g}), [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      const size_t smem = sizeof(float) * kTile + tile_bytes(VEC);
      attention_grad_rows_kernel<T, VEC><<<blocks, kThreads, smem, stream>>>(
          static_cast<const T*>(grad_y), static_cast<const T*>(out), static_cast<T*>(g), D, L, C,
          tiles_per_image, res_scale);
    });
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace dlsn
