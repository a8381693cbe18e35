// One AdamW step of f32 param, exp_avg and exp_avg_sq in place, as src/train/adamw.rs (torch's
// single-tensor AdamW) computes it, each line one rounding:
//   g = grad * scale            (scale: the clip coefficient on the device; null: none)
//   p = p * (1 - lr * wd)
//   m = m + (g - m) * (1 - beta1)
//   v = v * beta2 + (g * g) * (1 - beta2)
//   p = p + (m * (-lr / bc1)) / (sqrt(v) * (1 / sqrt(bc2)) + eps)
// The constants arrive as f32, rounded from f64 on the host as candle's affine does.
#include "common.cuh"

extern "C" __global__ void adamw_step(float* p, float* m, float* v, const float* grad, const float* scale,
                                      uint64_t n, float decay, float one_minus_beta1, float beta2,
                                      float one_minus_beta2, float inv_bc2_sqrt, float eps, float neg_step_size) {
  const bool scaled = scale != nullptr;
  const float s = scaled ? *scale : 1.f;
  for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (uint64_t)gridDim.x * blockDim.x) {
    const float g = scaled ? grad[k] * s : grad[k];
    const float decayed = p[k] * decay;
    const float m0 = m[k];
    const float mk = m0 + (g - m0) * one_minus_beta1;
    const float vk = v[k] * beta2 + (g * g) * one_minus_beta2;
    const float denom = sqrtf(vk) * inv_bc2_sqrt + eps;
    p[k] = decayed + (mk * neg_step_size) / denom;
    m[k] = mk;
    v[k] = vk;
  }
}
