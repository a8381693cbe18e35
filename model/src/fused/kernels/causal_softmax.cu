// Causal softmax over the last axis of scores [.., t, t], in f32: row i of each t x t block
// keeps columns j <= i, p = exp(z - max) / sum with z = scale * s, masked columns exactly 0,
// rounded once to the scores' dtype. Backward (p recomputed in f32 from the scores):
//   ds = round(scale * (p * (dp - sum_j dp_j * p_j)))
// One block per row. The row is read several times; it stays in L1/L2.
#include "common.cuh"

// (max z, sum exp(z - max)) over the row's unmasked columns 0..=i.
template <typename T>
__device__ float2 row_stats(const T* s, uint32_t i, float scale) {
  float m = -INFINITY;
  for (uint32_t j = threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, to_f32(s[j]) * scale);
  m = block_max(m);
  float sum = 0.f;
  for (uint32_t j = threadIdx.x; j <= i; j += blockDim.x) sum += expf(to_f32(s[j]) * scale - m);
  return make_float2(m, block_sum(sum));
}

template <typename T>
__device__ void causal_softmax_fwd(const T* s, T* p, uint32_t t, float scale) {
  const size_t row = blockIdx.x;
  const uint32_t i = row % t;
  const T* sr = s + row * t;
  T* pr = p + row * t;
  const float2 st = row_stats(sr, i, scale);
  for (uint32_t j = threadIdx.x; j < t; j += blockDim.x) {
    pr[j] = from_f32<T>(j <= i ? expf(to_f32(sr[j]) * scale - st.x) / st.y : 0.f);
  }
}

template <typename T>
__device__ void causal_softmax_bwd(const T* s, const T* dp, T* ds, uint32_t t, float scale) {
  const size_t row = blockIdx.x;
  const uint32_t i = row % t;
  const T* sr = s + row * t;
  const T* dpr = dp + row * t;
  T* dsr = ds + row * t;
  const float2 st = row_stats(sr, i, scale);
  float dot = 0.f;
  for (uint32_t j = threadIdx.x; j <= i; j += blockDim.x) {
    dot += to_f32(dpr[j]) * (expf(to_f32(sr[j]) * scale - st.x) / st.y);
  }
  dot = block_sum(dot);
  for (uint32_t j = threadIdx.x; j < t; j += blockDim.x) {
    float g = 0.f;
    if (j <= i) {
      const float pj = expf(to_f32(sr[j]) * scale - st.x) / st.y;
      g = scale * (pj * (to_f32(dpr[j]) - dot));
    }
    dsr[j] = from_f32<T>(g);
  }
}

#define CAUSAL_SOFTMAX_ENTRIES(T, S)                                                                   \
  extern "C" __global__ void causal_softmax_fwd_##S(const T* s, T* p, uint32_t t, float scale) {      \
    causal_softmax_fwd<T>(s, p, t, scale);                                                            \
  }                                                                                                   \
  extern "C" __global__ void causal_softmax_bwd_##S(const T* s, const T* dp, T* ds, uint32_t t,       \
                                                    float scale) {                                    \
    causal_softmax_bwd<T>(s, dp, ds, t, scale);                                                       \
  }

FOR_EACH_DTYPE(CAUSAL_SOFTMAX_ENTRIES)
