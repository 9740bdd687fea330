"""Interventions: door 1 of the architecture (``docs/ARCHITECTURE.md``). A source may override the policy's
action; every step is marked.

:class:`InterventionWrapper` asks an :class:`InterventionSource` at each step
whether it takes over. ``info`` then carries ``intervened``, ``policy_action``
(what the learner proposed) and ``executed_action`` (what the arm did). The
learner must store the executed action (SB3 issue #1813 is the pitfall).

Simulated interventionists (RLIF, Luo et al. 2023, pd-perry/RLIF @ d177b9b):

* :class:`ValueInterventionist` (RLIF): while the expert is not in control,
  intervene with probability 0.95 when ``Q_ref(s, a_pi) < beta * Q_ref(s, a_ref)``,
  else with 0.05; once triggered the expert acts for 4 steps.
* :class:`DistanceInterventionist` (HG-DAgger): intervene when
  ``||a_expert - a_pi||_1 >= threshold`` (with probability 0.95).
* :class:`RandomInterventionist`: intervene with a fixed probability for a fixed duration.

A simulated person who watches the task rather than the action, :class:`SimulatedPerson`
(``source: person``, settings :class:`PersonSettings` in ``intervention.kwargs``), steps in when the
task stalls, regresses or the arm pushes out of its workspace, drives until progress is restored, and
hands back (HIL-SERL's operators, Luo et al. 2024).

A person on a teleop device is :class:`~hilrl.feedback.teleop.DeviceInterventionist` (HIL-SERL).

Which one a run uses is ``intervention.source``, a name of :data:`INTERVENTIONISTS` (a
:class:`hilrl.plugins.Registry`, the one mechanism of every door). Each registers with a decorator next
to its class and builds itself with ``from_config(intervention_config, context)`` from the
:class:`InterventionContext` the runtime supplies (the env, seeds, an open device, the reference critic),
so this package never imports the runtime. A new interventionist is one file::

    @register_interventionist("every_tenth", config_cls=EveryTenthSettings)  # validates intervention.kwargs
    class EveryTenth:
        @classmethod
        def from_config(cls, config, context): return cls(context.expert(config.expert_noise))
        def reset(self): ...
        def __call__(self, obs, policy_action): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hilrl.errors import HilrlError
from hilrl.plugins import Registry

Obs = dict[str, np.ndarray]
ExpertFn = Callable[[Obs], np.ndarray]
QFn = Callable[[Obs, np.ndarray], float]

# intervention.source -> a class with from_config(config, context) (or a factory called so). ``reference_critic``:
# it reads RLIF's reference critic, which the runtime trains before the run (intervention.q_ref) and hands over
# in the context. ``device``: it reads the person's teleop device named by intervention.device.
INTERVENTIONISTS = Registry("intervention source", defaults={"reference_critic": False, "device": False})
register_interventionist = INTERVENTIONISTS.register


@dataclass
class InterventionContext:
    """What building an interventionist may need of the run, supplied by the runtime.

    Attributes:
        env: the training env (its expert, its observation space).
        expert_seed: seed of the scripted expert a simulated person drives.
        gate_seed: seed of the gate's decisions.
        device: an open :class:`~hilrl.feedback.teleop.TeleopDevice` the caller owns (``None``: open the
            configured one).
        reference_q: loads ``Q_ref(obs, action) -> float``, RLIF's reference critic (``intervention.q_ref``,
            trained before the run by :func:`hilrl.runtime.train.train`); ``None`` when the config names none.
    """

    env: gym.Env
    expert_seed: int | None = None
    gate_seed: int | None = None
    device: Any = None
    reference_q: Callable[[], QFn] | None = None

    def expert(self, noise: float = 0.0) -> ExpertFn:
        """The env's scripted expert at ``noise``, seeded with :attr:`expert_seed`."""
        from hilrl.feedback.experts import make_expert

        return make_expert(self.env, noise=noise, seed=self.expert_seed)

    def intent(self, noise: float) -> ExpertFn | None:
        """What a person driving the expert at ``noise`` means to do: the noise-free expert (``None`` at noise 0,
        where the two are one). The scripted experts are feedback policies of the observation alone, so a second,
        noise-free one gives the intended action of every state."""
        return self.expert(0.0) if noise > 0 else None


