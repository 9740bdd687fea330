"""The LLM side of a correction session: plan, classify a correction, write corrective parameters, infer a
violated constraint, distil knowledge, pick relevant knowledge. One prompt file each
(``hilrl/llm/prompts/droc_*.txt``); every answer is JSON validated with pydantic, and a plan is also checked
call by call against the skills' schema (:func:`hilrl.envs.skills.validate_call`) before anything runs: a
refused plan goes back to the LLM with the error, and after ``plan_attempts`` refusals :class:`PlanError`
is raised, with the arm never having moved. The steps follow DROC (Zha et al. 2023, Stanford-ILIAD/droc).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hilrl.envs.skills import SKILLS, SkillCall, SkillError, validate_call
from hilrl.errors import HilrlError
from hilrl.llm.droc.corrections import SkillCorrection, size_said
from hilrl.llm.providers import LLM, LLMError

__all__ = ["Classification", "Distilled", "DrocPlanner", "PlanError", "Scene", "prompt"]

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"


def prompt(name: str, **fields: Any) -> str:
    """The prompt file ``droc_NAME.txt`` with ``fields`` filled in."""
    return (PROMPTS / f"droc_{name}.txt").read_text().format(**fields)


class PlanError(HilrlError):
    """The LLM gave no valid plan; nothing was sent to the arm."""


_SKILL_KEYS = ("skill", "name", "action", "function", "tool")
_ARGS_KEYS = ("args", "arguments", "parameters", "params", "kwargs")
_STEP_FORMAT = '{"skill": NAME, "args": {PARAMETER: VALUE, ...}}'


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


class _Call(BaseModel):
    """One plan step, ``{"skill": NAME, "args": {...}}``. The spellings a small model uses for the same thing are
    read as it (``name``/``action``/``function`` for ``skill``; ``arguments``/``parameters``/``params`` for
    ``args``; parameters written beside ``skill`` instead of inside ``args``; ``{NAME: {...}}``; a bare skill
    name); anything else is refused with the format it must have, for the retry."""

    skill: str
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, value: Any) -> Any:
        if isinstance(value, str):  # "open_gripper"
            return {"skill": value, "args": {}}
        if not isinstance(value, dict):
            raise ValueError(f"each plan step must be an object {_STEP_FORMAT}; got {_short(value)}")
        data = dict(value)
        key = next((k for k in _SKILL_KEYS if isinstance(data.get(k), str)), None)
        if key is None:
            if len(data) == 1 and isinstance(next(iter(data.values())), (dict, type(None))):
                name, args = next(iter(data.items()))  # {"grasp": {"object": "cube"}}
                return {"skill": name, "args": args or {}}
            raise ValueError(f'a plan step has no "skill" naming the skill: {_short(value)}; write each step as '
                             f"{_STEP_FORMAT}")
        skill = data.pop(key)
        found = next((k for k in _ARGS_KEYS if k in data), None)
        args = data.pop(found) if found else {}
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ValueError(f'"args" of the {skill} step must be an object of named parameters, e.g. '
                             f'{{"object": "cube"}}; got {_short(args)}')
        return {"skill": skill, "args": {**data, **args}}  # parameters written beside "skill" are its args


class _Plan(BaseModel):
    """``{"plan": [step, ...]}``; a bare list of steps, one step, or ``steps``/``actions`` for ``plan`` read as it."""

    plan: list[_Call]

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"plan": value}
        if isinstance(value, dict) and "plan" not in value:
            for key in ("steps", "actions", "calls", "skills"):
                if isinstance(value.get(key), list):
                    return {"plan": value[key]}
            if any(isinstance(value.get(k), str) for k in _SKILL_KEYS):
                return {"plan": [value]}
            raise ValueError(f'the answer has no "plan": {_short(value)}; answer {{"plan": [{_STEP_FORMAT}, ...]}}')
        if isinstance(value, dict) and not isinstance(value["plan"], list):
            raise ValueError(f'"plan" must be a list of steps {_STEP_FORMAT}; got {_short(value["plan"])}')
        return value


class Classification(BaseModel):
    """The level of a correction. ``reason`` comes first: a grammar-constrained model writes the fields in this
    order, so it says what the person asks before it labels it (Qwen2.5-Coder-1.5B, labelling first, called
    "grasp it a bit higher" plan-level after a two-step plan, and the session replanned instead of raising the
    grasp)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = ""
    level: Literal["plan", "skill", "stop"]
    skill: str | None = None
    step: int | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        """``"Plan-level"``, ``"skill level"``, ``"STOP"`` read as ``plan``, ``skill``, ``stop``."""
        if isinstance(value, str):
            word = value.strip().lower().replace("_", "-").removesuffix("-level").removesuffix(" level").strip()
            if word in ("plan", "skill", "stop"):
                return word
            raise ValueError(f'level must be exactly "plan", "skill" or "stop"; got {value!r}')
        return value


