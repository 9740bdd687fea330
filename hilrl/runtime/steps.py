"""The step source and the storage rule: how every loop turns env steps into stored transitions.

:func:`make_training_env` builds what a loop steps: the task (local or a remote arm), and when
``intervention.source`` is set, the :class:`~hilrl.feedback.interventions.InterventionWrapper` with
the simulated person or the teleop device (door 1); a person in simulation sees the arm in a
MuJoCo viewer when there is a display.

:class:`StepSource` is one stream of steps (the local loop is stream 0, actor ``k`` stream
``k + 1``; seeds from :mod:`hilrl.runtime.seeds`): act (uniformly at random for the first
``train.random_steps``), step, mark (the executed action, ``intervened``, the policy's own action,
the task's reward terms), count, reset at episode ends. While a person can take over, the training
env paces its steps at the task's ``control_hz`` (:class:`~hilrl.envs.wrappers.RealTime`: a person
needs real time; the simulator runs faster), whichever loop steps it (SB3's too).

:class:`TransitionStorage` puts one stream's steps into the replay buffers with the marks the
reward sources read (:mod:`hilrl.feedback.rewards`): ``intervened``, ``next_intervened`` (filled in
when the episode's next step arrives), episode id and step index; with HIL-SERL's storage
(``copy_interventions``) intervention steps also go to the demo buffer (Luo et al. 2024,
rail-berkeley/hil-serl; SERL keeps them in the online buffer only). No reward is computed here.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from hilrl.data.buffers import Replay, shared_next_rows, slice_shared
from hilrl.data.episode import Episode
from hilrl.envs.make import make_env
from hilrl.envs.wrappers import FrameFeatures, RealTime, encode_frames, feature_observation_space
from hilrl.feedback.interventions import (
    INTERVENTIONISTS,
    InterventionContext,
    InterventionWrapper,
    make_interventionist,
)
from hilrl.runtime.reference import reference_q
from hilrl.runtime.seeds import Seeds

# own_successes: successful episodes in which nobody took over (the policy's own; the rest of successes were assisted)
COUNTERS = ("env_steps", "episodes", "successes", "own_successes", "interventions", "intervened_steps", "updates")


def fresh_counters(*extra: str) -> dict[str, int]:
    """The counters every loop keeps (and checkpoints), plus ``extra`` ones, all zero."""
    return dict.fromkeys((*COUNTERS, *extra), 0)


def make_training_env(config: Any, seeds: Seeds, device: Any = None) -> gym.Env:
    """The env a training loop steps: the task, wrapped with the configured interventionist (if any).

    The interventionist is the one ``intervention.source`` names in
    :data:`~hilrl.feedback.interventions.INTERVENTIONISTS`, built with an
    :class:`~hilrl.feedback.interventions.InterventionContext`: this stream's expert and gate seeds, ``device``
    (an open :class:`~hilrl.feedback.teleop.TeleopDevice` for ``intervention.source: device``, which the caller
    owns; ``None`` opens ``intervention.device``, closed with the env) and a loader of ``intervention.q_ref``
    (the reference critic :func:`hilrl.runtime.train.train` built before the run).
    """
    intervention = config.intervention
    entry = INTERVENTIONISTS.entry(intervention.source) if intervention.source != "none" else None
    person = entry is not None and entry["device"]
    # a person in simulation needs to see the arm: a MuJoCo viewer, when there is a display
    viewer = person and not config.env.remote and bool(os.environ.get("DISPLAY"))
    env = make_env(config.env, **({"render_mode": "human"} if viewer else {}))
    if entry is None:
        return env
    q_ref = intervention.q_ref
    context = InterventionContext(
        env=env, expert_seed=seeds.expert, gate_seed=seeds.gate, device=device,
        reference_q=(lambda: reference_q(q_ref, env.observation_space)) if q_ref else None)
    try:
        source = make_interventionist(intervention, context)
    except BaseException:
        env.close()
        raise
    env = InterventionWrapper(env, source)
    return RealTime(env, config.env.control_hz) if person else env


def _frame_encoder(algo: Any) -> tuple[Any, tuple[str, ...]] | None:
    """``(frozen encoder, image keys)`` of an algorithm that learns from cached frame features (its
    ``frame_encoder``, e.g. SAC with ``algo.images.encoder: efficientnet_lite0``), else ``None``."""
    frame_encoder = getattr(algo, "frame_encoder", None)
    return None if frame_encoder is None else (frame_encoder, tuple(algo.encoder.image_keys))


def cache_frame_features(env: gym.Env, algo: Any) -> gym.Env:
    """``env`` with its image keys replaced by their feature maps when ``algo`` learns from a frozen pretrained
    encoder (:func:`_frame_encoder`), else ``env``.

    The one place a training loop's frames are encoded: once per observation, when the env returns it
    (:class:`~hilrl.envs.wrappers.FrameFeatures`), so the policy acts on the features and the replay buffers
    (built on :func:`stored_observation_space`) store them; updates never run the backbone. An evaluation env is
    not wrapped: acting on raw pixels runs the backbone in the policy
    (:class:`~hilrl.policies.encoders.ObservationEncoder`).
    """
    found = _frame_encoder(algo)
    return env if found is None else FrameFeatures(env, *found)


def stored_observation_space(space: gym.spaces.Dict, algo: Any) -> gym.spaces.Dict:
    """What the replay buffers store of observations of ``space``: the :func:`cache_frame_features` env's space."""
    found = _frame_encoder(algo)
    return space if found is None else feature_observation_space(space, *found)


