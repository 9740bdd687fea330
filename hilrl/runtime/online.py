"""Online RL with human signals: the actor loop that feeds the SAC/RLPD learner.

One loop, read top to bottom: act (or let the interventionist act), store the
transition with its executed action, update the learner, and at episode ends
reset. How interventions are learned from follows ``intervention.learn_from``
(ALGORITHMS.md, "Interventions" and "RLIF"):

* ``hil_serl``: the env reward is kept; intervention steps go to the online
  buffer and are also copied to the demo buffer.
* ``rlif``: the env reward is discarded; the agent transition immediately before
  an intervention begins gets -1, all others 0 (demos enter with 0). Every
  transition is stored, the terminal one included (the paper, not the official
  code's quirks). A transition is stored one step late, once we know whether the
  next step starts an intervention.

A stopped run resumes from its folder: learner, buffers, counters and RNG come back.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.config import ExperimentConfig
from hilrl.data.buffers import ReplayBuffer, shared_next_rows, slice_shared
from hilrl.data.episode import Episode
from hilrl.envs.make import make_env
from hilrl.feedback.experts import make_expert
from hilrl.feedback.intervention import InterventionWrapper
from hilrl.policies.registry import load_checkpoint, make_algorithm, save_checkpoint
from hilrl.runtime.evaluate import (
    BEST_CHECKPOINT,
    VALIDATION_SEED,
    EvalResult,
    evaluate_policy,
    final_evaluation,
    latest_checkpoint,
    policy_checkpoint,
    write_metrics,
)
from hilrl.runtime.interventions import make_interventionist
from hilrl.runtime.progress import console, make_progress


def fill_demo_buffer(buffer: ReplayBuffer, episodes: list[Episode], zero_rewards: bool) -> None:
    for ep in episodes:
        rewards = np.zeros(len(ep), np.float32) if zero_rewards else ep.rewards
        buffer.extend(ep.obs, ep.actions, rewards, ep.next_obs, ep.terminated, ep.truncated)


class TransitionStorage:
    """Where one actor's transitions go, by ``intervention.learn_from`` (ALGORITHMS.md); shared by the
    single-process loop and the distributed learner.

    * ``rlif=False`` (HIL-SERL): every transition goes to ``online``; intervened ones are also copied
      to ``demo`` with their env reward.
    * ``rlif=True``: the env reward is replaced by 0, and by -1 for the transition just before an
      intervention starts. A transition waits in :attr:`pending` until the next one tells whether an
      intervention starts there; an episode's last transition is stored when it arrives.

    One instance per stream of consecutive steps (one per actor): the one-step lag pairs a
    transition with the step that follows it in the same stream.
    """

    def __init__(self, online: ReplayBuffer, demo: ReplayBuffer, rlif: bool) -> None:
        self.online, self.demo, self.rlif = online, demo, rlif
        self.pending: dict[str, Any] | None = None

    def add(self, transition: dict[str, Any], intervention_start: bool, episode_start: bool = False) -> None:
        """Store ``transition`` (keys of :meth:`ReplayBuffer.add` plus ``intervened`` and ``policy_action``).

        ``intervention_start``: an intervention begins at this step. ``episode_start``: this step opens
        an episode, so a transition still pending belongs to an episode that was cut short (an actor
        restart): it is stored unlabelled.
        """
        if episode_start:
            self.flush()
        if self.rlif:
            if self.pending is not None:
                if intervention_start:
                    self.pending["reward"] = -1.0
                self.online.add(**self.pending)
            self.pending = {**transition, "reward": 0.0}
            if transition["terminated"] or transition["truncated"]:
                self.flush()
        else:
            self.online.add(**transition)
            if transition["intervened"]:
                self.demo.add(transition["obs"], transition["action"], transition["reward"], transition["next_obs"],
                              transition["terminated"], transition["truncated"])

    def extend(self, steps: dict[str, Any], intervention_start: np.ndarray, episode_start: np.ndarray) -> None:
        """Store ``n`` consecutive steps of this stream at once: exactly what ``n`` calls of :meth:`add` store.

        ``steps`` holds the keys of :meth:`add`'s ``transition``, each stacked along a first axis of
        length ``n`` (``obs`` is a map of such arrays), with ``next_obs`` in the buffers' shared form
        (``steps["own_next"]``, :mod:`hilrl.data.buffers`); ``intervention_start`` and
        ``episode_start`` are bool arrays of length ``n``.
        """
        n = len(steps["reward"])
        if n == 0:
            return
        obs, next_obs, own_next = steps["obs"], steps["next_obs"], steps["own_next"]
        ends = np.asarray(steps["terminated"], bool) | np.asarray(steps["truncated"], bool)
        columns = dict(obs=obs, actions=steps["action"], terminated=steps["terminated"], truncated=steps["truncated"],
                       intervened=steps["intervened"], policy_action=steps["policy_action"])
        if not self.rlif:
            self.online.extend(rewards=steps["reward"], next_obs=next_obs, own_next=own_next, **columns)
            mask = np.asarray(steps["intervened"], bool)
            if mask.any():
                self.demo.extend({k: v[mask] for k, v in obs.items()}, steps["action"][mask], steps["reward"][mask],
                                 shared_next_rows(obs, next_obs, own_next, np.flatnonzero(mask)),
                                 steps["terminated"][mask], steps["truncated"][mask])
            return
        if self.pending is not None:  # the step before this batch waits for its label: step 0 decides it
            if intervention_start[0] and not episode_start[0]:
                self.pending["reward"] = -1.0
            self.flush()
        # step i gets -1 when step i + 1 starts an intervention in the same episode (as add() labels it)
        rewards = np.zeros(n, np.float32)
        rewards[:-1][intervention_start[1:] & ~episode_start[1:] & ~ends[:-1]] = -1.0
        keep = n if ends[-1] else n - 1  # a last step that does not end its episode waits for the next batch
        if keep:
            kept_next, kept_own = slice_shared(obs, next_obs, own_next, slice(0, keep))
            self.online.extend(rewards=rewards[:keep], next_obs=kept_next, own_next=kept_own,
                               **_rows(columns, slice(0, keep)))
        if keep < n:
            last = _rows(columns, n - 1, copy=True)
            self.pending = dict(obs=last["obs"], action=last["actions"], reward=0.0,
                                next_obs={k: np.array(v[-1]) for k, v in next_obs.items()},  # the last step's own
                                terminated=bool(last["terminated"]), truncated=bool(last["truncated"]),
                                intervened=bool(last["intervened"]), policy_action=last["policy_action"])

    def flush(self) -> None:
        """Store the pending RLIF transition as it is (no next step will label it)."""
        if self.pending is not None:
            self.online.add(**self.pending)
            self.pending = None


def _rows(columns: dict[str, Any], rows: slice | int, copy: bool = False) -> dict[str, Any]:
    """``columns`` (arrays and maps of arrays) cut to ``rows``; ``copy`` detaches them from received frames."""
    def cut(value: np.ndarray) -> np.ndarray:
        return np.array(value[rows]) if copy else value[rows]
    return {k: ({kk: cut(vv) for kk, vv in v.items()} if isinstance(v, dict) else cut(v)) for k, v in columns.items()}


class _Counters(dict):
    """Loop counters saved with every checkpoint."""

    @classmethod
    def fresh(cls) -> _Counters:
        return cls(env_steps=0, episodes=0, successes=0, interventions=0, intervened_steps=0, updates=0)


def train_rl(config: ExperimentConfig, out: str | os.PathLike, demo_episodes: list[Episode],
             show_progress: bool = True) -> EvalResult:
    """Run ``train.steps`` env steps of online RL; resumes when ``out`` holds a checkpoint."""
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    ckpt_dir = out / "checkpoints"
    tc, ic = config.train, config.intervention
    experiment = config.model_dump(mode="json")
    rlif = ic.source != "none" and ic.learn_from == "rlif"

    env = make_env(config.env)
    obs_space, act_space = env.observation_space, env.action_space
    source = None
    if ic.source != "none":
        source = make_interventionist(ic, make_expert(env, noise=ic.expert_noise, seed=tc.seed + 1), seed=tc.seed + 2)
        env = InterventionWrapper(env, source)
    agent = make_algorithm(config.algo, obs_space, act_space, seed=tc.seed)
    extras = {"intervened": ((), bool), "policy_action": (act_space.shape, np.float32)}
    online = ReplayBuffer(obs_space, act_space, tc.buffer_capacity, extras=extras)
    demo = ReplayBuffer(obs_space, act_space, tc.buffer_capacity)
    rng = np.random.default_rng(tc.seed)
    counters = _Counters.fresh()

    if ckpt_dir.exists() and list(ckpt_dir.glob("step_*.pt")):
        path = latest_checkpoint(out)
        state = load_checkpoint(path)
        agent.load_state_dict(state["state"])
        counters = _Counters(state["counters"])
        rng.bit_generator.state = state["rng"]
        online.load(ckpt_dir / "replay_online.npz")
        demo.load(ckpt_dir / "replay_demo.npz")
        console.print(f"resuming {out} from {path.name}: {counters['env_steps']} env steps, "
                      f"{len(online)} online + {len(demo)} demo transitions")
    else:
        fill_demo_buffer(demo, demo_episodes, zero_rewards=rlif)
    best_path = ckpt_dir / BEST_CHECKPOINT
    best = load_checkpoint(best_path)["best"] if tc.keep_best and best_path.is_file() else None

    def checkpoint() -> None:
        # buffers first: a checkpoint file on disk always has buffers at least as new as itself
        online.save(ckpt_dir / "replay_online.npz")
        demo.save(ckpt_dir / "replay_demo.npz")
        save_checkpoint(ckpt_dir / f"step_{counters['env_steps']}.pt", agent, experiment,
                        counters=dict(counters), rng=rng.bit_generator.state)

    writer = SummaryWriter(str(out / "tb"))
    recent_success: deque[bool] = deque(maxlen=20)
    recent_intervened: deque[bool] = deque(maxlen=500)
    obs, _ = env.reset(seed=tc.seed * 1_000_003 + counters["episodes"])
    storage = TransitionStorage(online, demo, rlif)
    started, start_updates = time.perf_counter(), counters["updates"]
    metrics: dict[str, Any] = {}
    with make_progress(not show_progress) as bar:
        task = bar.add_task(f"{config.algo.name} {config.env.id}", total=tc.steps, completed=counters["env_steps"],
                            stats="")
        while counters["env_steps"] < tc.steps:
            if counters["env_steps"] < tc.random_steps:
                action = rng.uniform(-1.0, 1.0, act_space.shape).astype(np.float32)
            else:
                action = agent.act(obs)
            next_obs, reward, terminated, truncated, info = env.step(action)
            executed = info.get("executed_action", action)
            intervened = bool(info.get("intervened", False))
            transition = dict(obs=obs, action=executed, reward=float(reward), next_obs=next_obs,
                              terminated=terminated, truncated=truncated, intervened=intervened,
                              policy_action=np.asarray(action, np.float32))
            storage.add(transition, intervention_start=bool(info.get("intervention_start", False)))
            counters["env_steps"] += 1
            counters["interventions"] += int(bool(info.get("intervention_start", False)))
            counters["intervened_steps"] += int(intervened)
            recent_intervened.append(intervened)

            if counters["env_steps"] >= tc.learning_starts and len(online) > 0:
                metrics = agent.train_step(online, demo)
                counters["updates"] += 1

            if terminated or truncated:
                counters["episodes"] += 1
                counters["successes"] += int(bool(info.get("is_success", False)))
                recent_success.append(bool(info.get("is_success", False)))
                obs, _ = env.reset(seed=tc.seed * 1_000_003 + counters["episodes"])
            else:
                obs = next_obs

            step = counters["env_steps"]
            if step % tc.log_every == 0 or step == tc.steps:
                rate = (counters["updates"] - start_updates) / max(time.perf_counter() - started, 1e-9)
                success = float(np.mean(recent_success)) if recent_success else 0.0
                intervention_rate = float(np.mean(recent_intervened)) if recent_intervened else 0.0
                for key, value in metrics.items():
                    writer.add_scalar(f"train/{key}", float(value), step)
                writer.add_scalar("rollout/success_rate", success, step)
                writer.add_scalar("rollout/intervention_rate", intervention_rate, step)
                writer.add_scalar("rollout/interventions", counters["interventions"], step)
                bar.update(task, completed=step, stats=f"success {success:.0%}  intervened {intervention_rate:.0%}  "
                                                       f"{rate:.0f} updates/s")
            # with keep_best the last iterate competes too, so it is evaluated like the others
            if tc.eval_every and step % tc.eval_every == 0 and (step < tc.steps or tc.keep_best):
                result = evaluate_policy(config.env, lambda o: agent.act(o, deterministic=True), tc.eval_episodes,
                                         seed=VALIDATION_SEED, show_progress=False)
                writer.add_scalar("eval/success_rate", result.success_rate, step)
                writer.add_scalar("eval/mean_return", result.mean_return, step)
                if tc.keep_best and (best is None or result.success_rate > best["success_rate"]):
                    best = {"step": step, "success_rate": result.success_rate, "mean_return": result.mean_return}
                    save_checkpoint(best_path, agent, experiment, counters=dict(counters), best=best)
            if step == tc.steps:
                storage.flush()  # the run ends here: no next step can label it
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                checkpoint()
    env.close()
    train_seconds = time.perf_counter() - started

    if best is not None:  # the run's policy is the best evaluated one, judged here on unseen seeds
        agent.load_state_dict(load_checkpoint(best_path)["state"])
    result = final_evaluation(config, lambda o: agent.act(o, deterministic=True), out, policy_checkpoint(out),
                              show_progress)
    prefix = "eval/best_policy_" if best is not None else "eval/"
    writer.add_scalar(f"{prefix}success_rate", result.success_rate, tc.steps)
    writer.add_scalar(f"{prefix}mean_return", result.mean_return, tc.steps)
    writer.close()
    write_metrics(out, result, counters, algo=config.algo.name, env=config.env.id,
                  demo_episodes=len(demo_episodes), train_seconds_this_session=round(train_seconds, 2),
                  intervention_source=ic.source, learn_from=ic.learn_from if ic.source != "none" else None,
                  **({"best_validation": best} if best is not None else {}))
    return result