def _has_parameter(skill: str, parameter: str) -> bool:
    try:
        SKILLS[skill].param(parameter)
    except (KeyError, SkillError):
        return False
    return True


def _step_of_skill(skill: str | None, step: int | None, plan: list[SkillCall],
                   results: list[dict[str, Any]]) -> int | None:
    """The plan step a classification is about: ``step`` when it holds the skill named, else that skill's step (the
    first that failed, else the first), else ``step`` as given. Qwen2.5-Coder-1.5B named the grasp but gave the
    index of the step after it (it counted from 1), so the correction went to the wrong skill."""
    if skill is None or (step is not None and 0 <= step < len(plan) and plan[step].skill == skill):
        return step
    found = [i for i, call in enumerate(plan) if call.skill == skill]
    if not found:
        return step
    failed = [i for i in found if i < len(results) and not results[i].get("ok", True)]
    return (failed or found)[0]


class _Constraint(BaseModel):
    constraint: str
    objects: list[str] = Field(default_factory=list)


class _DistilledConstraint(BaseModel):
    text: str
    objects: list[str] = Field(default_factory=list)


class _DistilledSkill(BaseModel):
    skill: str
    object: str
    parameters: dict[str, float]
    text: str = ""


class Distilled(BaseModel):
    constraints: list[_DistilledConstraint] = Field(default_factory=list)
    skills: list[_DistilledSkill] = Field(default_factory=list)


class _Relevant(BaseModel):
    relevant: list[str]


class Scene:
    """What the planner is told about the task: its description and where the objects are.

    Args:
        task_id: the gymnasium id.
        description: the goal in words.
        positions: object name -> position (m).
        workspace: (low, high) of the tool centre point, for validating poses.
    """

    def __init__(self, task_id: str, description: str, positions: dict[str, np.ndarray],
                 workspace: tuple[np.ndarray, np.ndarray]) -> None:
        self.task_id, self.description, self.workspace = task_id, description, workspace
        self.positions = {k: np.asarray(v, np.float64) for k, v in positions.items()}

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(self.positions)

    def objects_json(self) -> str:
        return json.dumps({k: [round(float(x), 3) for x in v] for k, v in self.positions.items()})


def _plan_json(plan: list[SkillCall]) -> str:
    return json.dumps([call.to_dict() for call in plan])


