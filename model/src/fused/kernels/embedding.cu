// Token embedding lookup and its gradient.
//   forward:  out[n, :] = weight[ids[n], :]            (an id >= vocab gives NaN rows)
//   backward: dw[v, :] = sum over n with ids[n] == v of dy[n, :], in order of n, in f32,
//             rounded once to the storage type.
// candle's index_add (the backward of index_select) runs the whole sum in one block; here one
// block owns one vocabulary row, so no atomics are needed and the sum is deterministic (the
// same order every run).
#include "common.cuh"

template <typename T>
__device__ void embedding_fwd(const T* weight, const uint32_t* ids, T* out, uint64_t n, uint32_t h, uint32_t vocab) {
  const uint64_t total = n * h;
  for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (uint64_t)gridDim.x * blockDim.x) {
    const uint64_t row = k / h;
    const uint32_t col = (uint32_t)(k % h);
    const uint32_t id = ids[row];
    out[k] = id < vocab ? weight[(uint64_t)id * h + col] : from_f32<T>(NAN);
  }
}

// Grid: one block of EMBEDDING_THREADS per vocabulary row. The block walks the ids in chunks
// of one id per thread; a warp ballot and a prefix over the warps compact the chunk's hits (in
// position order) into shared memory, then every thread adds those gradient rows for its
// columns. Work per block is n / EMBEDDING_THREADS compares plus the row's own hits.
#define EMBEDDING_THREADS 256
#define EMBEDDING_COLS 4  // columns per thread per pass: hidden sizes up to 1024 in one pass

template <typename T>
__device__ void embedding_bwd(const T* dy, const uint32_t* ids, T* dw, uint32_t n, uint32_t h) {
  __shared__ uint32_t hits[EMBEDDING_THREADS];
  __shared__ uint32_t warp_hits[EMBEDDING_THREADS / 32];
  const uint32_t v = blockIdx.x;
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (uint32_t col0 = 0; col0 < h; col0 += EMBEDDING_THREADS * EMBEDDING_COLS) {
    float acc[EMBEDDING_COLS];
    for (int c = 0; c < EMBEDDING_COLS; ++c) acc[c] = 0.f;
    for (uint32_t start = 0; start < n; start += EMBEDDING_THREADS) {
      const uint32_t i = start + threadIdx.x;
      const bool hit = i < n && ids[i] == v;
      const uint32_t ballot = __ballot_sync(0xffffffffu, hit);
      if (lane == 0) warp_hits[warp] = __popc(ballot);
      __syncthreads();
      uint32_t before = 0, count = 0;
      for (uint32_t w = 0; w < EMBEDDING_THREADS / 32; ++w) {
        if (w < warp) before += warp_hits[w];
        count += warp_hits[w];
      }
      if (hit) hits[before + __popc(ballot & ((1u << lane) - 1u))] = i;
      __syncthreads();
      for (uint32_t m = 0; m < count; ++m) {
        const uint64_t row = (uint64_t)hits[m] * h;
        for (int c = 0; c < EMBEDDING_COLS; ++c) {
          const uint32_t col = col0 + c * EMBEDDING_THREADS + threadIdx.x;
          if (col < h) acc[c] += to_f32(dy[row + col]);
        }
      }
      __syncthreads();  // the next chunk reuses hits and warp_hits
    }
    for (int c = 0; c < EMBEDDING_COLS; ++c) {
      const uint32_t col = col0 + c * EMBEDDING_THREADS + threadIdx.x;
      if (col < h) dw[(uint64_t)v * h + col] = from_f32<T>(acc[c]);
    }
  }
}

#define EMBEDDING_ENTRIES(T, S)                                                                              \
  extern "C" __global__ void embedding_fwd_##S(const T* weight, const uint32_t* ids, T* out, uint64_t n,      \
                                               uint32_t h, uint32_t vocab) {                                 \
    embedding_fwd<T>(weight, ids, out, n, h, vocab);                                                          \
  }                                                                                                           \
  extern "C" __global__ void embedding_bwd_##S(const T* dy, const uint32_t* ids, T* dw, uint32_t n, uint32_t h) { \
    embedding_bwd<T>(dy, ids, dw, n, h);                                                                      \
  }

FOR_EACH_DTYPE(EMBEDDING_ENTRIES)