def make_interventionist(config: Any, context: InterventionContext) -> InterventionSource:
    """The interventionist ``config.source`` names (a :class:`hilrl.config.InterventionConfig`), built with
    ``context``; ``source: none`` builds nothing (the loop adds no wrapper)."""
    if config.source == "none":
        raise HilrlError("intervention.source 'none': nothing intervenes; the loop builds no wrapper for it")
    factory = INTERVENTIONISTS.get(config.source)
    source = getattr(factory, "from_config", factory)(config, context)
    if not (callable(source) and callable(getattr(source, "reset", None))):
        raise HilrlError(f"intervention source {config.source!r} built {source!r}, which is no interventionist: it "
                         "needs reset() and __call__(obs, policy_action) -> action or None")
    return source


class InterventionSource(Protocol):
    """Decides, given the observation and the policy's proposed action, whether to take over."""

    def reset(self) -> None: ...

    def __call__(self, obs: Obs, policy_action: np.ndarray) -> np.ndarray | None:
        """The action to execute instead of ``policy_action``, or ``None`` to let the policy act."""
        ...


class _HoldingInterventionist:
    """Shared mechanics: once triggered, the expert keeps control for ``duration`` steps.

    The gate judges the policy against ``intent``, the expert's noise-free action, when given: a person
    decides on what they mean to do and executes it with their noise (``expert``). Judging by the noisy
    action fired the gate on the expert's own slips and stored them as corrections (issue 27).
    """

    def __init__(self, expert: ExpertFn, duration: int, seed: int | None, intent: ExpertFn | None = None):
        if duration < 1:
            raise ValueError(f"duration must be >= 1 step, got {duration}")
        self.expert = expert
        self.intent = intent
        self.duration = duration
        self.rng = np.random.default_rng(seed)
        self._remaining = 0

    def reset(self) -> None:
        self._remaining = 0
        for expert in (self.expert, self.intent):
            reset = getattr(expert, "reset", None)
            if reset is not None:
                reset()

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        raise NotImplementedError

    def __call__(self, obs: Obs, policy_action: np.ndarray) -> np.ndarray | None:
        # the expert is queried every step so a stateful scripted expert keeps track of the episode
        expert_action = np.asarray(self.expert(obs), dtype=np.float32)
        meant = expert_action if self.intent is None else np.asarray(self.intent(obs), dtype=np.float32)
        if self._remaining == 0 and self._should_start(obs, policy_action, meant):
            self._remaining = self.duration
        if self._remaining > 0:
            self._remaining -= 1
            return expert_action
        return None


@register_interventionist("value", reference_critic=True)
class ValueInterventionist(_HoldingInterventionist):
    """RLIF's value-based gate with a reference critic ``q_ref(obs, action) -> float``.

    Defaults follow RLIF (pd-perry/RLIF @ d177b9b): beta 0.97 (its Pen value),
    p 0.95 / 0.05, 4 expert steps per intervention.
    """

    def __init__(self, expert: ExpertFn, q_ref: QFn, beta: float = 0.97, duration: int = 4,
                 p_low_value: float = 0.95, p_otherwise: float = 0.05, seed: int | None = None,
                 intent: ExpertFn | None = None):
        super().__init__(expert, duration, seed, intent)
        self.q_ref = q_ref
        self.beta = beta
        self.p_low_value = p_low_value
        self.p_otherwise = p_otherwise

    @classmethod
    def from_config(cls, config: Any, context: InterventionContext) -> ValueInterventionist:
        if context.reference_q is None:
            raise HilrlError("intervention.source 'value' reads a reference critic, and none was given: set "
                             "intervention.q_ref (hilrl train builds it there before the run)")
        return cls(context.expert(config.expert_noise), context.reference_q(), beta=config.beta,
                   duration=config.duration or 4, p_low_value=config.p_intervene, seed=context.gate_seed,
                   intent=context.intent(config.expert_noise))

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        q_policy = self.q_ref(obs, policy_action)
        q_expert = self.q_ref(obs, expert_action)
        # beta * Q assumes positive values; for negative Q the same margin means (2 - beta) * Q
        threshold = self.beta * q_expert if q_expert >= 0 else (2.0 - self.beta) * q_expert
        p = self.p_low_value if q_policy < threshold else self.p_otherwise
        return bool(self.rng.random() < p)


