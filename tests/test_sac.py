"""SAC/RLPD learner: ensemble maths, target, sampling, UTD, checkpoints, learning, images, KL prior."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hilrl.data.buffers import ReplayBuffer, mixed_sample
from hilrl.errors import HilrlError
from hilrl.policies.encoders import random_shift
from hilrl.policies.networks import CriticEnsemble
from hilrl.policies.sac import SAC, SACConfig, SACExecution, batch_to_torch
from hilrl.policies.sac.update import regulariser

STATE_SPACE = gym.spaces.Dict({
    "ee_pos": gym.spaces.Box(-1, 1, (3,), np.float32),
    "gripper": gym.spaces.Box(-1, 1, (1,), np.float32),
})
ACT_SPACE = gym.spaces.Box(-1, 1, (2,), np.float32)
SMALL = dict(hidden=(32, 32), batch_size=16)


def fill(buffer, n, rng, reward=None, source=0):
    obs = {k: rng.uniform(-1, 1, (n, *s.shape)).astype(s.dtype) if s.dtype != np.uint8
           else rng.integers(0, 256, (n, *s.shape), dtype=np.uint8) for k, s in buffer.observation_space.items()}
    next_obs = {k: np.roll(v, 1, axis=0) for k, v in obs.items()}
    actions = rng.uniform(-1, 1, (n, buffer.action_space.shape[0])).astype(np.float32)
    rewards = rng.normal(size=n).astype(np.float32) if reward is None else np.full(n, reward, np.float32)
    buffer.extend(obs, actions, rewards, next_obs, rng.random(n) < 0.1, rng.random(n) < 0.1,
                  source=np.full(n, source, np.int64))


def member_forward(ensemble: CriticEnsemble, m: int, x: torch.Tensor) -> torch.Tensor:
    """Q-values of member ``m`` with plain per-member ops (the reference the batched path must match)."""
    for linear, norm in zip(ensemble.linears, ensemble.norms):
        x = x @ linear.weight[m] + linear.bias[m, 0]
        x = F.layer_norm(x, (x.shape[-1],), norm.weight[m, 0], norm.bias[m, 0], eps=norm.eps)
        x = F.relu(x)
    return (x @ ensemble.head.weight[m] + ensemble.head.bias[m, 0]).squeeze(-1)


def test_batched_ensemble_equals_per_member_forward():
    torch.manual_seed(0)
    ensemble = CriticEnsemble(6, (16, 8), num_members=5)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for norm in ensemble.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    features, actions = torch.randn(7, 4), torch.randn(7, 2)
    batched = ensemble(features, actions)
    assert batched.shape == (5, 7)
    x = torch.cat([features, actions], -1)
    for m in range(5):
        torch.testing.assert_close(batched[m], member_forward(ensemble, m, x))
    subset = ensemble(features, actions, members=torch.tensor([3, 1]))
    torch.testing.assert_close(subset, batched[[3, 1]])


def test_constant_weights_give_the_same_q_and_input_gradients_and_no_weight_gradients():
    """``param_grads=False`` (the actor step) changes which gradients exist, never the values."""
    torch.manual_seed(0)
    ensemble = CriticEnsemble(6, (16, 8), num_members=4)
    features = torch.randn(5, 4)
    results = []
    for param_grads in (True, False):
        actions = torch.randn(5, 2, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        q = ensemble(features, actions, param_grads=param_grads)
        q.pow(2).mean().backward()
        results.append((q.detach(), actions.grad))
        if param_grads:
            assert all(p.grad is not None for p in ensemble.parameters())
            ensemble.zero_grad(set_to_none=True)
        else:
            assert all(p.grad is None for p in ensemble.parameters())
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


def test_layer_norm_has_no_saved_constant_and_old_checkpoints_load():
    """The identity weight fed to the fast LayerNorm kernel is not part of the saved state."""
    ensemble = CriticEnsemble(6, (16, 8), num_members=3)
    state = ensemble.state_dict()
    assert not any("_ones" in key for key in state)
    CriticEnsemble(6, (16, 8), num_members=3).load_state_dict(state)  # strict: same keys as before


def test_compile_critic_needs_a_compiler_and_not_a_cuda_graph(monkeypatch):
    from hilrl.policies.sac import fast

    monkeypatch.setattr(fast.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(HilrlError, match="C\\+\\+ compiler"):
        SAC(STATE_SPACE, ACT_SPACE, SACConfig(execution={"compile_critic": True}, **SMALL))
    SAC(STATE_SPACE, ACT_SPACE, SACConfig(**SMALL))  # eager needs none


@pytest.mark.slow
def test_compiled_critic_update_matches_eager():
    """``compile_critic`` is speed only: from the same state, same batch and noise, the same update."""
    config = dict(num_critics=5, utd=2, **SMALL)
    eager = SAC(STATE_SPACE, ACT_SPACE, SACConfig(**config), seed=2)
    compiled = SAC(STATE_SPACE, ACT_SPACE, SACConfig(execution={"compile_critic": True}, **config), seed=2)
    assert_same_updates(eager, compiled)


def assert_same_updates(eager: SAC, fast: SAC, demo_rows: int = 0) -> ReplayBuffer:
    """Three updates of both learners on the same batches and noise give the same metrics and networks
    (``demo_rows``: that many rows at the end of every 16-row slice are marked as demo rows)."""
    buf = ReplayBuffer(STATE_SPACE, ACT_SPACE, 100)
    fill(buf, 100, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for _ in range(3):
        sample = buf.sample(16 * eager.config.utd, rng)
        if demo_rows:
            sample["demo_mask"] = np.tile((np.arange(16) >= 16 - demo_rows).astype(np.float32), eager.config.utd)
        batch, noise = batch_to_torch(sample, "cpu"), eager.draw_noise(16)
        m1, m2 = eager.train_on_batch(batch, noise), fast.train_on_batch(batch, noise)
        assert m1.keys() == m2.keys()
        for key in m1:
            torch.testing.assert_close(m1[key], m2[key], rtol=1e-4, atol=1e-5)
    for ours, reference in ((fast.critic, eager.critic), (fast.target, eager.target), (fast.actor, eager.actor)):
        for a, b in zip(ours.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    return buf


def plain_rlpd_update(sac: SAC, batch, noise, critic, target, actor, log_alpha, optimizers):
    """One RLPD update written out top to bottom with per-member ops and plain autograd (CleanRL style): the
    reference the learner's fast path (batched ensemble, analytic temperature step...) must reproduce."""
    cfg, utd = sac.config, sac.config.utd
    size = batch["actions"].shape[0] // utd
    x_of = lambda obs: torch.cat([obs[k] for k in sorted(obs)], -1)  # noqa: E731  (the encoder's key order)
    critic_opt, actor_opt, alpha_opt = optimizers
    for k in range(utd):
        part = slice(k * size, (k + 1) * size)
        obs, next_obs = x_of({n: v[part] for n, v in batch["obs"].items()}), x_of(
            {n: v[part] for n, v in batch["next_obs"].items()})
        with torch.no_grad():
            next_a, next_logp = actor.sample(next_obs, noise["next_eps"][part])
            xq = torch.cat([next_obs, next_a], -1)
            next_q = torch.stack([member_forward(target, int(m), xq) for m in noise["members"][k]]).min(0).values
            next_q = next_q - log_alpha.exp() * next_logp
            y = batch["rewards"][part] + cfg.gamma * (1 - batch["terminated"][part]) * next_q
        xq = torch.cat([obs, batch["actions"][part]], -1)
        loss = sum((member_forward(critic, m, xq) - y).pow(2).mean() for m in range(cfg.num_critics))
        critic_opt.zero_grad()
        (loss / cfg.num_critics).backward()
        critic_opt.step()
        with torch.no_grad():
            for p_target, p in zip(target.parameters(), critic.parameters()):
                p_target.mul_(1 - cfg.tau).add_(cfg.tau * p)
    if cfg.actor_batch == "whole":  # SERL's update_high_utd: the actor on every row
        obs = x_of(batch["obs"])
    a, logp = actor.sample(obs, noise["actor_eps"])
    xq = torch.cat([obs, a], -1)
    q = torch.stack([member_forward(critic, m, xq) for m in range(cfg.num_critics)]).mean(0)
    actor_loss = (log_alpha.exp().detach() * logp - q).mean()
    actor_opt.zero_grad()
    actor_loss.backward()
    actor_opt.step()
    alpha_loss = log_alpha.exp() * (-logp.detach().mean() - sac.target_entropy)
    alpha_opt.zero_grad()
    alpha_loss.backward()
    alpha_opt.step()


