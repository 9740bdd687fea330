"""Parameterised skills over the end-effector action interface: what an LLM planner calls.

Six skills, each with named, bounded parameters (:data:`SKILLS`, a schema the planner's prompt shows) and
a :class:`SkillResult` (success, and why not):

- ``move_to(pose, speed)``: the tool centre point to ``pose`` ([x, y, z] in m, inside the workspace).
- ``grasp(object, height_offset, approach, width)``: open to ``width``, hover ``approach`` above the grasp
  point (the object's centre raised by ``height_offset``), descend, close, lift by ``approach``.
- ``place(target, height)``: move the held object's centre in a straight line to ``height`` above ``target``
  (closed loop on the object's observed position; it does not release).
- ``push(object, direction, distance, speed)``: with the gripper closed, stand behind the object on the
  ``direction`` line, push until the object has moved ``distance``, lift clear.
- ``open_gripper()``, ``close_gripper()``.

Skills of this kind (a library of parameterised primitives an LLM sequences, with corrections that
change their named parameters) follow DROC (Zha et al., "Distilling and Retrieving Generalizable
Knowledge for Robot Manipulation via Language Corrections", 2023; Stanford-ILIAD/droc) and
code-as-policies (Liang et al., 2022). Here they drive any hilrl arm env through ``env.step`` with
delta actions, reading only the observation (``ee_pos``, ``gripper``) and object positions from a pose
source: the task's ``obs["object"]`` (:func:`task_objects`, the sim tasks and the robot server's MuJoCo
driver alike) or any callable ``obs -> {name: xyz}`` (a tracker on a real arm). So the same plan runs
on a sim task and through :class:`~hilrl.envs.remote.RemoteArmEnv`.

Every call is validated (:func:`validate_call`: known skill, known parameters, numbers finite and inside
their bounds, objects in the scene) before the first action is sent; a call that fails never moves the arm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hilrl.errors import HilrlError

__all__ = ["PARAMS", "SKILLS", "Param", "SkillCall", "SkillError", "SkillResult", "SkillRunner", "SkillSpec",
           "task_objects", "validate_call"]

FULL_OPENING = 0.08  # m: the finger gap of a fully open gripper (two fingers of 4 cm)
ObjectPoses = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class SkillError(HilrlError, ValueError):
    """A skill call that is not valid (unknown skill or parameter, a value out of bounds, an unknown object)."""


@dataclass(frozen=True)
class Param:
    """One named, bounded skill parameter.

    Args:
        name: the keyword.
        kind: ``number``, ``vector3`` (a position, m, bounded by the workspace), ``vector2`` (a direction on the
            table, normalised), or ``object`` (an object name of the scene).
        doc: one line for the prompt.
        default: the value when a plan leaves it out (None: required).
        low, high: bounds of a number.
        step: a ``number``'s change for one plain correction ("higher", "slower"); see :mod:`hilrl.llm.droc.corrections`.
        change: ``add`` (the step is added: lengths) or ``scale`` (the value is multiplied by ``step``: speeds).
    """

    name: str
    kind: Literal["number", "vector3", "vector2", "object"]
    doc: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    change: Literal["add", "scale"] = "add"

    def describe(self) -> dict[str, Any]:
        """The parameter as the planner's prompt shows it."""
        out: dict[str, Any] = {"type": self.kind, "doc": self.doc}
        if self.low is not None:
            out["min"], out["max"] = self.low, self.high
        if self.default is not None:
            out["default"] = self.default
        return out


@dataclass(frozen=True)
class SkillSpec:
    """A skill's name, what it does, and its parameters."""

    name: str
    doc: str
    params: tuple[Param, ...] = ()

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise SkillError(f"{self.name} has no parameter {name!r}; its parameters: "
                         f"{', '.join(p.name for p in self.params) or 'none'}")

    def describe(self) -> dict[str, Any]:
        return {"doc": self.doc, "parameters": {p.name: p.describe() for p in self.params}}


_SPEED = Param("speed", "number", "fraction of the arm's top speed (1.0: 5 cm per 0.1 s step)", 1.0, 0.05, 1.0,
               step=0.5, change="scale")
