"""The whole RLPD update of :class:`~hilrl.policies.sac.SAC` as one C++ call on a CPU (``SACConfig.cpu_fused_update``).

The eager update (``SAC._update_tensors``) spends about half its time on one CPU core outside the matmuls:
Python, the dispatcher and autograd around some 300 small ops, and the memory passes of the LayerNorm,
ReLU, tanh-Gaussian and loss terms (``benchmarks/learner_throughput.py``; the JAX RLPD peer removes the
same overhead by tracing the update into one XLA program). This module computes the same update with
no autograd and no Python in the loop:

* forward and backward of the critic ensemble and the actor written out, the GEMMs through MKL's
  ``sgemm`` (the BLAS torch's own ``mm`` calls) on activation and gradient buffers kept between calls,
  except the products with a handful of outputs (the actor's mean/log-std head, the critic's gradient to
  the action), which MKL runs at a tenth of its rate and which are dot products here;
* one critic member at a time through the whole MLP, forward then backward, so its activations stay in
  cache, with bias, LayerNorm (biased variance, ``eps`` inside the square root, as
  ``torch.nn.functional.layer_norm``), affine and ReLU one pass per row each way;
* the critic target (min over the drawn target members, entropy backup, ``1 - terminated`` mask), the
  MSE gradient, the actor loss through the critic to the action only (no critic weight gradients), the
  tanh-squashed Gaussian and its log-probability (``squashed_log_prob``'s stable form, ``softplus`` with
  torch's threshold 20), the clipped log-std (gradient where ``min <= log_std <= max``, as ``clamp``), and
  TD3+BC's demo term with its ``mean|Q|`` scale;
* the optimisers' own steps: ``torch._foreach_add_`` on the step counts and ``torch._fused_adam_`` on the
  ``torch.optim.Adam(fused=True)`` state of :class:`SAC`'s optimisers (the kernel ``Adam.step`` runs, so
  checkpoints and the eager path share that state), Polyak by ``torch._foreach_lerp_``, and the analytic
  temperature gradient of the eager path.

It consumes the noise of :meth:`SAC.draw_noise` as the eager path does, so from the same state, batch
and noise both give the same update up to float rounding (``tests/test_sac.py``). Elementwise work runs
on one thread (the target is a single core); the GEMMs use as many threads as torch is given.

Built with ``torch.utils.cpp_extension.load_inline`` on first use (about a minute, cached like
:mod:`hilrl.policies.kernels`; ``make install`` builds it ahead), so it needs a C++ compiler and ninja.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch

from hilrl.errors import HilrlError
from hilrl.policies.kernels import kernels_buildable

if TYPE_CHECKING:
    from hilrl.policies.sac import SAC, TensorTree

__all__ = ["FusedCPUUpdate", "load_update_kernel", "unsupported"]

_SOURCE = r"""
#include <torch/extension.h>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

// MKL's Fortran sgemm, exported by libtorch_cpu (what at::mm calls for float32 on CPU).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

namespace {

using torch::Tensor;
constexpr float kLog2 = 0.693147180559945309f;
constexpr float kHalfLog2Pi = 0.918938533204672742f;

// Row-major C (m x n) = op(A) @ op(B) (+ C when accumulate) with op(X) = X^T when t_x; lda, ldb, ldc: row strides
// as stored. C is zeroed here rather than by beta = 0: MKL's own scaling pass costs more than the memset.
void gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, bool accumulate,
          float* c, int ldc) {
  if (!accumulate)
    for (int i = 0; i < m; ++i) std::memset(c + (size_t)i * ldc, 0, sizeof(float) * n);
  const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
  const float one = 1.f;
  sgemm_(&opb, &opa, &n, &m, &k, &one, b, &ldb, a, &lda, &one, c, &ldc);  // column-major C^T = B^T A^T
}

// Scratch buffers kept between calls: the i-th take() of a call gets the i-th block (reallocated if too small).
struct Arena {
  struct Free { void operator()(float* p) const { std::free(p); } };
  std::vector<std::unique_ptr<float, Free>> blocks;
  std::vector<size_t> sizes;
  size_t next = 0;
  float* take(size_t n) {
    if (next == blocks.size()) { blocks.emplace_back(); sizes.push_back(0); }
    if (sizes[next] < n) {
      blocks[next].reset(static_cast<float*>(std::aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64)));
      sizes[next] = n;
    }
    return blocks[next++].get();
  }
};
thread_local Arena arena;

const float* ptr(const Tensor& t) { return t.data_ptr<float>(); }
float* mptr(const Tensor& t) { return t.data_ptr<float>(); }

