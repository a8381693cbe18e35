// RMSNorm forward and backward, rounding where the composite form stores a tensor:
//   r = 1 / sqrt(sum(x^2) * inv_h + eps)     (f32, as candle's mean and affine compute it)
//   y = round(round(x * r) * w)
// Backward, with dn = round(dy * w) (the product autograd stores) and n = x * r:
//   dx = r * dn - x * (r^3 * sum(dn * x) * inv_h)
//   dw = sum over rows of round(dy * round(x * r))     (f32 sum, rounded once)
#include "common.cuh"

// One block per row.
template <typename T>
__device__ void rms_norm_fwd(const T* x, const T* w, T* y, uint32_t h, float inv_h, float eps) {
  const size_t row = blockIdx.x;
  const T* xr = x + row * h;
  T* yr = y + row * h;
  float sq = 0.f;
  for (uint32_t j = threadIdx.x; j < h; j += blockDim.x) {
    const float v = to_f32(xr[j]);
    sq += v * v;
  }
  const float r = 1.f / sqrtf(block_sum(sq) * inv_h + eps);
  for (uint32_t j = threadIdx.x; j < h; j += blockDim.x) {
    const float normed = round_to<T>(to_f32(xr[j]) * r);
    yr[j] = from_f32<T>(normed * to_f32(w[j]));
  }
}

// Rows are block-strided; each block sums its rows' dw terms in shared memory (a thread always
// owns the same columns, so no atomics) and writes them to partial[blockIdx.x * h ..].
// Dynamic shared memory: h floats.
template <typename T>
__device__ void rms_norm_bwd(const T* x, const T* w, const T* dy, T* dx, float* partial, uint32_t rows,
                             uint32_t h, float inv_h, float eps) {
  extern __shared__ float dw_acc[];
  for (uint32_t j = threadIdx.x; j < h; j += blockDim.x) dw_acc[j] = 0.f;
  for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * h;
    const T* dyr = dy + row * h;
    T* dxr = dx + row * h;
    float sq = 0.f, dot = 0.f;
    for (uint32_t j = threadIdx.x; j < h; j += blockDim.x) {
      const float v = to_f32(xr[j]);
      const float dn = round_to<T>(to_f32(dyr[j]) * to_f32(w[j]));
      sq += v * v;
      dot += dn * v;
    }
    sq = block_sum(sq);
    dot = block_sum(dot);
    const float r = 1.f / sqrtf(sq * inv_h + eps);
    const float c = r * r * r * dot * inv_h;
    for (uint32_t j = threadIdx.x; j < h; j += blockDim.x) {
      const float v = to_f32(xr[j]);
      const float g = to_f32(dyr[j]);
      const float dn = round_to<T>(g * to_f32(w[j]));
      dxr[j] = from_f32<T>(r * dn - v * c);
      dw_acc[j] += round_to<T>(g * round_to<T>(v * r));
    }
  }
  for (uint32_t j = threadIdx.x; j < h; j += blockDim.x) partial[(size_t)blockIdx.x * h + j] = dw_acc[j];
}

// dw[j] = sum of partial[b * h + j] over the `blocks` rows of partial. One block of 32 x 32
// threads per 32 columns: thread (x, y) sums rows y, y + 32, .. of column 32 * blockIdx.x + x,
// then y is folded in a fixed order (deterministic).
template <typename T>
__device__ void rms_norm_dw(const float* partial, T* dw, uint32_t blocks, uint32_t h) {
  __shared__ float acc[32][33];
  const uint32_t j = blockIdx.x * 32 + threadIdx.x;
  float s = 0.f;
  if (j < h) {
    for (uint32_t b = threadIdx.y; b < blocks; b += 32) s += partial[(size_t)b * h + j];
  }
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < h) {
    float total = 0.f;
    for (int y = 0; y < 32; ++y) total += acc[y][threadIdx.x];
    dw[j] = from_f32<T>(total);
  }
}

#define RMS_NORM_ENTRIES(T, S)                                                                          \
  extern "C" __global__ void rms_norm_fwd_##S(const T* x, const T* w, T* y, uint32_t h, float inv_h,   \
                                              float eps) {                                             \
    rms_norm_fwd<T>(x, w, y, h, inv_h, eps);                                                           \
  }                                                                                                    \
  extern "C" __global__ void rms_norm_bwd_##S(const T* x, const T* w, const T* dy, T* dx, float* partial, \
                                              uint32_t rows, uint32_t h, float inv_h, float eps) {     \
    rms_norm_bwd<T>(x, w, dy, dx, partial, rows, h, inv_h, eps);                                       \
  }                                                                                                    \
  extern "C" __global__ void rms_norm_dw_##S(const float* partial, T* dw, uint32_t blocks, uint32_t h) { \
    rms_norm_dw<T>(partial, dw, blocks, h);                                                            \
  }

FOR_EACH_DTYPE(RMS_NORM_ENTRIES)