def encode_episodes(episodes: list[Episode], algo: Any) -> list[Episode]:
    """Recorded episodes (demos keep their pixels) as the buffers of a :func:`cache_frame_features` loop store them:
    image keys as feature maps, derived here. Each frame is encoded once: ``next_obs[t]`` reuses the features of
    ``obs[t + 1]`` when it is that frame (every step but an episode's last). Other algorithms: the episodes as they
    are."""
    found = _frame_encoder(algo)
    if found is None:
        return list(episodes)
    encoder, keys = found
    out = []
    for episode in episodes:
        if all(np.array_equal(episode.next_obs[k][:-1], episode.obs[k][1:]) for k in keys):
            frames = {k: np.concatenate([episode.obs[k], episode.next_obs[k][-1:]]) for k in keys}
            features = encode_frames(encoder, frames, keys)
            obs, next_obs = {k: v[:-1] for k, v in features.items()}, {k: v[1:] for k, v in features.items()}
        else:
            obs = encode_frames(encoder, {k: episode.obs[k] for k in keys}, keys)
            next_obs = encode_frames(encoder, {k: episode.next_obs[k] for k in keys}, keys)
        out.append(dataclasses.replace(episode, obs={**episode.obs, **obs}, next_obs={**episode.next_obs, **next_obs}))
    return out


