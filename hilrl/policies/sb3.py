"""Stable-Baselines3 off-policy algorithms behind hilrl's algorithm interface.

``algo: {name: sb3.sac}`` (or ``sb3.td3``; ``sb3.tqc`` and ``sb3.crossq`` with
sb3-contrib installed) trains SB3's own class, so people who know SB3 get its
networks, defaults and keywords, plus three things hilrl needs:

* **Observations**: our tasks return a ``Dict`` of state arrays. The agent keeps
  the config's ``obs_keys`` (every 1-D key when ``None``) and uses SB3's
  ``MultiInputPolicy``, whose ``CombinedExtractor`` flattens and concatenates
  them; CrossQ has no ``MultiInputPolicy``, so there the keys are concatenated
  into a ``Box`` for its ``MlpPolicy``. Image keys are refused (use ``algo: sac``
  for pixels).
* **Demos**: :class:`DemoMixedReplayBuffer` is a ``DictReplayBuffer`` holding a
  second buffer of demonstrations (:class:`DemoMixedFlatReplayBuffer` the same
  over ``ReplayBuffer``, for CrossQ); each batch draws ``demo_fraction`` of its
  samples from it (0.5: RLPD's symmetric sampling, ikostrikov/rlpd; HIL-SERL's 128 + 128,
  rail-berkeley/hil-serl).
* **Interventions**: SB3's ``OffPolicyAlgorithm._store_transition`` stores the
  action the policy proposed (SB3 issue #1813). :class:`ExecutedActionMixin`
  stores ``info["executed_action"]`` instead, rescaled to SB3's [-1, 1] buffer
  convention; with HIL-SERL learning the buffer also copies intervened steps to
  the demo part (HIL-SERL, rail-berkeley/hil-serl).

Truncation: SB3's ``DummyVecEnv`` reports ``done = terminated or truncated`` and
puts ``TimeLimit.truncated = truncated and not terminated`` into ``info``; the
replay buffer (``handle_timeout_termination=True``) stores that flag and masks
``done`` with it when sampling, so time-limit steps bootstrap. Demos keep the
same convention (:meth:`DemoMixedReplayBuffer.add_episode`).

Every SB3 keyword in :class:`SB3Config` defaults to ``None``, meaning "SB3's own
default"; a keyword the chosen class does not take is a configuration error.
sb3-contrib is imported only when one of its algorithms is configured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.vec_env import VecNormalize

from hilrl.errors import HilrlError
from hilrl.policies.configs import SB3_ALGORITHMS, SB3Config, sb3_class

PolicyObs = dict[str, np.ndarray] | np.ndarray


def _env_rows(x: Any, i: int) -> Any:
    """Env ``i``'s row of a batched observation (dict or array), keeping the env axis."""
    if isinstance(x, dict):
        return {k: np.asarray(v)[i:i + 1] for k, v in x.items()}
    return np.asarray(x)[i:i + 1]


