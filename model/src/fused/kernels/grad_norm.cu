// Sum of squares of a tensor into per-block partial sums on the device (for the global gradient
// norm without a host sync): per-thread f32 sums over a fixed grid-stride, a block reduction,
// block b writing partial[b]. No atomics: with the grid fixed the result is the same bits
// every run; the caller adds the partials in index order.
#include "common.cuh"

template <typename T>
__device__ void sum_of_squares(const T* x, uint64_t n, float* acc) {
  float s = 0.f;
  for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (uint64_t)gridDim.x * blockDim.x) {
    const float v = to_f32(x[k]);
    s += v * v;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) acc[blockIdx.x] = s;
}

#define GRAD_NORM_ENTRIES(T, S)                                                                 \
  extern "C" __global__ void sum_of_squares_##S(const T* x, uint64_t n, float* acc) {           \
    sum_of_squares<T>(x, n, acc);                                                               \
  }

FOR_EACH_DTYPE(GRAD_NORM_ENTRIES)