class DrocPlanner:
    """The LLM calls of a session.

    Args:
        llm: any provider (:func:`hilrl.llm.providers.make_llm`).
        plan_attempts: how many plans the LLM may write before :class:`PlanError`.
        temperature: sampling temperature of every request (0: the most likely answer).
    """

    def __init__(self, llm: LLM, plan_attempts: int = 3, temperature: float = 0.0) -> None:
        self.llm, self.plan_attempts, self.temperature = llm, plan_attempts, temperature
        self.system = {"role": "system", "content": (PROMPTS / "droc_system.txt").read_text()}
        self.refusals: list[str] = []  # every plan error sent back to the LLM

    def _ask(self, messages: list[dict[str, str]], schema: type[BaseModel], purpose: str) -> Any:
        return self.llm.chat_json([self.system, *messages], schema, temperature=self.temperature, purpose=purpose)

    def plan(self, scene: Scene, constraints: list[str], parameters: list[dict[str, Any]]) -> list[SkillCall]:
        """A validated plan for ``scene`` that respects ``constraints`` and uses ``parameters``.

        Args:
            scene: the task and its objects.
            constraints: plan-level rules (from the knowledge base and this session's corrections).
            parameters: ``{"skill", "object", "parameters"}`` dicts to use (retrieved or corrected).

        Raises:
            PlanError: no valid plan in ``plan_attempts`` answers (each refusal named).
        """
        skills = json.dumps({name: spec.describe() for name, spec in SKILLS.items()})
        messages = [{"role": "user", "content": prompt(
            "plan", description=scene.description, objects=scene.objects_json(), skills=skills,
            constraints=json.dumps(constraints), parameters=json.dumps(parameters))}]
        problems = []
        for _ in range(self.plan_attempts):
            try:
                answer = self._ask(messages, _Plan, "droc_plan")
            except LLMError as exc:
                raise PlanError(f"the LLM gave no plan in the expected JSON: {exc}") from None
            try:
                if not answer.plan:
                    raise SkillError("the plan is empty; give at least one skill call")
                return [validate_call(c.skill, c.args, scene.objects, scene.workspace) for c in answer.plan]
            except SkillError as exc:
                problems.append(str(exc))
                self.refusals.append(str(exc))
                messages += [{"role": "assistant", "content": answer.model_dump_json()},
                             {"role": "user", "content": prompt("plan_error", error=exc)}]
        raise PlanError(f"the LLM wrote no valid plan in {self.plan_attempts} attempts; nothing was run. Refused: "
                        + " | ".join(problems))

    def classify(self, correction: str, plan: list[SkillCall], results: list[dict[str, Any]]) -> Classification:
        """Plan-level, skill-level or stop."""
        text = prompt("classify", correction=correction, plan=_plan_json(plan), results=json.dumps(results))
        kind = self._ask([{"role": "user", "content": text}], Classification, "droc_classify")
        return kind.model_copy(update={"step": _step_of_skill(kind.skill, kind.step, plan, results)})

    def skill_correction(self, correction: str, step: int, plan: list[SkillCall],
                         history: list[dict[str, Any]]) -> SkillCorrection:
        """Which step and parameter a skill-level correction changes, in which direction, by how much."""
        call = plan[step]
        text = prompt("skill", correction=correction, step=step, skill=call.skill, plan=_plan_json(plan),
                      history=json.dumps(history), schema=json.dumps(SKILLS[call.skill].describe()))
        change = self._ask([{"role": "user", "content": text}], SkillCorrection, "droc_skill")
        if change.step != step and _has_parameter(call.skill, change.parameter) and not (
                0 <= change.step < len(plan) and _has_parameter(plan[change.step].skill, change.parameter)):
            # asked about step `step`, the answer names a parameter of that step's skill under another index
            # (Qwen2.5-Coder-1.5B counted the steps from 1): the step asked about is meant
            change = change.model_copy(update={"step": step})
        said = size_said(correction)
        if said is not None and change.amount is None and change.magnitude != said:
            # the size is in the person's words, and the words' rule wins (DROC asks the LLM which parameter and
            # which way; Qwen2.5-Coder-1.5B labelled "a bit higher" tiny every time, +1 cm per correction, and
            # pick_taller's round 1 never finished)
            change = change.model_copy(update={"magnitude": said})
        return change

    def constraint(self, correction: str, scene: Scene, plan: list[SkillCall],
                   results: list[dict[str, Any]]) -> tuple[str, list[str]]:
        """The rule a plan-level correction says the plan broke, and the objects it is about."""
        text = prompt("constraint", correction=correction, description=scene.description,
                      objects=scene.objects_json(), plan=_plan_json(plan), results=json.dumps(results))
        answer = self._ask([{"role": "user", "content": text}], _Constraint, "droc_constraint")
        return answer.constraint, [o for o in answer.objects if o in scene.objects]

    def distill(self, scene: Scene, first_plan: list[SkillCall], final_plan: list[SkillCall],
                corrections: list[dict[str, Any]]) -> Distilled:
        """Knowledge from a finished task: constraints and skill parameters (validated against the schema).

        Raises:
            LLMError: no valid answer.
        """
        text = prompt("distill", description=scene.description, objects=scene.objects_json(),
                      first_plan=_plan_json(first_plan), final_plan=_plan_json(final_plan),
                      corrections=json.dumps(corrections))
        answer = self._ask([{"role": "user", "content": text}], Distilled, "droc_distill")
        kept = []
        for entry in answer.skills:  # keep what the schema accepts; the rest would not apply anyway
            try:
                validate_call(entry.skill, _required(entry.skill, entry.object, scene) | entry.parameters,
                              scene.objects, scene.workspace)
            except SkillError:
                continue
            kept.append(entry)
        return Distilled(constraints=answer.constraints, skills=kept)

    def pick(self, scene: Scene, entries: list[dict[str, Any]]) -> list[str]:
        """The ids of the shown entries the LLM finds relevant (unknown ids dropped)."""
        text = prompt("retrieve", description=scene.description, objects=scene.objects_json(),
                      entries=json.dumps(entries))
        answer = self._ask([{"role": "user", "content": text}], _Relevant, "droc_retrieve")
        shown = {e["id"] for e in entries}
        return [i for i in answer.relevant if i in shown]


def _required(skill: str, obj: str, scene: Scene) -> dict[str, Any]:
    """Placeholder values for a skill's required parameters, so a distilled entry's own values can be checked."""
    out: dict[str, Any] = {}
    for p in SKILLS[skill].params:
        if p.default is None:
            out[p.name] = obj if p.kind == "object" else (
                [float(v) for v in (scene.workspace[0] + scene.workspace[1]) / 2] if p.kind == "vector3" else [1.0, 0.0])
    return out