// The critic ensemble: hidden layer l has W (N, d[l], d[l+1]), b, g, beta (N, 1, d[l+1]); head Wh (N, d[L], 1), bh.
struct Critic {
  int L = 0, N = 0;
  std::vector<int> d;
  std::vector<float*> W, b, g, beta;
  float *Wh = nullptr, *bh = nullptr;
  Critic(const std::vector<Tensor>& w, const std::vector<Tensor>& bias, const std::vector<Tensor>& gain,
         const std::vector<Tensor>& shift) {
    L = (int)gain.size();
    N = (int)w[0].size(0);
    d.push_back((int)w[0].size(1));
    for (int l = 0; l < L; ++l) {
      d.push_back((int)w[l].size(2));
      W.push_back(mptr(w[l])); b.push_back(mptr(bias[l]));
      g.push_back(mptr(gain[l])); beta.push_back(mptr(shift[l]));
    }
    Wh = mptr(w[L]); bh = mptr(bias[L]);
  }
  const float* w(int l, int n) const { return W[l] + (size_t)n * d[l] * d[l + 1]; }
  int maxd() const { int m = 0; for (int x : d) m = x > m ? x : m; return m; }
};

// One member's activations: y[l] (B, d[l+1]) after ReLU; xhat[l] and rstd[l] for the backward.
struct Saved { std::vector<float*> y, xhat, rstd; };

Saved take_saved(const Critic& c, int B, bool for_backward) {
  Saved s;
  for (int l = 0; l < c.L; ++l) {
    s.y.push_back(arena.take((size_t)B * c.d[l + 1]));
    s.xhat.push_back(for_backward ? arena.take((size_t)B * c.d[l + 1]) : nullptr);
    s.rstd.push_back(for_backward ? arena.take(B) : nullptr);
  }
  return s;
}

// io (a row of x @ W) -> relu(layer_norm(io + b) * g + beta) in place; xhat and rstd saved when xhat != nullptr.
inline void ln_relu_row(float* io, const float* b, const float* g, const float* beta, int F, float eps, float* xhat,
                        float* rstd) {
  float sum = 0.f;
  #pragma omp simd reduction(+:sum)
  for (int f = 0; f < F; ++f) { const float z = io[f] + b[f]; io[f] = z; sum += z; }
  const float mean = sum / F;
  float sq = 0.f;
  #pragma omp simd reduction(+:sq)
  for (int f = 0; f < F; ++f) { const float dv = io[f] - mean; sq += dv * dv; }
  const float r = 1.f / std::sqrt(sq / F + eps);
  if (xhat != nullptr) {
    *rstd = r;
    #pragma omp simd
    for (int f = 0; f < F; ++f) {
      const float h = (io[f] - mean) * r; xhat[f] = h;
      const float v = h * g[f] + beta[f]; io[f] = v > 0.f ? v : 0.f;
    }
  } else {
    #pragma omp simd
    for (int f = 0; f < F; ++f) { const float v = (io[f] - mean) * r * g[f] + beta[f]; io[f] = v > 0.f ? v : 0.f; }
  }
}

// Backward of ln_relu_row: g_io holds dL/dy of the row on entry and dL/d(x @ W + b) on exit; the parameter
// gradients are added to db, dg, dbeta when they are not null.
inline void ln_relu_row_backward(float* g_io, const float* y, const float* h, float r, const float* g, int F,
                                 float* tmp, float* db, float* dg, float* dbeta) {
  float s1 = 0.f, s2 = 0.f;
  if (dg != nullptr) {
    #pragma omp simd reduction(+:s1,s2)
    for (int f = 0; f < F; ++f) {
      const float gy = y[f] > 0.f ? g_io[f] : 0.f;
      dg[f] += gy * h[f]; dbeta[f] += gy;
      const float v = gy * g[f]; tmp[f] = v; s1 += v; s2 += v * h[f];
    }
  } else {
    #pragma omp simd reduction(+:s1,s2)
    for (int f = 0; f < F; ++f) {
      const float v = (y[f] > 0.f ? g_io[f] : 0.f) * g[f]; tmp[f] = v; s1 += v; s2 += v * h[f];
    }
  }
  const float m1 = s1 / F, m2 = s2 / F;
  if (db != nullptr) {
    #pragma omp simd
    for (int f = 0; f < F; ++f) { const float dz = r * (tmp[f] - m1 - h[f] * m2); g_io[f] = dz; db[f] += dz; }
  } else {
    #pragma omp simd
    for (int f = 0; f < F; ++f) g_io[f] = r * (tmp[f] - m1 - h[f] * m2);
  }
}