@register_interventionist("distance")
class DistanceInterventionist(_HoldingInterventionist):
    """HG-DAgger's gate: intervene (p=0.95) when ``||a_expert - a_pi||_1 >= threshold``."""

    def __init__(self, expert: ExpertFn, threshold: float, duration: int = 1, p_intervene: float = 0.95,
                 seed: int | None = None, intent: ExpertFn | None = None):
        super().__init__(expert, duration, seed, intent)
        self.threshold = threshold
        self.p_intervene = p_intervene

    @classmethod
    def from_config(cls, config: Any, context: InterventionContext) -> DistanceInterventionist:
        return cls(context.expert(config.expert_noise), config.threshold, duration=config.duration or 1,
                   p_intervene=config.p_intervene, seed=context.gate_seed, intent=context.intent(config.expert_noise))

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        far = float(np.abs(expert_action - policy_action).sum()) >= self.threshold
        return far and bool(self.rng.random() < self.p_intervene)


@register_interventionist("random")
class RandomInterventionist(_HoldingInterventionist):
    """Intervene with probability ``probability`` per step (RLIF's random baseline: 0.3/0.5/0.7/0.85)."""

    def __init__(self, expert: ExpertFn, probability: float, duration: int = 1, seed: int | None = None):
        super().__init__(expert, duration, seed)
        self.probability = probability

    @classmethod
    def from_config(cls, config: Any, context: InterventionContext) -> RandomInterventionist:
        return cls(context.expert(config.expert_noise), config.probability, duration=config.duration or 1,
                   seed=context.gate_seed)

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        return bool(self.rng.random() < self.probability)


class PersonSettings(BaseModel):
    """``intervention.kwargs`` of ``source: person``: how the simulated person (:class:`SimulatedPerson`) behaves.

    The quality of the person's driving is ``intervention.expert_noise`` (the scripted expert's noise).
    Progress is measured as :class:`TaskProgress` says: on a hilrl task a fraction of the way from the
    episode's start (0) to the task's best (1); on another env the env's reward itself, in its units.
    """

    model_config = ConfigDict(extra="forbid")
    stall_steps: int = Field(10, ge=1, description="steps without progress after which the person steps in: "
                             "how long an operator watches an arm that is stuck or dithering (10 = 1 s at 10 Hz)")
    min_progress: float = Field(0.02, gt=0.0, description="the least gain that counts as progress: 2% of the way "
                                "to the goal on a hilrl task (reward units on another env)")
    regress: float = Field(0.1, gt=0.0, description="a fall below the episode's best progress that the person "
                           "reads as heading for failure (the cube knocked away or dropped, the arm moving off the "
                           "goal) once it lasts regress_steps")
    regress_steps: int = Field(3, ge=1, description="steps progress must stay regress below the best before the "
                               "person reads it as heading for failure: a person judges a trend, not a frame (a "
                               "learning arm that backs off a cube for a step or two while lining up a grasp, "
                               "and comes back alone, is no failure; a dropped or knocked cube stays down)")
    workspace_margin: float | None = Field(0.01, ge=0.0, description="m: the arm this close to a side wall or the "
                                           "ceiling of the task's workspace and pushed further out: the person steps "
                                           "in (the table is no wall: grasps happen there); None: never")
    reaction_steps: int = Field(2, ge=0, description="steps between noticing and taking the controls (a person's "
                                "reaction time, 0.2 s at 10 Hz); the policy keeps acting meanwhile, and the person, "
                                "still watching, stands down if the arm is back on track before they take over")
    min_takeover: int = Field(5, ge=1, description="steps the person drives at least once in control")
    max_takeover: int = Field(30, ge=1, description="steps the person drives at most before handing back, "
                              "progress restored or not")
    give_up_steps: int | None = Field(10, ge=1, description="steps of the person's own driving without progress "
                                      "after which they judge the episode lost (the cube knocked or flung out of the "
                                      "arm's reach: the expert pushes against the workspace's wall) and end it as a "
                                      "failure, as HIL-SERL's operators reset a scene the robot cannot finish "
                                      "(truncated: no MDP terminal); None: drive on to the time limit")
    patience: int | None = Field(3, ge=1, description="the takeover of an episode at which the person stops "
                                 "handing back and drives to the episode's end (an operator who saw the policy fail "
                                 "this often finishes the task, so the episode still ends in a success); None: never")
    q_margin: float | None = Field(None, gt=0.0, description="with a reference critic (intervention.q_ref): step in "
                                   "when Q_ref(s, a_policy) < Q_ref(s, a_expert) - q_margin * |Q_ref(s, a_expert)| "
                                   "(the policy's action clearly worse, RLIF's signal); None: not used")

    @model_validator(mode="after")
    def _takeover_range(self) -> PersonSettings:
        if self.min_takeover > self.max_takeover:
            raise ValueError(f"min_takeover {self.min_takeover} exceeds max_takeover {self.max_takeover}; "
                             "make min_takeover <= max_takeover")
        return self


