"""The JAX peer of ``learner_throughput.py``: one RLPD update as ikostrikov/rlpd writes it, for timing only.

Written after ``rlpd/agents/sac/sac_learner.py`` (``SACLearner.update``) of ikostrikov/rlpd (Ball et al.
2023): a critic ensemble made with ``flax.linen.vmap`` over the parameters (RLPD's ``Ensemble``), each
member an MLP with LayerNorm after every hidden layer, its target a random subset of ``num_min_qs`` members
(``subsample_ensemble``), an actor MLP with a state-dependent tanh-Gaussian head (log-std clipped to
[-20, 2]), ``optax.adam`` for all three parts, Polyak targets (``optax.incremental_update``), and per utd
minibatch a critic step followed by the actor and temperature steps (RLPD's loop), all in one ``jax.jit``.
``scan=True`` runs the utd loop in ``jax.lax.scan`` instead of unrolling it (one compiled body).

The tanh-Gaussian is written out (sample, then log-prob with the stable ``log(1 - tanh^2)``) instead of
going through distrax/tfp; it computes the same thing with no extra work, so the peer is not slowed down.

Needs the optional ``[bench]`` extra (``pip install -e .[bench]``: jax, flax, optax).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np


def build(obs_dim: int, act_dim: int, hidden: Sequence[int], batch: int, critics: int, utd: int,
          data: tuple[np.ndarray, ...], seed: int = 0, min_critics: int = 2, scan: bool = False
          ) -> Callable[[], None]:
    """A step function: sample ``utd * batch`` rows from ``data`` (numpy, as RLPD's replay buffer does) and run
    one jitted RLPD update on them. The first call (compilation) is made here."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from flax.training.train_state import TrainState

    class MLP(nn.Module):
        dims: Sequence[int]
        layer_norm: bool

        @nn.compact
        def __call__(self, x):
            for size in self.dims:
                x = nn.Dense(size)(x)
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = nn.relu(x)
            return x

    class StateActionValue(nn.Module):
        @nn.compact
        def __call__(self, obs, actions):
            return nn.Dense(1)(MLP(tuple(hidden), True)(jnp.concatenate([obs, actions], -1))).squeeze(-1)

    def ensemble(size: int):  # RLPD's Ensemble: one module, parameters stacked on a leading axis
        return nn.vmap(StateActionValue, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=None, out_axes=0, axis_size=size)()

    class Actor(nn.Module):
        @nn.compact
        def __call__(self, obs):
            x = MLP(tuple(hidden), False)(obs)
            mean = nn.Dense(act_dim)(x)
            log_std = jnp.clip(nn.Dense(act_dim)(x), -20.0, 2.0)
            return mean, log_std

    class Temperature(nn.Module):
        @nn.compact
        def __call__(self):
            return jnp.exp(self.param("log_temp", lambda _: jnp.full((), jnp.log(1.0))))

    def sample(actor_params, obs, key):
        mean, log_std = actor.apply(actor_params, obs)
        noise = jax.random.normal(key, mean.shape)
        pre = mean + jnp.exp(log_std) * noise
        log_prob = (-0.5 * noise ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi)
                    - 2.0 * (jnp.log(2.0) - pre - jax.nn.softplus(-2.0 * pre))).sum(-1)
        return jnp.tanh(pre), log_prob

    actor, critic, target_critic, temp = Actor(), ensemble(critics), ensemble(min_critics), Temperature()
    key = jax.random.PRNGKey(seed)
    k1, k2, k3, key = jax.random.split(key, 4)
    zeros_o, zeros_a = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
    actor_state = TrainState.create(apply_fn=actor.apply, params=actor.init(k1, zeros_o), tx=optax.adam(3e-4))
    critic_params = critic.init(k2, zeros_o, zeros_a)
    critic_state = TrainState.create(apply_fn=critic.apply, params=critic_params, tx=optax.adam(3e-4))
    target_params = jax.tree_util.tree_map(jnp.copy, critic_params)  # own buffers: the update donates its state
    temp_state = TrainState.create(apply_fn=temp.apply, params=temp.init(k3), tx=optax.adam(3e-4))
    target_entropy, gamma, tau = -act_dim / 2.0, 0.99, 0.005

    def one_step(carry, minibatch):
        actor_state, critic_state, target_params, temp_state, key = carry
        obs, actions, rewards, next_obs, masks = minibatch
        key, k_next, k_members, k_actor = jax.random.split(key, 4)
        # critic (RLPD's update_critic): a' from the actor, min over a random pair of target members
        temperature = temp.apply(temp_state.params)
        next_actions, next_log_prob = sample(actor_state.params, next_obs, k_next)
        members = jax.random.choice(k_members, critics, (min_critics,), replace=False)
        subset = jax.tree_util.tree_map(lambda p: p[members], target_params)  # subsample_ensemble
        next_q = target_critic.apply(subset, next_obs, next_actions).min(0)
        target_q = rewards + gamma * masks * (next_q - temperature * next_log_prob)  # backup_entropy

        def critic_loss(params):
            return ((critic.apply(params, obs, actions) - target_q) ** 2).mean()

        grads = jax.grad(critic_loss)(critic_state.params)
        critic_state = critic_state.apply_gradients(grads=grads)
        target_params = optax.incremental_update(critic_state.params, target_params, tau)

        # actor (update_actor)
        def actor_loss(params):
            new_actions, log_prob = sample(params, obs, k_actor)
            q = critic.apply(critic_state.params, obs, new_actions).mean(0)
            return (log_prob * temperature - q).mean(), -log_prob.mean()

        grads, entropy = jax.grad(actor_loss, has_aux=True)(actor_state.params)
        actor_state = actor_state.apply_gradients(grads=grads)

        # temperature (update_temperature)
        def temp_loss(params):
            return temp.apply(params) * (entropy - target_entropy).mean()

        temp_state = temp_state.apply_gradients(grads=jax.grad(temp_loss)(temp_state.params))
        return (actor_state, critic_state, target_params, temp_state, key), entropy

    @partial(jax.jit, donate_argnums=(0,))
    def update(carry, batch):
        split = tuple(x.reshape(utd, batch_size, *x.shape[1:]) for x in batch)
        if scan:
            carry, _ = jax.lax.scan(one_step, carry, split)
        else:  # RLPD: a Python loop over the utd minibatches, unrolled under jit
            for i in range(utd):
                carry, _ = one_step(carry, tuple(x[i] for x in split))
        return carry

    batch_size = batch
    obs, next_obs, actions, rewards, terminated = data
    masks = 1.0 - terminated.astype(np.float32)
    rng = np.random.default_rng(seed)
    state = [(actor_state, critic_state, target_params, temp_state, key)]

    def step() -> None:
        idx = rng.integers(0, len(obs), utd * batch)
        state[0] = update(state[0], (obs[idx], actions[idx], rewards[idx], next_obs[idx], masks[idx]))
        jax.block_until_ready(state[0][1].params)

    for _ in range(3):  # compile: the state's weak types settle after two updates, each a new compilation
        step()
    return step


