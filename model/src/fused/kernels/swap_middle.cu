// y [A, C, B, D] = x [A, B, C, D] with axes 1 and 2 swapped, both contiguous: attention's
// [batch, positions, heads, head_dim] <-> [batch, heads, positions, head_dim]. A pure copy, so
// it moves elements as raw words: 16-byte vectors when a row of D elements is a whole number of
// them (Dw = that number), else one element (2 or 4 bytes) at a time. One thread per output
// word, grid-stride; both sides are read and written in runs of Dw consecutive words. The host
// guarantees n < 2^32 words, so the index arithmetic is 32-bit (64-bit division is slow).
#include "common.cuh"

template <typename W>
__device__ void swap_middle(const W* x, W* y, uint32_t n, uint32_t B, uint32_t C, uint32_t Dw) {
  for (uint32_t o = blockIdx.x * blockDim.x + threadIdx.x; o < n; o += gridDim.x * blockDim.x) {
    const uint32_t d = o % Dw;
    uint32_t q = o / Dw;
    const uint32_t b = q % B;
    q /= B;
    const uint32_t c = q % C;
    const uint32_t a = q / C;
    y[o] = x[((a * B + b) * C + c) * Dw + d];
  }
}

extern "C" __global__ void swap_middle_v16(const uint4* x, uint4* y, uint32_t n, uint32_t B, uint32_t C, uint32_t Dw) {
  swap_middle<uint4>(x, y, n, B, C, Dw);
}
extern "C" __global__ void swap_middle_b4(const uint32_t* x, uint32_t* y, uint32_t n, uint32_t B, uint32_t C, uint32_t Dw) {
  swap_middle<uint32_t>(x, y, n, B, C, Dw);
}
extern "C" __global__ void swap_middle_b2(const uint16_t* x, uint16_t* y, uint32_t n, uint32_t B, uint32_t C, uint32_t Dw) {
  swap_middle<uint16_t>(x, y, n, B, C, Dw);
}