SKILLS: dict[str, SkillSpec] = {s.name: s for s in (
    SkillSpec("move_to", "move the tool centre point in a straight line to pose (keeps the gripper as it is)", (
        Param("pose", "vector3", "[x, y, z] world position in metres, inside the workspace"),
        _SPEED)),
    SkillSpec("grasp", "open to width, hover approach above the grasp point, descend, close, lift by approach", (
        Param("object", "object", "name of the object to grasp"),
        Param("height_offset", "number", "grasp point height above the object's centre (m)", 0.0, -0.04, 0.1,
              step=0.04),
        Param("approach", "number", "height above the grasp point to descend from and to lift by (m)", 0.06, 0.03,
              0.2, step=0.04),
        Param("width", "number", "finger gap to open to before descending (m)", 0.08, 0.02, 0.08, step=0.02))),
    SkillSpec("place", "move the held object's centre in a straight line to height above target; does not release", (
        Param("target", "object", "name of the object or goal to place at"),
        Param("height", "number", "height of the held object's centre above the target (m)", 0.0, 0.0, 0.2,
              step=0.04))),
    SkillSpec("push", "close the gripper, stand behind the object, push it along direction by distance, lift clear", (
        Param("object", "object", "name of the object to push"),
        Param("direction", "vector2", "[dx, dy] direction on the table (normalised)"),
        Param("distance", "number", "how far the object should move (m)", 0.1, 0.0, 0.3, step=0.04),
        _SPEED)),
    SkillSpec("open_gripper", "open the fingers fully (releases a held object)"),
    SkillSpec("close_gripper", "close the fingers"),
)}
PARAMS: dict[tuple[str, str], Param] = {(s.name, p.name): p for s in SKILLS.values() for p in s.params}


@dataclass(frozen=True)
class SkillCall:
    """A validated skill call: every parameter present, with its default where the plan left it out."""

    skill: str
    args: dict[str, Any]

    def text(self) -> str:
        def show(value: Any) -> str:
            if isinstance(value, (list, tuple)):
                return "[" + ", ".join(f"{v:.3g}" for v in value) + "]"
            return f"{value:.3g}" if isinstance(value, float) else str(value)

        return f"{self.skill}(" + ", ".join(f"{k}={show(v)}" for k, v in self.args.items()) + ")"

    def to_dict(self) -> dict[str, Any]:
        return {"skill": self.skill, "args": dict(self.args)}


def validate_call(skill: Any, args: Any, objects: list[str] | tuple[str, ...],
                  workspace: tuple[np.ndarray, np.ndarray]) -> SkillCall:
    """Check one call and fill in defaults.

    Args:
        skill: the skill name.
        args: its keyword arguments (a mapping).
        objects: names of the scene's objects.
        workspace: (low, high) corners of the tool-centre-point box (m).

    Raises:
        SkillError: naming the skill, the parameter, the value and what is allowed.
    """
    if skill not in SKILLS:
        raise SkillError(f"unknown skill {skill!r}; the skills are {', '.join(SKILLS)}")
    spec = SKILLS[skill]
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise SkillError(f"{skill}: args must be an object of named parameters, got {type(args).__name__}")
    extra = sorted(set(args) - {p.name for p in spec.params})
    if extra:
        raise SkillError(f"{skill} has no parameter {extra[0]!r}; its parameters: "
                         f"{', '.join(p.name for p in spec.params) or 'none'}")
    out: dict[str, Any] = {}
    for p in spec.params:
        value = args.get(p.name, p.default)
        if value is None:
            raise SkillError(f"{skill}: parameter {p.name!r} is required ({p.doc})")
        out[p.name] = _check_value(skill, p, value, objects, workspace)
    return SkillCall(skill, out)