def matmul_probe(obs_dim: int, act_dim: int, hidden: Sequence[int], batch: int) -> tuple[Callable[[], None], float]:
    """XLA's own matmul rate at the update's GEMM shapes (forward + both backward GEMMs of every layer),
    the same probe as the torch one in ``learner_throughput.py``, in one jitted call."""
    import jax
    import jax.numpy as jnp

    dims_actor = [obs_dim, *hidden, 2 * act_dim]
    dims_critic = [obs_dim + act_dim, *hidden, 1]
    shapes = list(zip(dims_actor[:-1], dims_actor[1:])) + list(zip(dims_critic[:-1], dims_critic[1:]))
    key = jax.random.PRNGKey(0)
    tensors = []
    for i, o in shapes:
        key, a, b, c = jax.random.split(key, 4)
        tensors.append((jax.random.normal(a, (batch, i)), jax.random.normal(b, (i, o)), jax.random.normal(c, (batch, o))))

    @jax.jit
    def run(tensors):
        # every product enters the output, so XLA cannot drop any of them
        return sum((x @ w).sum() + (g @ w.T).sum() + (x.T @ g).sum() for x, w, g in tensors)

    jax.block_until_ready(run(tensors))
    flops = float(sum(3 * 2 * batch * i * o for i, o in shapes))
    return (lambda: jax.block_until_ready(run(tensors))), flops


def versions() -> str:
    import flax
    import jax
    import optax

    return f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}"
