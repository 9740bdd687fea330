"""The preference reward source: a Bradley–Terry (or regret) reward model trained while the robot trains.

PEBBLE (Lee et al. 2021, "PEBBLE: Feedback-Efficient Interactive Reinforcement Learning via
Relabeling Experience and Unsupervised Pre-training"; rll-research/BPref ``train_PEBBLE.py``): from
``first_query_at`` env steps on, every ``query_every`` steps a session asks ``queries_per_session``
queries over segments cut from the online buffer, chosen from ``candidates`` times as many at
random by ``selection`` (``feed_type``: uniform, ensemble disagreement, entropy; a K-way ranking is
scored over the pairs it expands to), until ``max_queries``. Each label lands in the run's
:class:`~hilrl.feedback.preferences.store.PreferenceStore`; the ensemble is refitted on every label
so far and the source's ``version`` bumped, so the buffers relabel every stored row in bulk
(PEBBLE's relabelling). Without a ``teacher`` a person labels on
the page (``hilrl label RUN``) while the run trains: the source writes its queries as pending,
checks the store every ``label_check_every`` steps and refits when new labels came. The first time
queries wait for a person the run prints the ``hilrl label RUN`` command (:meth:`PreferenceSource.take_notice`),
and the progress line shows labels, pending queries and the reward's version
(:meth:`PreferenceSource.progress_stats`). Before the first fit the reward is 0, unless
``wait_for_labels: N``: until N labels are in and fitted, the reward is a fallback, PEBBLE's state
entropy when ``unsupervised_steps`` is set (pre-training then lasts until both its steps and the N labels
are reached) and the env's reward otherwise; SAC keeps updating meanwhile (nothing pauses), and the first
fit on N labels or more switches to the learned reward and relabels every stored row.

Each query carries the one-line task (``task_text``; by default the task's description of
:mod:`hilrl.llm.tasks`, else the env id) and the labelling ``criterion`` (what "better" means), which the
labelling page shows above the clips.

PEBBLE's unsupervised pre-training (``unsupervised_steps`` > 0; BPref's ``num_unsup_steps``, 9000 of
its 1M-step runs): until that many env steps the reward is the state entropy of
:mod:`hilrl.feedback.preferences.entropy` (the k-th nearest-neighbour distance of a row's resulting
state among the stored ones, k = ``entropy_k``, over a running std), refreshed every
``entropy_refresh`` steps; at step ``unsupervised_steps`` the source switches to the learned reward
(0 before the first fit) and bumps its version, so every stored row is relabelled (PEBBLE's
relabelling after pre-training). Queries may be asked during pre-training (``first_query_at``
below ``unsupervised_steps``); their fits take effect at the switch. BPref also re-initialises the
critic at the switch (``agent.reset_critic``); this source does not reach into the learner, so
SAC's critic carries on from its pre-training values.

Each refit trains a fresh ensemble on every label so far, its inputs standardised on their segments
(``warm_start: true`` keeps training the previous one, as BPref does). Warm starts with the
standardisation of the first fit failed on Push: the first segments come from an arm that has not
yet moved the cube, so the cube's orientation had a spread below the 1e-3 floor there; once the
cube moved, its standardised values reached ~700 and saturated the members' tanh (training accuracy
stuck near 0.89, Spearman with the true return falling from 0.89 to 0.51 over 500 labels, where a
fresh fit on the same labels reached 0.99 and 0.93).

The reward of a row is the ensemble's mean on (next_obs keys, action), scaled by its std over the
online buffer at each refit and shifted so that the buffer's best row gets 0, times ``reward_scale``
(BPref's members end in tanh). A preference model fixes rewards only up to a shift; BPref's tasks run
a fixed horizon, where the shift does not matter, but with ``terminate_on_success`` a reward that is
positive near the goal pays the agent to stay out of the success that ends the episode (measured on
Reach: a mean-centred reward with 0.96 Spearman to the true one gave 0% success, true-reward SAC 60%).

``reward: {source: preferences, kwargs: {...}}``; the keys are :class:`PreferenceSettings`' fields.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hilrl.errors import HilrlError
from hilrl.feedback.preferences.segments import EpisodeIndex, Segment, batch_features, cut_segments, feature_keys
from hilrl.feedback.preferences.store import PreferenceStore
from hilrl.feedback.preferences.teachers import make_teacher
from hilrl.plugins import import_object

_ON_PATH = "give 'module:function' on PYTHONPATH"
DEFAULT_CRITERION = ("Pick the clip that gets closer to doing the task by its end; equal if you cannot tell "
                     "them apart")


def task_description(env_id: str | None) -> str:
    """The task in one line for a person labelling it: :mod:`hilrl.llm.tasks`' description, else the env id."""
    from hilrl.llm.tasks import TASKS

    if env_id in TASKS:
        return TASKS[env_id].description
    return env_id or ""


