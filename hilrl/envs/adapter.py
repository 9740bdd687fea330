"""Any gymnasium env as hilrl sees its own tasks: one adapter, registered like the other extensions.

hilrl's learners, people and reward sources read an env the way its arm tasks present themselves:

* observations are a flat ``Dict`` of float32 state vectors and ``uint8`` ``(H, W, 3)`` images
  (:func:`hilrl.policies.encoders.split_observation_keys`);
* actions are a ``Box`` in ``[-1, 1]``;
* ``info["is_success"]`` says whether the episode succeeded, ``info["reward_terms"]`` optionally names
  reward terms;
* ``env.unwrapped`` answers hilrl's questions: ``get_state``/``set_state``/``get_obs`` for exact replay and
  for rendering stored segments, ``render()`` a frame, ``task_name``, ``max_episode_steps``.

:class:`GymnasiumAdapter` makes a *foreign* env (gym-hil's PandaPickCube, gymnasium's own, a lab's) look like
that: a flat ``Box`` observation becomes ``{"state": obs}``; nested ``Dict`` s are flattened with ``/``
(gym-hil's ``pixels: {front, wrist}`` becomes ``pixels/front`` and ``pixels/wrist``); ``uint8`` images are
kept ``(H, W, 3)`` (a ``(3, H, W)`` one is transposed), every other ``Box`` becomes a float32 vector; a ``Box``
action space other than ``[-1, 1]`` is rescaled (as ``gymnasium.wrappers.RescaleAction``); success is read from
``info[success_key]`` (``is_success``, ``success`` and ``succeed`` tried by default); ``terminated`` and
``truncated`` pass through as the env gives them (gym-hil's PandaPickCube terminates on success and when the
block leaves its bounds; merging the two breaks bootstrapping, see HIL-SERL's pitfalls).

It is a wrapper whose ``unwrapped`` is the adapter itself: hilrl looks for its facts on ``env.unwrapped``, and
the adapter is where they are answered; the foreign env is :attr:`GymnasiumAdapter.foreign`. When the foreign
env is a MuJoCo one (``unwrapped.model`` and ``unwrapped.data``, as gym-hil's and gymnasium's MuJoCo envs have)
the adapter is :class:`MujocoStateAdapter`: states are MuJoCo's full integration state (``mj_getState`` with
``mjSTATE_INTEGRATION``: time, qpos, qvel, act, warm start, ctrl, mocap), and a restored state observes and
steps exactly as recorded (see the class for the one ``mj_forward`` per step this takes). Any other env records
no states: its demos replay from their actions only.

Adapters are registered in :data:`ENV_ADAPTERS` (a :class:`hilrl.plugins.Registry`) with
:func:`register_adapter`; ``env.adapter`` picks one (default ``gymnasium``). A special env can bring its own::

    from hilrl.envs.adapter import GymnasiumAdapter, register_adapter

    @register_adapter("my_lab_arm")
    class MyLabArmAdapter(GymnasiumAdapter):
        def observation(self, obs): ...

This module imports gymnasium and numpy only (MuJoCo when a MuJoCo env is adapted).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from hilrl.errors import HilrlError
from hilrl.plugins import Registry

__all__ = ["ENV_ADAPTERS", "ArmActionMap", "EnvIdError", "GymnasiumAdapter", "MujocoStateAdapter", "SUCCESS_KEYS",
           "adapt_env", "check_env_id", "import_env_package", "register_adapter"]

# the info keys read as success when env.success_key is not set, in this order
SUCCESS_KEYS = ("is_success", "success", "succeed")


class EnvIdError(HilrlError, ValueError):
    """A foreign env id that is not registered, or an env.package that does not import."""


ENV_ADAPTERS = Registry("env adapter", error=HilrlError)


def register_adapter(name: str, config_cls: type | None = None, **meta: Any):
    """Decorator: register an adapter class under ``name`` (``env.adapter: NAME``). The class is built as
    ``cls.adapt(env, **settings)`` (see :meth:`GymnasiumAdapter.adapt`)."""
    return ENV_ADAPTERS.register(name, config_cls=config_cls, **meta)


# ---------------------------------------------------------------------------- ids and packages
def _namespaces() -> list[str]:
    return sorted({spec.namespace for spec in gym.registry.values() if spec.namespace})


def import_env_package(env_id: str, package: str | None) -> None:
    """Import ``package`` (it registers ``env_id``), or, without one, the id's namespace when it is a module
    (``gym_hil/PandaPickCubeBase-v0`` imports ``gym_hil``, the way gymnasium's ``module:Id`` ids do).

    Importing happens when the config is validated: the id cannot be checked before, and a config that names a
    package means to run that package's env.

    :raises EnvIdError: ``package`` cannot be imported (names the module and the fix).
    """
    if package:
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise EnvIdError(f"env.package {package!r} cannot be imported ({exc}); pip install the package that "
                             f"registers {env_id!r} (for gym-hil: pip install 'hilrl[gym-hil]')") from None
        return
    namespace = env_id.partition("/")[0] if "/" in env_id else ""
    if namespace and env_id not in gym.registry and namespace.isidentifier():
        try:
            importlib.import_module(namespace)
        except ImportError:
            pass  # check_env_id names the fix


def check_env_id(env_id: str) -> None:
    """:raises EnvIdError: ``env_id`` is not registered: names the namespaces installed, the nearest ids and the
    ``env.package`` fix."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=2)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise EnvIdError(f"unknown env id {env_id!r}{hint}: gymnasium has no such id registered (namespaces installed: "
                     f"{', '.join(_namespaces()) or 'none'}); if a package registers it, name it in env.package "
                     f"(e.g. package: gym_hil) and pip install it")


# ---------------------------------------------------------------------------- actions of a person's device
@dataclass(frozen=True)
class ArmActionMap:
    """hilrl's arm action ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` (gripper absolute, -1 closed, +1 open)
    <-> a foreign env's action (in the adapter's [-1, 1] box): which dimensions are which, and the gripper's sign.

    Built from ``env.action_map`` (:class:`hilrl.config.ActionMapConfig`, whose fields these are)."""

    xyz: tuple[int, int, int]
    rotation: tuple[int, int, int] | None = None
    gripper: int | None = None
    gripper_sign: int = 1
    gripper_scale: float = 1.0
    translation_scale: float = 1.0
    rotation_scale: float = 1.0

    @classmethod
    def from_settings(cls, settings: Any) -> ArmActionMap | None:
        if settings is None:
            return None
        values = settings if isinstance(settings, dict) else settings.model_dump()
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
        return cls(**values)

    def check(self, action_dim: int) -> None:
        dims = [*self.xyz, *(self.rotation or ()), *(() if self.gripper is None else (self.gripper,))]
        if max(dims) >= action_dim:
            raise HilrlError(f"env.action_map names action dimension {max(dims)}, but the env's actions have "
                             f"{action_dim}; name dimensions 0..{action_dim - 1}")

    def to_env(self, arm: np.ndarray, action_dim: int, base: np.ndarray | None = None) -> np.ndarray:
        """The env action for arm action ``arm`` (size 4 or 7); dimensions the map does not name keep ``base``'s
        values (e.g. the policy's, during an intervention), else 0."""
        arm = np.asarray(arm, dtype=np.float32)
        out = np.zeros(action_dim, np.float32) if base is None else np.array(base, np.float32, copy=True)
        out[list(self.xyz)] = self.translation_scale * arm[:3]
        if self.rotation is not None:
            out[list(self.rotation)] = self.rotation_scale * arm[3:6] if arm.size == 7 else 0.0
        if self.gripper is not None:
            out[self.gripper] = self.gripper_sign * self.gripper_scale * arm[-1]
        return np.clip(out, -1.0, 1.0)

    def to_arm(self, action: np.ndarray, arm_dim: int = 7) -> np.ndarray:
        """The arm action an env action stands for (the inverse of :meth:`to_env` on the dimensions it names)."""
        action = np.asarray(action, dtype=np.float32)
        arm = np.zeros(arm_dim, np.float32)
        arm[:3] = action[list(self.xyz)] / self.translation_scale
        if self.rotation is not None and arm_dim == 7:
            arm[3:6] = action[list(self.rotation)] / self.rotation_scale
        arm[-1] = 1.0 if self.gripper is None else action[self.gripper] * self.gripper_sign / self.gripper_scale
        return np.clip(arm, -1.0, 1.0)


# ---------------------------------------------------------------------------- the adapter
def _leaves(space: gym.Space, prefix: str = "") -> list[tuple[str, tuple[str, ...], gym.Space]]:
    """``(flat key, path into the nested obs, space)`` of every leaf of a (nested) Dict space."""
    if isinstance(space, gym.spaces.Dict):
        found = []
        for key, sub in space.spaces.items():
            found += [(name, (key, *path), leaf) for name, path, leaf in _leaves(sub, f"{prefix}{key}/")]
        return found
    return [(prefix.rstrip("/"), (), space)]


def _image_layout(space: gym.spaces.Box) -> str | None:
    """``"hwc"`` or ``"chw"`` for a uint8 colour image box, else ``None``."""
    if space.dtype != np.uint8 or len(space.shape) != 3:
        return None
    if space.shape[-1] == 3:
        return "hwc"
    if space.shape[0] == 3:
        return "chw"
    return None


@register_adapter("gymnasium")
class GymnasiumAdapter(gym.Wrapper):
    """Presents any gymnasium env as hilrl's tasks present themselves (see the module docstring).

    :param env: the foreign env (as ``gymnasium.make`` returned it, time limit included).
    :param env_id: its gymnasium id (the ``task_name`` hilrl shows, the key of its registered expert).
    :param success_key: the info key that says success; ``None`` tries :data:`SUCCESS_KEYS`.
    :param action_map: which action dimensions a teleop device drives (:class:`ArmActionMap`, or its settings).
    :param expert: the scripted policy ``"module:callable"`` for this env (``env.expert``), used by
        :func:`hilrl.feedback.experts.make_expert`.
    """

    def __init__(self, env: gym.Env, env_id: str, success_key: str | None = None, action_map: Any = None,
                 expert: str | None = None) -> None:
        super().__init__(env)
        self.env_id, self.task_name = env_id, env_id
        self.success_key, self.expert = success_key, expert
        self._leaves = _leaves(env.observation_space) if isinstance(env.observation_space, gym.spaces.Dict) else \
            [("state", (), env.observation_space)]
        spaces, self._layouts = {}, {}
        for name, _, space in self._leaves:
            if not isinstance(space, gym.spaces.Box):
                raise HilrlError(f"{env_id}: observation {name!r} is a {type(space).__name__} space; hilrl's learners "
                                 "read float boxes and uint8 images: wrap the env (e.g. gymnasium.wrappers."
                                 "FlattenObservation) or register an env adapter of your own (hilrl.envs.adapter)")
            layout = _image_layout(space)
            self._layouts[name] = layout
            if layout == "hwc":
                spaces[name] = gym.spaces.Box(0, 255, space.shape, np.uint8)
            elif layout == "chw":
                spaces[name] = gym.spaces.Box(0, 255, (space.shape[1], space.shape[2], 3), np.uint8)
            else:
                size = int(np.prod(space.shape))
                low = np.broadcast_to(space.low, space.shape).reshape(size).astype(np.float32)
                high = np.broadcast_to(space.high, space.shape).reshape(size).astype(np.float32)
                spaces[name] = gym.spaces.Box(low, high, (size,), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        action_space = env.action_space
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise HilrlError(f"{env_id}: its action space is {action_space}; hilrl's learners (SAC/RLPD, BC, DAgger and "
                             "SB3's SAC/TD3/TQC/CrossQ) act continuously, in a 1-d Box: wrap the env (e.g. a discrete "
                             "one with your own continuous wrapper) or register an env adapter of your own "
                             "(hilrl.envs.adapter)")
        low, high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise HilrlError(f"{env_id}: its action Box is unbounded ({action_space}); hilrl acts in [-1, 1] and "
                             "rescales to the env's bounds: wrap it with gymnasium.wrappers.ClipAction after "
                             "giving it bounds, or register an env adapter of your own")
        self._rescale = not (np.allclose(low, -1.0) and np.allclose(high, 1.0))
        self._low, self._high, self._action_dtype = low, high, action_space.dtype
        self.action_space = gym.spaces.Box(-1.0, 1.0, action_space.shape, np.float32)
        self.action_map = action_map if isinstance(action_map, ArmActionMap) or action_map is None else \
            ArmActionMap.from_settings(action_map)
        if self.action_map is not None:
            self.action_map.check(action_space.shape[0])
        self.metadata = dict(getattr(env, "metadata", {}) or {})

    @classmethod
    def adapt(cls, env: gym.Env, **settings: Any) -> GymnasiumAdapter:
        """The adapter for ``env``: :class:`MujocoStateAdapter` when ``env`` is a MuJoCo env (exact states), else
        this class. Adapters of your own override this, or not."""
        base = env.unwrapped
        if cls is GymnasiumAdapter and MujocoStateAdapter.fits(base):
            return MujocoStateAdapter(env, **settings)
        return cls(env, **settings)

    # ------------------------------------------------------------------ hilrl's view
    @property
    def unwrapped(self) -> GymnasiumAdapter:
        """The adapter: where hilrl reads an env's facts (``get_state``, ``task_name``, ...)."""
        return self

    @property
    def foreign(self) -> gym.Env:
        """The foreign env itself (its own ``unwrapped``)."""
        return self.env.unwrapped

    @property
    def max_episode_steps(self) -> int | None:
        spec = self.env.spec
        return spec.max_episode_steps if spec is not None else None

    @property
    def control_hz(self) -> float | None:
        """Steps per second the env simulates (its ``render_fps``), to pace a person; ``None`` when unknown."""
        fps = self.metadata.get("render_fps")
        return float(fps) if fps else None

    @property
    def docstring(self) -> str:
        """The foreign env's class docstring (for a generated task text)."""
        return inspect.getdoc(type(self.foreign)) or ""

    def observation(self, obs: Any) -> dict[str, np.ndarray]:
        """The foreign observation as hilrl's flat dict (fresh arrays)."""
        out = {}
        for name, path, _ in self._leaves:
            value = obs
            for key in path:
                value = value[key]
            layout = self._layouts[name]
            if layout == "hwc":
                out[name] = np.array(value, dtype=np.uint8, copy=True)
            elif layout == "chw":
                out[name] = np.ascontiguousarray(np.transpose(np.asarray(value, np.uint8), (1, 2, 0)))
            else:
                out[name] = np.asarray(value, dtype=np.float32).reshape(-1).copy()
        return out

    def env_action(self, action: np.ndarray) -> np.ndarray:
        """The foreign env's action for an action in [-1, 1] (clipped, rescaled to its Box)."""
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if self._rescale:
            action = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        return action.astype(self._action_dtype)

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        info = dict(info)
        keys = (self.success_key,) if self.success_key else SUCCESS_KEYS
        found = next((k for k in keys if k in info), None)
        info["is_success"] = bool(np.asarray(info[found]).any()) if found is not None else False
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            # Some envs draw from numpy's global generator rather than their own ``np_random`` (gym-hil 0.1.14's
            # ``random_block_position`` calls ``np.random.uniform``), so ``reset(seed=)`` alone would leave their
            # start states unseeded; seeding it too makes a seeded episode the same episode every time (as SB3's
            # ``set_random_seed`` seeds numpy's global generator beside the env's).
            np.random.seed(seed % 2**32)
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs), self._info(info)

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(self.env_action(action))
        return self.observation(obs), float(reward), bool(terminated), bool(truncated), self._info(info)

    def render(self) -> Any:
        """The foreign env's frame; several cameras' frames (gym-hil returns [front, wrist]) side by side."""
        frame = self.env.render()
        if frame is None:
            raise HilrlError(f"{self.env_id} rendered no frame (render_mode {self.env.render_mode!r}); give it "
                             "env.kwargs.render_mode: rgb_array, or leave videos off (train.video: false)")
        if isinstance(frame, (list, tuple)) and frame and all(np.ndim(f) == 3 for f in frame):
            frames = [np.asarray(f) for f in frame]
            if len({f.shape[0] for f in frames}) == 1:
                return np.concatenate(frames, axis=1)
            return frames[0]
        return frame


class MujocoStateAdapter(GymnasiumAdapter):
    """:class:`GymnasiumAdapter` for a MuJoCo env: full states for exact replay and for rendering stored segments.

    A state is ``mj_getState(model, data, mjSTATE_INTEGRATION)``: time, qpos, qvel, act, warm start, ctrl,
    applied forces, mocap pose, ... (what ``hilrl.envs.arm_env.ArmEnv.get_state`` stores for hilrl's tasks).
    :meth:`set_state` restores it and runs ``mj_forward``; :meth:`get_obs` asks the env for the observation of
    the current state (``_get_obs``, as gymnasium's MuJoCo envs have, or ``_compute_observation``, gym-hil's).

    ``mj_step`` leaves what it derives from positions (body poses, Jacobians, mass matrix, sensor readings) one
    physics substep behind the state it ends in. An env that reads them right after stepping (gym-hil's sensors
    and camera images) reports an observation a substep old, and its controller (gym-hil's operational-space
    one) acts on them at the next step's first substep; a restored state, brought up to date by ``mj_forward``,
    would observe and step differently. So the adapter ends every reset and step with ``mj_forward`` and, when
    the env has an observation function, reads the observation of the state the step ended in: a recorded and a
    restored state then observe and step alike, exactly (images included). This costs one ``mj_forward`` and a
    second observation (a second render for camera observations) per step.
    """

    OBS_METHODS = ("get_obs", "_get_obs", "_compute_observation")

    @staticmethod
    def fits(base: gym.Env) -> bool:
        return type(getattr(base, "model", None)).__name__ == "MjModel" and \
            type(getattr(base, "data", None)).__name__ == "MjData"

    def __init__(self, env: gym.Env, **settings: Any) -> None:
        super().__init__(env, **settings)
        import mujoco

        from hilrl.envs.rendering import use_software_renderers

        self._mujoco = mujoco
        self._spec = mujoco.mjtState.mjSTATE_INTEGRATION
        base = self.foreign
        self._model, self._data = base.model, base.data
        self._state_size = mujoco.mj_stateSize(self._model, self._spec)
        found = [getattr(base, name, None) for name in self.OBS_METHODS]
        self._observe = next((method for method in found if callable(method)), None)
        # the env's own camera renderer redrawn without shadows, reflections or multisampling (15x faster in
        # software GL; images then differ from the env's own look, alike in recording, training and replay)
        self.software_renderers = use_software_renderers(base)

    def _settle(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Bring what MuJoCo derives from positions up to the state, and observe that state."""
        self._mujoco.mj_forward(self._model, self._data)
        return self.get_obs() if self._observe is not None else obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = super().reset(seed=seed, options=options)
        return self._settle(obs), info

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = super().step(action)
        return self._settle(obs), reward, terminated, truncated, info

    def get_state(self) -> np.ndarray:
        """The full MuJoCo integration state (float64)."""
        state = np.empty(self._state_size)
        self._mujoco.mj_getState(self._model, self._data, state, self._spec)
        return state

    def set_state(self, state: np.ndarray) -> None:
        """Restore a state of :meth:`get_state`; the next ``get_obs``, ``render`` and ``step`` replay exactly."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self._state_size,):
            raise HilrlError(f"{self.env_id}: a state of shape {state.shape} cannot be restored; this env's states have "
                             f"({self._state_size},) (one recorded with another model or MuJoCo version?)")
        self._mujoco.mj_setState(self._model, self._data, state, self._spec)
        self._mujoco.mj_forward(self._model, self._data)

    def get_obs(self) -> dict[str, np.ndarray]:
        """hilrl's observation of the current state (the env's own observation function, adapted)."""
        if self._observe is None:
            raise HilrlError(f"{self.env_id}: {type(self.foreign).__name__} has no observation function "
                             f"({', '.join(self.OBS_METHODS)}) to read a restored state's observation; replay its "
                             "demos with --mode actions")
        return self.observation(self._observe())


def adapt_env(env: gym.Env, config: Any) -> GymnasiumAdapter:
    """``env`` (made from a foreign id) through the adapter ``config.adapter`` names (an :class:`EnvConfig`)."""
    cls = ENV_ADAPTERS.get(config.adapter)
    return cls.adapt(env, env_id=config.id, success_key=config.success_key,
                     action_map=ArmActionMap.from_settings(config.action_map), expert=config.expert)
