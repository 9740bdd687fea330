// The row kernels of a critic hidden layer's bias + LayerNorm + affine + ReLU, forward and backward, shared by
// layer_norm.cpp (SACConfig.execution.fused_layer_norm) and sac_update.cpp (execution.cpu_fused_update).
// LayerNorm as torch.nn.functional.layer_norm: biased variance, eps inside the square root.
#pragma once

#include <cmath>
#include <cstdint>

namespace hilrl {

// out = relu(layer_norm(in + b) * g + beta) over one row of F features (out may be in). When xhat is not null,
// the normalised row and 1/std are saved into xhat and *rstd for the backward.
inline void ln_relu_row(const float* in, const float* b, const float* g, const float* beta, int64_t F, float eps,
                        float* out, float* xhat, float* rstd) {
  float sum = 0.f;
  #pragma omp simd reduction(+:sum)
  for (int64_t f = 0; f < F; ++f) { const float z = in[f] + b[f]; out[f] = z; sum += z; }
  const float mean = sum / F;
  float sq = 0.f;
  #pragma omp simd reduction(+:sq)
  for (int64_t f = 0; f < F; ++f) { const float dv = out[f] - mean; sq += dv * dv; }
  const float r = 1.f / std::sqrt(sq / F + eps);
  if (xhat != nullptr) {
    *rstd = r;
    #pragma omp simd
    for (int64_t f = 0; f < F; ++f) {
      const float h = (out[f] - mean) * r; xhat[f] = h;
      const float v = h * g[f] + beta[f]; out[f] = v > 0.f ? v : 0.f;
    }
  } else {
    #pragma omp simd
    for (int64_t f = 0; f < F; ++f) {
      const float v = (out[f] - mean) * r * g[f] + beta[f]; out[f] = v > 0.f ? v : 0.f;
    }
  }
}

// Backward of ln_relu_row for one row: grad_out = dL/dy, y the row's output, h its xhat, r its rstd, g the
// LayerNorm gain. Writes dL/d(in) into grad_in (which may be grad_out); tmp is F floats of scratch. The
// parameter gradients are added to db (the bias b), dg and dbeta when db is not null (then all three are set).
inline void ln_relu_row_backward(const float* grad_out, const float* y, const float* h, float r, const float* g,
                                 int64_t F, float* tmp, float* grad_in, float* db, float* dg, float* dbeta) {
  float s1 = 0.f, s2 = 0.f;
  if (dg != nullptr) {
    #pragma omp simd reduction(+:s1,s2)
    for (int64_t f = 0; f < F; ++f) {
      const float gy = y[f] > 0.f ? grad_out[f] : 0.f;
      dg[f] += gy * h[f]; dbeta[f] += gy;
      const float v = gy * g[f]; tmp[f] = v; s1 += v; s2 += v * h[f];
    }
  } else {
    #pragma omp simd reduction(+:s1,s2)
    for (int64_t f = 0; f < F; ++f) {
      const float v = (y[f] > 0.f ? grad_out[f] : 0.f) * g[f]; tmp[f] = v; s1 += v; s2 += v * h[f];
    }
  }
  const float m1 = s1 / F, m2 = s2 / F;
  if (db != nullptr) {
    #pragma omp simd
    for (int64_t f = 0; f < F; ++f) { const float dz = r * (tmp[f] - m1 - h[f] * m2); grad_in[f] = dz; db[f] += dz; }
  } else {
    #pragma omp simd
    for (int64_t f = 0; f < F; ++f) grad_in[f] = r * (tmp[f] - m1 - h[f] * m2);
  }
}

}  // namespace hilrl