// out (R, O) (+)= x (R, K) @ W^T (+ bias) for W (O, K) row-major and a few outputs O, as dot products.
void dot_rows(const float* x, int R, int K, const float* W, const float* bias, int O, bool accumulate, float* out) {
  for (int i = 0; i < R; ++i) {
    const float* row = x + (size_t)i * K;
    for (int j = 0; j < O; ++j) {
      const float* w = W + (size_t)j * K;
      float acc = 0.f;
      #pragma omp simd reduction(+:acc)
      for (int f = 0; f < K; ++f) acc += row[f] * w[f];
      float& o = out[(size_t)i * O + j];
      o = (accumulate ? o : 0.f) + acc + (bias != nullptr ? bias[j] : 0.f);
    }
  }
}

// Q of member n on x (B, d[0]) into q (B); activations into s (xhat/rstd too when s.xhat[0] is set).
void critic_forward(const Critic& c, int n, const float* x, int B, float eps, const Saved& s, float* q) {
  const float* in = x;
  for (int l = 0; l < c.L; ++l) {
    const int di = c.d[l], F = c.d[l + 1];
    gemm(false, false, B, F, di, in, di, c.w(l, n), F, false, s.y[l], F);
    const float *b = c.b[l] + (size_t)n * F, *g = c.g[l] + (size_t)n * F, *beta = c.beta[l] + (size_t)n * F;
    for (int i = 0; i < B; ++i)
      ln_relu_row(s.y[l] + (size_t)i * F, b, g, beta, F, eps, s.xhat[l] ? s.xhat[l] + (size_t)i * F : nullptr,
                  s.rstd[l] ? s.rstd[l] + i : nullptr);
    in = s.y[l];
  }
  const int H = c.d[c.L];
  const float* wh = c.Wh + (size_t)n * H;
  const float bh = c.bh[n];
  for (int i = 0; i < B; ++i) {
    const float* y = in + (size_t)i * H;
    float acc = 0.f;
    #pragma omp simd reduction(+:acc)
    for (int f = 0; f < H; ++f) acc += y[f] * wh[f];
    q[i] = acc + bh;
  }
}

// Backward of member n from dq (B): into the member's slices of the gradients gc (a Critic over the gradient
// tensors) when gc != nullptr, and into dx_action (B, A), += dL/d(action columns of x), when it is not null.
void critic_backward(const Critic& c, int n, const float* x, int B, const Saved& s, const float* dq,
                     const Critic* gc, float* dx_action, int action_dim, bool first_member, float* buf0, float* buf1,
                     float* tmp) {
  const int L = c.L, H = c.d[L];
  const float* wh = c.Wh + (size_t)n * H;
  float* gy = buf0;
  for (int i = 0; i < B; ++i) {
    float* row = gy + (size_t)i * H;
    #pragma omp simd
    for (int f = 0; f < H; ++f) row[f] = dq[i] * wh[f];
  }
  if (gc != nullptr) {
    float* dwh = gc->Wh + (size_t)n * H;
    for (int f = 0; f < H; ++f) dwh[f] = 0.f;
    float dbh = 0.f;
    for (int i = 0; i < B; ++i) {
      const float* y = s.y[L - 1] + (size_t)i * H;
      #pragma omp simd
      for (int f = 0; f < H; ++f) dwh[f] += y[f] * dq[i];
      dbh += dq[i];
    }
    gc->bh[n] = dbh;
  }
  for (int l = L - 1; l >= 0; --l) {
    const int di = c.d[l], F = c.d[l + 1];
    float *db = nullptr, *dg = nullptr, *dbeta = nullptr;
    if (gc != nullptr) {
      db = gc->b[l] + (size_t)n * F; dg = gc->g[l] + (size_t)n * F; dbeta = gc->beta[l] + (size_t)n * F;
      for (int f = 0; f < F; ++f) { db[f] = 0.f; dg[f] = 0.f; dbeta[f] = 0.f; }
    }
    const float* gain = c.g[l] + (size_t)n * F;
    for (int i = 0; i < B; ++i)
      ln_relu_row_backward(gy + (size_t)i * F, s.y[l] + (size_t)i * F, s.xhat[l] + (size_t)i * F, s.rstd[l][i], gain,
                           F, tmp, db, dg, dbeta);
    const float* in = l == 0 ? x : s.y[l - 1];
    if (gc != nullptr) gemm(true, false, di, F, B, in, di, gy, F, false, gc->W[l] + (size_t)n * di * F, F);
    if (l > 0) {
      gemm(false, true, B, di, F, gy, F, c.w(l, n), F, false, buf1, di);
      std::swap(gy, buf1);
    } else if (dx_action != nullptr) {  // the action columns are the last action_dim inputs of layer 0
      // dots, not sgemm: MKL runs this (B x F) @ (F x A) product at a tenth of its 256x256 rate
      dot_rows(gy, B, F, c.w(0, n) + (size_t)(di - action_dim) * F, nullptr, action_dim, !first_member, dx_action);
    }
  }
}