@pytest.mark.parametrize("num_critics, serl", [(2, {}), (4, {}),
                                               (4, dict(actor_batch="whole", actor_layer_norm=True, init="xavier"))])
def test_update_matches_a_plain_rlpd_update_written_out(num_critics, serl):
    """The speed work changes how the update runs, never what it computes: same state, batch and noise, the
    same networks and temperature after each update as the written-out reference (2 critics: the min runs
    over both members unindexed; 4: over the two drawn; SERL's state agent: LayerNorm in the actor, xavier
    init, the actor step on the whole utd batch)."""
    import copy

    sac = SAC(STATE_SPACE, ACT_SPACE, SACConfig(num_critics=num_critics, utd=2, **serl, **SMALL), seed=3)
    critic, target = copy.deepcopy(sac.critic["q"]), copy.deepcopy(sac.target["q"])
    actor = copy.deepcopy(sac.actor)
    log_alpha = sac.log_temperature.detach().clone().requires_grad_(True)
    optimizers = [torch.optim.Adam(params, lr=lr) for params, lr in (
        (critic.parameters(), sac.config.critic_lr), (actor.parameters(), sac.config.actor_lr),
        ([log_alpha], sac.config.temperature_lr))]
    buf = ReplayBuffer(STATE_SPACE, ACT_SPACE, 100)
    fill(buf, 100, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for _ in range(3):
        batch, noise = batch_to_torch(buf.sample(32, rng), "cpu"), sac.draw_noise(16)
        sac.train_on_batch(batch, noise)
        plain_rlpd_update(sac, batch, noise, critic, target, actor, log_alpha, optimizers)
    for ours, reference in ((sac.critic["q"], critic), (sac.target["q"], target), (sac.actor, actor)):
        for a, b in zip(ours.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sac.log_temperature.detach(), log_alpha.detach())


@pytest.mark.parametrize("num_critics", [2, 5])
def test_fused_layer_norm_update_matches_eager(num_critics):
    """``fused_layer_norm`` is speed only: from the same state, batch and noise, the same update as the eager
    reference, through the critic step, the actor step (constant critic weights) and the target's subset."""
    from hilrl.policies.sac.fast import kernels_buildable

    if kernels_buildable() is not None:
        pytest.skip(f"the fused kernel needs {kernels_buildable()}")
    config = dict(num_critics=num_critics, utd=2, **SMALL)
    eager = SAC(STATE_SPACE, ACT_SPACE, SACConfig(**config), seed=2)
    fused = SAC(STATE_SPACE, ACT_SPACE, SACConfig(execution={"fused_layer_norm": True}, **config), seed=2)
    assert fused.critic["q"].fused and not eager.critic["q"].fused
    buf = assert_same_updates(eager, fused)
    obs = {k: torch.as_tensor(v) for k, v in buf.sample(8, np.random.default_rng(2))["obs"].items()}
    torch.testing.assert_close(fused.critic["q"](fused.encoder(obs), torch.zeros(8, 2)),
                               eager.critic["q"](eager.encoder(obs), torch.zeros(8, 2)), rtol=1e-4, atol=1e-5)


def needs_cpp_update() -> None:
    from hilrl.policies.sac.fast import kernels_buildable

    if kernels_buildable() is not None:
        pytest.skip(f"the C++ update needs {kernels_buildable()}")


@pytest.mark.parametrize("num_critics, utd, extra", [
    (2, 1, {}), (2, 2, {}), (10, 1, {}), (10, 2, {}),
    (4, 2, dict(variants={"bc_coef": 0.5})),  # TD3+BC's demo term, and the two target members drawn from four
    (2, 2, dict(backup_entropy=False, learn_temperature=False, normalisation={"enabled": True},
                init_temperature=0.1)),
    (2, 2, dict(variants={"bc_proposal": True, "bc_prior_updates": 30}, init_temperature=0.1)),  # IBRL, entropy
    # the few-demo recipe (sim_configs/pick_cube_few_demos.yaml): IBRL and TD3+BC, subsets of the members
    (4, 2, dict(variants={"bc_proposal": True, "bc_coef": 1.0, "bc_prior_updates": 30}, learn_temperature=False,
                init_temperature=0.01, normalisation={"enabled": True})),
    (2, 2, dict(variants={"bc_proposal": True, "bc_prior_updates": 30, "target_bounds": [-0.5, 0.8]},
                init_temperature=0.1)),  # targets clipped (the bounds bind on most rows of N(0, 1) rewards)
])
def test_cpu_fused_update_matches_eager(num_critics, utd, extra):
    """``cpu_fused_update`` is speed only: from the same state, batch and noise, the same update as the eager
    reference (critic steps, target members, IBRL's proposal in the target, actor through the critic, TD3+BC,
    temperature, Adam, Polyak, metrics)."""
    needs_cpp_update()
    config = dict(num_critics=num_critics, utd=utd, **extra, **SMALL)
    eager = SAC(STATE_SPACE, ACT_SPACE, SACConfig(**config), seed=2)
    fast = SAC(STATE_SPACE, ACT_SPACE, SACConfig(execution={"cpu_fused_update": True}, **config), seed=2)
    if "normalisation" in extra:  # a fitted standardisation that clips some features
        buf = ReplayBuffer(STATE_SPACE, ACT_SPACE, 50)
        fill(buf, 50, np.random.default_rng(5))
        for learner in (eager, fast):
            learner.encoder.fit_state_normalizer({k: 0.2 * v[:50] for k, v in buf.obs.items()}, 0.05, 1.5)
            learner.target["encoder"].load_state_dict(learner.encoder.state_dict())
    if extra.get("variants", {}).get("bc_proposal"):  # the same prior, fitted on demos, in both learners
        demos = ReplayBuffer(STATE_SPACE, ACT_SPACE, 40)
        fill(demos, 40, np.random.default_rng(6))
        for learner in (eager, fast):
            learner.fit_bc_prior(demos)
        assert_proposal_wins_some_rows(eager, demos)
    assert_same_updates(eager, fast, demo_rows=6 if "variants" in extra else 0)
    torch.testing.assert_close(fast.log_temperature, eager.log_temperature, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in fast.critic.parameters())  # its gradients live in its own buffers


def assert_proposal_wins_some_rows(sac: SAC, buffer: ReplayBuffer) -> None:
    """IBRL's max in the target picks the BC prior's action on some rows and the actor's on others (so an
    equivalence test with it checks both branches)."""
    batch = batch_to_torch(buffer.sample(32, np.random.default_rng(3)), "cpu")
    with torch.no_grad():
        noise = sac.draw_noise(32 // sac.config.utd)
        next_a, next_reg = sac.next_actions(batch["next_obs"], noise["next_eps"][:32], None, sac.temperature)
        features = sac.target["encoder"](batch["next_obs"])
        members = noise["members"][0]
        q_actor = sac.target_q(features, next_a, members).min(dim=0).values
        if sac.config.backup_entropy:
            q_actor = q_actor - next_reg
        proposal = sac.bc_prior.mean_action(batch["next_obs"])
        q_prior = sac.target_q(features, proposal, members).min(dim=0).values
    wins = int((q_prior > q_actor).sum())
    assert 0 < wins < 32, wins


def test_cpu_fused_update_runs_on_the_cpu_with_device_auto_and_refuses_an_explicit_gpu(monkeypatch):
    """A shipped config with the C++ update (``device: auto``) still runs where a GPU is seen: on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    needs_cpp_update()
    fast = SAC(STATE_SPACE, ACT_SPACE, SACConfig(execution={"cpu_fused_update": True}, **SMALL))
    assert fast.device == torch.device("cpu") and fast.cpp_update is not None
    with pytest.raises(HilrlError, match="device cuda .*set device: cpu or auto"):
        SAC(STATE_SPACE, ACT_SPACE, SACConfig(execution={"cpu_fused_update": True}, device="cuda", **SMALL))


def fill_and_sample(rows: int = 32):
    buf = ReplayBuffer(STATE_SPACE, ACT_SPACE, 64)
    fill(buf, 64, np.random.default_rng(7))
    return buf.sample(rows, np.random.default_rng(8))


def test_cpu_fused_update_continues_an_eager_checkpoint_and_refuses_what_it_does_not_compute():
    """A fast learner loaded from an eager one's checkpoint (optimiser state included) goes on as the eager
    one does; configurations the C++ update does not write out are refused with the option to change."""
    needs_cpp_update()
    eager = SAC(STATE_SPACE, ACT_SPACE, SACConfig(**SMALL, utd=2), seed=4)
    fast = SAC(STATE_SPACE, ACT_SPACE, SACConfig(execution={"cpu_fused_update": True}, **SMALL, utd=2), seed=9)
    assert_same_updates(eager, SAC(STATE_SPACE, ACT_SPACE, SACConfig(**SMALL, utd=2), seed=4))  # 3 eager updates
    fast.train_on_batch(batch_to_torch(fill_and_sample(), "cpu"), fast.draw_noise(16))  # its own state first
    fast.load_state_dict(eager.state_dict())
    assert_same_updates(eager, fast)
    for mine, theirs in zip(fast.critic_params, eager.critic_params):
        assert int(fast.critic_optimizer.state[mine]["step"]) == int(eager.critic_optimizer.state[theirs]["step"]) == 12
    image_space = gym.spaces.Dict({"rgb": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)})
    for space, extra in ((STATE_SPACE, dict(variants={"kl_coef": 0.1})),
                         (STATE_SPACE, dict(max_grad_norm=1.0)), (STATE_SPACE, dict(actor_batch="whole")),
                         (STATE_SPACE, dict(critic_layer_norm=False)), (image_space, {})):
        with pytest.raises(HilrlError, match="cpu_fused_update=False"):
            SAC(space, ACT_SPACE, SACConfig(execution={"cpu_fused_update": True}, **extra, **SMALL))


@pytest.mark.parametrize("backup_entropy", [True, False])
def test_target_is_min_over_the_two_chosen_members(backup_entropy):
    sac = SAC(STATE_SPACE, ACT_SPACE, SACConfig(num_critics=5, backup_entropy=backup_entropy, gamma=0.9, **SMALL))
    with torch.no_grad():  # make target members differ from each other and from the online critic
        for p in sac.target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    next_obs = {k: torch.as_tensor(rng.uniform(-1, 1, (6, *s.shape)), dtype=torch.float32)
                for k, s in STATE_SPACE.items()}
    next_actions = torch.rand(6, 2) * 2 - 1
    next_reg = torch.rand(6)
    rewards = torch.arange(6, dtype=torch.float32)
    terminated = torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.float32)
    members = torch.tensor([4, 1])
    target = sac.critic_target(rewards, 1.0 - terminated, next_obs, next_actions, next_reg, members)

    x = torch.cat([next_obs["ee_pos"], next_obs["gripper"], next_actions], -1)  # sorted key order
    q4, q1 = (member_forward(sac.target["q"], m, x) for m in (4, 1))
    soft_q = torch.minimum(q4, q1) - (next_reg if backup_entropy else 0.0)
    expected = rewards + 0.9 * (1.0 - terminated) * soft_q
    torch.testing.assert_close(target, expected)
    assert torch.equal(target[terminated == 1], rewards[terminated == 1])  # no bootstrap after termination
    # the other members would give another value: the choice matters
    q0 = member_forward(sac.target["q"], 0, x)
    assert not torch.allclose(torch.minimum(q4, q1), torch.minimum(q0, q1))


def test_target_bounds_clip_the_target_and_leave_targets_within_them_alone():
    """``variants.target_bounds``: targets outside the bounds become the bound, those inside are unchanged."""
    rng = np.random.default_rng(0)
    next_obs = {k: torch.as_tensor(rng.uniform(-1, 1, (64, *s.shape)), dtype=torch.float32)
                for k, s in STATE_SPACE.items()}
    args = (torch.linspace(-3, 3, 64), torch.ones(64), next_obs, torch.zeros(64, 2), torch.zeros(64),
            torch.tensor([0, 1]))
    free = SAC(STATE_SPACE, ACT_SPACE, SACConfig(**SMALL), seed=0).critic_target(*args)
    bounded = SAC(STATE_SPACE, ACT_SPACE, SACConfig(variants={"target_bounds": [-1.0, 1.5]}, **SMALL),
                  seed=0).critic_target(*args)
    torch.testing.assert_close(bounded, free.clamp(-1.0, 1.5))
    assert (free < -1.0).any() and (free > 1.5).any() and ((free > -1.0) & (free < 1.5)).any()
    with pytest.raises(HilrlError, match="target_bounds must be \\[low, high\\] with low < high"):
        SACConfig(variants={"target_bounds": [2.0, 1.0]})


def test_truncated_steps_bootstrap_and_members_are_distinct():
    sac = SAC(STATE_SPACE, ACT_SPACE, SACConfig(num_critics=10, utd=4, **SMALL))
    buf = ReplayBuffer(STATE_SPACE, ACT_SPACE, 100)
    fill(buf, 50, np.random.default_rng(0))
    batch = batch_to_torch(buf.gather(np.arange(16 * 4)), "cpu")
    mask = 1.0 - batch["terminated"]
    assert torch.all(mask[batch["truncated"] == 1] == 1.0 - batch["terminated"][batch["truncated"] == 1])
    noise = sac.draw_noise(16)
    members = noise["members"]
    assert members.shape == (4, 2) and torch.all(members[:, 0] != members[:, 1])
    assert members.min() >= 0 and members.max() < 10


def batches_seen(sac: SAC) -> list[dict]:
    """Every batch ``sac.train_step`` hands to its update from now on, as numpy arrays."""
    seen, update = [], sac.train_on_batch

    def spy(batch, noise=None):
        seen.append({k: v.cpu().numpy() for k, v in batch.items() if not isinstance(v, dict)})
        return update(batch, noise)

    sac.train_on_batch = spy
    return seen


def test_train_step_samples_half_online_half_demo_per_slice():
    sac = SAC(STATE_SPACE, ACT_SPACE, SACConfig(utd=3, **SMALL))
    rng = np.random.default_rng(0)
    online, demo = ReplayBuffer(STATE_SPACE, ACT_SPACE, 200), ReplayBuffer(STATE_SPACE, ACT_SPACE, 200)
    fill(online, 100, rng, source=0)
    fill(demo, 30, rng, source=1)
    seen = batches_seen(sac)
    sac.train_step(online, demo)
    sources = seen[0]["source"].reshape(3, 16)
    np.testing.assert_array_equal(sources.sum(1), [8, 8, 8])
    sac.train_step(online, ReplayBuffer(STATE_SPACE, ACT_SPACE, 10))
    assert seen[1]["source"].sum() == 0 and seen[1]["source"].shape == (48,)


def test_utd_runs_utd_critic_steps_per_actor_step(monkeypatch):
    sac = SAC(STATE_SPACE, ACT_SPACE, SACConfig(utd=5, **SMALL))
    calls = {"critic": 0, "actor": 0, "temperature": 0}
    for name in calls:
        optimizer = getattr(sac, f"{name}_optimizer")
        original = optimizer.step

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(optimizer, "step", counted)
    buf = ReplayBuffer(STATE_SPACE, ACT_SPACE, 100)
    fill(buf, 100, np.random.default_rng(0))
    target_before = [p.clone() for p in sac.target.parameters()]
    for _ in range(3):
        sac.train_step(buf)
    assert calls == {"critic": 15, "actor": 3, "temperature": 3}
    assert (sac.num_updates, sac.critic_updates, sac.actor_updates) == (3, 15, 3)
    # Polyak: the target moved, by much less than the online critic
    moved = max((a - b).abs().max().item() for a, b in zip(sac.target.parameters(), target_before))
    assert 0 < moved < 0.1


def test_checkpoint_round_trip_and_resume(tmp_path):
    config = SACConfig(num_critics=3, utd=2, **SMALL)
    rng = np.random.default_rng(0)
    online, demo = ReplayBuffer(STATE_SPACE, ACT_SPACE, 200), ReplayBuffer(STATE_SPACE, ACT_SPACE, 200)
    fill(online, 150, rng)
    fill(demo, 40, rng, source=1)
    sac = SAC(STATE_SPACE, ACT_SPACE, config, seed=3)
    for _ in range(5):
        sac.train_step(online, demo)
    sac.save(tmp_path / "sac.pt")
    online.save(tmp_path / "online.npz")
    demo.save(tmp_path / "demo.h5")

    restored = SAC.load(tmp_path / "sac.pt", STATE_SPACE, ACT_SPACE)
    online2, demo2 = ReplayBuffer(STATE_SPACE, ACT_SPACE, 200), ReplayBuffer(STATE_SPACE, ACT_SPACE, 200)
    online2.load(tmp_path / "online.npz")
    demo2.load(tmp_path / "demo.h5")
    obs = {k: rng.uniform(-1, 1, (4, *s.shape)).astype(np.float32) for k, s in STATE_SPACE.items()}
    np.testing.assert_array_equal(sac.act(obs, deterministic=True), restored.act(obs, deterministic=True))
    assert (restored.num_updates, restored.critic_updates, restored.actor_updates) == (5, 10, 5)
    assert restored.config == config
    # training continues identically: same samples, same noise, same optimiser moments
    # (buffers reloaded in oldest-first order equal the originals here because neither wrapped)
    for _ in range(3):
        m1, m2 = sac.train_step(online, demo), restored.train_step(online2, demo2)
    for key in m1:
        torch.testing.assert_close(m1[key], m2[key])
    for a, b in zip(sac.actor.parameters(), restored.actor.parameters()):
        torch.testing.assert_close(a, b)
    assert restored.num_updates == 8

    with pytest.raises(HilrlError, match="num_critics"):
        SAC(STATE_SPACE, ACT_SPACE, SACConfig(num_critics=2, **SMALL)).load_state_dict(sac.state_dict())


def test_state_transfer_between_live_learners_shares_nothing():
    """Loading a live learner's state must copy it: both then train independently and identically."""
    config = SACConfig(utd=2, **SMALL)
    buf = ReplayBuffer(STATE_SPACE, ACT_SPACE, 100)
    fill(buf, 100, np.random.default_rng(0))
    source = SAC(STATE_SPACE, ACT_SPACE, config, seed=0)
    for _ in range(3):
        source.train_step(buf)
    copy = SAC(STATE_SPACE, ACT_SPACE, config, seed=5)
    copy.load_state_dict(source.state_dict())
    for _ in range(2):
        m1, m2 = source.train_step(buf), copy.train_step(buf)
        for key in m1:
            torch.testing.assert_close(m1[key], m2[key], rtol=0, atol=0)
    for a, b in zip(source.critic.parameters(), copy.critic.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_sac_learns_a_contextual_bandit():
    """One-step task (every transition terminates): the best action is ``a* = (0.8 s0, -0.8 s1)``."""
    space = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (2,), np.float32)})
    rng = np.random.default_rng(0)

    def reward(states, actions):
        best = np.stack([0.8 * states[:, 0], -0.8 * states[:, 1]], 1)
        return -np.sum((actions - best) ** 2, axis=1)

    buf = ReplayBuffer(space, ACT_SPACE, 5000)
    states = rng.uniform(-1, 1, (2000, 2)).astype(np.float32)
    actions = rng.uniform(-1, 1, (2000, 2)).astype(np.float32)
    buf.extend({"x": states}, actions, reward(states, actions), {"x": states}, np.ones(2000, bool),
               np.zeros(2000, bool))
    sac = SAC(space, ACT_SPACE, SACConfig(hidden=(64, 64), batch_size=64, utd=2, init_temperature=0.1), seed=0)
    test_states = rng.uniform(-1, 1, (256, 2)).astype(np.float32)

    def score():
        return reward(test_states, sac.act({"x": test_states}, deterministic=True)).mean()

    before = score()
    for _ in range(600):
        sac.train_step(buf)
    after = score()
    assert before < -0.3, before  # acting at random (or at 0) scores about -0.43
    assert after > -0.03, (before, after)