class StepSource:
    """One stream of env steps: act, step, mark, count (module docstring).

    Args:
        env: the env to step (from :func:`make_training_env`).
        act: the policy, ``obs -> action``.
        seeds: this stream's seeds; episode ``i`` of the stream resets with ``seeds.episode(i)``.
        counters: the loop's counters (:func:`fresh_counters`), updated in place; ``episodes`` numbers
            the next reset, so a resumed run continues its seeds.
        random_steps: take uniform random actions while ``counters["env_steps"]`` is below this.
        sim_state: add ``sim_state``, the MuJoCo state before the step (``ArmEnv.get_state``), to each
            transition, for sources that render segments later; ignored for envs without it (a real arm).
    """

    def __init__(self, env: gym.Env, act: Callable[[Mapping[str, np.ndarray]], np.ndarray], seeds: Seeds,
                 counters: dict[str, int], random_steps: int = 0, sim_state: bool = False) -> None:
        self.env, self.act, self.seeds, self.counters = env, act, seeds, counters
        self.random_steps = random_steps
        self.get_state = getattr(env.unwrapped, "get_state", None) if sim_state else None
        self.render = getattr(env, "render_mode", None) == "human"
        self.rng = seeds.loop_rng()
        self.recent_success: deque[bool] = deque(maxlen=20)
        self.recent_own: deque[bool] = deque(maxlen=20)  # ... of those episodes: a success with no takeover
        self.recent_intervened: deque[bool] = deque(maxlen=500)
        self.watched = False  # someone can take over (the env marks steps with info["intervened"])
        self.episode_assisted = False  # someone took over in the episode in progress
        self.obs: dict[str, np.ndarray] | None = None
        self.episode_start = True

    def reset(self) -> dict[str, np.ndarray]:
        self.obs, _ = self.env.reset(seed=self.seeds.episode(self.counters["episodes"]))
        self.episode_start = True
        if self.render:
            self.env.render()
        return self.obs

    def step(self) -> dict[str, Any]:
        """Take one step; returns its transition (``obs``, executed ``action``, ``reward``, ``next_obs``,
        ``terminated``, ``truncated``, ``intervened``, ``intervention_start``, ``policy_action``,
        ``is_success``, ``episode_start``, and ``reward_terms`` when the task names its terms)."""
        obs = self.obs if self.obs is not None else self.reset()
        c = self.counters
        if c["env_steps"] < self.random_steps:
            action = self.rng.uniform(-1.0, 1.0, self.env.action_space.shape).astype(np.float32)
        else:
            action = np.asarray(self.act(obs), np.float32)
        state = self.get_state() if self.get_state is not None else None
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        if self.render:
            self.env.render()
        intervened = bool(info.get("intervened", False))
        self.watched = self.watched or "intervened" in info
        self.episode_assisted = self.episode_assisted or intervened
        transition = dict(obs=obs, action=np.asarray(info.get("executed_action", action), np.float32),
                          reward=float(reward), next_obs=next_obs, terminated=bool(terminated),
                          truncated=bool(truncated), intervened=intervened,
                          intervention_start=bool(info.get("intervention_start", False)), policy_action=action,
                          is_success=bool(info.get("is_success", False)), episode_start=self.episode_start)
        if state is not None:
            transition["sim_state"] = state
        if "reward_terms" in info:  # a task may update one dict in place: copy the values
            transition["reward_terms"] = {k: float(v) for k, v in info["reward_terms"].items()}
        c["env_steps"] += 1
        c["interventions"] += int(transition["intervention_start"])
        c["intervened_steps"] += int(intervened)
        self.recent_intervened.append(intervened)
        self.episode_start = False
        if terminated or truncated:
            c["episodes"] += 1
            own = transition["is_success"] and not self.episode_assisted
            c["successes"] += int(transition["is_success"])
            c["own_successes"] += int(own)
            self.recent_success.append(transition["is_success"])
            self.recent_own.append(own)
            self.episode_assisted = False
            self.reset()
        else:
            self.obs = next_obs
        return transition

    @property
    def success_rate(self) -> float:
        """Success of the last 20 finished episodes."""
        return float(np.mean(self.recent_success)) if self.recent_success else 0.0

    @property
    def own_success_rate(self) -> float:
        """The policy's own success: of the last 20 finished episodes, the share that succeeded with no takeover."""
        return float(np.mean(self.recent_own)) if self.recent_own else 0.0

    @property
    def assisted_success_rate(self) -> float:
        """Of the last 20 finished episodes, the share that succeeded after someone took over."""
        return self.success_rate - self.own_success_rate

    @property
    def intervention_rate(self) -> float:
        """Share of the last 500 steps a person (or a simulated one) was in control."""
        return float(np.mean(self.recent_intervened)) if self.recent_intervened else 0.0

    def stats(self) -> str:
        """The progress bar's rollout figures: with someone who can take over, the policy's own success apart
        from the assisted one (episodes finished after a takeover), beside the share of steps they drove."""
        if not self.watched:
            return f"success {self.success_rate:.0%}"
        return (f"own success {self.own_success_rate:.0%}  assisted {self.assisted_success_rate:.0%}  "
                f"intervened {self.intervention_rate:.0%}")

    def rollout_scalars(self) -> dict[str, float]:
        """The ``rollout/`` figures for TensorBoard (:meth:`stats`'s, and the interventions counted)."""
        return {"success_rate": self.success_rate, "own_success_rate": self.own_success_rate,
                "assisted_success_rate": self.assisted_success_rate,
                "intervention_rate": self.intervention_rate, "interventions": self.counters["interventions"]}