def _cat(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {k: th.cat([a[k], b[k]]) for k in a}
    return th.cat([a, b])


class _DemoMixing:
    """Online buffer plus a demo one (:attr:`demo`, same class); batches mix them at ``demo_fraction``.

    ``copy_interventions=True`` (HIL-SERL) also copies every transition whose
    ``info`` says ``intervened`` into the demo part. Demos come from recorded
    episodes through :meth:`add_episode`. Put before SB3's ``ReplayBuffer`` or
    ``DictReplayBuffer``; :attr:`_base` names which.
    """

    _base: type

    def __init__(self, buffer_size: int, observation_space: gym.spaces.Space, action_space: gym.spaces.Box,
                 device: th.device | str = "auto", n_envs: int = 1, optimize_memory_usage: bool = False,
                 handle_timeout_termination: bool = True, demo_fraction: float = 0.5,
                 demo_buffer_size: int | None = None, copy_interventions: bool = False):
        super().__init__(buffer_size, observation_space, action_space,  # type: ignore[call-arg]
                         device=device, n_envs=n_envs, optimize_memory_usage=optimize_memory_usage,
                         handle_timeout_termination=handle_timeout_termination)
        self.demo_fraction = demo_fraction
        self.copy_interventions = copy_interventions
        self.demo = self._base(demo_buffer_size or buffer_size, observation_space, action_space, device=device,
                               n_envs=1, handle_timeout_termination=handle_timeout_termination)

    def add(self, obs: PolicyObs, next_obs: PolicyObs, action: np.ndarray, reward: np.ndarray, done: np.ndarray,
            infos: list[dict[str, Any]]) -> None:
        super().add(obs, next_obs, action, reward, done, infos)  # type: ignore[misc]
        if not self.copy_interventions:
            return
        action = np.asarray(action).reshape(len(infos), -1)
        reward, done = np.asarray(reward).reshape(-1), np.asarray(done).reshape(-1)
        for i, info in enumerate(infos):
            if info.get("intervened"):
                self.demo.add(_env_rows(obs, i), _env_rows(next_obs, i), action[i:i + 1], reward[i:i + 1],
                              done[i:i + 1], [info])

    def add_episode(self, episode: Any, policy_obs: Callable[[dict[str, np.ndarray]], PolicyObs],
                    scale_action: Callable[[np.ndarray], np.ndarray]) -> None:
        """Append a recorded :class:`~hilrl.data.episode.Episode` to the demo part.

        ``policy_obs`` maps the episode's observation dict (arrays over time) to what
        the policy sees. Actions are rescaled to SB3's [-1, 1] convention. ``done`` is
        the union of ``terminated`` and ``truncated`` with the timeout flag set on
        truncated-only steps, as ``DummyVecEnv`` reports live steps, so they bootstrap.
        """
        obs, next_obs = policy_obs(episode.obs), policy_obs(episode.next_obs)
        actions = np.clip(scale_action(np.asarray(episode.actions, np.float32)), -1.0, 1.0)
        for t in range(len(episode)):
            terminated, truncated = bool(episode.terminated[t]), bool(episode.truncated[t])
            self.demo.add(_env_rows(obs, t), _env_rows(next_obs, t), actions[t:t + 1],
                          np.asarray([episode.rewards[t]], np.float32), np.asarray([terminated or truncated]),
                          [{"TimeLimit.truncated": truncated and not terminated}])

    def demo_count(self, batch_size: int) -> int:
        """How many of ``batch_size`` samples come from demos (all of them while the online part is empty)."""
        if self.demo.size() == 0:
            return 0
        if self.size() == 0:  # type: ignore[attr-defined]
            return batch_size
        return int(round(batch_size * self.demo_fraction))

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> Any:
        """``batch_size`` transitions: the online ones first, then ``demo_count(batch_size)`` demo ones."""
        n_demo = self.demo_count(batch_size)
        if n_demo == 0:
            return super().sample(batch_size, env=env)  # type: ignore[misc]
        if n_demo == batch_size:
            return self.demo.sample(batch_size, env=env)
        online = super().sample(batch_size - n_demo, env=env)  # type: ignore[misc]
        demo = self.demo.sample(n_demo, env=env)
        return type(online)(
            observations=_cat(online.observations, demo.observations),
            actions=th.cat([online.actions, demo.actions]),
            next_observations=_cat(online.next_observations, demo.next_observations),
            dones=th.cat([online.dones, demo.dones]),
            rewards=th.cat([online.rewards, demo.rewards]),
        )


class DemoMixedReplayBuffer(_DemoMixing, DictReplayBuffer):
    """SB3's ``DictReplayBuffer`` with a demo part mixed into every batch (see :class:`_DemoMixing`)."""

    _base = DictReplayBuffer


class DemoMixedFlatReplayBuffer(_DemoMixing, ReplayBuffer):
    """The same over SB3's ``ReplayBuffer``, for algorithms without a ``MultiInputPolicy`` (CrossQ)."""

    _base = ReplayBuffer


class ExecutedActionMixin:
    """Put before an SB3 off-policy class: store the executed action, not the policy's (SB3 issue #1813).

    When a step's ``info`` carries ``executed_action`` (the intervention wrapper
    always sets it), that action, rescaled to [-1, 1], replaces SB3's
    ``buffer_action``. Everything else is SB3's own ``_store_transition``.
    """

    def _store_transition(self, replay_buffer: Any, buffer_action: np.ndarray, new_obs: Any, reward: np.ndarray,
                          dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        executed = [info.get("executed_action") for info in infos]
        if any(a is not None for a in executed):
            buffer_action = np.array(buffer_action, copy=True)
            for i, action in enumerate(executed):
                if action is not None:
                    policy = self.policy  # type: ignore[attr-defined]
                    buffer_action[i] = np.clip(policy.scale_action(np.asarray(action, np.float32)), -1.0, 1.0)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)  # type: ignore[misc]


_WITH_EXECUTED_ACTION: dict[type, type] = {}


def with_executed_action(cls: type) -> type:
    """``cls`` (e.g. SB3's SAC) with :class:`ExecutedActionMixin` in front of it."""
    if cls not in _WITH_EXECUTED_ACTION:
        _WITH_EXECUTED_ACTION[cls] = type(cls.__name__, (ExecutedActionMixin, cls), {"__module__": __name__})
    return _WITH_EXECUTED_ACTION[cls]


def state_keys(observation_space: gym.spaces.Dict, obs_keys: Sequence[str] | None) -> tuple[str, ...]:
    """The keys the SB3 policy sees: ``obs_keys`` or every 1-D key; images are refused with a clear error."""
    available = list(observation_space.spaces)
    keys = tuple(obs_keys) if obs_keys is not None else tuple(k for k in available
                                                               if len(observation_space[k].shape) == 1)
    unknown = [k for k in keys if k not in available]
    if unknown:
        raise HilrlError(f"algo.obs_keys names {unknown}, which the task does not observe; allowed: "
                         f"{', '.join(available)}")
    images = [k for k in keys if len(observation_space[k].shape) != 1]
    if images:
        raise HilrlError(f"algo.obs_keys {images} are images; SB3 adapters take state keys only "
                         f"(drop them from obs_keys, or use algo: sac for image observations)")
    if not keys:
        raise HilrlError("algo.obs_keys is empty; name at least one state key, e.g. [ee_pos, object]")
    return keys


class _SpacesOnlyEnv(gym.Env):
    """Carries the spaces SB3 reads while building a model; evaluation never steps it, training swaps it out."""

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box):
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        raise RuntimeError("this env only carries spaces; SB3Agent.start_training attaches the real one")

    def step(self, action: Any) -> Any:
        raise RuntimeError("this env only carries spaces; SB3Agent.start_training attaches the real one")


