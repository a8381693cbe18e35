// One AdamW step of f32 param, exp_avg and exp_avg_sq in place, as src/train/adamw.rs (torch's
// single-tensor AdamW) computes it, each line one rounding:
//   g = grad * scale            (scale: the clip coefficient on the device; null: none)
//   p = p * (1 - lr * wd)
//   m = m + (g - m) * (1 - beta1)
//   v = v * beta2 + (g * g) * (1 - beta2)
//   p = p + (m * (-lr / bc1)) / (sqrt(v) * (1 / sqrt(bc2)) + eps)
// The constants arrive as f32, rounded from f64 on the host as candle's affine does, in device
// memory (k[0..7]: decay, 1-beta1, beta2, 1-beta2, 1/sqrt(bc2), eps, -lr/bc1), so one launch
// recorded in a CUDA graph serves every step: the host rewrites k between replays.
#include "common.cuh"

extern "C" __global__ void adamw_step(float* p, float* m, float* v, const float* grad, const float* scale,
                                      uint64_t n, const float* k) {
  const bool scaled = scale != nullptr;
  const float s = scaled ? *scale : 1.f;
  const float decay = k[0], one_minus_beta1 = k[1], beta2 = k[2], one_minus_beta2 = k[3];
  const float inv_bc2_sqrt = k[4], eps = k[5], neg_step_size = k[6];
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
    const float g = scaled ? grad[i] * s : grad[i];
    const float decayed = p[i] * decay;
    const float m0 = m[i];
    const float mk = m0 + (g - m0) * one_minus_beta1;
    const float vk = v[i] * beta2 + (g * g) * one_minus_beta2;
    const float denom = sqrtf(vk) * inv_bc2_sqrt + eps;
    p[i] = decayed + (mk * neg_step_size) / denom;
    m[i] = mk;
    v[i] = vk;
  }
}

// acc += g, both f32 (gradient accumulation into a buffer that outlives the step).
extern "C" __global__ void accumulate_f32(float* acc, const float* g, uint64_t n) {
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
    acc[i] += g[i];
  }
}