class TaskProgress:
    """How far an episode has got, read after every step: the measure :class:`SimulatedPerson` watches.

    On a hilrl task (:class:`~hilrl.envs.arm_env.ArmEnv`) the dense reward of the current state (the task's
    staged shaping, whatever ``reward_type`` the learner sees; a pure function of the state), as a fraction
    ``(r - r_0) / (r_max - r_0)`` of the way from the episode's first state (0) to the dense reward's maximum
    ``dense_reward_max`` (1): one scale for every task (Reach: the share of the start distance covered;
    PickCube: a grasp is a quarter). On any other env (a foreign gymnasium env, a remote arm) the env's
    own reward minus the first one, in the reward's units: with a dense reward that still tells stalls and
    regressions; with a sparse one only stalls.
    """

    def __init__(self, env: gym.Env):
        base = env.unwrapped
        self._state_reward = getattr(base, "_reward_and_success", None)
        top = getattr(base, "dense_reward_max", None) if self._state_reward is not None else None
        self.top = None if top is None else float(top)
        self.start: float | None = None

    def reset(self) -> float | None:
        """The new episode's start (call after the env's reset); its progress is 0."""
        self.start = self._raw(None)
        return None if self.start is None else 0.0

    def _raw(self, reward: float | None) -> float | None:
        return float(self._state_reward()[0]) if self._state_reward is not None else reward

    def __call__(self, reward: float) -> float:
        """Progress after a step that paid ``reward``."""
        raw = self._raw(reward)
        if self.start is None:
            self.start = raw
        if self.top is not None and self.top - self.start > 1e-6:
            return (raw - self.start) / (self.top - self.start)
        return raw - self.start