class SB3Agent:
    """An SB3 off-policy algorithm with hilrl's interface: ``act``, ``state_dict``, ``load_state_dict``.

    Built from the task's full spaces; the SB3 model sees only :attr:`keys`: as a
    ``Dict`` with ``MultiInputPolicy`` where the class has one (SAC, TD3, TQC), or
    concatenated in :attr:`keys` order into a ``Box`` with ``MlpPolicy`` where it
    has not (CrossQ, whose critic update concatenates observation tensors).
    :meth:`policy_obs` does that mapping and :meth:`wrap_env` applies it to an env.
    The model starts with a one-slot buffer and an env that only carries the
    spaces (enough for evaluation); :meth:`start_training` gives it the real mixed
    buffer and env.
    """

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box, config: SB3Config,
                 seed: int = 0):
        self.config = config
        self.algo_name = config.name
        self.keys = state_keys(observation_space, config.obs_keys)
        cls = with_executed_action(sb3_class(config.name))
        self.flat = "MultiInputPolicy" not in cls.policy_aliases
        selected = [observation_space[k] for k in self.keys]
        if self.flat:
            self.observation_space: gym.spaces.Space = gym.spaces.Box(
                np.concatenate([s.low.reshape(-1) for s in selected]).astype(np.float32),
                np.concatenate([s.high.reshape(-1) for s in selected]).astype(np.float32), dtype=np.float32)
        else:
            self.observation_space = gym.spaces.Dict(dict(zip(self.keys, selected)))
        self.action_space = action_space
        self._buffer_class = DemoMixedFlatReplayBuffer if self.flat else DemoMixedReplayBuffer
        kwargs = config.sb3_kwargs()
        if config.action_noise:
            dim = int(np.prod(action_space.shape))
            kwargs["action_noise"] = NormalActionNoise(np.zeros(dim), np.full(dim, config.action_noise))
        try:
            self.model = cls("MlpPolicy" if self.flat else "MultiInputPolicy",
                             env=_SpacesOnlyEnv(self.observation_space, action_space), buffer_size=1, seed=seed,
                             replay_buffer_class=self._buffer_class,
                             replay_buffer_kwargs={"demo_fraction": config.demo_fraction, "demo_buffer_size": 1},
                             **kwargs)
        except (ValueError, TypeError, AssertionError) as exc:
            raise HilrlError(f"{config.name}: SB3 refused the settings in algo: ({exc})") from None

    @property
    def replay_buffer(self) -> Any:
        return self.model.replay_buffer

    def policy_obs(self, obs: dict[str, np.ndarray]) -> PolicyObs:
        """The task's observation dict (one step or arrays over time) as the SB3 policy sees it."""
        if self.flat:
            return np.concatenate([np.asarray(obs[k], np.float32) for k in self.keys], axis=-1)
        return {k: np.asarray(obs[k]) for k in self.keys}

    def wrap_env(self, env: gym.Env) -> gym.Env:
        """``env`` with observations mapped by :meth:`policy_obs` (wrap after any wrapper needing the full dict)."""
        return gym.wrappers.TransformObservation(env, self.policy_obs, self.observation_space)

    def start_training(self, env: Any, buffer_size: int, learning_starts: int, demo_episodes: Sequence[Any] = (),
                       copy_interventions: bool = False) -> None:
        """Attach a VecEnv (observations already mapped by :meth:`wrap_env`) and a fresh mixed buffer.

        The online part holds ``buffer_size`` transitions and the demo part as many.
        """
        model = self.model
        model.learning_starts = learning_starts
        model.buffer_size = buffer_size
        model.replay_buffer = self._buffer_class(
            buffer_size, self.observation_space, self.action_space, device=model.device, n_envs=1,
            demo_fraction=self.config.demo_fraction, demo_buffer_size=buffer_size,
            copy_interventions=copy_interventions)
        for episode in demo_episodes:
            model.replay_buffer.add_episode(episode, self.policy_obs, model.policy.scale_action)
        model.set_env(env)

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """The action for ONE observation (the task's full dict; extra keys are ignored)."""
        action, _ = self.model.predict(self.policy_obs(obs), deterministic=deterministic)
        return np.asarray(action, dtype=np.float32)

    def policy_weights(self) -> dict[str, np.ndarray]:
        """The SB3 policy's tensors (actor and critics, as SB3 keeps them in one module) as numpy arrays."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.policy.state_dict().items()}

    def load_policy_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.model.policy.load_state_dict({k: th.from_numpy(np.array(v)) for k, v in weights.items()})

    def state_dict(self) -> dict[str, Any]:
        """Network and optimiser weights (SB3's ``get_parameters``) and SB3's extra tensors (``log_ent_coef``...)."""
        _, variables = self.model._get_torch_save_params()
        return {
            "parameters": self.model.get_parameters(),
            "variables": {name: recursive_getattr(self.model, name).detach().cpu().clone() for name in variables},
            "num_timesteps": int(self.model.num_timesteps),
            "n_updates": int(self.model._n_updates),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.set_parameters(state["parameters"], exact_match=True, device=self.model.device)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise HilrlError(f"{self.algo_name}: checkpoint does not match this algorithm's networks ({exc})") from None
        for name, value in state.get("variables", {}).items():
            recursive_getattr(self.model, name).data.copy_(value.to(self.model.device))
        self.model.num_timesteps = int(state.get("num_timesteps", 0))
        self.model._n_updates = int(state.get("n_updates", 0))