// The actor MLP (nn.Linear layers, weight (out, in)): h[l] (R, out_l), ReLU on all but the last layer.
struct Actor {
  std::vector<float*> W, b;
  std::vector<int> d;
  Actor(const std::vector<Tensor>& w, const std::vector<Tensor>& bias) {
    d.push_back((int)w[0].size(1));
    for (size_t l = 0; l < w.size(); ++l) {
      W.push_back(mptr(w[l])); b.push_back(mptr(bias[l])); d.push_back((int)w[l].size(0));
    }
  }
  int layers() const { return (int)W.size(); }
};

std::vector<float*> actor_forward(const Actor& a, const float* x, int R) {
  std::vector<float*> h;
  const float* in = x;
  for (int l = 0; l < a.layers(); ++l) {
    const int di = a.d[l], F = a.d[l + 1];
    float* out = arena.take((size_t)R * F);
    const bool relu = l + 1 < a.layers();
    if (!relu) {  // the (mean, log_std) head: a few outputs, dots (see dot_rows)
      dot_rows(in, R, di, a.W[l], a.b[l], F, false, out);
      h.push_back(out);
      break;
    }
    gemm(false, true, R, F, di, in, di, a.W[l], di, false, out, F);
    const float* bias = a.b[l];
    for (int i = 0; i < R; ++i) {
      float* row = out + (size_t)i * F;
      #pragma omp simd
      for (int f = 0; f < F; ++f) { const float v = row[f] + bias[f]; row[f] = v > 0.f ? v : 0.f; }
    }
    h.push_back(out);
    in = out;
  }
  return h;
}

inline float softplus(float v) { return v > 20.f ? v : std::log1p(std::exp(v)); }

// tanh(mean + exp(log_std) * eps) and its log-probability (hilrl.policies.networks.squashed_log_prob) per row.
void sample(const float* out, const float* eps, int R, int A, float lo, float hi, float* act, float* pre, float* logp) {
  for (int i = 0; i < R; ++i) {
    const float* o = out + (size_t)i * 2 * A;
    float lp = 0.f;
    for (int j = 0; j < A; ++j) {
      const float ls = std::min(std::max(o[A + j], lo), hi), e = eps[(size_t)i * A + j];
      const float u = o[j] + std::exp(ls) * e;
      act[(size_t)i * A + j] = std::tanh(u);
      if (pre != nullptr) pre[(size_t)i * A + j] = u;
      lp += -0.5f * e * e - ls - kHalfLog2Pi - 2.f * (kLog2 - u - softplus(-2.f * u));
    }
    logp[i] = lp;
  }
}

// feature rows of the state parts: clamp((cat(parts) - offset) * scale, -clip, clip) (ObservationEncoder.forward)
// into dst (R, ld) at column 0.
void features(const std::vector<Tensor>& parts, const Tensor& offset, const Tensor& scale, const Tensor& clip, int R,
              float* dst, int ld) {
  const float *off = ptr(offset), *sc = ptr(scale);
  const float c = clip.item<float>();
  int col = 0;
  for (const Tensor& p : parts) {
    const int w = (int)p.size(1);
    const float* src = ptr(p);
    for (int i = 0; i < R; ++i) {
      const float* s = src + (size_t)i * w;
      float* o = dst + (size_t)i * ld + col;
      for (int f = 0; f < w; ++f) o[f] = std::min(std::max((s[f] - off[col + f]) * sc[col + f], -c), c);
    }
    col += w;
  }
}

void adam(const std::vector<std::vector<Tensor>>& opt, const std::vector<double>& hyper) {
  // opt: params, grads, exp_avgs, exp_avg_sqs, steps; hyper: lr, beta1, beta2, weight_decay, eps (Adam.step, fused)
  at::_foreach_add_(opt[4], 1);
  at::_fused_adam_(opt[0], opt[1], opt[2], opt[3], {}, opt[4], hyper[0], hyper[1], hyper[2], hyper[3], hyper[4],
                   false, false);
}

}  // namespace

