"""A correction session (DROC: Zha et al. 2023, Stanford-ILIAD/droc): plan, execute skill by skill, take a
person's corrections at any point, distil what they taught at the end.

:meth:`CorrectionSession.run` for one task:

1. Retrieve knowledge for the new scene (:func:`hilrl.llm.droc.retrieval.retrieve`) and show it to the person;
   its constraints and skill parameters go into the first plan.
2. Ask the LLM for a plan; it is validated before anything moves (:class:`~hilrl.llm.droc.planner.PlanError`).
3. Run the plan skill by skill. The person may type a correction while a skill runs (it stops the skill,
   the arm holds) or after an attempt fails. Each correction is classified: ``stop`` holds and waits for
   the next words; ``skill`` changes one named parameter of one step by the documented rule
   (:mod:`hilrl.llm.droc.corrections`); ``plan`` adds the violated constraint and asks for a new plan.
   Every new attempt starts the task again from the same start (``env.reset(seed)``).
4. After success, distil the corrections into knowledge-base entries, each with the visual feature of its
   object (skill entries) or of the scene (constraints) and, for a grasp, the object-relative grasp offset.

The person is any :class:`Person`: :class:`TerminalPerson` (``hilrl correct``) or :class:`ScriptedPerson`
(tests, ``benchmarks/corrections.py``), which says the right correction for each failure from a table.
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import numpy as np

from hilrl.envs.crops import PinholeCamera, scene_feature, visual_feature
from hilrl.envs.skills import SkillCall, SkillError, SkillResult, SkillRunner
from hilrl.envs.tasks.variants import Variant
from hilrl.llm.droc.corrections import apply_correction
from hilrl.llm.droc.knowledge import Entry, KnowledgeBase
from hilrl.llm.droc.planner import DrocPlanner, PlanError, Scene
from hilrl.llm.droc.retrieval import MiniLM, Retrieved, TextEncoder, retrieve

__all__ = ["CORRECTIONS", "AttemptReport", "CorrectionSession", "Person", "ScriptedPerson", "TaskOutcome",
           "TerminalPerson", "make_session_env"]


@dataclass
class AttemptReport:
    """What the person saw of one attempt."""

    task_name: str
    plan: list[SkillCall]
    results: list[SkillResult]
    success: bool
    end: str = ""  # where the task's object was left, when the task is not done (:meth:`CorrectionSession.end_state`)

    @property
    def failed_skill(self) -> str | None:
        """The skill that failed, or the last one run when every skill ran but the task was not done."""
        for call, result in zip(self.plan, self.results):
            if not result.ok:
                return call.skill
        return self.plan[len(self.results) - 1].skill if self.results and not self.success else None


class Person(Protocol):
    def show(self, text: str) -> None:
        """Tell the person something."""

    def poll(self) -> str | None:
        """A correction typed while the arm moves, if any (never blocks)."""

    def correction(self, report: AttemptReport) -> str | None:
        """The person's words after a failed attempt (or a stop); None gives up."""


# The right correction for each failure a person would see (task, failing skill), as the benchmark's person says it.
# A value is the words, or (what the failure said, words) pairs checked in order.
# The cues are in the skill's reason or in the attempt's end (``AttemptReport.end``). Beside a grasp too low or too
# high, the person has words for the plans Qwen2.5-Coder-1.5B wrote for a block held at a goal in the air: the
# block placed above the goal or let go of there (it copied the plan prompt's old example, which did both), a
# plan that ends holding the block where it was grasped, a move_to that drives the hand into the block.
CORRECTIONS: dict[tuple[str, str], str | list[tuple[str, str]]] = {
    ("PickCube", "grasp"): [("hit the block", "grasp it a bit higher"), ("closed on nothing", "grasp it a bit lower"),
                            ("holding the block", "after grasping it, bring the block to the goal")],
    ("PickCube", "place"): [("above the goal", "put the block lower, right at the goal")],
    ("PickCube", "open_gripper"): "don't let go of the block, keep holding it at the goal",
    ("PickCube", "move_to"): [("blocked", "don't drive the hand into the block, grasp it from above")],
    ("PegInsert", "place"): "lift the peg above the block before moving it over the hole",
    ("Push", "push"): "push it more slowly",
}


