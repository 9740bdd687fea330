"""A fused CPU kernel for the critic ensemble's hidden layers: bias, LayerNorm, per-member affine and ReLU.

Eager PyTorch runs ``relu(layer_norm(x @ W + b_lin) * w + b)`` of an ensemble layer as about six passes over
the ``(N, B, F)`` activations forward (bias copy, normalise, affine, ReLU) and eight backward (ReLU mask,
two products and two sums for the affine, the LayerNorm backward, the linear bias sum), each a separate
dispatch. At the shapes of RLPD's critic (hidden 256, batch 256) those memory-bound passes cost about as
much as the matmuls on a CPU core (``benchmarks/learner_throughput.py``). This kernel does the forward in
one pass per row and the backward in one, computing the same function (LayerNorm as in
``torch.nn.functional.layer_norm``: biased variance, ``eps`` inside the square root).

It is C++ built with ``torch.utils.cpp_extension.load_inline`` the first time a learner with
``SACConfig.fused_layer_norm`` is built (about a minute; cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``), so it needs a C++ compiler and ninja. The eager path stays the reference:
``tests/test_sac.py`` checks the two give the same update.
"""

from __future__ import annotations

import os
import shutil
import threading
from typing import Any

import torch

from hilrl.errors import HilrlError

__all__ = ["fused_bias_layer_norm_relu", "has_cxx_compiler", "kernels_buildable", "load_kernels"]

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

// z = x + lin_bias; xhat = (z - mean(z)) / sqrt(var(z) + eps) over the last axis; y = relu(xhat * w + b).
// x (N, B, F) contiguous; lin_bias, w, b (N, 1, F). Returns y, and xhat and rstd (N, B) when `save`.
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
    std::vector<float> z(F);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / B;
      const float* in = xp + row * F;
      const float* lb = lbp + n * F;
      const float* wn = wp + n * F;
      const float* bn = bp + n * F;
      float sum = 0.f;
      #pragma omp simd reduction(+:sum)
      for (int64_t f = 0; f < F; ++f) { z[f] = in[f] + lb[f]; sum += z[f]; }
      const float mean = sum / F;
      float sq = 0.f;
      #pragma omp simd reduction(+:sq)
      for (int64_t f = 0; f < F; ++f) { const float d = z[f] - mean; sq += d * d; }
      const float r = 1.f / std::sqrt(sq / F + (float)eps);
      float* out = yp + row * F;
      if (save) {
        rp[row] = r;
        float* h = hp + row * F;
        #pragma omp simd
        for (int64_t f = 0; f < F; ++f) {
          const float hf = (z[f] - mean) * r; h[f] = hf;
          const float v = hf * wn[f] + bn[f]; out[f] = v > 0.f ? v : 0.f;
        }
      } else {
        #pragma omp simd
        for (int64_t f = 0; f < F; ++f) {
          const float v = (z[f] - mean) * r * wn[f] + bn[f]; out[f] = v > 0.f ? v : 0.f;
        }
      }
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
    std::vector<float> gh(F);
    for (int64_t n = begin; n < end; ++n) {
      const float* wn = wp + n * F;
      float* glbn = glbp + n * F;
      float* gwn = gwp + n * F;
      float* gbn = gbp + n * F;
      for (int64_t i = 0; i < B; ++i) {
        const int64_t row = n * B + i;
        const float* go = gp + row * F;
        const float* yo = yp + row * F;
        const float* h = hp + row * F;
        float* out = gxp + row * F;
        float s1 = 0.f, s2 = 0.f;
        if (param_grads) {
          #pragma omp simd reduction(+:s1,s2)
          for (int64_t f = 0; f < F; ++f) {
            const float gy = yo[f] > 0.f ? go[f] : 0.f;
            gwn[f] += gy * h[f]; gbn[f] += gy;
            const float v = gy * wn[f]; gh[f] = v; s1 += v; s2 += v * h[f];
          }
        } else {
          #pragma omp simd reduction(+:s1,s2)
          for (int64_t f = 0; f < F; ++f) {
            const float v = (yo[f] > 0.f ? go[f] : 0.f) * wn[f]; gh[f] = v; s1 += v; s2 += v * h[f];
          }
        }
        const float r = rp[row], m1 = s1 / F, m2 = s2 / F;
        if (param_grads) {
          #pragma omp simd
          for (int64_t f = 0; f < F; ++f) { const float d = r * (gh[f] - m1 - h[f] * m2); out[f] = d; glbn[f] += d; }
        } else {
          #pragma omp simd
          for (int64_t f = 0; f < F; ++f) out[f] = r * (gh[f] - m1 - h[f] * m2);
        }
      }
    }
  });
  return {gx, glb, gw, gb};
}
"""

_lock = threading.Lock()
_module: Any = None


def has_cxx_compiler() -> bool:
    """Whether C++ can be built here (torch uses ``$CXX``, else g++ or clang++): this kernel, torch.compile's."""
    return any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if name)


def kernels_buildable() -> str | None:
    """``None`` when the kernel can be built here, else what is missing (a compiler or ninja)."""
    from torch.utils.cpp_extension import is_ninja_available

    if not has_cxx_compiler():
        return "a C++ compiler (g++ or clang++, or set CXX)"
    if not is_ninja_available():
        return "ninja (pip install ninja)"
    return None


def load_kernels() -> Any:
    """The compiled kernel module, built on first use and cached by torch (see the module docstring)."""
    global _module
    with _lock:
        if _module is None:
            missing = kernels_buildable()
            if missing is not None:
                raise HilrlError(f"SACConfig.fused_layer_norm=True builds a C++ kernel and needs {missing}; install "
                                 "it or set fused_layer_norm=False (the eager path computes the same)")
            from torch.utils.cpp_extension import load_inline

            _module = load_inline("hilrl_fused_layer_norm_v1", cpp_sources=_SOURCE, functions=["forward", "backward"],
                                  extra_cflags=["-O3", "-march=native", "-fopenmp-simd"], verbose=False)
    return _module


class _FusedBiasLayerNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lin_bias: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float) -> torch.Tensor:
        y, xhat, rstd = _module.forward(x.contiguous(), lin_bias.contiguous(), weight.contiguous(),
                                        bias.contiguous(), eps, True)
        ctx.save_for_backward(y, xhat, rstd, weight)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y, xhat, rstd, weight = ctx.saved_tensors
        wants = ctx.needs_input_grad
        param_grads = any(wants[1:4])
        gx, glb, gw, gb = _module.backward(grad.contiguous(), y, xhat, rstd, weight.contiguous(), param_grads)
        return (gx if wants[0] else None, glb if wants[1] else None, gw if wants[2] else None,
                gb if wants[3] else None, None)


def fused_bias_layer_norm_relu(x: torch.Tensor, lin_bias: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                               eps: float) -> torch.Tensor:
    """``relu(layer_norm(x + lin_bias) * weight + bias)`` for ``x (N, B, F)`` and ``(N, 1, F)`` parameters,
    float32 on the CPU, in one pass forward and one backward (:func:`load_kernels` must have run)."""
    if _module is None:
        load_kernels()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, lin_bias, weight, bias)):
        return _FusedBiasLayerNormReLU.apply(x, lin_bias, weight, bias, eps)
    return _module.forward(x.contiguous(), lin_bias.contiguous(), weight.contiguous(), bias.contiguous(), eps,
                           False)[0]