def _check_value(skill: str, p: Param, value: Any, objects, workspace) -> Any:
    where = f"{skill}.{p.name}"
    if p.kind == "object":
        if value not in objects:
            raise SkillError(f"{where}={value!r}: no such object in the scene; the objects are {', '.join(objects)}")
        return value
    if p.kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SkillError(f"{where}={value!r}: must be a finite number in [{p.low}, {p.high}]")
        if not p.low <= value <= p.high:
            raise SkillError(f"{where}={value}: out of bounds; allowed [{p.low}, {p.high}]")
        return float(value)
    size = 3 if p.kind == "vector3" else 2
    if (not isinstance(value, (list, tuple)) or len(value) != size
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise SkillError(f"{where}={value!r}: must be a list of {size} finite numbers")
    vector = np.asarray(value, dtype=np.float64)
    if p.kind == "vector3":
        low, high = workspace
        if np.any(vector < low - 1e-9) or np.any(vector > high + 1e-9):
            raise SkillError(f"{where}={list(value)}: outside the workspace; x in [{low[0]}, {high[0]}], "
                             f"y in [{low[1]}, {high[1]}], z in [{low[2]}, {high[2]}] (m)")
        return [float(v) for v in vector]
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        raise SkillError(f"{where}={list(value)}: a direction needs a nonzero length")
    return [float(v) for v in vector / norm]


# Where each task's obs["object"] holds its objects' positions (see each task's docstring).
_OBJECT_SLOTS: dict[str, dict[str, int]] = {
    "Reach": {"goal": 0},
    "Push": {"block": 0, "goal": 7},
    "PickCube": {"block": 0, "goal": 7},
    "PegInsert": {"peg": 0, "hole": 7},
}


def task_objects(task_name: str) -> ObjectPoses:
    """The pose source of a hilrl task: object name -> position, read from ``obs["object"]``.

    Raises:
        SkillError: the task has no known object layout (give the runner a pose source instead).
    """
    if task_name not in _OBJECT_SLOTS:
        raise SkillError(f"no object layout for task {task_name!r}; known: {', '.join(_OBJECT_SLOTS)} (or pass "
                         "poses=callable(obs) -> {name: xyz} to SkillRunner)")
    slots = _OBJECT_SLOTS[task_name]

    def poses(obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = np.asarray(obs["object"], dtype=np.float64)
        return {name: values[start:start + 3].copy() for name, start in slots.items()}

    poses.names = tuple(slots)  # type: ignore[attr-defined]
    return poses


@dataclass
class SkillResult:
    """What a skill did: ``ok``; ``reason`` says why not (or what happened); ``steps`` env steps taken."""

    ok: bool
    reason: str = ""
    steps: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


class Interrupted(Exception):
    """The monitor asked to stop mid-skill (a person typed a correction)."""


class SkillRunner:
    """Runs skill calls on an env, one env step at a time.

    Args:
        env: a hilrl arm env (sim or :class:`~hilrl.envs.remote.RemoteArmEnv`); translation actions only
            are used (rotation deltas, if any, stay 0).
        poses: pose source ``obs -> {name: xyz}``; default :func:`task_objects` of the env's task.
        monitor: called after every env step; returning True stops the running skill (it returns
            ``ok=False, reason="interrupted"``) with the arm holding where it is.
        max_skill_steps: env steps one skill may take before it gives up.
    """

    tolerance = 0.005  # m: a motion has arrived

    def __init__(self, env: Any, poses: ObjectPoses | None = None, monitor: Callable[[], bool] | None = None,
                 max_skill_steps: int = 80) -> None:
        base = env.unwrapped
        self.env = env
        self.action_scale = float(base.action_scale)
        self.workspace = (np.asarray(base.workspace[0], np.float64), np.asarray(base.workspace[1], np.float64))
        self.action_dim = int(np.prod(env.action_space.shape))
        self.poses = poses or task_objects(base.task_name)
        self.monitor = monitor
        self.max_skill_steps = int(max_skill_steps)
        self.obs: dict[str, np.ndarray] = {}
        self.info: dict[str, Any] = {}
        self.gripper = 1.0
        self.held: tuple[str, np.ndarray] | None = None  # object name, tcp minus object centre at the grasp
        self.steps = 0
        self.truncated = False

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(self.poses(self.obs)) if self.obs else tuple(getattr(self.poses, "names", ()))

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start the task again (``env.reset(seed=seed)``): gripper open, nothing held."""
        self.obs, self.info = self.env.reset(seed=seed)
        self.gripper, self.held, self.steps, self.truncated = 1.0, None, 0, False
        return self.obs

    def object_positions(self) -> dict[str, np.ndarray]:
        return self.poses(self.obs)

    def validate(self, skill: Any, args: Any) -> SkillCall:
        return validate_call(skill, args, self.objects, self.workspace)

    def run(self, call: SkillCall | Mapping[str, Any]) -> SkillResult:
        """Validate and run one call (``SkillCall`` or ``{"skill", "args"}``); the arm holds afterwards.

        Raises:
            SkillError: the call is not valid (nothing was sent to the arm).
        """
        if not isinstance(call, SkillCall):
            call = self.validate(call.get("skill"), call.get("args"))
        else:
            call = self.validate(call.skill, call.args)
        start = self.steps
        try:
            result = getattr(self, f"_{call.skill}")(**call.args)
        except Interrupted:
            result = SkillResult(False, "interrupted (a correction came in)")
        if self.truncated and result.ok:
            result = SkillResult(False, "the episode's time limit ran out")
        result.steps = self.steps - start
        return result

    @property
    def success(self) -> bool:
        """The task's own success flag after the last step."""
        return bool(self.info.get("is_success", False))

    # ------------------------------------------------------------------ motion
    def _step(self, delta: np.ndarray) -> None:
        action = np.zeros(self.action_dim, dtype=np.float32)
        action[:3] = np.clip(delta / self.action_scale, -1.0, 1.0)
        action[-1] = self.gripper
        self.obs, _, _, truncated, self.info = self.env.step(action)
        self.steps += 1
        self.truncated = self.truncated or bool(truncated)
        if self.monitor is not None and self.monitor():
            raise Interrupted

    def _ee(self) -> np.ndarray:
        return np.asarray(self.obs["ee_pos"], np.float64)

    def _gap(self) -> float:
        return float(self.obs["gripper"][0]) * FULL_OPENING

    def _clip(self, point: np.ndarray) -> np.ndarray:
        return np.clip(point, self.workspace[0], self.workspace[1])

    def _capped(self, error: np.ndarray, speed: float) -> np.ndarray:
        """``error`` shortened so no axis moves more than ``speed`` of the top speed this step."""
        limit = speed * self.action_scale
        biggest = float(np.max(np.abs(error)))
        return error if biggest <= limit else error * (limit / biggest)

    def _move(self, target: np.ndarray, speed: float, tolerance: float | None = None) -> bool:
        """Straight-line move of the tool centre point; False when it stalls or runs out of steps."""
        target = self._clip(np.asarray(target, np.float64))
        tolerance = tolerance or self.tolerance
        best, stalled = np.inf, 0
        for _ in range(self.max_skill_steps):
            error = target - self._ee()
            distance = float(np.linalg.norm(error))
            if distance < tolerance:
                return True
            stalled = stalled + 1 if distance > best - 1e-3 else 0
            best = min(best, distance)
            if stalled >= 6:
                return False
            self._step(self._capped(error, speed))
        return False

    def _hold(self, steps: int) -> None:
        target = self._ee()
        for _ in range(steps):
            self._step(target - self._ee())

    # ------------------------------------------------------------------ skills
    def _move_to(self, pose: list[float], speed: float) -> SkillResult:
        if self._move(np.asarray(pose), speed):
            return SkillResult(True, "arrived")
        gap = float(np.linalg.norm(self._clip(np.asarray(pose)) - self._ee()))
        return SkillResult(False, f"stopped {gap * 100:.1f} cm short of {list(np.round(pose, 3))}: blocked")

    def _open_gripper(self) -> SkillResult:
        self.gripper, self.held = 1.0, None
        self._hold(6)
        return SkillResult(True, "opened")

    def _close_gripper(self) -> SkillResult:
        self.gripper = -1.0
        self._hold(6)
        return SkillResult(True, "closed")

    def _grasp(self, object: str, height_offset: float, approach: float, width: float) -> SkillResult:  # noqa: A002
        self.gripper, self.held = width / (FULL_OPENING / 2) - 1.0, None
        start = self.object_positions()[object]
        point = self._clip(start + (0.0, 0.0, height_offset))
        hover = point + (0.0, 0.0, approach)
        ee = self._ee()
        if ee[2] < hover[2] - self.tolerance:  # rise before moving sideways
            self._move(np.array([ee[0], ee[1], hover[2]]), 0.8)
        # over the object at the travel height, then straight down: a slanted approach catches a tall
        # object's top with the open fingers
        self._move(np.array([hover[0], hover[1], max(self._ee()[2], hover[2])]), 0.8)
        if not self._move(hover, 0.8):
            return SkillResult(False, f"could not reach the hover point above the {object}")
        if not self._move(point, 0.3):
            short = float(self._ee()[2] - point[2])
            return SkillResult(False, f"the hand stopped {short * 100:.1f} cm above the grasp point: it hit the "
                                      f"{object}")
        self.gripper = -1.0
        self._hold(8)
        if self._gap() < 0.006:
            return SkillResult(False, f"the fingers closed on nothing: the {object} is not between them")
        before = self.object_positions()[object][2]
        self._move(self._ee() + (0.0, 0.0, approach), 0.5)
        risen = self.object_positions()[object][2] - before
        if risen < 0.5 * approach:
            return SkillResult(False, f"the {object} slipped out of the fingers (rose {risen * 100:.1f} cm of "
                                      f"{approach * 100:.1f})")
        self.held = (object, self._ee() - self.object_positions()[object])
        return SkillResult(True, f"holding the {object}", detail={"grasp_offset": (point - start).tolist()})

    def _place(self, target: str, height: float) -> SkillResult:
        if self.held is None:
            return SkillResult(False, "nothing is held: grasp an object first")
        name, offset = self.held
        goal = self.object_positions()[target] + (0.0, 0.0, height)
        best, stalled = np.inf, 0
        for _ in range(self.max_skill_steps):
            positions = self.object_positions()
            obj = positions[name]
            if float(np.linalg.norm(self._ee() - obj - offset)) > 0.03:
                self.held = None
                return SkillResult(False, f"the {name} dropped out of the gripper on the way to the {target}")
            error = goal - obj
            distance = float(np.linalg.norm(error))
            if distance < self.tolerance:
                return SkillResult(True, f"the {name} is at the {target}")
            stalled = stalled + 1 if distance > best - 1e-3 else 0
            best = min(best, distance)
            if stalled >= 6:
                break
            self._step(self._capped(error, 0.5))
        distance = float(np.linalg.norm(goal - self.object_positions()[name]))
        if distance < 0.01:  # resting on something within a centimetre of its place (a peg on the hole's wall)
            return SkillResult(True, f"the {name} rests {distance * 100:.1f} cm from its place at the {target}")
        return SkillResult(False, f"the {name} stopped {distance * 100:.1f} cm from its place at the {target}: it hit "
                                  "something on the way")

    def _push(self, object: str, direction: list[float], distance: float, speed: float) -> SkillResult:  # noqa: A002
        unit = np.array([direction[0], direction[1], 0.0])
        self.gripper = -1.0
        start = self.object_positions()[object]
        behind = start - 0.07 * unit
        low = max(0.02, float(self.workspace[0][2]))
        safe = max(self._ee()[2], start[2] + 0.08)
        ee = self._ee()
        self._move(np.array([ee[0], ee[1], safe]), 0.8)
        self._move(np.array([behind[0], behind[1], safe]), 0.8)
        if not self._move(np.array([behind[0], behind[1], low]), 0.5):
            return SkillResult(False, f"could not lower the fingers behind the {object}")
        travelled = moved = 0.0
        for _ in range(self.max_skill_steps):
            if moved >= distance or travelled > distance + 0.12:
                break
            before = self._ee()
            # the stroke slows down over its last centimetres (as PushExpert's does), so the object is not kicked
            stride = min(speed * self.action_scale, max(distance - moved, 0.004))
            self._step(unit * stride + (0.0, 0.0, low - before[2]))
            travelled += float(np.linalg.norm((self._ee() - before)[:2]))
            moved = float((self.object_positions()[object] - start) @ unit)
        self._move(self._ee() - 0.02 * unit, 0.3)  # back off first: lifting while in contact drags the object
        self._move(self._ee() + (0.0, 0.0, 0.06), 0.8)
        self._hold(4)  # let the object come to rest before anyone looks
        moved = float((self.object_positions()[object] - start) @ unit)
        if moved < 0.5 * distance:
            return SkillResult(False, f"the pusher missed the {object}: it moved {moved * 100:.1f} cm of "
                                      f"{distance * 100:.1f}")
        return SkillResult(True, f"the {object} moved {moved * 100:.1f} cm (asked {distance * 100:.1f})",
                           detail={"moved": moved})
