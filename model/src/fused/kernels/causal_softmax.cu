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

// The same two functions with the row held in registers: thread k owns columns
// [k*V, k*V + V), V = 16 bytes of T, loaded and stored as one 16-byte vector, so each row is
// read once and written once and exp is taken once per column (the loops above re-read the
// row from cache and recompute exp per pass). The host picks these when t is a multiple of
// 32*V, t/V <= 1024 threads, and the rows start 16-byte aligned. Every per-column expression
// is the one above; only the order of the block sums differs.
template <typename T, int V>
__device__ __forceinline__ void load_chunk(const T* src, float* out) {
  alignas(16) T v[V];
  *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(src);
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = to_f32(v[k]);
}

template <typename T, int V>
__device__ __forceinline__ void store_chunk(T* dst, const float* in) {
  alignas(16) T v[V];
#pragma unroll
  for (int k = 0; k < V; ++k) v[k] = from_f32<T>(in[k]);
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
}

// z holds the thread's columns j0.. of a row (0 past the diagonal i, which are never read):
// scales them, and replaces the unmasked ones by exp(z - row max), the others by 0. Returns
// the row's sum of those exps.
template <int V>
__device__ __forceinline__ float exps_vec(float* z, uint32_t j0, uint32_t i, float scale) {
  float m = -INFINITY;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    z[k] = z[k] * scale;
    if (j0 + k <= i) m = fmaxf(m, z[k]);
  }
  m = block_max(m);
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    z[k] = j0 + k <= i ? expf(z[k] - m) : 0.f;
    sum += z[k];
  }
  return block_sum(sum);
}

template <typename T, int V>
__device__ void causal_softmax_fwd_vec(const T* s, T* p, uint32_t t, float scale) {
  const size_t row = blockIdx.x;
  const uint32_t i = row % t;
  const uint32_t j0 = threadIdx.x * V;
  float z[V];
#pragma unroll
  for (int k = 0; k < V; ++k) z[k] = 0.f;
  if (j0 <= i) load_chunk<T, V>(s + row * t + j0, z);  // columns past the diagonal are never read
  const float sum = exps_vec<V>(z, j0, i, scale);
#pragma unroll
  for (int k = 0; k < V; ++k) z[k] = j0 + k <= i ? z[k] / sum : 0.f;
  store_chunk<T, V>(p + row * t + j0, z);
}

template <typename T, int V>
__device__ void causal_softmax_bwd_vec(const T* s, const T* dp, T* ds, uint32_t t, float scale) {
  const size_t row = blockIdx.x;
  const uint32_t i = row % t;
  const uint32_t j0 = threadIdx.x * V;
  float z[V], g[V];
#pragma unroll
  for (int k = 0; k < V; ++k) z[k] = g[k] = 0.f;
  if (j0 <= i) {
    load_chunk<T, V>(s + row * t + j0, z);
    load_chunk<T, V>(dp + row * t + j0, g);
  }
  const float sum = exps_vec<V>(z, j0, i, scale);
  float dot = 0.f;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    if (j0 + k <= i) {
      z[k] = z[k] / sum;  // p
      dot += g[k] * z[k];
    }
  }
  dot = block_sum(dot);
#pragma unroll
  for (int k = 0; k < V; ++k) z[k] = j0 + k <= i ? scale * (z[k] * (g[k] - dot)) : 0.f;
  store_chunk<T, V>(ds + row * t + j0, z);
}

#define CAUSAL_SOFTMAX_ENTRIES(T, S)                                                                   \
  extern "C" __global__ void causal_softmax_fwd_##S(const T* s, T* p, uint32_t t, float scale) {      \
    causal_softmax_fwd<T>(s, p, t, scale);                                                            \
  }                                                                                                   \
  extern "C" __global__ void causal_softmax_bwd_##S(const T* s, const T* dp, T* ds, uint32_t t,       \
                                                    float scale) {                                    \
    causal_softmax_bwd<T>(s, dp, ds, t, scale);                                                       \
  }                                                                                                   \
  extern "C" __global__ void causal_softmax_fwd_vec_##S(const T* s, T* p, uint32_t t, float scale) {  \
    causal_softmax_fwd_vec<T, 16 / sizeof(T)>(s, p, t, scale);                                        \
  }                                                                                                   \
  extern "C" __global__ void causal_softmax_bwd_vec_##S(const T* s, const T* dp, T* ds, uint32_t t,   \
                                                        float scale) {                                \
    causal_softmax_bwd_vec<T, 16 / sizeof(T)>(s, dp, ds, t, scale);                                   \
  }

FOR_EACH_DTYPE(CAUSAL_SOFTMAX_ENTRIES)
