// SwiGLU, y = silu(gate) * up, rounded where the composite `silu(g) * u` stores its tensors:
//   y = round(round(g / (1 + exp(-g))) * u)          (silu in f32 as candle's CUDA kernel)
// Backward, rounding the products autograd stores (torch's silu_backward formula):
//   du = round(dy * round(silu(g)))
//   dg = round((round(dy * u) * sig) * (1 + g * (1 - sig))),  sig = 1 / (1 + exp(-g))
// dg and du go to one buffer: dg in [0, n), du in [n, 2n). Grid-stride loops.
#include "common.cuh"

template <typename T>
__device__ void swiglu_fwd(const T* gate, const T* up, T* y, uint64_t n) {
  for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (uint64_t)gridDim.x * blockDim.x) {
    const float g = to_f32(gate[k]);
    const float silu = round_to<T>(g / (1.f + expf(-g)));
    y[k] = from_f32<T>(silu * to_f32(up[k]));
  }
}

template <typename T>
__device__ void swiglu_bwd(const T* gate, const T* up, const T* dy, T* grads, uint64_t n) {
  for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (uint64_t)gridDim.x * blockDim.x) {
    const float g = to_f32(gate[k]);
    const float d = to_f32(dy[k]);
    const float sig = 1.f / (1.f + expf(-g));
    const float silu = round_to<T>(g / (1.f + expf(-g)));
    const float dsilu = round_to<T>(d * to_f32(up[k]));
    grads[k] = from_f32<T>((dsilu * sig) * (1.f + g * (1.f - sig)));
    grads[n + k] = from_f32<T>(d * silu);
  }
}

#define SWIGLU_ENTRIES(T, S)                                                                             \
  extern "C" __global__ void swiglu_fwd_##S(const T* gate, const T* up, T* y, uint64_t n) {              \
    swiglu_fwd<T>(gate, up, y, n);                                                                      \
  }                                                                                                      \
  extern "C" __global__ void swiglu_bwd_##S(const T* gate, const T* up, const T* dy, T* grads, uint64_t n) { \
    swiglu_bwd<T>(gate, up, dy, grads, n);                                                               \
  }

FOR_EACH_DTYPE(SWIGLU_ENTRIES)