class TransitionStorage:
    """Where one stream's steps go in a :class:`~hilrl.data.buffers.Replay` (module docstring).

    Every step goes to ``replay.online`` with its marks; with ``copy_interventions`` (HIL-SERL) the
    intervened ones also go to ``replay.demo``. A step opens a new episode (a new id, step index 0)
    after the stream's last step ended one, or when ``episode_start`` says so (a stream cut short by
    an actor restart). ``next_intervened`` of a step is set when the episode's next step arrives
    intervened (:meth:`~hilrl.data.buffers.ReplayBuffer.mark_next_intervened` for a step stored by an
    earlier call). With ``copy_successes`` (``demos.add_successes``) a successful episode's own steps
    (those not copied as interventions) go to the demo buffer when it ends, as a new demo, cut
    ``keep_after_success`` steps after its first success like the recorded demos. One instance per
    stream of consecutive steps (one per actor).
    """

    def __init__(self, replay: Replay, copy_interventions: bool, copy_successes: bool = False,
                 keep_after_success: int | None = None) -> None:
        self.replay, self.copy_interventions = replay, copy_interventions
        self.copy_successes, self.keep_after_success = copy_successes, keep_after_success
        self.episode: int | None = None  # the id of the episode in progress (None: the next step opens one)
        self.step = 0  # the index its next step will have
        self.last_slot: int | None = None  # the online ring slot of its last stored step
        self.last_demo_slot: int | None = None  # ... and of its copy in the demo buffer, if it was copied
        self.episode_slots: list[int] = []  # copy_successes: online slots of the episode in progress...
        self.episode_success: list[bool] = []  # ... and whether each of its steps was a success

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of this stream (:meth:`load_state` restores it)."""
        return {"episode": self.episode, "step": self.step, "last_slot": self.last_slot,
                "last_demo_slot": self.last_demo_slot, "episode_slots": list(self.episode_slots),
                "episode_success": list(self.episode_success)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.episode, self.step, self.last_slot = state["episode"], int(state["step"]), state["last_slot"]
        self.last_demo_slot = state.get("last_demo_slot")
        self.episode_slots = [int(s) for s in state.get("episode_slots", [])]
        self.episode_success = [bool(s) for s in state.get("episode_success", [])]

    def add(self, transition: Mapping[str, Any], episode_start: bool | None = None) -> None:
        """Store one step (keys of :meth:`StepSource.step`; ``intervened`` and ``policy_action`` required);
        ``episode_start`` defaults to the transition's own."""
        if episode_start is None:
            episode_start = bool(transition.get("episode_start", False))
        steps = {key: ({k: np.asarray(v)[None] for k, v in value.items()} if isinstance(value, Mapping)
                       else np.asarray(value)[None]) for key, value in transition.items() if key != "next_obs"}
        steps["next_obs"] = {k: np.asarray(v)[None] for k, v in transition["next_obs"].items()}
        steps["own_next"] = np.ones(1, bool)
        self.extend(steps, np.array([episode_start]))

    def extend(self, steps: Mapping[str, Any], episode_start: np.ndarray) -> None:
        """Store ``n`` consecutive steps of this stream at once: exactly what ``n`` calls of :meth:`add` store.

        ``steps`` holds the keys of :meth:`add`'s ``transition``, each stacked along a first axis of
        length ``n`` (``obs`` is a map of such arrays), with ``next_obs`` in the buffers' shared form
        (``steps["own_next"]``, :mod:`hilrl.data.buffers`); ``episode_start`` is a bool array of length ``n``.
        """
        n = len(steps["reward"])
        if n == 0:
            return
        online, demo = self.replay.online, self.replay.demo
        ends = np.asarray(steps["terminated"], bool) | np.asarray(steps["truncated"], bool)
        intervened = np.asarray(steps["intervened"], bool)
        opens = np.asarray(episode_start, bool).copy()
        opens[0] |= self.episode is None
        opens[1:] |= ends[:-1]
        # episode ids and step indices: a new id at every opening step, counting up within an episode
        index = np.arange(n)
        first_id = online.new_episodes(int(opens.sum()))
        ordinal = np.cumsum(opens) - 1
        episode = np.where(ordinal >= 0, first_id + ordinal, -1 if self.episode is None else self.episode)
        last_open = np.maximum.accumulate(np.where(opens, index, -1))
        step = np.where(last_open >= 0, index - last_open, self.step + index).astype(np.int32)
        next_intervened = np.zeros(n, bool)
        next_intervened[:-1] = intervened[1:] & ~opens[1:]
        if not opens[0] and intervened[0]:  # the stream's previous step, stored by an earlier call
            for buffer, slot in ((online, self.last_slot), (demo, self.last_demo_slot)):
                if slot is not None:
                    buffer.mark_next_intervened(slot, int(episode[0]), int(step[0]) - 1)
        marks = dict(intervened=intervened, next_intervened=next_intervened, episode=episode.astype(np.int64),
                     step=step)
        terms = steps.get("reward_terms") or None
        slot = online.pos
        online.extend(steps["obs"], steps["action"], steps["reward"], steps["next_obs"], steps["terminated"],
                      steps["truncated"], own_next=steps["own_next"], reward_terms=terms,
                      policy_action=steps["policy_action"], **marks)
        self.last_demo_slot = None
        if self.copy_interventions and intervened.any():
            rows = np.flatnonzero(intervened)
            if rows[-1] == n - 1:
                self.last_demo_slot = (demo.pos + len(rows) - 1) % demo.capacity
            demo_terms = self._demo_terms({k: np.asarray(v)[rows] for k, v in (terms or {}).items()}, len(rows))
            demo.extend({k: v[rows] for k, v in steps["obs"].items()}, steps["action"][rows], steps["reward"][rows],
                        shared_next_rows(steps["obs"], steps["next_obs"], steps["own_next"], rows),
                        steps["terminated"][rows], steps["truncated"][rows], reward_terms=demo_terms,
                        **{k: v[rows] for k, v in marks.items() if k in demo.extras or not len(demo)})
        self.last_slot = (slot + n - 1) % online.capacity
        self.episode = None if ends[-1] else int(episode[-1])
        self.step = int(step[-1]) + 1
        if self.copy_successes:
            self._copy_successes(slot, opens, ends, intervened, np.asarray(steps.get("is_success", np.zeros(n, bool))))

    def _copy_successes(self, slot: int, opens: np.ndarray, ends: np.ndarray, intervened: np.ndarray,
                        success: np.ndarray) -> None:
        """Follow the episode in progress; when one ends in success, copy its own steps to the demo buffer."""
        online, demo = self.replay.online, self.replay.demo
        for i in range(len(opens)):
            if opens[i]:
                self.episode_slots, self.episode_success = [], []
            if not (self.copy_interventions and intervened[i]):  # (those are in the demo buffer already)
                self.episode_slots.append((slot + i) % online.capacity)
                self.episode_success.append(bool(success[i]))
            if ends[i]:
                if success[i] and self.episode_slots:
                    self._add_demo(online.gather(np.asarray(self.episode_slots)), np.asarray(self.episode_success))
                self.episode_slots, self.episode_success = [], []

    def _demo_terms(self, terms: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """The reward terms of ``n`` rows bound for the demo buffer: this stream's, or NaN where the demos
        hold other terms (e.g. sim demos beside a real arm's steps): unknown there."""
        demo = self.replay.demo
        if terms and (demo.reward_terms.keys() == terms.keys() or not len(demo)):
            return dict(terms)
        return {k: np.full(n, np.nan, np.float32) for k in demo.reward_terms}

    def _add_demo(self, batch: Mapping[str, Any], success: np.ndarray) -> None:
        """A successful episode's own steps (gathered from the online buffer) as a new demo, cut like the demos."""
        truncated = batch["truncated"].copy()
        truncated[-1] |= not batch["terminated"][-1]  # (its last own step may precede an intervened end)
        episode = Episode(obs=batch["obs"], next_obs=batch["next_obs"], actions=batch["actions"],
                          rewards=batch.get("env_rewards", batch["rewards"]), terminated=batch["terminated"],
                          truncated=truncated, extras={"is_success": success},
                          reward_terms=self._demo_terms(batch.get("reward_terms") or {}, len(success)))
        if self.keep_after_success is not None:
            episode = episode.cut_after_success(self.keep_after_success)
        self.replay.add_demos([episode])


def rows(columns: Mapping[str, Any], cut: slice) -> dict[str, Any]:
    """Transitions ``cut`` of stacked steps (arrays and maps of arrays), ``next_obs`` kept in the shared form."""
    out = {k: ({kk: vv[cut] for kk, vv in v.items()} if isinstance(v, Mapping) else v[cut])
           for k, v in columns.items() if k not in ("next_obs", "own_next")}
    out["next_obs"], out["own_next"] = slice_shared(columns["obs"], columns["next_obs"], columns["own_next"], cut)
    return out