# ---- images --------------------------------------------------------------------------------

IMAGE_SPACE = gym.spaces.Dict({
    "front": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
    "gripper": gym.spaces.Box(-1, 1, (1,), np.float32),
})


def test_random_shift_shape_identity_and_translation():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    centre = torch.full((2, 2), 2)
    torch.testing.assert_close(random_shift(images, centre, pad=2), images)
    shifts = torch.tensor([[3, 2], [0, 4]])
    out = random_shift(images, shifts, pad=2)
    assert out.shape == images.shape
    torch.testing.assert_close(out, random_shift(images, shifts, pad=2))  # deterministic given shifts
    # sample 0 moved one row down in the source (shift 3 = pad + 1): output row r is input row r+1
    torch.testing.assert_close(out[0, :, :5], images[0, :, 1:6])
    torch.testing.assert_close(out[0, :, 5], images[0, :, 5])  # replicate padding at the edge
    # sample 1: shift (0, 4) = two rows up, two columns right: output (r, c) is input (r - 2, c + 2)
    torch.testing.assert_close(out[1, :, 2:, :4], images[1, :, :4, 2:])


@pytest.mark.parametrize("freeze", [True, False])
def test_image_encoder_trains_only_through_the_critic_and_can_be_frozen(freeze):
    config = SACConfig(hidden=(32, 32), batch_size=8,
                       images={"latent_dim": 8, "channels": (8, 8), "strides": (2, 1), "freeze_encoder": freeze})
    sac = SAC(IMAGE_SPACE, ACT_SPACE, config)
    assert sac.encoder.feature_dim == 8 + 1
    buf = ReplayBuffer(IMAGE_SPACE, ACT_SPACE, 50)
    fill(buf, 40, np.random.default_rng(0))
    before = {k: v.detach().clone() for k, v in sac.encoder.named_parameters()}
    metrics = sac.train_step(buf)
    assert all(torch.isfinite(v) for v in metrics.values())
    changed = any(not torch.equal(before[k], v) for k, v in sac.encoder.named_parameters())
    assert changed != freeze
    if freeze:
        assert all(p.grad is None for p in sac.encoder.parameters())
    # the actor step never writes encoder gradients: zero them, run only the actor part, check
    sac.critic_optimizer.zero_grad(set_to_none=True)
    obs = {k: torch.as_tensor(v) for k, v in buf.gather(np.arange(8))["obs"].items()}
    with torch.no_grad():
        features = sac.encoder(obs)
    actions, log_prob = sac.actor.sample(features, torch.randn(8, 2))
    (sac.temperature * log_prob - sac.critic["q"](features, actions).mean(0)).mean().backward(
        inputs=sac.actor_params)
    assert all(p.grad is None for p in sac.encoder.parameters())
    single = {"front": np.zeros((16, 16, 3), np.uint8), "gripper": np.zeros(1, np.float32)}
    assert sac.act(single).shape == (2,)


