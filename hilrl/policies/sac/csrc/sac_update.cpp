// The whole RLPD update of hilrl's SAC as one C++ call on a CPU (SACConfig.execution.cpu_fused_update); the
// Python side is CppUpdate in hilrl/policies/sac/fast.py, the reference it reproduces hilrl/policies/sac/update.py.
//
// Forward and backward of the critic ensemble and the actor written out (no autograd), GEMMs through MKL's sgemm,
// one critic member at a time through the whole MLP so its activations stay in cache, the bias + LayerNorm +
// affine + ReLU rows of ln_relu_rows.h (shared with layer_norm.cpp), and the optimisers' own fused Adam kernel
// on torch.optim.Adam(fused=True)'s state. Everything it reads comes in four named structs (Networks,
// Optimisers, Inputs, Hyper) that fast.py fills from the learner's explicit interface (SAC.update_parts).
#include <torch/extension.h>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "ln_relu_rows.h"

// MKL's Fortran sgemm, exported by libtorch_cpu (what at::mm calls for float32 on CPU).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

using torch::Tensor;

// The tensors of a critic ensemble (hilrl.policies.networks.CriticEnsemble): per hidden layer l the stacked
// linear weight (N, d[l], d[l+1]) and bias (N, 1, d[l+1]) then the head's (N, d[L], 1) and (N, 1, 1) in weights
// and biases; the LayerNorm gains and shifts (N, 1, d[l+1]) in norm_weights and norm_biases.
struct EnsembleTensors { std::vector<Tensor> weights, biases, norm_weights, norm_biases; };

// The actor MLP's nn.Linear layers (weight (out, in), bias (out)), the last one the (mean, log_std) head.
struct MlpTensors { std::vector<Tensor> weights, biases; };

// One torch.optim.Adam(fused=True) parameter group: what Adam.step hands its fused kernel.
struct AdamTensors { std::vector<Tensor> params, grads, exp_avgs, exp_avg_sqs, steps; };

// The learner's networks and the gradient buffers the update writes (critic_grads, actor_grads: same shapes);
// prior: the BC prior's MLP (GaussianBCPrior.policy, same layout as the actor), read only with bc_proposal.
struct Networks {
  EnsembleTensors critic, target, critic_grads;
  MlpTensors actor, actor_grads, prior;
  std::vector<Tensor> polyak_target, polyak_online;  // target <- lerp(target, online, tau), pairwise
};

struct Optimisers { AdamTensors critic, actor, temperature; };

// One update's batch (utd * B rows), noise (SAC.draw_noise) and the encoders' state standardisation.
struct Inputs {
  std::vector<Tensor> obs, next_obs;                      // state keys in the encoder's order, each (T, width)
  Tensor online_offset, online_scale, online_clip;        // ObservationEncoder buffers of the online encoder
  Tensor target_offset, target_scale, target_clip;        // and of the target encoder
  Tensor prior_offset, prior_scale, prior_clip;           // and of the BC prior's encoder (bc_proposal only)
  Tensor actions, rewards, terminated, next_eps, actor_eps, members, demo_mask;  // demo_mask: empty when none
  Tensor log_temperature, temperature_grad;
};

struct AdamHyper { double lr = 0, beta1 = 0, beta2 = 0, weight_decay = 0, eps = 0; };

// The settings the update reads (SACConfig, the optimisers' param groups, the LayerNorm eps).
struct Hyper {
  double gamma = 0, tau = 0, layer_norm_eps = 0, log_std_min = 0, log_std_max = 0, target_entropy = 0, bc_coef = 0;
  double target_low = 0, target_high = 0;  // the critic target's clip (variants.target_bounds) when clip_target
  bool all_members = false, backup_entropy = true, learn_temperature = true, use_bc = false, bc_proposal = false;
  bool clip_target = false;
  AdamHyper critic_adam, actor_adam, temperature_adam;
};