// One RLPD update (see hilrl/policies/fused_update.py for the argument layout). Returns the metrics.
Tensor update(const std::vector<std::vector<Tensor>>& nets, const std::vector<std::vector<Tensor>>& obs_parts,
              const std::vector<Tensor>& in, const std::vector<std::vector<std::vector<Tensor>>>& opts,
              const std::vector<std::vector<Tensor>>& polyak, const std::vector<double>& s,
              const std::vector<bool>& flags) {
  arena.next = 0;
  const Critic critic(nets[0], nets[1], nets[2], nets[3]), target(nets[4], nets[5], nets[6], nets[7]);
  const Critic grads(nets[8], nets[9], nets[10], nets[11]);
  const Actor actor(nets[12], nets[13]), actor_grads(nets[14], nets[15]);
  for (size_t i = 0; i < in.size(); ++i)  // raw row-major float32 reads below (members: int64)
    TORCH_CHECK(in[i].is_contiguous() && in[i].scalar_type() == (i == 11 ? at::kLong : at::kFloat),
                "cpu_fused_update: input ", i, " must be a contiguous ", i == 11 ? "int64" : "float32", " tensor");
  const Tensor &actions = in[6], &rewards = in[7], &terminated = in[8], &next_eps = in[9], &actor_eps = in[10];
  const Tensor &members = in[11], &demo_mask = in[12], &log_temperature = in[13], &temperature_grad = in[14];
  const double gamma = s[0], tau = s[1];
  const float ln_eps = (float)s[2], lo = (float)s[3], hi = (float)s[4];
  const double target_entropy = s[5], bc_coef = s[6];
  const std::vector<double> critic_hyper(s.begin() + 7, s.begin() + 12), actor_hyper(s.begin() + 12, s.begin() + 17),
      temperature_hyper(s.begin() + 17, s.begin() + 22);
  const bool all_members = flags[0], backup_entropy = flags[1], learn_temperature = flags[2], use_bc = flags[3];
  const bool has_demo = demo_mask.numel() > 0;

  const int T = (int)actions.size(0), A = (int)actions.size(1), utd = (int)members.size(0);
  const int K = all_members ? critic.N : (int)members.size(1), B = T / utd, N = critic.N;
  const int F = critic.d[0] - A, Din = critic.d[0], maxd = critic.maxd();
  TORCH_CHECK(T == B * utd && next_eps.size(0) == T && actor_eps.size(0) == B && rewards.numel() == T
              && terminated.numel() == T && (demo_mask.numel() == 0 || demo_mask.numel() == T),
              "cpu_fused_update: batch and noise rows do not match (utd * B transitions, draw_noise(B))");
  const float temperature = std::exp(log_temperature.item<float>());
  const float* act = ptr(actions);
  const float *rew = ptr(rewards), *term = ptr(terminated);
  const int64_t* mem = members.data_ptr<int64_t>();

  // features: obs and next_obs through the online encoder (actor), next_obs through the target encoder (target)
  float* obs_x = arena.take((size_t)T * Din);    // [features(s) | a], the critic's input
  float* next_f = arena.take((size_t)T * F);     // online features of s' (the actor's input)
  float* next_x = arena.take((size_t)B * Din);   // [target features(s') | a'] of one slice
  float* next_tf = arena.take((size_t)T * F);    // target features of s'
  features(obs_parts[0], in[0], in[1], in[2], T, obs_x, Din);
  for (int i = 0; i < T; ++i)
    for (int j = 0; j < A; ++j) obs_x[(size_t)i * Din + F + j] = act[(size_t)i * A + j];
  features(obs_parts[1], in[0], in[1], in[2], T, next_f, F);
  features(obs_parts[1], in[3], in[4], in[5], T, next_tf, F);

  // a' ~ pi(s') for every slice at once (the actor does not change during the critic steps)
  float* next_a = arena.take((size_t)T * A);
  float* next_logp = arena.take(T);
  {
    const std::vector<float*> h = actor_forward(actor, next_f, T);
    sample(h.back(), ptr(next_eps), T, A, lo, hi, next_a, nullptr, next_logp);
  }

  const Saved fwd = take_saved(critic, B, true), tgt = take_saved(critic, B, false);
  float *buf0 = arena.take((size_t)B * maxd), *buf1 = arena.take((size_t)B * maxd), *tmp = arena.take(maxd);
  float *q = arena.take((size_t)N * B), *next_q = arena.take(B), *qk = arena.take(B), *y = arena.take(B);
  float* dq = arena.take(B);
  double critic_loss = 0., q_mean = 0., target_mean = 0.;
  for (int k = 0; k < utd; ++k) {
    const size_t r0 = (size_t)k * B;
    for (int i = 0; i < B; ++i) {
      for (int f = 0; f < F; ++f) next_x[(size_t)i * Din + f] = next_tf[(r0 + i) * F + f];
      for (int j = 0; j < A; ++j) next_x[(size_t)i * Din + F + j] = next_a[(r0 + i) * A + j];
    }
    for (int j = 0; j < K; ++j) {
      critic_forward(target, all_members ? j : (int)mem[(size_t)k * members.size(1) + j], next_x, B, ln_eps, tgt,
                     j == 0 ? next_q : qk);
      if (j > 0) for (int i = 0; i < B; ++i) next_q[i] = std::min(next_q[i], qk[i]);
    }
    target_mean = 0.;
    for (int i = 0; i < B; ++i) {
      float v = next_q[i];
      if (backup_entropy) v -= temperature * next_logp[r0 + i];
      y[i] = rew[r0 + i] + (float)gamma * (1.f - term[r0 + i]) * v;
      target_mean += y[i];
    }
    critic_loss = 0.; q_mean = 0.;
    const float scale = 2.f / ((float)N * B);
    for (int n = 0; n < N; ++n) {
      float* qn = q + (size_t)n * B;
      critic_forward(critic, n, obs_x + r0 * Din, B, ln_eps, fwd, qn);
      for (int i = 0; i < B; ++i) {
        const float e = qn[i] - y[i];
        critic_loss += (double)e * e; q_mean += qn[i]; dq[i] = scale * e;
      }
      critic_backward(critic, n, obs_x + r0 * Din, B, fwd, dq, &grads, nullptr, A, n == 0, buf0, buf1, tmp);
    }
    adam(opts[0], critic_hyper);
    at::_foreach_lerp_(polyak[0], polyak[1], tau);
  }

  // actor step on the last slice: pi(s) with the actor noise, the critic's mean Q at (s, pi(s)) back to the action
  const size_t r0 = (size_t)(utd - 1) * B;
  const float* feat = obs_x + r0 * Din;
  float* x_pi = arena.take((size_t)B * Din);
  for (int i = 0; i < B; ++i) for (int f = 0; f < F; ++f) x_pi[(size_t)i * Din + f] = feat[(size_t)i * Din + f];
  float* feat_rows = arena.take((size_t)B * F);
  for (int i = 0; i < B; ++i) for (int f = 0; f < F; ++f) feat_rows[(size_t)i * F + f] = feat[(size_t)i * Din + f];
  const std::vector<float*> h = actor_forward(actor, feat_rows, B);
  float *a_pi = arena.take((size_t)B * A), *pre = arena.take((size_t)B * A), *logp = arena.take(B);
  const float* eps = ptr(actor_eps);
  sample(h.back(), eps, B, A, lo, hi, a_pi, pre, logp);
  for (int i = 0; i < B; ++i) for (int j = 0; j < A; ++j) x_pi[(size_t)i * Din + F + j] = a_pi[(size_t)i * A + j];
  float *q_pi = arena.take(B), *da = arena.take((size_t)B * A), *dqa = arena.take(B);
  for (int i = 0; i < B; ++i) { q_pi[i] = 0.f; dqa[i] = -1.f / ((float)N * B); }
  for (int n = 0; n < N; ++n) {
    critic_forward(critic, n, x_pi, B, ln_eps, fwd, qk);
    for (int i = 0; i < B; ++i) q_pi[i] += qk[i];
    critic_backward(critic, n, x_pi, B, fwd, dqa, nullptr, da, A, n == 0, buf0, buf1, tmp);
  }
  double actor_loss = 0., entropy = 0., q_abs = 0.;
  for (int i = 0; i < B; ++i) {
    q_pi[i] /= N;
    actor_loss += (double)temperature * logp[i] - q_pi[i];
    entropy -= logp[i];
    q_abs += std::fabs(q_pi[i]);
  }
  actor_loss /= B; entropy /= B; q_abs /= B;
  double bc_loss = 0., demo_rows = 0.;
  const float* mask = has_demo ? ptr(demo_mask) + r0 : nullptr;
  if (has_demo) for (int i = 0; i < B; ++i) demo_rows += mask[i];
  const double demo_count = std::max(demo_rows, 1.0);
  const bool bc = use_bc && has_demo;
  const float* out = h.back();
  float* dout = arena.take((size_t)B * 2 * A);
  const float dlogp = temperature / B;
  for (int i = 0; i < B; ++i) {
    const float* o = out + (size_t)i * 2 * A;
    double err = 0.;
    for (int j = 0; j < A; ++j) {
      const size_t ij = (size_t)i * A + j;
      const float ls_raw = o[A + j], ls = std::min(std::max(ls_raw, lo), hi), u = pre[ij], a = a_pi[ij];
      const float z = std::exp(-2.f * u), sp_grad = -2.f * u > 20.f ? 1.f : z / (z + 1.f);
      const float dpre = da[ij] * (1.f - a * a) + dlogp * (2.f - 4.f * sp_grad);
      float dmean = dpre;
      if (bc) {
        const float mu = std::tanh(o[j]), diff = mu - act[(r0 + i) * A + j];
        err += (double)diff * diff;
        dmean += (float)(bc_coef * q_abs * mask[i] / demo_count) * 2.f * diff * (1.f - mu * mu);
      }
      dout[(size_t)i * 2 * A + j] = dmean;
      dout[(size_t)i * 2 * A + A + j] = (ls_raw >= lo && ls_raw <= hi) ? -dlogp + dpre * std::exp(ls) * eps[ij] : 0.f;
    }
    if (bc) bc_loss += err * mask[i];
  }
  if (bc) { bc_loss /= demo_count; actor_loss += bc_coef * q_abs * bc_loss; }
  // backward through the actor MLP into its weight gradients
  float* g = dout;
  for (int l = actor.layers() - 1; l >= 0; --l) {
    const int di = actor.d[l], Fo = actor.d[l + 1];
    const float* input = l == 0 ? feat_rows : h[l - 1];
    if (l == 0) {  // dW^T = x^T g then transposed: MKL is far slower at (Fo x B) @ (B x di) with di this small
      float* wt = arena.take((size_t)di * Fo);
      gemm(true, false, di, Fo, B, input, di, g, Fo, false, wt, Fo);
      for (int o = 0; o < Fo; ++o)
        for (int f = 0; f < di; ++f) actor_grads.W[0][(size_t)o * di + f] = wt[(size_t)f * Fo + o];
    } else {
      gemm(true, false, Fo, di, B, g, Fo, input, di, false, actor_grads.W[l], di);
    }
    float* gb = actor_grads.b[l];
    for (int f = 0; f < Fo; ++f) gb[f] = 0.f;
    for (int i = 0; i < B; ++i) {
      const float* row = g + (size_t)i * Fo;
      #pragma omp simd
      for (int f = 0; f < Fo; ++f) gb[f] += row[f];
    }
    if (l > 0) {
      float* next_g = g == buf0 ? buf1 : buf0;
      gemm(false, false, B, di, Fo, g, Fo, actor.W[l], di, false, next_g, di);
      const float* hl = h[l - 1];
      for (size_t e = 0; e < (size_t)B * di; ++e) if (!(hl[e] > 0.f)) next_g[e] = 0.f;
      g = next_g;
    }
  }
  adam(opts[1], actor_hyper);

  const double temperature_loss = temperature * (entropy - target_entropy);
  if (learn_temperature) {
    temperature_grad.fill_(temperature_loss);
    adam(opts[2], temperature_hyper);
  }
  Tensor metrics = torch::empty({has_demo ? 10 : 8}, actions.options());
  float* m = mptr(metrics);
  m[0] = (float)(critic_loss / ((double)N * B)); m[1] = (float)(q_mean / ((double)N * B));
  m[2] = (float)(target_mean / B); m[3] = (float)actor_loss; m[4] = (float)entropy; m[5] = temperature;
  m[6] = (float)temperature_loss; m[7] = (float)bc_loss;
  if (has_demo) {  // the last critic slice's Q (mean over members) on its demo and online rows
    double qd = 0., qo = 0.;
    for (int i = 0; i < B; ++i) {
      double qi = 0.;
      for (int n = 0; n < N; ++n) qi += q[(size_t)n * B + i];
      qi /= N;
      qd += qi * mask[i]; qo += qi * (1. - mask[i]);
    }
    m[8] = (float)(qd / demo_count); m[9] = (float)(qo / std::max((double)B - demo_rows, 1.0));
  }
  return metrics;
}
"""

_lock = threading.Lock()
_module: Any = None


def load_update_kernel() -> Any:
    """The compiled update module, built on first use and cached by torch (see the module docstring)."""
    global _module
    with _lock:
        if _module is None:
            missing = kernels_buildable()
            if missing is not None:
                raise HilrlError(f"SACConfig.cpu_fused_update=True builds a C++ update and needs {missing}; install "
                                 "it or set cpu_fused_update=False (the eager update computes the same)")
            from torch.utils.cpp_extension import load_inline

            _module = load_inline("hilrl_cpu_fused_update_v1", cpp_sources=_SOURCE, functions=["update"],
                                  extra_cflags=["-O3", "-march=native", "-fopenmp-simd"], verbose=False)
    return _module


def unsupported(config: Any) -> str | None:
    """What of ``config`` the fused update does not compute (``None``: all of it); the observation space
    (no images) and the device (CPU) are checked by :class:`SAC`."""
    reasons = [(config.kl_coef > 0, "kl_coef > 0 (the KL term to a BC prior)"),
               (config.bc_proposal, "bc_proposal (IBRL's proposals)"),
               (config.max_grad_norm is not None, "max_grad_norm (gradient clipping)"),
               (not config.critic_layer_norm, "critic_layer_norm=False"),
               (config.actor_layer_norm, "actor_layer_norm (SERL's actor)"),
               (config.actor_batch != "last_slice", f"actor_batch={config.actor_batch!r}"),
               (config.compile_critic, "compile_critic"), (config.cuda_graph, "cuda_graph")]
    found = [text for bad, text in reasons if bad]
    return ", ".join(found) if found else None


def _adam_state(optimizer: torch.optim.Adam) -> list[list[torch.Tensor]]:
    """``[params, grads, exp_avgs, exp_avg_sqs, steps]`` of a one-group fused Adam, its state made as
    ``Adam._init_group`` makes it for ``fused=True`` (torch/optim/adam.py) when the optimiser has not stepped."""
    params = optimizer.param_groups[0]["params"]
    lists: list[list[torch.Tensor]] = [list(params), [], [], [], []]
    for p in params:
        state = optimizer.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        lists[2].append(state["exp_avg"])
        lists[3].append(state["exp_avg_sq"])
        lists[4].append(state["step"])
    return lists


def _hyper(optimizer: torch.optim.Adam) -> list[float]:
    group = optimizer.param_groups[0]
    return [float(group["lr"]), *map(float, group["betas"]), float(group["weight_decay"]), float(group["eps"])]


class FusedCPUUpdate:
    """``SAC._update_tensors`` for a state-based learner on the CPU, as one call of the C++ update.

    Gradient buffers are made once and handed to the optimisers' fused Adam kernel (the parameters'
    ``.grad`` stay ``None``); the optimiser state lists are re-read after :meth:`reset` (the SAC calls it
    when a checkpoint replaces that state).
    """

    def __init__(self, sac: SAC):
        self.sac = sac
        self.kernel = load_update_kernel()
        q, target_q = sac.critic["q"], sac.target["q"]
        self.grads = {p: torch.zeros_like(p) for p in [*sac.critic_params, *sac.actor_params]}
        self.temperature_grad = torch.zeros_like(sac.log_temperature)

        def ensemble(module: torch.nn.Module, of: Any) -> list[list[torch.Tensor]]:
            return [[of(lin.weight) for lin in module.linears] + [of(module.head.weight)],
                    [of(lin.bias) for lin in module.linears] + [of(module.head.bias)],
                    [of(norm.weight) for norm in module.norms], [of(norm.bias) for norm in module.norms]]

        linears = [layer for layer in sac.actor.net if isinstance(layer, torch.nn.Linear)]
        self.nets = (ensemble(q, lambda p: p) + ensemble(target_q, lambda p: p) + ensemble(q, self.grads.get)
                     + [[lin.weight for lin in linears], [lin.bias for lin in linears],
                        [self.grads[lin.weight] for lin in linears], [self.grads[lin.bias] for lin in linears]])
        self.polyak = [list(pair) for pair in sac._polyak_pairs]
        self.layer_norm_eps = float(q.norms[0].eps)  # one eps for every hidden layer (EnsembleLayerNorm's)
        self.opts: list[list[list[torch.Tensor]]] | None = None

    def reset(self) -> None:
        """Forget the optimiser state lists (a loaded checkpoint replaced them)."""
        self.opts = None

    def __call__(self, batch: TensorTree, noise: TensorTree) -> TensorTree:
        sac, cfg = self.sac, self.sac.config
        if self.opts is None:
            self.opts = []
            for optimizer in (sac.critic_optimizer, sac.actor_optimizer, sac.temperature_optimizer):
                lists = _adam_state(optimizer)
                lists[1] = [self.grads.get(p, self.temperature_grad) for p in lists[0]]
                self.opts.append(lists)
        rows = batch["actions"].shape[0]
        keys = sac.encoder.state_keys
        parts = [[batch[part][k].reshape(rows, -1).float().contiguous() for k in keys]
                 for part in ("obs", "next_obs")]
        online, target = sac.encoder, sac.target["encoder"]
        demo_mask = batch.get("demo_mask")
        rows_in = [batch["actions"], batch["rewards"], batch["terminated"], noise["next_eps"], noise["actor_eps"],
                   noise["members"], demo_mask if demo_mask is not None else torch.empty(0)]
        inputs = [online.state_offset, online.state_scale, online.state_clip, target.state_offset,
                  target.state_scale, target.state_clip, *(t.contiguous() for t in rows_in), sac.log_temperature,
                  self.temperature_grad]
        scalars = [cfg.gamma, cfg.tau, self.layer_norm_eps, cfg.log_std_min, cfg.log_std_max, sac.target_entropy,
                   cfg.bc_coef, *_hyper(sac.critic_optimizer), *_hyper(sac.actor_optimizer),
                   *_hyper(sac.temperature_optimizer)]
        flags = [cfg.num_min_critics == cfg.num_critics, cfg.backup_entropy, cfg.learn_temperature,
                 cfg.bc_coef > 0]
        with torch.no_grad():
            values = self.kernel.update(self.nets, parts, inputs, self.opts, self.polyak, scalars, flags)
        names = _METRICS if demo_mask is None else _METRICS + ("q_demo", "q_online")
        return dict(zip(names, values.unbind()))


_METRICS = ("critic_loss", "q", "target_q", "actor_loss", "entropy", "temperature", "temperature_loss", "bc_loss")
