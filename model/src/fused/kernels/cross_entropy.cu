// Per-row cross-entropy of logits [n, v] against u32 targets, in f32:
//   loss = (max + log(sum exp(x - max))) - x[target]         (NaN when target >= v)
//   dlogits = exp(x - max - lse) * dloss - (j == target ? dloss : 0), rounded once
// One block per row; the row is read twice forward and three times backward (from L1/L2).
#include "common.cuh"

// (max, log sum exp(x - max)) of one row.
template <typename T>
__device__ float2 row_lse(const T* x, uint32_t v) {
  float m = -INFINITY;
  for (uint32_t j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, to_f32(x[j]));
  m = block_max(m);
  float sum = 0.f;
  for (uint32_t j = threadIdx.x; j < v; j += blockDim.x) sum += expf(to_f32(x[j]) - m);
  return make_float2(m, logf(block_sum(sum)));
}

template <typename T>
__device__ void cross_entropy_fwd(const T* logits, const uint32_t* targets, float* loss, uint32_t v) {
  const size_t row = blockIdx.x;
  const T* x = logits + row * v;
  const float2 st = row_lse(x, v);
  if (threadIdx.x == 0) {
    const uint32_t t = targets[row];
    loss[row] = t < v ? (st.x + st.y) - to_f32(x[t]) : NAN;
  }
}

template <typename T>
__device__ void cross_entropy_bwd(const T* logits, const uint32_t* targets, const float* dloss, T* dlogits,
                                  uint32_t v) {
  const size_t row = blockIdx.x;
  const T* x = logits + row * v;
  T* dx = dlogits + row * v;
  const float2 st = row_lse(x, v);
  const uint32_t t = targets[row];
  const float g = dloss[row];
  for (uint32_t j = threadIdx.x; j < v; j += blockDim.x) {
    float d = expf(to_f32(x[j]) - st.x - st.y) * g;
    if (j == t) d -= g;
    dx[j] = from_f32<T>(d);
  }
}

#define CROSS_ENTROPY_ENTRIES(T, S)                                                                     \
  extern "C" __global__ void cross_entropy_fwd_##S(const T* logits, const uint32_t* targets, float* loss, \
                                                   uint32_t v) {                                         \
    cross_entropy_fwd<T>(logits, targets, loss, v);                                                      \
  }                                                                                                      \
  extern "C" __global__ void cross_entropy_bwd_##S(const T* logits, const uint32_t* targets,             \
                                                   const float* dloss, T* dlogits, uint32_t v) {         \
    cross_entropy_bwd<T>(logits, targets, dloss, dlogits, v);                                            \
  }

FOR_EACH_DTYPE(CROSS_ENTROPY_ENTRIES)