class ScriptedPerson:
    """A person who says the correction :data:`CORRECTIONS` holds for the failure they see.

    Args:
        table: (task name, failing skill) -> words, or (cue in the failure's reason, words) pairs; default
            :data:`CORRECTIONS`.
        interrupt: words to type during the first skill of the first attempt (tests "at any point").
    """

    def __init__(self, table: dict[tuple[str, str], Any] | None = None, interrupt: str | None = None) -> None:
        self.table = CORRECTIONS if table is None else table
        self.interrupt = interrupt
        self.said: list[str] = []
        self.lines: list[str] = []

    def show(self, text: str) -> None:
        self.lines.append(text)

    def poll(self) -> str | None:
        words, self.interrupt = self.interrupt, None
        if words:
            self.said.append(words)
        return words

    def correction(self, report: AttemptReport) -> str | None:
        words = self.table.get((report.task_name, report.failed_skill or ""))
        if isinstance(words, list):
            seen = " ".join([*(r.reason for r in report.results), report.end])
            words = next((said for cue, said in words if cue in seen), None)
        if words:
            self.said.append(words)
        return words


QUIT = ("quit", "q", "exit")


class TerminalPerson:
    """A person at a terminal: lines typed while the arm moves interrupt it; after a failure they are asked.

    Args:
        stdin, stdout: the terminal (default the process's).
    """

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        self.stdin, self.stdout = stdin or sys.stdin, stdout or sys.stdout
        self.quitting = False

    def show(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def poll(self) -> str | None:
        if self.quitting:
            return None
        try:
            ready, _, _ = select.select([self.stdin], [], [], 0)
        except (ValueError, OSError):  # not a selectable stream (a test's StringIO)
            return None
        if not ready:
            return None
        line = self.stdin.readline()
        words = line.strip()
        if not line:  # the end of input: nothing more will be typed, let the arm go on
            self.quitting = True
            return None
        if words.lower() in QUIT:  # quit while the arm moves: stop it, then give up
            self.quitting = True
            return "stop"
        return words or None

    def correction(self, report: AttemptReport) -> str | None:
        if self.quitting:
            return None
        self.stdout.write("what should change? type a correction (or 'quit')\ncorrection> ")
        self.stdout.flush()
        line = self.stdin.readline()
        words = line.strip()
        return None if not line or words.lower() in QUIT else words or self.correction(report)


@dataclass
class TaskOutcome:
    """How one task went."""

    variant: str
    success: bool
    corrections: list[str] = field(default_factory=list)
    attempts: int = 0
    applied: list[Entry] = field(default_factory=list)
    distilled: list[Entry] = field(default_factory=list)
    plan: list[SkillCall] = field(default_factory=list)
    message: str = ""


class CorrectionSession:
    """Runs tasks with a person and an LLM, and keeps what they teach.

    Args:
        env: the arm env (sim task or remote arm), made for this session (:func:`make_session_env`).
        planner: the LLM calls.
        person: who watches and corrects.
        kb: the knowledge base; None keeps nothing between tasks.
        retrieval: ``text+visual`` or ``text`` (how skill entries are chosen).
        encoder: text embeddings (default :class:`~hilrl.llm.droc.retrieval.MiniLM`, loaded on first use).
        max_corrections: corrections accepted per task.
        image: ``(env, obs) -> front image or None``; default: render the sim's front camera, or a remote
            arm's ``front`` observation.
    """

    def __init__(self, env: Any, planner: DrocPlanner, person: Person, kb: KnowledgeBase | None = None,
                 retrieval: str = "text+visual", encoder: TextEncoder | None = None, max_corrections: int = 5,
                 image: Callable[[Any, dict], np.ndarray | None] | None = None) -> None:
        self.env, self.planner, self.person, self.kb = env, planner, person, kb
        self.retrieval, self.encoder = retrieval, encoder or MiniLM()
        self.max_corrections = max_corrections
        self._pending: str | None = None
        self.runner = SkillRunner(env, monitor=self._typed)
        self.camera = PinholeCamera.for_task(env.unwrapped.task_name)
        self.image = image or front_image

    def _typed(self) -> bool:
        words = self.person.poll()
        if words:
            self._pending = words
        return bool(words)

    def run(self, variant: Variant, seed: int) -> TaskOutcome:
        """One task until success, the person gives up, or ``max_corrections``."""
        say, runner = self.person.show, self.runner
        obs = runner.reset(seed)
        scene = Scene(variant.task_id, variant.description, runner.object_positions(), runner.workspace)
        picture = self.image(self.env, obs)
        features = {name: None if picture is None else visual_feature(picture, self.camera, pos)
                    for name, pos in scene.positions.items()}
        found = Retrieved()
        if self.kb is not None:
            found = retrieve(self.kb, self.planner, scene, features, self.encoder, self.retrieval)
        outcome = TaskOutcome(variant.name, False, applied=found.entries)
        for entry in found.entries:
            say(f"knowledge applied: {entry.summary()}")
        constraints = [e.text for e in found.constraints]
        parameters = [{"skill": e.skill, "object": e.object, "parameters": e.parameters} for e in found.skills]
        try:
            plan = self.planner.plan(scene, constraints, parameters)
        except PlanError as exc:
            outcome.message = str(exc)
            say(f"no plan: {exc}")
            return outcome
        first_plan, history = plan, []
        while True:
            outcome.attempts += 1
            report = self._attempt(plan, seed, outcome.attempts)
            if report.success:
                break
            words, self._pending = self._pending, None
            if len(outcome.corrections) >= self.max_corrections:
                outcome.message = f"not done after {len(outcome.corrections)} corrections"
                break
            words = words or self.person.correction(report)
            record = None
            while words is not None:
                plan, record = self._correct(words, plan, report, scene, constraints, parameters, history)
                if record is not None:
                    break
                words = self.person.correction(report)  # stopped: the arm holds; listen again
            if words is None:
                outcome.message = "the person gave up"
                break
            outcome.corrections.append(words)
            history.append(record)
        outcome.success, outcome.plan = report.success, plan
        say(f"task {'done' if outcome.success else 'not done'} after {len(outcome.corrections)} correction(s)"
            + (f": {outcome.message}" if outcome.message else ""))
        if outcome.success and history and self.kb is not None:
            outcome.distilled = self._distill(variant, scene, features, picture, first_plan, plan, history)
        return outcome

    def _attempt(self, plan: list[SkillCall], seed: int, number: int) -> AttemptReport:
        """Run the plan from the task's start, skill by skill, until one fails (or a correction stops it)."""
        runner, say = self.runner, self.person.show
        runner.reset(seed)
        say(f"attempt {number}: " + "; ".join(c.text() for c in plan))
        results = []
        for index, call in enumerate(plan):
            result = runner.run(call)
            results.append(result)
            say(f"  step {index} {call.skill}: {'ok' if result.ok else 'FAILED'} - {result.reason}")
            if not result.ok:
                break
        done = runner.success and len(results) == len(plan) and all(r.ok for r in results)
        end = "" if done else self.end_state(plan, results)
        if end and all(r.ok for r in results):
            say(f"  every step ran but the task is not done: {end}")
        return AttemptReport(self.env.unwrapped.task_name, plan, results, done, end)

    def end_state(self, plan: list[SkillCall], results: list[SkillResult]) -> str:
        """Where the task's object was left, as a person watching sees it: ``the block's centre is 4.0 cm above
        the goal``, and ``, not in the gripper`` when a grasp held it and nothing holds it now. The object is the
        first of the task's layout and its target the last (:func:`hilrl.envs.skills.task_objects`: block and
        goal, peg and hole). Every step can run as asked with the task not done (a place 4 cm above a goal in
        the air, an open_gripper after it), and then the skills' reasons alone do not say what went wrong."""
        positions = self.runner.object_positions()
        if len(positions) < 2:
            return ""
        names = list(positions)
        thing, target = names[0], names[-1]
        offset = positions[thing] - positions[target]
        across = float(np.linalg.norm(offset[:2]))
        side = "above" if offset[2] > across else "below" if -offset[2] > across else "away from"
        text = f"the {thing}'s centre is {float(np.linalg.norm(offset)) * 100:.1f} cm {side} the {target}"
        grasped = any(c.skill == "grasp" and r.ok for c, r in zip(plan, results))
        return text + (", not in the gripper" if grasped and self.runner.held is None else "")

    def _correct(self, words: str, plan: list[SkillCall], report: AttemptReport, scene: Scene,
                 constraints: list[str], parameters: list[dict[str, Any]],
                 history: list[dict[str, Any]]) -> tuple[list[SkillCall], dict[str, Any] | None]:
        """The plan after one correction, and its record (None for a stop)."""
        say, results = self.person.show, report.results
        shown = [{"skill": c.skill, "ok": r.ok, "reason": r.reason} for c, r in zip(plan, results)]
        if report.end and shown and all(r.ok for r in results):  # the steps' reasons do not say what is wrong
            shown[-1]["reason"] += f"; after it the task is not done: {report.end}"
        kind = self.planner.classify(words, plan, shown)
        if kind.level == "stop":
            say("stopped; the arm holds")
            return plan, None
        if kind.level == "skill":
            step = kind.step if kind.step is not None and 0 <= kind.step < len(plan) else max(len(results) - 1, 0)
            change = self.planner.skill_correction(words, step, plan, history)
            try:
                plan, note = apply_correction(plan, change)
            except SkillError as exc:
                say(f"could not apply that correction ({exc}); try naming the skill and what to change")
                return plan, {"correction": words, "level": "skill", "error": str(exc)}
            call = plan[change.step]
            target = call.args.get("object") or call.args.get("target")
            parameters[:] = [p for p in parameters if (p["skill"], p["object"]) != (call.skill, target)]
            parameters.append({"skill": call.skill, "object": target,
                               "parameters": {k: v for k, v in call.args.items() if isinstance(v, float)}})
            say(f"skill-level correction: {note}")
            return plan, {"correction": words, "level": "skill", "step": change.step, "parameter": change.parameter,
                          "value": call.args[change.parameter]}
        rule, objects = self.planner.constraint(words, scene, plan, shown)
        constraints.append(rule)
        say(f"plan-level correction: constraint '{rule}'; replanning")
        try:
            plan = self.planner.plan(scene, constraints, parameters)
        except PlanError as exc:
            say(f"no new plan ({exc}); keeping the last one")
        return plan, {"correction": words, "level": "plan", "constraint": rule, "objects": objects}

    def _distill(self, variant: Variant, scene: Scene, features: dict[str, np.ndarray | None],
                 picture: np.ndarray | None, first_plan: list[SkillCall], plan: list[SkillCall],
                 history: list[dict[str, Any]]) -> list[Entry]:
        knowledge = self.planner.distill(scene, first_plan, plan, history)
        source = {"variant": variant.name, "corrections": [h["correction"] for h in history]}
        # DROC (Zha et al. 2023) keeps a rule from a plan-level correction and the parameters a skill-level one
        # changed; what else the LLM distils is dropped (Qwen2.5-Coder-1.5B wrote "move to the goal, then grasp"
        # as a rule after two "grasp it a bit higher", and round 2's plans, following it, never placed the block)
        plan_level = any(h.get("level") == "plan" for h in history)
        corrected = {h["parameter"] for h in history if h.get("level") == "skill" and h.get("parameter")}
        saved = []
        for rule in knowledge.constraints if plan_level else []:
            saved.append(self.kb.add("constraint", scene.task_id, rule.text,
                                     feature=None if picture is None else scene_feature(picture),
                                     objects=rule.objects, source=source))
        for taught in knowledge.skills:
            taught = taught.model_copy(update={"parameters": {k: v for k, v in taught.parameters.items()
                                                              if k in corrected}})
            if not taught.parameters:
                continue
            offset = [0.0, 0.0, float(taught.parameters.get("height_offset", 0.0))] if taught.skill == "grasp" \
                else [0.0, 0.0, float(taught.parameters.get("height", 0.0))] if taught.skill == "place" else None
            saved.append(self.kb.add("skill", scene.task_id, taught.text, feature=features.get(taught.object),
                                     objects=[taught.object], skill=taught.skill, object=taught.object,
                                     parameters=dict(taught.parameters), relative_pose=offset, source=source))
        for entry in saved:
            self.person.show(f"saved knowledge: {entry.summary()}")
        return saved


def front_image(env: Any, obs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The front camera image: a remote arm's ``front`` observation, else a render of the sim's front camera."""
    if "front" in obs:
        return np.asarray(obs["front"])
    base = env.unwrapped
    if not hasattr(base, "data"):
        return None
    from hilrl.envs.rendering import CameraRenderer

    renderer = CameraRenderer(base.model, 256, 256)  # once per task: a context of its own, closed at once
    try:
        return renderer.render(base.data, "front")
    finally:
        renderer.close()


def make_session_env(variant: Variant, max_episode_steps: int = 400, remote: str | None = None,
                     viewer: bool = False) -> Any:
    """The env of a session: the variant's sim task, or a remote arm.

    Args:
        variant: the task variant.
        max_episode_steps: env steps of one attempt.
        remote: a robot server address; None runs the sim.
        viewer: open MuJoCo's passive viewer on the sim (only where ``DISPLAY`` is set: without a display
            ``mujoco.viewer.launch_passive`` ends the process).
    """
    if remote:
        from hilrl.envs.remote import RemoteArmEnv

        return RemoteArmEnv(remote, task_id=variant.task_id, max_episode_steps=max_episode_steps,
                            terminate_on_success=False, timeout_s=20)
    import gymnasium as gym

    import hilrl.envs  # noqa: F401  (registers the tasks)

    viewer = viewer and bool(os.environ.get("DISPLAY"))
    env = gym.make(variant.task_id, max_episode_steps=max_episode_steps, terminate_on_success=False,
                   render_mode="human" if viewer else "rgb_array", **variant.kwargs)
    if viewer:
        env.reset()
        env.render()  # opens mujoco's passive viewer, kept in step by every env.step
    return env


def correct_in_terminal(config: Any, kb_folder: str | None = None, person: Person | None = None) -> TaskOutcome:
    """``hilrl correct``: one session of ``config`` (:class:`~hilrl.llm.droc.config.CorrectionConfig`) with a
    person at this terminal, the knowledge base in ``kb_folder`` (default ``config.kb``)."""
    from hilrl.envs.tasks.variants import variant
    from hilrl.llm.droc.scripted import scripted_llm
    from hilrl.llm.providers import load_llm_config, make_llm

    task = variant(config.task)
    folder = kb_folder or config.kb
    kb = None if config.retrieval == "none" else KnowledgeBase(folder)
    log = os.path.join(folder, "llm_calls.jsonl")
    llm = scripted_llm(log) if config.llm == "scripted" else make_llm(load_llm_config(config.llm), log)
    person = person or TerminalPerson()
    env = make_session_env(task, config.max_episode_steps, config.remote, viewer=True)
    try:
        person.show(f"task {task.name}: {task.description} (LLM: {llm.provider} {llm.model}; knowledge: "
                    f"{folder if kb else 'off'}). Type a correction at any time; it stops the arm.")
        session = CorrectionSession(env, DrocPlanner(llm), person, kb=kb,
                                    retrieval=config.retrieval if kb else "text", max_corrections=config.max_corrections)
        return session.run(task, config.seed)
    finally:
        env.close()
        llm.close()