@register_interventionist("person", config_cls=PersonSettings)
class SimulatedPerson:
    """A simulated operator who watches the task, not the policy's action (HIL-SERL, Luo et al. 2024, arXiv
    2410.21845: operators step in when the arm heads for failure or gets stuck, and rarely once it works).

    While the policy drives, the person steps in when (a *trigger*):

    * ``stall``: the task's progress (:class:`TaskProgress`) gained less than ``min_progress`` in the last
      ``stall_steps`` steps (never while the task is in its success state);
    * ``regress``: progress has stayed ``regress`` below the episode's best for ``regress_steps`` steps (heading
      for a known failure: the cube knocked away or dropped, the arm moving off the goal);
    * ``workspace``: the arm is within ``workspace_margin`` of a side wall or the ceiling of the task's
      workspace and the policy pushes further out;
    * ``value``: with a reference critic and ``q_margin``, the policy's action is clearly worse than the
      expert's by Q_ref.

    ``reaction_steps`` after a trigger the person takes the controls, unless by then nothing triggers any more
    (they stand down: the arm came back alone), and drives the scripted expert (whose
    ``noise`` is the person's skill) until progress is restored (a new best by ``min_progress``, or the
    task's success) and at least ``min_takeover`` steps have passed, or for ``max_takeover`` steps at most;
    then hands back, and the stall clock restarts. The ``patience``-th takeover of an episode lasts to its
    end. A person whose own driving makes no progress for ``give_up_steps`` ends the episode as a failure
    (:attr:`verdict`, read by :class:`InterventionWrapper`, as the failure button of a teleop device).
    Takeovers per reason (the trigger that started the reaction) are in :attr:`reasons`.

    :param expert: the scripted expert the person drives (``obs -> action``).
    :param progress: the task's progress measure.
    :param settings: :class:`PersonSettings`.
    :param workspace: ``(low, high)`` of the arm's workspace (m), or ``None`` (no workspace trigger).
    :param q_ref: ``Q_ref(obs, action) -> float`` for the value trigger, or ``None``.
    :param intent: the expert's noise-free action, which the value trigger compares with (``None``: ``expert``'s).
    """

    def __init__(self, expert: ExpertFn, progress: TaskProgress, settings: PersonSettings | None = None,
                 workspace: tuple[np.ndarray, np.ndarray] | None = None, q_ref: QFn | None = None,
                 intent: ExpertFn | None = None):
        self.expert, self.progress, self.intent = expert, progress, intent
        self.settings = settings or PersonSettings()
        self.workspace = workspace
        self.q_ref = q_ref if self.settings.q_margin is not None else None
        self.reasons: dict[str, int] = {}  # takeovers per trigger, over the person's life
        self.given_up = 0  # episodes the person ended as failures (give_up_steps), over their life
        self.reset()

    @classmethod
    def from_config(cls, config: Any, context: InterventionContext) -> SimulatedPerson:
        settings = config.settings or PersonSettings()
        if settings.q_margin is not None and context.reference_q is None:
            raise HilrlError("intervention.kwargs.q_margin of source 'person' compares against a reference critic, "
                             "and none was given: set intervention.q_ref to a run folder holding one, or drop q_margin")
        space = context.env.unwrapped
        workspace = getattr(space, "workspace", None)
        q_ref = context.reference_q() if settings.q_margin is not None else None
        return cls(context.expert(config.expert_noise), TaskProgress(context.env), settings,
                   workspace=workspace if settings.workspace_margin is not None else None, q_ref=q_ref,
                   intent=context.intent(config.expert_noise) if q_ref is not None else None)

    def reset(self) -> None:
        self.steps = 0  # steps of this episode
        self.current = self.progress.reset()  # None until the first step on an env without a state measure
        self.best = self.current
        self.milestone, self.milestone_step = self.current, 0  # last gain of min_progress, and when
        self.success = False
        self.takeovers = 0
        self.pending: int | None = None  # steps left of the reaction delay
        self.reason: str | None = None  # the trigger the person is reacting to
        self.below = 0  # consecutive steps with progress regress below the best
        self.driving, self.driven, self.start_best = False, 0, None
        self.finishing = False  # patience spent: drives to the episode's end
        self.verdict: str | None = None  # "failure" once the person gives the episode up
        for expert in (self.expert, self.intent):
            reset = getattr(expert, "reset", None)
            if reset is not None:
                reset()

    def observe(self, obs: Obs, reward: float, terminated: bool, truncated: bool, info: dict) -> None:
        """A step's outcome: the progress it made."""
        self.steps += 1
        self.success = bool(info.get("is_success", False))
        self.current = self.progress(reward)
        self.best = self.current if self.best is None else max(self.best, self.current)
        if self.milestone is None:
            self.milestone, self.milestone_step = self.current, self.steps
        elif self.current >= self.milestone + self.settings.min_progress:
            self.milestone, self.milestone_step = self.current, self.steps
        self.below = self.below + 1 if self.best - self.current >= self.settings.regress else 0

    def trigger(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> str | None:
        """Why the person would step in now (a trigger's name), or ``None``."""
        s = self.settings
        if self.current is not None and not self.success:
            if self.below >= s.regress_steps:
                return "regress"
            if self.steps - self.milestone_step >= s.stall_steps:
                return "stall"
        if self.workspace is not None and "ee_pos" in obs:
            low, high = self.workspace
            ee, push = np.asarray(obs["ee_pos"], np.float64), np.asarray(policy_action[:3], np.float64)
            out = (ee[:2] <= low[:2] + s.workspace_margin) & (push[:2] < 0)
            out |= (ee[:2] >= high[:2] - s.workspace_margin) & (push[:2] > 0)
            if out.any() or (ee[2] >= high[2] - s.workspace_margin and push[2] > 0):
                return "workspace"
        if self.q_ref is not None:
            q_expert = self.q_ref(obs, expert_action)
            if self.q_ref(obs, policy_action) < q_expert - s.q_margin * abs(q_expert):
                return "value"
        return None

    def __call__(self, obs: Obs, policy_action: np.ndarray) -> np.ndarray | None:
        # the experts are queried every step so a stateful scripted expert keeps track of the episode
        expert_action = np.asarray(self.expert(obs), dtype=np.float32)
        meant = expert_action if self.intent is None else np.asarray(self.intent(obs), dtype=np.float32)
        s = self.settings
        if self.driving:
            self.driven += 1
            if s.give_up_steps is not None and self.steps - self.milestone_step >= s.give_up_steps:
                self.verdict = "failure"  # their own driving got nowhere: a reset, as an operator would
                self.given_up += 1
                return expert_action
            restored = self.success or (self.current is not None and self.start_best is not None
                                        and self.current >= self.start_best + s.min_progress)
            if self.finishing or self.driven <= s.min_takeover or not (restored or self.driven > s.max_takeover):
                return expert_action
            self.driving = False  # hand back; the stall clock restarts
            self.milestone, self.milestone_step = self.current, self.steps
            return None
        reason = self.trigger(obs, policy_action, meant)
        if reason is None:
            # nothing wrong now: a person still reaching for the controls stands down (the arm came back alone)
            self.pending = self.reason = None
            return None
        if self.pending is None:
            self.pending, self.reason = s.reaction_steps, reason
        if self.pending > 0:
            self.pending -= 1
            return None
        self.pending = None
        self.reasons[self.reason] = self.reasons.get(self.reason, 0) + 1  # counted when the person takes over
        self.driving, self.driven, self.start_best = True, 1, self.best
        self.milestone, self.milestone_step = self.current, self.steps  # the give-up clock runs from here
        self.takeovers += 1
        self.finishing = s.patience is not None and self.takeovers >= s.patience
        return expert_action


# a person on a teleop device (HIL-SERL); its class and from_config live with the devices
register_interventionist("device", "hilrl.feedback.teleop.takeover:DeviceInterventionist", device=True)


class InterventionWrapper(gym.Wrapper):
    """Lets an intervention source override actions and marks every step in ``info``.

    ``info`` keys: ``intervened`` (bool), ``intervention_start`` (bool, first
    step of a segment), ``policy_action``, ``executed_action``. A source with an
    ``observe(next_obs, reward, terminated, truncated, info)`` method sees every step's outcome
    (:class:`SimulatedPerson` watches the task's progress so). A source with a ``verdict``
    (a person's success/failure button, :class:`~hilrl.feedback.teleop.DeviceInterventionist`)
    ends the episode as ``hilrl record`` does: success with ``terminated`` (and ``is_success``),
    failure with ``truncated`` (a person stopping is no MDP terminal, so it bootstraps); the
    reward stays the env's. ``info["verdict"]`` then says which.
    """

    def __init__(self, env: gym.Env, source: InterventionSource):
        super().__init__(env)
        self.source = source
        self._obs: Obs | None = None
        self._was_intervening = False
        self.interventions = 0
        self.intervened_steps = 0

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self.source.reset()
        self._obs = obs
        self._was_intervening = False
        return obs, info

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()  # a device the source opened
        super().close()

    def step(self, action: np.ndarray):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        policy_action = np.asarray(action, dtype=np.float32)
        override = self.source(self._obs, policy_action)
        intervened = override is not None
        executed = np.clip(override, -1.0, 1.0).astype(np.float32) if intervened else policy_action
        obs, reward, terminated, truncated, info = self.env.step(executed)
        observe = getattr(self.source, "observe", None)
        if observe is not None:  # a source that watches what happened (the simulated person's progress)
            observe(obs, float(reward), bool(terminated), bool(truncated), info)
        start = intervened and not self._was_intervening
        self.interventions += int(start)
        self.intervened_steps += int(intervened)
        info = {**info, "intervened": intervened, "intervention_start": start,
                "policy_action": policy_action, "executed_action": executed}
        verdict = getattr(self.source, "verdict", None)
        if verdict is not None:
            terminated, truncated = terminated or verdict == "success", truncated or verdict == "failure"
            info["verdict"] = verdict
            info["is_success"] = verdict == "success"
        self._was_intervening = intervened
        self._obs = obs
        return obs, reward, terminated, truncated, info