class TeacherSettings(BaseModel):
    """A synthetic teacher (:mod:`hilrl.feedback.preferences.teachers`) that labels instead of a person."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["partial_return", "regret"] = "partial_return"
    beta: float | None = Field(None, gt=0, description="rationality; None = perfectly rational (B-Pref's -1)")
    gamma: float = Field(1.0, gt=0, le=1, description="myopia: step t of L weighs gamma^(L-1-t)")
    eps_mistake: float = Field(0.0, ge=0, le=1, description="chance of a flipped label")
    skip_below: float | None = Field(None, description="skip when both returns are below this")
    equal_within: float = Field(0.0, ge=0, description="'equal' when returns differ by less than this")
    value: str | None = Field(None, description="kind regret: 'module:function' returning V*(obs_rows) -> (n,)")
    discount: float = Field(1.0, gt=0, le=1, description="kind regret: discount of the regret sum")


class PreferenceSettings(BaseModel):
    """``reward.kwargs`` of ``reward: {source: preferences}`` (module docstring for the schedule)."""

    model_config = ConfigDict(extra="forbid")
    loss: Literal["bradley_terry", "regret"] = Field("bradley_terry", description="preference model of the loss")
    value: str | None = Field(None, description="loss regret: 'module:function' giving V(obs_rows) -> (n,)")
    segment_length: int = Field(25, ge=2, description="steps per segment (PEBBLE: 50 for 1000-step episodes)")
    ranking_size: int = Field(2, ge=2, le=6, description="segments per query: 2 = pairs, K > 2 = K-way rankings")
    first_query_at: int = Field(1000, ge=1, description="env steps before the first query session")
    query_every: int = Field(1000, ge=1, description="env steps between query sessions (PEBBLE: num_interact)")
    queries_per_session: int = Field(50, ge=1, description="queries per session (PEBBLE: reward_batch)")
    max_queries: int = Field(500, ge=1, description="queries asked in all")
    selection: Literal["uniform", "disagreement", "entropy"] = "disagreement"
    candidates: int = Field(10, ge=1, description="candidate queries drawn per asked one (BPref: large_batch 10)")
    teacher: TeacherSettings | None = Field(None, description="a synthetic teacher; None = a person on the page")
    members: int = Field(3, ge=1, description="ensemble size (PEBBLE: 3)")
    hidden: list[int] = Field(default_factory=lambda: [128, 128])
    lr: float = Field(3e-4, gt=0)
    epochs: int = Field(50, ge=1, description="passes over the labels per refit (PEBBLE: reward_update)")
    batch_size: int = Field(128, ge=1)
    warm_start: bool = Field(False, description="True = BPref's: each refit trains the previous ensemble further "
                             "(inputs standardised once, at the first fit); False = a fresh ensemble on every label")
    obs_keys: list[str] | None = Field(None, description="next_obs keys the model reads; None = every state key")
    reward_scale: float = Field(1.0, gt=0, description="the standardised reward times this")
    label_check_every: int = Field(100, ge=1, description="person labelling: env steps between looks at the store")
    render_states: bool | None = Field(None, description="keep MuJoCo states for the page's videos; None = when "
                                       "a person labels")
    unsupervised_steps: int = Field(0, ge=0, description="PEBBLE's unsupervised pre-training: env steps "
                                    "rewarded by state entropy before the learned reward takes over (BPref: "
                                    "num_unsup_steps 9000 of 1M); 0 = off")
    entropy_k: int = Field(5, ge=1, description="pre-training: the k of the k-NN state entropy (PEBBLE: 5)")
    entropy_refresh: int = Field(100, ge=1, description="pre-training: env steps between re-rewarding the "
                                 "stored rows against the grown buffer (a version bump)")
    agreement_pairs: int = Field(200, ge=0, description="random held-out pairs scored against the true reward "
                                 "at each refit (logged as reward/agreement)")
    wait_for_labels: int = Field(0, ge=0, description="until this many labels are fitted the reward is a "
                                 "fallback instead of 0: PEBBLE's state entropy with unsupervised_steps > 0 (its "
                                 "pre-training lasts until then), else the env's reward; the learner keeps "
                                 "updating on it; 0 = the learned reward (0 before the first fit) from the start")
    task_text: str | None = Field(None, max_length=300, description="the task in one line, shown above each query "
                                  "on the labelling page; None = the task's own description (hilrl.llm.tasks), "
                                  "else the env id")
    criterion: str = Field(DEFAULT_CRITERION, min_length=1, max_length=300, description="what 'better' means, "
                           "shown with each query on the labelling page")


def parse_settings(cls: type[BaseModel], kwargs: dict[str, Any], source: str) -> Any:
    """Validate ``reward.kwargs`` with a clear error naming the bad key."""
    try:
        return cls.model_validate(kwargs or {})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = "reward.kwargs." + ".".join(str(p) for p in error["loc"])
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown key {where!r}; allowed: {', '.join(sorted(cls.model_fields))}")
            else:
                problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
        raise HilrlError(f"reward source {source!r}: " + "; ".join(problems)) from None


def require_run_dir(context: Any, name: str) -> Any:
    if context is None or context.run_dir is None:
        raise HilrlError(f"reward source {name!r} learns while the robot trains and keeps its labels in the run "
                         "folder: it runs in the local online loop (runtime: local). The distributed learner "
                         "(runtime: distributed) does not train reward models; use runtime: local")
    return context.run_dir


class PreferenceSource:
    """A :class:`~hilrl.feedback.rewards.TrainableRewardSource` learning from pairwise or ranked labels.

    :param settings: :class:`PreferenceSettings`.
    :param store: where queries and labels live (the run's ``preferences/``).
    :param seed: seeds segment cutting, the teacher and the ensemble.
    :param value: V(obs_rows) for the regret loss / regret teacher (else read from ``settings.value``).
    :param task: the task in one line for the labelling page (``settings.task_text`` wins; see
        :func:`task_description`).
    """

    def __init__(self, settings: PreferenceSettings, store: PreferenceStore, seed: int = 0, value: Any = None,
                 task: str = "") -> None:
        self.settings, self.store, self.seed = settings, store, seed
        self.task = settings.task_text or task
        self.version = 0
        self.rng = np.random.default_rng(seed + 7919)
        teacher_value = value
        if settings.teacher is not None and settings.teacher.value and teacher_value is None:
            teacher_value = import_object(settings.teacher.value, "teacher.value", _ON_PATH)()
        self.teacher = make_teacher(settings.teacher.model_dump(exclude={"value"}) if settings.teacher else None,
                                    seed=seed, value=teacher_value)
        self.value = value
        if settings.loss == "regret" and self.value is None:
            if not settings.value:
                raise HilrlError("reward.kwargs.loss 'regret' needs reward.kwargs.value: 'module:function' returning "
                                 "V(obs_rows) (a reference critic), the V of Knox et al.'s regret")
            self.value = import_object(settings.value, "reward.kwargs.value", _ON_PATH)()
        keep = settings.render_states if settings.render_states is not None else self.teacher is None
        self.wants_sim_state = bool(keep)
        self.states: dict[tuple[int, int], np.ndarray] = {}
        self.model = None
        self.keys: list[str] | None = settings.obs_keys
        self.norm = (0.0, 1.0)
        self.asked = len(store.queries())
        self.segments: dict[str, Segment] = {}
        self.fitted_labels = -1
        self.last: dict[str, float] = {}
        self.entropy = None
        if settings.unsupervised_steps:
            from hilrl.feedback.preferences.entropy import StateEntropy

            self.entropy = StateEntropy(settings.entropy_k, seed=seed)
        self.pretraining = self.entropy is not None  # PEBBLE's unsupervised phase (module docstring)
        self.label_count, self.pending_count = 0, 0  # the store as last read (the progress line)
        self.notice: str | None = None  # printed once by the loop: queries wait for a person (take_notice)
        self.hinted = False

    @property
    def waiting(self) -> bool:
        """``wait_for_labels``: fewer labels fitted than it asks, so the reward is the fallback (module docstring)."""
        return max(self.fitted_labels, 0) < self.settings.wait_for_labels

    # ---- the reward -------------------------------------------------------------------------

    def __call__(self, batch) -> np.ndarray:
        if self.pretraining:
            return self.entropy(state_features(batch.next_obs, self._keys(batch.next_obs)))
        if self.waiting:  # wait_for_labels without PEBBLE's pre-training: the env's reward meanwhile
            return np.asarray(batch.env_rewards, np.float32)
        if self.model is None:
            return np.zeros(len(batch), np.float32)
        keys = self._keys(batch.next_obs)
        raw = self.model.predict(batch_features(batch, keys))
        return (self.settings.reward_scale * (raw - self.norm[0]) / self.norm[1]).astype(np.float32)

    def _keys(self, obs) -> list[str]:
        if self.keys is None or not self.keys:
            self.keys = feature_keys(obs, self.settings.obs_keys)
        return self.keys

    # ---- the schedule -----------------------------------------------------------------------

    def after_step(self, transition: dict, replay: Any, env_steps: int) -> dict[str, float] | None:
        s = self.settings
        online = replay.online
        pretraining_scalars = self._pretraining_step(online, env_steps) if self.entropy is not None else None
        if self.wants_sim_state and "sim_state" in transition:
            slot = (online.pos - 1) % online.capacity
            key = (int(online.extras["episode"][slot]), int(online.extras["step"][slot]))
            self.states[key] = np.asarray(transition["sim_state"])
            if len(self.states) > online.capacity:  # keep states of stored rows only
                for old in list(self.states)[: len(self.states) - online.capacity]:
                    del self.states[old]
        session = (env_steps >= s.first_query_at and (env_steps - s.first_query_at) % s.query_every == 0
                   and self.asked < s.max_queries)
        if session:
            self.query_session(online)
        if session or (self.teacher is None and env_steps % s.label_check_every == 0) or self.fitted_labels < 0:
            labels = self.store.labels()
            if len(labels) != self.fitted_labels and labels:
                self.refit(online, labels)
            elif self.fitted_labels < 0:
                self.fitted_labels = 0
            self.label_count, self.pending_count = len(labels), max(self.asked - len(labels), 0)
            if self.teacher is None and self.pending_count and not self.hinted:
                self.hinted = True
                self.notice = self.waiting_notice()
            return {**self.last, "labels": float(self.label_count), "pending": float(self.pending_count),
                    "queries": float(self.asked), "version": float(self.version), **(pretraining_scalars or {})}
        return pretraining_scalars

    def waiting_notice(self) -> str:
        """What to do now that queries wait: the exact ``hilrl label RUN`` command, and the reward meanwhile."""
        import shlex

        run = shlex.quote(str(self.store.folder.parent))
        if self.waiting:
            meanwhile = (f"until {self.settings.wait_for_labels} labels are in it trains on "
                         f"{'the state entropy' if self.entropy is not None else 'the env reward'} (wait_for_labels)")
        elif self.model is None:
            meanwhile = ("until the first labels come its learned reward is 0 (reward.kwargs.wait_for_labels: N "
                         "trains on the env reward meanwhile)")
        else:
            meanwhile = f"it trains on the reward model fitted on {self.fitted_labels} labels meanwhile"
        return (f"{self.pending_count} preference queries wait for a person: run `hilrl label {run}` in another "
                f"terminal (or `hilrl label {run} --terminal`). Training goes on; {meanwhile}.")

    def take_notice(self) -> str | None:
        """A message for the person at the run, once (queries wait for labels), else ``None``."""
        notice, self.notice = self.notice, None
        return notice

    def progress_stats(self) -> str:
        """The progress line's figures: labels in, queries pending, the reward's version and what it is now."""
        text = f"labels {self.label_count}  pending {self.pending_count}  reward v{self.version}"
        phase = self.reward_phase()
        return text if phase == "learned" else f"{text} ({'0 until labels' if phase == 'zero' else phase})"

    def reward_phase(self) -> str:
        """What the reward is now: ``entropy`` (pre-training), ``env`` (waiting for labels), ``zero`` or ``learned``."""
        if self.pretraining:
            return "entropy" + (f" until {self.settings.wait_for_labels} labels" if self.waiting else "")
        if self.waiting:
            return f"env until {self.settings.wait_for_labels} labels"
        return "zero" if self.model is None else "learned"

    def _pretraining_step(self, online, env_steps: int) -> dict[str, float] | None:
        """PEBBLE's unsupervised phase: refresh the entropy reward's reference states, and end the phase."""
        s = self.settings
        if self.pretraining and env_steps >= s.unsupervised_steps and not self.waiting:
            self.pretraining = False  # the learned reward from now on (0 until the first fit)
            self.version += 1
            return {"pretraining": 0.0, "version": float(self.version)}
        if self.pretraining and (env_steps % s.entropy_refresh == 0 or not len(self.entropy.reference)):
            if len(online):
                keys = self._keys({k: v[:1] for k, v in online.obs.items()})
                rows = np.arange(len(online))
                self.entropy.refresh(state_features(online.reward_batch(rows).next_obs, keys))
                self.version += 1
                return {"pretraining": 1.0, "version": float(self.version),
                        "entropy_std": float(self.entropy.stats.std)}
        return None

    def query_session(self, online) -> None:
        s = self.settings
        count = min(s.queries_per_session, s.max_queries - self.asked)
        index = EpisodeIndex(online)
        if not index.long_enough(s.segment_length):
            return
        keys = self._keys({k: v[:1] for k, v in online.obs.items()})
        pool = cut_segments(online, count * s.candidates * s.ranking_size, s.segment_length, keys, self.rng,
                            self.states if self.wants_sim_state else None, index)
        groups = [pool[i:i + s.ranking_size] for i in range(0, len(pool), s.ranking_size)]
        from hilrl.feedback.preferences.models import select_rankings

        chosen = select_rankings(self.model, np.stack([[seg.features for seg in g] for g in groups]), count,
                                 s.selection, self.rng)
        for g in chosen:
            sids = []
            for segment in groups[int(g)]:
                sid = self.store.add_segment(segment.arrays())
                self.segments[sid] = segment
                sids.append(sid)
            qid = self.store.add_query(sids, {"source_version": self.version, "episodes": [x.episode for x in
                                                                                            groups[int(g)]],
                                              "task": self.task, "criterion": s.criterion})
            self.asked += 1
            if self.teacher is not None:
                segments = groups[int(g)]
                if len(segments) == 2:
                    self.store.add_label(qid, self.teacher.label_pair(*segments), self.teacher.who)
                else:
                    self.store.add_label(qid, "ranking", self.teacher.who, order=self.teacher.rank(segments))

    def _segment(self, sid: str) -> Segment:
        if sid not in self.segments:
            self.segments[sid] = Segment.from_arrays(self.store.segment(sid))
        return self.segments[sid]

    def training_pairs(self, labels) -> tuple[list[Segment], list[Segment], np.ndarray]:
        queries = {q["id"]: q for q in self.store.queries()}
        first, second, prefer = [], [], []
        for label in labels.values():
            sids = queries[label.query]["segments"]
            for i, j, p in label.pairs(len(sids)):
                first.append(self._segment(sids[i]))
                second.append(self._segment(sids[j]))
                prefer.append(p)
        return first, second, np.asarray(prefer, np.float32)

    def refit(self, online, labels) -> None:
        from hilrl.feedback.preferences.models import RewardEnsemble

        s = self.settings
        first, second, prefer = self.training_pairs(labels)
        self.fitted_labels = len(labels)
        if not len(prefer):
            return
        x1 = np.stack([seg.features for seg in first])
        x2 = np.stack([seg.features for seg in second])
        if self.model is None or not s.warm_start:  # a fresh ensemble, standardised on every label's segments
            self.model = RewardEnsemble(x1.shape[-1], s.members, s.hidden, s.lr, seed=self.seed)
            self.model.set_normalisation(np.concatenate([x1, x2]).reshape(-1, x1.shape[-1]))
        deltas = None
        if s.loss == "regret":
            deltas = tuple(self._value_delta(side) for side in (first, second))
        stats = self.model.fit(x1, x2, prefer, s.epochs, s.batch_size, deltas)
        rows = np.arange(len(online))
        if len(rows):
            keys = self._keys({k: v[:1] for k, v in online.obs.items()})
            raw = self.model.predict(batch_features(online.reward_batch(rows), keys))
            self.norm = (float(raw.max()), float(max(raw.std(), 1e-6)))  # <= 0 on what was seen: module docstring
        self.version += 1
        self.last = {"labels": float(len(labels)), "queries": float(self.asked), "version": float(self.version),
                     "fit_loss": stats["loss"], "train_accuracy": stats["train_accuracy"]}
        if s.agreement_pairs and len(rows):
            self.last.update(self.agreement(online, s.agreement_pairs))

    def _value_delta(self, segments: list[Segment]) -> np.ndarray:
        starts = np.stack([seg.start_obs for seg in segments])
        ends = np.stack([seg.end_obs for seg in segments])
        return np.asarray(self.value(ends), np.float32) - np.asarray(self.value(starts), np.float32)

    def agreement(self, online, pairs: int) -> dict[str, float]:
        """Accuracy on random segment pairs (ties dropped) and Spearman of segment returns, learned vs true."""
        index = EpisodeIndex(online)
        if not index.long_enough(self.settings.segment_length):
            return {}
        rng = np.random.default_rng(self.seed + 104729)
        segments = cut_segments(online, 2 * pairs, self.settings.segment_length, self.keys, rng, None, index)
        return agreement_with_true(self.model, segments)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return (f"PreferenceSource(loss={self.settings.loss!r}, selection={self.settings.selection!r}, "
                f"labels={self.fitted_labels}, version={self.version}, reward={self.reward_phase()!r})")


def state_features(next_obs, keys) -> np.ndarray:
    """The states the entropy reward compares: the model's observation keys of ``next_obs``, ``(n, D)``."""
    n = len(next(iter(next_obs.values())))
    return np.concatenate([np.asarray(next_obs[k], np.float32).reshape(n, -1) for k in keys], axis=1)


def agreement_with_true(model, segments: list[Segment]) -> dict[str, float]:
    """How a model's segment returns agree with the true (env) returns: pairwise accuracy and Spearman."""
    from scipy.stats import spearmanr

    learned = model.member_returns(np.stack([seg.features for seg in segments])).mean(0)
    true = np.array([seg.true_return for seg in segments])
    a, b = slice(0, None, 2), slice(1, None, 2)
    decided = np.abs(true[a] - true[b]) > 1e-6
    accuracy = float(((learned[a] > learned[b]) == (true[a] > true[b]))[decided].mean()) if decided.any() else 0.0
    rho = spearmanr(learned, true).statistic
    return {"agreement": accuracy, "spearman": float(0.0 if np.isnan(rho) else rho)}


def make_preference_source(config: Any, context: Any) -> PreferenceSource:
    """``reward: {source: preferences, kwargs: {...}}`` (registered in :mod:`hilrl.feedback.rewards`)."""
    settings = parse_settings(PreferenceSettings, config.kwargs, "preferences")
    run_dir = require_run_dir(context, "preferences")
    env_id = getattr(context.env_config, "id", None)
    return PreferenceSource(settings, PreferenceStore.for_run(run_dir), seed=context.seed,
                            task=task_description(env_id))
