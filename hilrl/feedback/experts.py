"""Scripted experts for the hilrl arm tasks, with a knob that makes them worse in a controlled way.

Each expert is a stateless feedback policy of the observation dict alone (``ee_pos``,
``gripper`` and the task's ``object`` vector), so it can take over mid-episode (simulated
interventions) and drive a remote arm whose observations follow the same keys. Scales come
from ``env.unwrapped`` (``task_name``, ``action_scale`` and the task's geometry attributes,
which fall back to the sim task's constants for a remote arm), read once at construction;
the action size comes from ``env.action_space`` (rotation deltas, if any, stay 0).

Noise model (``noise`` in [0, 1]; more noise, fewer successes, up to the sampling error of
100 episodes):
    * every step, with probability ``noise / 2`` the translation part is replaced by a uniform
      random one in [-1, 1] (a "wrong" action);
    * otherwise gaussian noise with standard deviation ``noise`` is added to the translation part;
    * the result is clipped to [-1, 1]; the gripper command is never perturbed (a dropped object
      would make the success rate fall off a cliff rather than degrade smoothly).
    Measured success over 100 seeded episodes (``python benchmarks/expert_success.py``,
    env seeds 0..99, expert seed 0; Intel Xeon, 2 cores):

    =========  ====  ====  ====  ====  ====  ====  ====  ====
    noise      0     0.1   0.18  0.2   0.27  0.3   0.4   0.5
    Reach      1.00  1.00  1.00  1.00  1.00  1.00  1.00  1.00
    Push       1.00  1.00  0.99  1.00  0.95  0.89  0.42  0.21
    PickCube   1.00  0.98  0.90  0.78  0.42  0.32  0.09  0.12
    PegInsert  1.00  0.41  0.04  0.05  0.00  0.00  0.00  0.00
    =========  ====  ====  ====  ====  ====  ====  ====  ====

    About 90% success: Push 0.30, PickCube 0.18. About 40%: Push 0.40, PickCube 0.27
    (``NOISE_FOR_SUCCESS``). PegInsert is far more sensitive: at noise 0.1 the per-step error
    (about 5 mm) already exceeds the hole's 4 mm clearance.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from hilrl.errors import HilrlError
from hilrl.plugins import Registry, import_object


class ExpertError(HilrlError, ValueError):
    """Bad arguments to an expert (a ``ValueError`` too, for code that catches that)."""


# Noise levels measured to give roughly 90% and 40% success (100 seeded episodes each);
# see benchmarks/expert_success.py. Keys: task name -> {target success: noise}.
NOISE_FOR_SUCCESS: dict[str, dict[float, float]] = {
    "Push": {0.9: 0.30, 0.4: 0.40},
    "PickCube": {0.9: 0.18, 0.4: 0.27},
}


class ScriptedExpert:
    """Base class: a proportional controller towards a waypoint chosen from the observation.

    Args:
        action_scale: meters per unit translation action (``env.unwrapped.action_scale``).
        action_dim: size of the env's action (4, or 7 with rotation; rotation deltas stay 0).
        noise: sub-optimality knob in [0, 1] (see the module docstring).
        seed: seed of the expert's own random generator (noise only).
    """

    def __init__(self, action_scale: float, action_dim: int, noise: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ExpertError(f"noise={noise!r}: must be in [0, 1] (0 = best expert, 1 = mostly random).")
        self.action_scale = float(action_scale)
        self.action_dim = int(action_dim)
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Start a new episode. The experts keep no memory between steps; nothing to clear."""

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        target, gripper = self.waypoint(obs)
        action = np.zeros(self.action_dim, dtype=np.float32)
        action[:3] = np.clip((target - np.asarray(obs["ee_pos"], np.float64)) / self.action_scale, -1.0, 1.0)
        action[-1] = gripper
        if self.noise > 0.0:
            if self.rng.random() < self.noise / 2:
                action[:3] = self.rng.uniform(-1.0, 1.0, 3)
            else:
                action[:3] += self.rng.normal(0.0, self.noise, 3)
            np.clip(action, -1.0, 1.0, out=action)
        return action

    def waypoint(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """Next tool-centre-point target (m) and gripper command (-1 closed, +1 open)."""
        raise NotImplementedError


class ReachExpert(ScriptedExpert):
    """Go straight to the goal (``object[:3]``)."""

    def waypoint(self, obs):
        return np.asarray(obs["object"][:3], np.float64), 1.0


class PushExpert(ScriptedExpert):
    """Close the gripper, get behind the cube on the cube-goal line, lower, push along the line.

    Args (beyond the base class): ``cube_half`` half size of the cube (m).
    """

    def __init__(self, *args, cube_half: float = 0.025, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cube_half = cube_half
        self.push_z = 0.02  # tool-centre-point height while pushing
        self.safe_z = 0.1  # height for moving around the cube
        self.behind = cube_half + 0.04  # stand-off behind the cube centre before pushing

    def waypoint(self, obs):
        ee = np.asarray(obs["ee_pos"], np.float64)
        obj = np.asarray(obs["object"], np.float64)
        cube, goal = obj[:3], obj[7:10]
        to_goal = goal[:2] - cube[:2]
        dist = float(np.linalg.norm(to_goal))
        u = to_goal / max(dist, 1e-6)
        rel = ee[:2] - cube[:2]
        along = float(rel @ u)
        lateral = abs(float(rel[0] * u[1] - rel[1] * u[0]))
        start = cube[:2] - self.behind * u
        lined_up = -self.behind - 0.02 < along < -self.cube_half and lateral < 0.02
        if ee[2] < 0.04:
            if lined_up:
                # Push: move the contact point towards the goal, at most one action scale per step.
                xy = cube[:2] + u * (-self.behind + 0.015 + min(dist, self.action_scale))
                return np.array([xy[0], xy[1], self.push_z]), -1.0
            return np.array([ee[0], ee[1], self.safe_z]), -1.0  # lift clear before re-positioning
        if np.linalg.norm(ee[:2] - start) < 0.012:
            return np.array([start[0], start[1], self.push_z]), -1.0
        return np.array([start[0], start[1], max(self.safe_z, ee[2] - self.action_scale)]), -1.0


class PickExpert(ScriptedExpert):
    """Hover over the object, descend with the gripper open, close, then carry it to the target.

    Used for PickCube (carry the cube centre to the goal) and, with a carry function, for
    PegInsert. ``grasp_offset`` is the height of the grasp point above the object centre,
    ``width`` the object's width between the fingers (m). With ``rest_height`` (the object centre's height
    on the table), an object already lifted and held within ``hold_radius`` of the tool centre counts as
    held: a learning policy may grip the cube by its edge (PickCube's grasp rule counts up to 4 cm off), and a
    person who takes over such an arm keeps the cube and carries on (issue 27: the expert opened the fingers
    and dropped it, 3 of 8 takeovers of a held cube in a 10k-step PickCube checkpoint's rollouts).
    """

    def __init__(
        self,
        *args,
        width: float = 0.05,
        grasp_offset: float = 0.0,
        carry: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
        rest_height: float | None = None,
        hold_radius: float = 0.02,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.width = width
        self.rest_height = rest_height
        self.hold_radius = hold_radius
        self.grasp_offset = grasp_offset
        self.carry = carry
        self.max_opening = 0.08  # total finger gap when fully open (m), the env's gripper scale

    def waypoint(self, obs):
        ee = np.asarray(obs["ee_pos"], np.float64)
        obj = np.asarray(obs["object"], np.float64)
        gap = float(obs["gripper"][0]) * self.max_opening
        grasp = obj[:3] + (0.0, 0.0, self.grasp_offset)
        xy_err = float(np.linalg.norm(ee[:2] - grasp[:2]))
        to_grasp = float(np.linalg.norm(ee - grasp))
        lifted = self.rest_height is not None and obj[2] > self.rest_height + 0.01 and to_grasp < self.hold_radius
        holding = (to_grasp < 0.02 or lifted) and 0.6 * self.width < gap < 1.3 * self.width
        if holding:
            if self.carry is not None:
                return self.carry(ee, obj, grasp), -1.0
            return ee + (obj[7:10] - obj[:3]), -1.0
        if xy_err < 0.008 and ee[2] < grasp[2] + 0.008:
            # At the grasp point: close; if the fingers closed on nothing, open and try again.
            return grasp, (1.0 if gap < 0.5 * self.width else -1.0)
        if xy_err < 0.008:
            return grasp, 1.0
        hover = grasp[2] + 0.05
        if ee[2] < grasp[2] + 0.03:
            return np.array([ee[0], ee[1], hover]), 1.0  # rise before moving sideways
        return np.array([grasp[0], grasp[1], max(hover, ee[2] - self.action_scale)]), 1.0


def _peg_carry(peg_half_height: float, block_height: float, grasp_offset: float):
    """Waypoint for a held peg: rise to a safe height, line the peg up over the hole, lower it in."""
    clearance = 0.02
    above_block = block_height + clearance + peg_half_height + grasp_offset  # tcp z with peg bottom clear

    def carry(ee: np.ndarray, obj: np.ndarray, grasp: np.ndarray) -> np.ndarray:
        peg, hole = obj[:3], obj[7:10]
        # Align the peg's bottom (not its centre) with the hole: the peg may tilt a little in the grasp.
        w, x, y, z = obj[3:7]
        axis = np.array([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)])
        tip = peg - peg_half_height * axis
        err = hole[:2] - tip[:2]
        bottom = tip[2]
        if np.linalg.norm(err) > 0.003:
            if bottom < hole[2] + 0.005 and np.linalg.norm(err) > 0.006:
                return np.array([ee[0], ee[1], above_block])  # not over the hole yet: lift first
            return np.array([ee[0] + err[0], ee[1] + err[1], max(ee[2], above_block)])
        return np.array([ee[0] + err[0], ee[1] + err[1], ee[2] - 0.03])

    return carry


# Scripted experts of foreign envs (hilrl.envs.adapter), keyed by gymnasium id: a factory
# f(env, noise=0.0, seed=None) -> expert with reset() and expert(obs) -> action, as make_expert's signature.
# Registered by import path, so naming one imports nothing; a plugin registers its env's expert the same way.
EXPERTS = Registry("scripted expert", error=ExpertError)
EXPERTS.register("gym_hil/PandaPickCubeBase-v0", "hilrl.feedback.gym_hil_expert:make_pick_cube_expert")
EXPERTS.register("gym_hil/PandaPickCube-v0", "hilrl.feedback.gym_hil_expert:make_pick_cube_expert")  # LeRobot's wrapped 4-d


def has_expert(env_id: str, expert: str | None = None) -> bool:
    """Whether ``make_expert`` has a scripted policy for ``env_id``: the config's ``env.expert``, a hilrl task's
    own, or one registered in :data:`EXPERTS` (for checks made before any env is built)."""
    return bool(expert) or env_id.startswith("hilrl/") or env_id in EXPERTS


def make_expert(env, noise: float = 0.0, seed: int | None = None) -> ScriptedExpert:
    """The scripted expert for ``env``: the one its config names, else its task's own (any hilrl arm env, wrapped
    or not), else the one registered for a foreign env's id.

    The config's ``env.expert`` (``module:callable``, kept on ``env.unwrapped.expert`` by the env adapter and
    :func:`hilrl.envs.make.make_env`) wins for every env, hilrl's tasks too (a user's own scripted policy, or a
    weaker person than the task's expert, e.g. ``benchmarks/hil_serl_sim.py``'s ``AimsAbove``); it is
    called as ``factory(env, noise=noise, seed=seed)``.

    Args:
        env: a hilrl arm env; its ``unwrapped`` supplies ``task_name``, ``action_scale`` and geometry.
        noise: sub-optimality in [0, 1]; 0 is the best expert (>= 95% success on every task).
        seed: seed for the noise.
    """
    base = env.unwrapped
    path = getattr(base, "expert", None)
    if path:
        factory = import_object(path, "env.expert", "give a factory f(env, noise, seed) as 'module:callable' on "
                                "PYTHONPATH")
        return factory(env, noise=noise, seed=seed)
    env_id = getattr(base, "env_id", None)
    if env_id is not None:  # a foreign env, through the adapter
        if env_id not in EXPERTS:
            raise ExpertError(f"no scripted expert for {env_id!r}: set env.expert to your scripted policy "
                              "'module:callable' (a factory f(env, noise, seed) -> expert with reset() and "
                              "expert(obs) -> action), or record demos with a person (hilrl record --device keyboard)")
        return EXPERTS.get(env_id)(env, noise=noise, seed=seed)
    return task_expert(env, noise, seed)


def task_expert(env, noise: float = 0.0, seed: int | None = None) -> ScriptedExpert:
    """The scripted expert of a hilrl arm task (``env.unwrapped.task_name``), whatever the config names: what a
    factory for ``env.expert`` can start from. Arguments as :func:`make_expert`'s."""
    from hilrl.envs import TASKS  # the sim task classes hold the geometry defaults

    base = env.unwrapped
    task = getattr(base, "task_name", None)
    if task not in TASKS:
        raise ExpertError(
            f"no scripted expert for task {task!r} ({type(base).__name__}); make_expert supports "
            f"{', '.join(TASKS)} (pass a hilrl arm env, e.g. gym.make('hilrl/PickCube-v0'))."
        )

    def geometry(name: str):
        # A remote arm (RemoteArmEnv) reports task_name and action_scale but no object geometry:
        # fall back to the simulated task's constants, which a matching real set-up reproduces.
        return getattr(base, name, getattr(TASKS[task], name))

    action_scale = getattr(base, "action_scale", None)
    if action_scale is None:
        raise ExpertError(f"{type(base).__name__} has no action_scale; the expert needs meters per unit action.")
    args = (float(action_scale), int(np.prod(env.action_space.shape)))
    kwargs = {"noise": noise, "seed": seed}
    if task == "Reach":
        return ReachExpert(*args, **kwargs)
    if task == "Push":
        return PushExpert(*args, cube_half=float(geometry("cube_half")), **kwargs)
    if task == "PickCube":
        cube_half = float(geometry("cube_half"))  # a lifted cube held up to 4 cm off: PickCube's grasp rule
        return PickExpert(*args, width=2 * cube_half, rest_height=float(getattr(base, "block_half_height", cube_half)),
                          hold_radius=0.04, **kwargs)
    peg_half = np.asarray(geometry("peg_half"), dtype=np.float64)
    grasp_offset = float(geometry("grasp_offset"))
    carry = _peg_carry(float(peg_half[2]), float(geometry("block_height")), grasp_offset)
    return PickExpert(*args, width=2 * float(peg_half[0]), grasp_offset=grasp_offset, carry=carry, **kwargs)