namespace {
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
  explicit Critic(const EnsembleTensors& t) {
    const std::vector<Tensor>&w = t.weights, &bias = t.biases, &gain = t.norm_weights, &shift = t.norm_biases;
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
      hilrl::ln_relu_row(s.y[l] + (size_t)i * F, b, g, beta, F, eps, s.y[l] + (size_t)i * F,
                         s.xhat[l] ? s.xhat[l] + (size_t)i * F : nullptr, s.rstd[l] ? s.rstd[l] + i : nullptr);
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
      hilrl::ln_relu_row_backward(gy + (size_t)i * F, s.y[l] + (size_t)i * F, s.xhat[l] + (size_t)i * F, s.rstd[l][i],
                                  gain, F, tmp, gy + (size_t)i * F, db, dg, dbeta);
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
  explicit Actor(const MlpTensors& t) {
    const std::vector<Tensor>&w = t.weights, &bias = t.biases;
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

// Adam.step of a fused torch.optim.Adam group: count the step, then the fused kernel.
void adam(const AdamTensors& opt, const AdamHyper& h) {
  at::_foreach_add_(opt.steps, 1);
  at::_fused_adam_(opt.params, opt.grads, opt.exp_avgs, opt.exp_avg_sqs, {}, opt.steps, h.lr, h.beta1, h.beta2,
                   h.weight_decay, h.eps, false, false);
}

}  // namespace

// One RLPD update: utd critic steps (each with Adam and Polyak), one actor step, one temperature step; with
// bc_proposal the critic target is IBRL's, max(min_i Q'_i(s', a'_RL) - reg, min_i Q'_i(s', a'_BC)).
// Returns the metrics (critic_loss, q, target_q, actor_loss, entropy, temperature, temperature_loss, bc_loss, and
// q_demo, q_online when a demo mask is given).
Tensor update(const Networks& nets, const Optimisers& opts, const Inputs& in, const Hyper& hyper) {
  arena.next = 0;
  const Critic critic(nets.critic), target(nets.target), grads(nets.critic_grads);
  const Actor actor(nets.actor), actor_grads(nets.actor_grads);
  const std::vector<std::pair<const char*, const Tensor*>> checked = {
      {"online_offset", &in.online_offset}, {"online_scale", &in.online_scale}, {"online_clip", &in.online_clip},
      {"target_offset", &in.target_offset}, {"target_scale", &in.target_scale}, {"target_clip", &in.target_clip},
      {"actions", &in.actions}, {"rewards", &in.rewards}, {"terminated", &in.terminated},
      {"next_eps", &in.next_eps}, {"actor_eps", &in.actor_eps}, {"members", &in.members},
      {"demo_mask", &in.demo_mask}, {"log_temperature", &in.log_temperature},
      {"temperature_grad", &in.temperature_grad}};
  std::vector<std::pair<const char*, const Tensor*>> all_checked = checked;
  if (hyper.bc_proposal)
    all_checked.insert(all_checked.end(), {{"prior_offset", &in.prior_offset}, {"prior_scale", &in.prior_scale},
                                           {"prior_clip", &in.prior_clip}});
  for (const auto& [name, t] : all_checked) {  // raw row-major float32 reads below (members: int64)
    const bool is_members = t == &in.members;
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == (is_members ? at::kLong : at::kFloat),
                "cpu_fused_update: ", name, " must be a contiguous ", is_members ? "int64" : "float32", " tensor");
  }
  const Tensor &actions = in.actions, &rewards = in.rewards, &terminated = in.terminated, &next_eps = in.next_eps;
  const Tensor &actor_eps = in.actor_eps, &members = in.members, &demo_mask = in.demo_mask;
  const Tensor &log_temperature = in.log_temperature, &temperature_grad = in.temperature_grad;
  const double gamma = hyper.gamma, tau = hyper.tau;
  const float ln_eps = (float)hyper.layer_norm_eps, lo = (float)hyper.log_std_min, hi = (float)hyper.log_std_max;
  const double target_entropy = hyper.target_entropy, bc_coef = hyper.bc_coef;
  const bool all_members = hyper.all_members, backup_entropy = hyper.backup_entropy;
  const bool learn_temperature = hyper.learn_temperature, use_bc = hyper.use_bc, bc_proposal = hyper.bc_proposal;
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
  features(in.obs, in.online_offset, in.online_scale, in.online_clip, T, obs_x, Din);
  for (int i = 0; i < T; ++i)
    for (int j = 0; j < A; ++j) obs_x[(size_t)i * Din + F + j] = act[(size_t)i * A + j];
  features(in.next_obs, in.online_offset, in.online_scale, in.online_clip, T, next_f, F);
  features(in.next_obs, in.target_offset, in.target_scale, in.target_clip, T, next_tf, F);

  // a' ~ pi(s') for every slice at once (the actor does not change during the critic steps)
  float* next_a = arena.take((size_t)T * A);
  float* next_logp = arena.take(T);
  {
    const std::vector<float*> h = actor_forward(actor, next_f, T);
    sample(h.back(), ptr(next_eps), T, A, lo, hi, next_a, nullptr, next_logp);
  }
  // IBRL (Hu et al. 2023, arXiv:2311.02198): the BC prior's mean action tanh(mu_BC(s')) for every row at once (the
  // prior is fixed), through its own encoder's standardisation (GaussianBCPrior.mean_action)
  float* next_bc = nullptr;
  if (bc_proposal) {
    const Actor prior(nets.prior);
    TORCH_CHECK(prior.d[0] == F && prior.d.back() == 2 * A,
                "cpu_fused_update: the BC prior reads ", prior.d[0], " features and gives ", prior.d.back(),
                " outputs; the learner's state features are ", F, " wide and its actions ", A);
    float* prior_f = arena.take((size_t)T * F);
    features(in.next_obs, in.prior_offset, in.prior_scale, in.prior_clip, T, prior_f, F);
    const std::vector<float*> hp = actor_forward(prior, prior_f, T);
    next_bc = arena.take((size_t)T * A);
    for (int i = 0; i < T; ++i)
      for (int j = 0; j < A; ++j) next_bc[(size_t)i * A + j] = std::tanh(hp.back()[(size_t)i * 2 * A + j]);
  }

  const Saved fwd = take_saved(critic, B, true), tgt = take_saved(critic, B, false);
  float *buf0 = arena.take((size_t)B * maxd), *buf1 = arena.take((size_t)B * maxd), *tmp = arena.take(maxd);
  float *q = arena.take((size_t)N * B), *next_q = arena.take(B), *qk = arena.take(B), *y = arena.take(B);
  float *dq = arena.take(B), *bc_q = arena.take(B);
  double critic_loss = 0., q_mean = 0., target_mean = 0.;
  for (int k = 0; k < utd; ++k) {
    const size_t r0 = (size_t)k * B;
    for (int i = 0; i < B; ++i) {
      for (int f = 0; f < F; ++f) next_x[(size_t)i * Din + f] = next_tf[(r0 + i) * F + f];
      for (int j = 0; j < A; ++j) next_x[(size_t)i * Din + F + j] = next_a[(r0 + i) * A + j];
    }
    auto min_over_members = [&](float* out) {  // min over the chosen target members of Q'(next_x)
      for (int j = 0; j < K; ++j) {
        critic_forward(target, all_members ? j : (int)mem[(size_t)k * members.size(1) + j], next_x, B, ln_eps, tgt,
                       j == 0 ? out : qk);
        if (j > 0) for (int i = 0; i < B; ++i) out[i] = std::min(out[i], qk[i]);
      }
    };
    min_over_members(next_q);
    if (bc_proposal) {  // the same members at (s', a'_BC)
      for (int i = 0; i < B; ++i)
        for (int j = 0; j < A; ++j) next_x[(size_t)i * Din + F + j] = next_bc[(r0 + i) * A + j];
      min_over_members(bc_q);
    }
    target_mean = 0.;
    for (int i = 0; i < B; ++i) {
      float v = next_q[i];
      if (backup_entropy) v -= temperature * next_logp[r0 + i];
      if (bc_proposal) v = std::max(v, bc_q[i]);  // bootstrap from whichever proposal is worth more
      y[i] = rew[r0 + i] + (float)gamma * (1.f - term[r0 + i]) * v;
      if (hyper.clip_target) y[i] = std::min(std::max(y[i], (float)hyper.target_low), (float)hyper.target_high);
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
    adam(opts.critic, hyper.critic_adam);
    at::_foreach_lerp_(nets.polyak_target, nets.polyak_online, tau);
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
  adam(opts.actor, hyper.actor_adam);

  const double temperature_loss = temperature * (entropy - target_entropy);
  if (learn_temperature) {
    temperature_grad.fill_(temperature_loss);
    adam(opts.temperature, hyper.temperature_adam);
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  py::class_<EnsembleTensors>(m, "EnsembleTensors")
      .def(py::init<>())
      .def_readwrite("weights", &EnsembleTensors::weights).def_readwrite("biases", &EnsembleTensors::biases)
      .def_readwrite("norm_weights", &EnsembleTensors::norm_weights)
      .def_readwrite("norm_biases", &EnsembleTensors::norm_biases);
  py::class_<MlpTensors>(m, "MlpTensors")
      .def(py::init<>())
      .def_readwrite("weights", &MlpTensors::weights).def_readwrite("biases", &MlpTensors::biases);
  py::class_<AdamTensors>(m, "AdamTensors")
      .def(py::init<>())
      .def_readwrite("params", &AdamTensors::params).def_readwrite("grads", &AdamTensors::grads)
      .def_readwrite("exp_avgs", &AdamTensors::exp_avgs).def_readwrite("exp_avg_sqs", &AdamTensors::exp_avg_sqs)
      .def_readwrite("steps", &AdamTensors::steps);
  py::class_<Networks>(m, "Networks")
      .def(py::init<>())
      .def_readwrite("critic", &Networks::critic).def_readwrite("target", &Networks::target)
      .def_readwrite("critic_grads", &Networks::critic_grads).def_readwrite("actor", &Networks::actor)
      .def_readwrite("actor_grads", &Networks::actor_grads).def_readwrite("prior", &Networks::prior)
      .def_readwrite("polyak_target", &Networks::polyak_target)
      .def_readwrite("polyak_online", &Networks::polyak_online);
  py::class_<Optimisers>(m, "Optimisers")
      .def(py::init<>())
      .def_readwrite("critic", &Optimisers::critic).def_readwrite("actor", &Optimisers::actor)
      .def_readwrite("temperature", &Optimisers::temperature);
  py::class_<Inputs>(m, "Inputs")
      .def(py::init<>())
      .def_readwrite("obs", &Inputs::obs).def_readwrite("next_obs", &Inputs::next_obs)
      .def_readwrite("online_offset", &Inputs::online_offset).def_readwrite("online_scale", &Inputs::online_scale)
      .def_readwrite("online_clip", &Inputs::online_clip).def_readwrite("target_offset", &Inputs::target_offset)
      .def_readwrite("target_scale", &Inputs::target_scale).def_readwrite("target_clip", &Inputs::target_clip)
      .def_readwrite("prior_offset", &Inputs::prior_offset).def_readwrite("prior_scale", &Inputs::prior_scale)
      .def_readwrite("prior_clip", &Inputs::prior_clip)
      .def_readwrite("actions", &Inputs::actions).def_readwrite("rewards", &Inputs::rewards)
      .def_readwrite("terminated", &Inputs::terminated).def_readwrite("next_eps", &Inputs::next_eps)
      .def_readwrite("actor_eps", &Inputs::actor_eps).def_readwrite("members", &Inputs::members)
      .def_readwrite("demo_mask", &Inputs::demo_mask).def_readwrite("log_temperature", &Inputs::log_temperature)
      .def_readwrite("temperature_grad", &Inputs::temperature_grad);
  py::class_<AdamHyper>(m, "AdamHyper")
      .def(py::init<>())
      .def_readwrite("lr", &AdamHyper::lr).def_readwrite("beta1", &AdamHyper::beta1)
      .def_readwrite("beta2", &AdamHyper::beta2).def_readwrite("weight_decay", &AdamHyper::weight_decay)
      .def_readwrite("eps", &AdamHyper::eps);
  py::class_<Hyper>(m, "Hyper")
      .def(py::init<>())
      .def_readwrite("gamma", &Hyper::gamma).def_readwrite("tau", &Hyper::tau)
      .def_readwrite("layer_norm_eps", &Hyper::layer_norm_eps).def_readwrite("log_std_min", &Hyper::log_std_min)
      .def_readwrite("log_std_max", &Hyper::log_std_max).def_readwrite("target_entropy", &Hyper::target_entropy)
      .def_readwrite("bc_coef", &Hyper::bc_coef).def_readwrite("all_members", &Hyper::all_members)
      .def_readwrite("backup_entropy", &Hyper::backup_entropy)
      .def_readwrite("learn_temperature", &Hyper::learn_temperature).def_readwrite("use_bc", &Hyper::use_bc)
      .def_readwrite("bc_proposal", &Hyper::bc_proposal).def_readwrite("clip_target", &Hyper::clip_target)
      .def_readwrite("target_low", &Hyper::target_low).def_readwrite("target_high", &Hyper::target_high)
      .def_readwrite("critic_adam", &Hyper::critic_adam).def_readwrite("actor_adam", &Hyper::actor_adam)
      .def_readwrite("temperature_adam", &Hyper::temperature_adam);
  m.def("update", &update, "one RLPD update (utd critic steps, actor, temperature)", py::arg("networks"),
        py::arg("optimisers"), py::arg("inputs"), py::arg("hyper"));
}
