// A fused CPU kernel for the critic ensemble's hidden layers: bias, LayerNorm, per-member affine and ReLU
// (SACConfig.execution.fused_layer_norm; the autograd wrapper is hilrl/policies/sac/fast.py).
//
// Eager PyTorch runs relu(layer_norm(x @ W + b_lin) * w + b) of an ensemble layer as about six passes over the
// (N, B, F) activations forward and eight backward, each a separate dispatch; at RLPD's shapes (hidden 256,
// batch 256) those memory-bound passes cost about as much as the matmuls on a CPU core
// (benchmarks/learner_throughput.py). This does the forward in one pass per row and the backward in one.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

#include "ln_relu_rows.h"

namespace {

// y = relu(layer_norm(x + lin_bias) * w + b) for x (N, B, F) contiguous and lin_bias, w, b (N, 1, F).
// Returns y, and xhat and rstd (N, B) when `save`.
std::vector<torch::Tensor> forward(torch::Tensor x, torch::Tensor lin_bias, torch::Tensor w, torch::Tensor b,
                                   double eps, bool save) {
  const int64_t N = x.size(0), B = x.size(1), F = x.size(2);
  auto y = torch::empty_like(x);
  auto xhat = save ? torch::empty_like(x) : torch::empty({0}, x.options());
  auto rstd = save ? torch::empty({N, B}, x.options()) : torch::empty({0}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* lbp = lin_bias.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* hp = save ? xhat.data_ptr<float>() : nullptr;
  float* rp = save ? rstd.data_ptr<float>() : nullptr;
  at::parallel_for(0, N * B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / B;
      hilrl::ln_relu_row(xp + row * F, lbp + n * F, wp + n * F, bp + n * F, F, (float)eps, yp + row * F,
                         save ? hp + row * F : nullptr, save ? rp + row : nullptr);
    }
  });
  return {y, xhat, rstd};
}

// Gradients of forward() for the output gradient g: dx (= d lin_bias per row), d lin_bias, dw, db.
// `param_grads` false skips the three parameter sums (their gradients are not wanted).
std::vector<torch::Tensor> backward(torch::Tensor g, torch::Tensor y, torch::Tensor xhat, torch::Tensor rstd,
                                    torch::Tensor w, bool param_grads) {
  const int64_t N = g.size(0), B = g.size(1), F = g.size(2);
  auto gx = torch::empty_like(g);
  auto glb = torch::zeros_like(w), gw = torch::zeros_like(w), gb = torch::zeros_like(w);
  const float* gp = g.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  const float* hp = xhat.data_ptr<float>();
  const float* rp = rstd.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* gxp = gx.data_ptr<float>();
  float* glbp = glb.data_ptr<float>();
  float* gwp = gw.data_ptr<float>();
  float* gbp = gb.data_ptr<float>();
  // one member per task: a member's parameter sums run over its rows in order (deterministic)
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tmp(F);
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t i = 0; i < B; ++i) {
        const int64_t row = n * B + i;
        hilrl::ln_relu_row_backward(gp + row * F, yp + row * F, hp + row * F, rp[row], wp + n * F, F, tmp.data(),
                                    gxp + row * F, param_grads ? glbp + n * F : nullptr,
                                    param_grads ? gwp + n * F : nullptr, param_grads ? gbp + n * F : nullptr);
      }
    }
  });
  return {gx, glb, gw, gb};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "bias + LayerNorm + affine + ReLU of (N, B, F) rows");
  m.def("backward", &backward, "its backward");
}
