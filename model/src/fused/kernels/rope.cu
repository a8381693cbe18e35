// Rotate-half RoPE as candle_nn::rotary_emb::rope_slow rounds it, for x [b, h, t, d] with any
// strides (q and k arrive as transposed views); y is contiguous [b, h, t, d]. With
// s = sign * sin (sign -1 is the backward, the transpose rotation):
//   y[i]       = round(round(x[i] * cos[i]) - round(x[i + d/2] * s[i]))
//   y[i + d/2] = round(round(x[i + d/2] * cos[i]) + round(x[i] * s[i]))
#include "common.cuh"

// One thread per (row, i < d/2) pair; pairs < 2^32 (checked on the host), so the index
// arithmetic is 32-bit and only the memory offsets are 64-bit.
template <typename T>
__device__ void rope(const T* x, const T* cos, const T* sin, T* y, uint32_t heads, uint32_t seq, uint32_t half,
                     uint64_t stride_b, uint64_t stride_h, uint64_t stride_t, uint64_t stride_d, float sign,
                     uint32_t pairs) {
  const uint32_t p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  const uint32_t i = p % half;
  const uint32_t row = p / half;
  const uint32_t t = row % seq;
  const uint32_t bh = row / seq;
  const uint32_t h = bh % heads;
  const uint32_t b = bh / heads;
  const uint64_t src = b * stride_b + h * stride_h + t * stride_t + i * stride_d;
  const float x1 = to_f32(x[src]);
  const float x2 = to_f32(x[src + half * stride_d]);
  const float c = to_f32(cos[t * half + i]);
  const float s = sign * to_f32(sin[t * half + i]);
  T* out = y + (uint64_t)row * 2 * half + i;
  out[0] = from_f32<T>(round_to<T>(x1 * c) - round_to<T>(x2 * s));
  out[half] = from_f32<T>(round_to<T>(x2 * c) + round_to<T>(x1 * s));
}

#define ROPE_ENTRIES(T, S)                                                                              \
  extern "C" __global__ void rope_##S(const T* x, const T* cos, const T* sin, T* y, uint32_t heads,      \
                                      uint32_t seq, uint32_t half, uint64_t stride_b, uint64_t stride_h, \
                                      uint64_t stride_t, uint64_t stride_d, float sign, uint32_t pairs) { \
    rope<T>(x, cos, sin, y, heads, seq, half, stride_b, stride_h, stride_t, stride_d, sign, pairs);     \
  }

FOR_EACH_DTYPE(ROPE_ENTRIES)