# ---- KL regularisation towards a BC prior ----------------------------------------------------

class GaussianPrior(torch.nn.Module):
    """log N(a; mean, std^2), independent per action dimension."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = torch.tensor(mean), std

    def log_prob(self, obs, actions):
        return torch.distributions.Normal(self.mean, self.std).log_prob(actions).sum(-1)


def test_kl_regularisation_pulls_the_policy_to_the_prior():
    prior = GaussianPrior([0.6, -0.3], 0.2)
    config = SACConfig(hidden=(32, 32), batch_size=32, variants={"kl_coef": 1.0}, gamma=0.5)
    sac = SAC(STATE_SPACE, ACT_SPACE, config, bc_policy=prior)
    buf = ReplayBuffer(STATE_SPACE, ACT_SPACE, 500)
    fill(buf, 400, np.random.default_rng(0), reward=0.0)  # no reward: only the KL term shapes the policy
    obs = {k: torch.zeros(3, *s.shape) for k, s in STATE_SPACE.items()}
    actions, log_prob = torch.zeros(3, 2), torch.ones(3)
    expected = 1.0 * (log_prob - prior.log_prob(obs, actions))
    torch.testing.assert_close(regulariser(sac, obs, actions, log_prob, sac.temperature), expected)
    temperature = sac.temperature.clone()
    for _ in range(300):
        sac.train_step(buf)
    some_states = {k: np.random.default_rng(1).uniform(-1, 1, (64, *s.shape)).astype(np.float32)
                   for k, s in STATE_SPACE.items()}
    mean_action = sac.act(some_states, deterministic=True).mean(0)
    np.testing.assert_allclose(mean_action, [0.6, -0.3], atol=0.12)
    assert torch.equal(sac.temperature, temperature)  # alpha is not tuned when the KL term replaces it


def test_kl_prior_of_its_own_is_fitted_on_the_demo_buffer_and_checkpointed():
    rng = np.random.default_rng(0)
    config = SACConfig(hidden=(32, 32), batch_size=32, variants={"kl_coef": 1.0, "bc_prior_updates": 300})
    online, demo = ReplayBuffer(STATE_SPACE, ACT_SPACE, 500), ReplayBuffer(STATE_SPACE, ACT_SPACE, 500)
    fill(online, 200, rng, reward=0.0)
    sac = SAC(STATE_SPACE, ACT_SPACE, config)
    with pytest.raises(HilrlError, match="demo buffer, which is empty"):
        sac.train_step(online, demo)
    # The demonstrator's action follows the state: a = (ee_pos[0], -gripper) * 0.8
    obs = {k: rng.uniform(-1, 1, (300, *s.shape)).astype(np.float32) for k, s in STATE_SPACE.items()}
    expert = np.stack([obs["ee_pos"][:, 0], -obs["gripper"][:, 0]], axis=1) * 0.8
    demo.extend(obs, expert, np.zeros(300, np.float32), obs, np.zeros(300, bool), np.zeros(300, bool))
    sac.train_step(online, demo)
    assert sac.bc_prior is not None and sac.bc_prior.is_fitted

    tensors = {k: torch.as_tensor(v[:100]) for k, v in obs.items()}
    at_demo = sac.bc_prior.log_prob(tensors, torch.as_tensor(expert[:100]))
    elsewhere = sac.bc_prior.log_prob(tensors, torch.as_tensor(-expert[:100]))
    assert torch.isfinite(at_demo).all() and (at_demo - elsewhere).mean() > 3.0

    restored = SAC(STATE_SPACE, ACT_SPACE, config)
    with pytest.raises(HilrlError, match="not fitted"):
        restored.train_on_batch(batch_to_torch(mixed_sample(online, demo, 32, rng, 0.5, 1), torch.device("cpu")))
    restored.load_state_dict(sac.state_dict())
    torch.testing.assert_close(restored.bc_prior.log_prob(tensors, torch.as_tensor(expert[:100])), at_demo)
    restored.train_step(online, demo)  # no refit: the prior came with the checkpoint
    torch.testing.assert_close(restored.bc_prior.log_prob(tensors, torch.as_tensor(expert[:100])), at_demo)


def test_bc_proposal_acts_and_bootstraps_with_whichever_action_the_critic_values_more():
    rng = np.random.default_rng(0)
    config = SACConfig(hidden=(32, 32), batch_size=32, variants={"bc_proposal": True, "bc_prior_updates": 300},
                       init_temperature=0.01)
    online, demo = ReplayBuffer(STATE_SPACE, ACT_SPACE, 500), ReplayBuffer(STATE_SPACE, ACT_SPACE, 500)
    fill(online, 200, rng)
    obs = {k: rng.uniform(-1, 1, (300, *s.shape)).astype(np.float32) for k, s in STATE_SPACE.items()}
    expert = np.stack([obs["ee_pos"][:, 0], -obs["gripper"][:, 0]], axis=1) * 0.8
    demo.extend(obs, expert, np.zeros(300, np.float32), obs, np.zeros(300, bool), np.zeros(300, bool))
    sac = SAC(STATE_SPACE, ACT_SPACE, config)
    assert sac.bc_policy is None  # the prior proposes actions; it does not regularise (kl_coef is 0)
    sac.train_step(online, demo)
    tensors = {k: torch.as_tensor(v[:100]) for k, v in obs.items()}
    proposal = sac.bc_prior.mean_action(tensors)
    assert (proposal - torch.as_tensor(expert[:100])).abs().mean() < 0.1

    # Acting: per row, the actor's action or the proposal, whichever the ensemble's mean Q ranks higher.
    acted = torch.as_tensor(sac.act({k: v[:100] for k, v in obs.items()}, deterministic=True))
    with torch.no_grad():
        features = sac.encoder(tensors)
        own = sac.actor.deterministic(features)
        prefer = sac.critic["q"](features, proposal).mean(0) > sac.critic["q"](features, own).mean(0)
    assert 0 < int(prefer.sum()) < 100  # both kinds of rows occur, so the check below can fail either way
    torch.testing.assert_close(acted, torch.where(prefer.unsqueeze(-1), proposal, own))

    # Bootstrapping: the target takes the larger of the actor's (entropy-regularised) and the proposal's value.
    rewards, mask, members = torch.zeros(100), torch.ones(100), torch.tensor([0, 1])
    next_actions, next_reg = sac.next_actions(tensors, torch.randn(100, 2), None, sac.temperature)
    target = sac.critic_target(rewards, mask, tensors, next_actions, next_reg, members)
    with torch.no_grad():
        target_features = sac.target["encoder"](tensors)
        of_actor = sac.target["q"](target_features, next_actions).min(0).values - next_reg
        of_proposal = sac.target["q"](target_features, proposal).min(0).values
    torch.testing.assert_close(target, config.gamma * torch.maximum(of_actor, of_proposal))
    assert (of_proposal > of_actor).any() and (of_actor > of_proposal).any()


def test_observation_normaliser_is_fitted_once_from_both_buffers_and_saved(tmp_path):
    rng = np.random.default_rng(0)
    online, demo = ReplayBuffer(STATE_SPACE, ACT_SPACE, 200), ReplayBuffer(STATE_SPACE, ACT_SPACE, 200)
    fill(online, 60, rng)
    fill(demo, 40, rng, source=1)
    online.obs["ee_pos"][:60] = online.obs["ee_pos"][:60] * 0.1 + 0.5  # small spread around 0.5, like positions
    demo.obs["ee_pos"][:40] = demo.obs["ee_pos"][:40] * 0.1 + 0.5
    online.obs["gripper"][:60] = 0.3  # constant key: its std is floored, not zero
    demo.obs["gripper"][:40] = 0.3
    sac = SAC(STATE_SPACE, ACT_SPACE, SACConfig(normalisation={"enabled": True, "min_std": 0.05}, **SMALL))
    raw = {"ee_pos": torch.tensor([[0.5, 0.6, 0.4]]), "gripper": torch.tensor([[0.3]])}
    torch.testing.assert_close(sac.encoder(raw), torch.cat([raw["ee_pos"], raw["gripper"]], -1))  # identity before
    sac.train_step(online, demo)
    assert sac.encoder.is_normalizer_fitted and sac.target["encoder"].is_normalizer_fitted
    states = np.concatenate([np.concatenate([b.obs["ee_pos"][: len(b)], b.obs["gripper"][: len(b)]], 1)
                             for b in (online, demo)])
    features = sac.encoder({"ee_pos": torch.as_tensor(states[:, :3]), "gripper": torch.as_tensor(states[:, 3:])})
    np.testing.assert_allclose(features[:, :3].mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(features[:, :3].std(0, unbiased=False).numpy(), 1.0, atol=1e-4)
    np.testing.assert_allclose(features[:, 3].numpy(), 0.0, atol=1e-5)
    far = sac.encoder({"ee_pos": torch.tensor([[50.0, 0.5, 0.5]]), "gripper": torch.tensor([[0.3]])})
    assert far[0, 0] == sac.config.normalisation.clip
    # fitted once: later samples from elsewhere do not move the statistics
    offset = sac.encoder.state_offset.clone()
    fill(online, 100, rng)
    sac.train_step(online, demo)
    assert torch.equal(sac.encoder.state_offset, offset)
    torch.testing.assert_close(sac.target["encoder"].state_scale, sac.encoder.state_scale)
    sac.save(tmp_path / "sac.pt")
    restored = SAC.load(tmp_path / "sac.pt", STATE_SPACE, ACT_SPACE)
    assert torch.equal(restored.encoder.state_offset, offset) and restored.encoder.is_normalizer_fitted
    off = SAC(STATE_SPACE, ACT_SPACE, SACConfig(**SMALL))
    off.train_step(online, demo)
    assert not off.encoder.is_normalizer_fitted
    with pytest.raises(HilrlError, match="empty"):
        empty = ReplayBuffer(STATE_SPACE, ACT_SPACE, 5)
        SAC(STATE_SPACE, ACT_SPACE, SACConfig(normalisation={"enabled": True}, **SMALL)).fit_normalizer([empty])


def test_bc_term_pulls_the_policy_to_demo_actions_on_demo_rows_only():
    """Same reward for every action: only the BC term can favour the demo action, and the policy copies it.

    The reward is not zero because the BC weight scales with mean|Q| (TD3+BC's normalisation).
    """
    rng = np.random.default_rng(0)
    online, demo = ReplayBuffer(STATE_SPACE, ACT_SPACE, 500), ReplayBuffer(STATE_SPACE, ACT_SPACE, 500)
    fill(online, 300, rng, reward=1.0)
    fill(demo, 300, rng, reward=1.0, source=1)
    demo.actions[:300] = (0.7, -0.5)
    sac = SAC(STATE_SPACE, ACT_SPACE, SACConfig(variants={"bc_coef": 1.0}, hidden=(32, 32), batch_size=32, utd=2,
                                                gamma=0.5, init_temperature=0.01, learn_temperature=False))
    seen = batches_seen(sac)
    sac.train_step(online, demo)
    np.testing.assert_array_equal(seen[0]["demo_mask"], seen[0]["source"].astype(np.float32))
    assert seen[0]["demo_mask"].sum() == 32  # half of each of the two slices
    for _ in range(300):
        metrics = sac.train_step(online, demo)
    states = {k: rng.uniform(-1, 1, (64, *s.shape)).astype(np.float32) for k, s in STATE_SPACE.items()}
    np.testing.assert_allclose(sac.act(states, deterministic=True).mean(0), [0.7, -0.5], atol=0.1)
    assert float(metrics["bc_loss"]) < 0.05
    plain = SAC(STATE_SPACE, ACT_SPACE, SACConfig(hidden=(32, 32), batch_size=32, utd=2))
    assert float(plain.train_step(online, demo)["bc_loss"]) == 0.0
    with pytest.raises(HilrlError, match="bc_coef"):
        SACConfig(variants={"bc_coef": -1.0})


def test_bad_configuration_and_spaces_are_reported():
    with pytest.raises(HilrlError, match="num_min_critics"):
        SACConfig(num_critics=2, num_min_critics=3)
    with pytest.raises(HilrlError, match="RescaleAction"):
        SAC(STATE_SPACE, gym.spaces.Box(-2, 2, (2,), np.float32))
    with pytest.raises(HilrlError, match="not in the observation space"):
        SAC(STATE_SPACE, ACT_SPACE, SACConfig(obs_keys=("wrist",)))
    with pytest.raises(HilrlError, match="lacks keys"):
        SAC(STATE_SPACE, ACT_SPACE).act({"ee_pos": np.zeros(3, np.float32)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("with_images", [False, True])
def test_cuda_graph_update_matches_eager(with_images):
    """From the same state, a replayed CUDA-graph update equals the eager update on the same batch and noise."""
    space = IMAGE_SPACE if with_images else STATE_SPACE
    config = SACConfig(num_critics=10, utd=3, batch_size=16, hidden=(64, 64),
                       images={"channels": (8, 8), "strides": (2, 1), "latent_dim": 8})
    graphed = dataclasses.replace(config, execution=SACExecution(cuda_graph=True))
    graph = SAC(space, ACT_SPACE, graphed, device="cuda", seed=1)
    buf = ReplayBuffer(space, ACT_SPACE, 200)
    fill(buf, 200, np.random.default_rng(0))
    rng = np.random.default_rng(1)

    def draw():
        return batch_to_torch(buf.sample(48, rng), "cuda")

    for _ in range(5):  # three eager warm-ups, capture, one replay
        graph.train_on_batch(draw())
    assert graph.graphed is not None and graph.graphed.graph is not None
    eager = SAC(space, ACT_SPACE, config, device="cuda", seed=7)
    eager.load_state_dict(graph.state_dict())
    for _ in range(3):
        batch, noise = draw(), eager.draw_noise(16)
        m1 = eager.train_on_batch(batch, noise)
        m2 = graph.train_on_batch(batch, noise)
        for key in m1:
            torch.testing.assert_close(m1[key], m2[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(eager.critic.parameters(), graph.critic.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_policy_weights_carry_everything_acting_needs_including_the_bc_proposals():
    """An actor process acts from ``policy_weights`` only: with IBRL's proposals that includes the BC prior and
    the critic that picks between its action and the actor's."""
    rng = np.random.default_rng(0)
    online, demo = ReplayBuffer(STATE_SPACE, ACT_SPACE, 300), ReplayBuffer(STATE_SPACE, ACT_SPACE, 300)
    fill(online, 200, rng)
    fill(demo, 200, rng, source=1)
    config = SACConfig(variants={"bc_proposal": True, "bc_prior_updates": 50}, normalisation={"enabled": True},
                       **SMALL)
    learner = SAC(STATE_SPACE, ACT_SPACE, config, seed=0)
    for _ in range(3):
        learner.train_step(online, demo)  # fits the normaliser and the prior, then trains
    actor = SAC(STATE_SPACE, ACT_SPACE, config, seed=7)  # another process: its own random initialisation
    states = {k: rng.uniform(-1, 1, (64, *s.shape)).astype(np.float32) for k, s in STATE_SPACE.items()}
    assert not np.allclose(actor.act(states, deterministic=True), learner.act(states, deterministic=True))
    actor.load_policy_weights(learner.policy_weights())
    np.testing.assert_array_equal(actor.act(states, deterministic=True), learner.act(states, deterministic=True))
    assert actor.bc_prior_ready and any(k.startswith("bc_prior.") for k in learner.policy_weights())
    with pytest.raises(HilrlError, match="same config"):
        SAC(STATE_SPACE, ACT_SPACE, SACConfig(**SMALL)).load_policy_weights(learner.policy_weights())


def test_xavier_init_and_actor_layer_norm_build_serls_networks():
    """``init="xavier"``: every actor and critic-member weight within its xavier-uniform bound
    sqrt(6 / (fan_in + fan_out)), biases zero (RLPD, SERL); ``actor_layer_norm`` adds one LayerNorm per hidden layer."""
    sac = SAC(STATE_SPACE, ACT_SPACE, SACConfig(init="xavier", actor_layer_norm=True, num_critics=3, **SMALL), seed=0)
    linears = [m for m in sac.actor.modules() if isinstance(m, nn.Linear)]
    for layer in linears:
        bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.8 * bound
        assert torch.count_nonzero(layer.bias) == 0
    ensemble = sac.critic["q"]
    for layer in [*ensemble.linears, ensemble.head]:
        bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
        assert layer.weight.abs().amax(dim=(1, 2)).le(bound).all() and torch.count_nonzero(layer.bias) == 0
        assert not torch.equal(layer.weight[0], layer.weight[1])  # members drawn apart
    assert sum(isinstance(m, nn.LayerNorm) for m in sac.actor.modules()) == len(SMALL["hidden"])
    default = SAC(STATE_SPACE, ACT_SPACE, SACConfig(num_critics=3, **SMALL), seed=0)
    assert not any(isinstance(m, nn.LayerNorm) for m in default.actor.modules())
    assert torch.count_nonzero(default.critic["q"].head.bias) > 0  # PyTorch's default init keeps its biases
    with pytest.raises(HilrlError, match="init must be torch or xavier"):
        SACConfig(init="orthogonal")


# ---- the config in sections ----------------------------------------------------------------------

def test_flat_keys_of_the_earlier_layout_are_refused_with_their_new_place_and_sections_validate_like_algo():
    from hilrl.config import ConfigError, validate_config

    base = {"env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 2}}
    with pytest.raises(ConfigError, match="algo.bc_coef moved: write algo.variants.bc_coef; "
                                          "algo.normalize_obs moved: write algo.normalisation.enabled"):
        validate_config({**base, "algo": {"name": "sac", "bc_coef": 0.4, "normalize_obs": True}})
    with pytest.raises(ConfigError, match="unknown key 'algo.variants.bc_cof' \\(did you mean 'bc_coef'\\?\\); "
                                          "allowed here: bc_coef, bc_prior_min_std"):
        validate_config({**base, "algo": {"name": "sac", "variants": {"bc_cof": 0.4}}})
    config = validate_config({**base, "algo": {"name": "sac", "utd": 4, "variants": {"bc_coef": 0.4},
                                               "execution": {"cpu_fused_update": True}}})
    assert config.algo.utd == 4 and config.algo.variants.bc_coef == 0.4 and config.algo.execution.cpu_fused_update
    for old, new in SACConfig.MOVED_KEYS.items():  # every old key has a place now
        section, key = new.split(".")
        assert key in {f.name for f in dataclasses.fields(type(getattr(SACConfig(), section)))}, old


def test_configs_recorded_with_flat_keys_still_load():
    """Checkpoints and experiments written before the sections existed: their keys are moved, not refused."""
    from hilrl.config import ExperimentConfig, validate_config

    recorded = validate_config({"env": {"id": "hilrl/Reach-v0"}, "algo": {"name": "sac"}}).model_dump(mode="json")
    recorded["algo"] = {"name": "sac", "utd": 3, "bc_coef": 0.4, "normalize_obs": True, "image_channels": [8, 8]}
    algo = ExperimentConfig.model_validate(recorded).algo
    assert (algo.utd, algo.variants.bc_coef, algo.normalisation.enabled, algo.images.channels) == (3, 0.4, True, (8, 8))

    sac = SAC(STATE_SPACE, ACT_SPACE, SACConfig(variants={"bc_coef": 0.4}, **SMALL), seed=0)
    state = sac.state_dict()
    flat = {k: v for k, v in state["config"].items() if k not in ("variants", "normalisation", "images", "execution")}
    state["config"] = {**flat, "bc_coef": 0.4, "image_latent_dim": 50, "augment": True}
    assert SACConfig.from_dict(state["config"]) == sac.config
    SAC(STATE_SPACE, ACT_SPACE, SACConfig(variants={"bc_coef": 0.4}, **SMALL), seed=1).load_state_dict(state)
    state["config"]["image_latent_dim"] = 8
    with pytest.raises(HilrlError, match="images.latent_dim=8"):
        SAC(STATE_SPACE, ACT_SPACE, SACConfig(**SMALL)).load_state_dict(state)



def test_a_run_folder_recorded_with_flat_keys_is_still_the_same_run(tmp_path):
    """A run started before the sections existed resumes under the new spelling; another setting is still refused."""
    import yaml

    from hilrl.config import validate_config
    from hilrl.runtime.run import check_same_run

    config = validate_config({"env": {"id": "hilrl/Reach-v0"},
                              "algo": {"name": "sac", "utd": 3, "variants": {"bc_coef": 0.4}}})
    recorded = config.model_dump(mode="json")
    recorded["algo"] = {"name": "sac", "utd": 3, "bc_coef": 0.4}
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000100.pt").write_bytes(b"")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))
    check_same_run(config, tmp_path)
    other = validate_config({"env": {"id": "hilrl/Reach-v0"},
                             "algo": {"name": "sac", "utd": 3, "variants": {"bc_coef": 0.5}}})
    with pytest.raises(HilrlError, match=r"algo.variants.bc_coef: 0.4 -> 0.5"):
        check_same_run(other, tmp_path)

def test_every_rule_between_settings_is_the_configs():
    """The exclusions are checked when the config is built, before any learner or C++ build."""
    for bad in (dict(variants={"kl_coef": 0.1}), dict(max_grad_norm=1.0),
                dict(critic_layer_norm=False), dict(actor_layer_norm=True), dict(actor_batch="whole")):
        with pytest.raises(HilrlError, match="set execution.cpu_fused_update=False"):
            SACConfig(execution={"cpu_fused_update": True}, **bad)
    with pytest.raises(HilrlError, match="do not combine"):
        SACConfig(execution={"fused_layer_norm": True, "compile_critic": True})
    with pytest.raises(HilrlError, match="do not combine"):
        SACConfig(execution={"cuda_graph": True, "compile_critic": True})
    with pytest.raises(HilrlError, match="not cpu"):
        SACConfig(device="cpu", execution={"cuda_graph": True})
    with pytest.raises(HilrlError, match="unknown keys \\['bc_cof'\\]"):
        SACConfig(variants={"bc_cof": 1.0})


def test_the_cpp_sources_ship_with_the_package():
    import tomllib
    from pathlib import Path

    from hilrl.policies.sac import fast

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["package-data"]["hilrl.policies.sac"] == ["csrc/*.cpp", "csrc/*.h"]

    assert {p.name for p in fast.CSRC.iterdir()} >= {"ln_relu_rows.h", "layer_norm.cpp", "sac_update.cpp"}
    for source in ("layer_norm.cpp", "sac_update.cpp"):  # the row kernels are written once, included by both
        text = (fast.CSRC / source).read_text()
        assert '#include "ln_relu_rows.h"' in text and "inline void ln_relu_row" not in text
