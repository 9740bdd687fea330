"""The learner process's training loop: stores the transitions actors stream to it, trains SAC, publishes weights.

``hilrl learner CONFIG --bind tcp://HOST:PORT --out RUN`` (or ``hilrl train`` with ``runtime: distributed``,
which also starts the actors). The sockets and the protocol's checks and replies are the server's
(:class:`hilrl.runtime.distributed.learner_server.LearnerServer`); this module is what it serves. Per
checked ``transitions`` batch (an actor's consecutive steps), in this order:

1. keep the steps after the actor's acked seq if the batch reaches back to it (duplicates are skipped,
   a batch after a gap is dropped);
2. append its wire frames to the log ``RUN/log/`` (one record per batch) and store the new steps in the
   replay buffers with the loops' storage rule (:class:`hilrl.runtime.steps.TransitionStorage`, one per
   actor), vectorised; a thread faults the online ring's image memory in just ahead of its head
   (:class:`hilrl.data.paging.PageAhead`), so the serve loop does not pay the kernel's first-touch zeroing;
3. after a round of messages, sync the log (an fsync with ``runtime.fsync``) before the server acks each
   actor's highest contiguous seq.

The task's spaces come from ``make_env`` (a sim env, built and closed), or, with ``env.remote`` set
(the arm is at the actors), from the first actor's ``hello``; they are saved as ``RUN/spaces.msgpack``
so a restarted learner resumes without an actor. An actor whose spaces differ is refused.

So an acked transition is on disk. A checkpoint (the run folder's one layout, :mod:`hilrl.runtime.run`:
``RUN/checkpoints/step_N.pt`` with its ``replay_*_N.npz``) holds the learner, buffers, per-actor acked
seqs and episode marks, and names the first log segment written after it; a restarted learner loads
the newest checkpoint and replays the log from there, so a ``kill -9`` loses nothing it acked. The
buffers' rewards come from the run's reward source, as in the local loop. Stopping rule:
``train.steps`` stored transitions, then updates up to the ``runtime.max_update_ratio`` budget, then
evaluation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hilrl.config import ExperimentConfig
from hilrl.data.buffers import Replay, ReplayBuffer
from hilrl.data.paging import PageAhead
from hilrl.envs.make import make_env
from hilrl.envs.protocol import decode, encode
from hilrl.errors import HilrlError
from hilrl.feedback.rewards import make_reward_source
from hilrl.policies.registry import make_algorithm
from hilrl.runtime.distributed import check_distributable, transport
from hilrl.runtime.distributed.learner_server import DRAIN_TRANSITIONS, LearnerServer
from hilrl.runtime.evaluate import EvalResult, final_evaluation
from hilrl.runtime.progress import console, make_progress
from hilrl.runtime.run import RunFolder
from hilrl.runtime.seeds import Seeds
from hilrl.runtime.steps import TransitionStorage, encode_episodes, fresh_counters, rows, stored_observation_space

PACED_DRAIN = 16  # transitions per serve round when pacing: small, so acks keep flowing within ack_timeout_s
SPACES_FILE = "spaces.msgpack"
LOG_SEGMENT_BYTES = 64 * 1024 * 1024
LOG_FREE_SEGMENTS = 16  # the log between two checkpoints is recycled, up to 1 GiB of it (RecordLog)
PACED_SERVE_PERIOD_S = 0.5  # a paced learner behind on its updates tells its actors it is alive this often


class Learner:
    """One learner serving any number of actors. Build it (binds its server's sockets), then :meth:`run`.

    Args:
        config: the experiment (an algorithm registered with ``distributed=True``: ``algo.name: sac``).
        out: run folder, or a :class:`~hilrl.runtime.run.RunFolder` already checked and recorded
            (:func:`run_learner`); a folder with a checkpoint or a log is resumed.
        bind: transition channel address (default ``config.runtime.bind``); ``tcp://HOST:*`` picks a port.
        demo_episodes: demos for the demo buffer of a fresh run.
    """

    def __init__(self, config: ExperimentConfig, out: str | os.PathLike | RunFolder, bind: str | None = None,
                 demo_episodes: list | None = None, show_progress: bool = True) -> None:
        check_distributable(config)
        torch.set_num_threads(config.train.threads)
        self.config, self.show_progress = config, show_progress
        self.folder = out if isinstance(out, RunFolder) else RunFolder(config, out, record=False)
        self.out, self.ckpt_dir = self.folder.out, self.folder.ckpt_dir
        runtime = config.runtime
        self.copy_interventions = config.intervention.learning_rule == "hil_serl"

        self.storage: dict[str, TransitionStorage] = {}
        self.acked: dict[str, int] = {}
        self.counters = fresh_counters("dropped", "rejected")
        self.recent_intervened: deque[bool] = deque(maxlen=500)
        self.weights_version = 0
        self.demo_episodes = demo_episodes or []
        self.obs_space: Any = None
        self.stored_space: Any = None
        self.act_space: Any = None
        self.pager: PageAhead | None = None
        self.log = transport.RecordLog(self.out / "log", fsync=runtime.fsync, segment_bytes=LOG_SEGMENT_BYTES,
                                       keep_free=LOG_FREE_SEGMENTS)
        self.last_checkpoint_steps = 0
        self.server: LearnerServer | None = None
        try:
            spaces_file = self.out / SPACES_FILE
            if config.env.remote is None:
                env = make_env(config.env)
                self.build(env.observation_space, env.action_space)
                env.close()
            elif spaces_file.is_file():
                self.build(*transport.hello_spaces(decode([spaces_file.read_bytes()])))
            # else: a remote arm; the first actor's hello brings the spaces (self.build then)
            self.server = LearnerServer(self, runtime, bind)
        except BaseException:
            self.close()
            raise
        self.address, self.weights_address = self.server.address, self.server.weights_address
        (self.out / "learner_address.txt").write_text(self.address + "\n")

    def build(self, obs_space: Any, act_space: Any) -> None:
        """Networks and buffers for these spaces, then the resume from checkpoint + log."""
        training = self.config.train
        self.obs_space, self.act_space = obs_space, act_space
        spaces_file = self.out / SPACES_FILE
        if not spaces_file.is_file():
            self.out.mkdir(parents=True, exist_ok=True)
            # one frame: arrays inline, so the file is the header alone
            (header,) = encode(transport.hello("learner", 0, obs_space, act_space), inline_array_bytes=2**62)
            tmp = spaces_file.with_name(SPACES_FILE + ".tmp")
            tmp.write_bytes(header)
            os.replace(tmp, spaces_file)
        self.agent = make_algorithm(self.config.algo, obs_space, act_space, seed=Seeds(training.seed).network)
        # what actors send and the buffers store: with a frozen pretrained image encoder, the feature maps the
        # actors encoded once per frame (hilrl.runtime.steps.cache_frame_features); the hello carries the env's
        # own space, which the algorithm is built on
        self.stored_space = stored_observation_space(obs_space, self.agent)
        self.replay = Replay.create(self.stored_space, act_space, training.buffer_capacity)
        self.replay.set_reward_source(make_reward_source(self.config.reward_config))
        self._resume(self.demo_episodes)
        # the online ring's image memory is faulted in by a thread just ahead of where transitions land
        self.pager = PageAhead(self.online.obs.values())
        self.pager.advance(len(self.online))
        self.last_checkpoint_steps = self.counters["env_steps"]
        self.weights = self.agent.policy_weights()

    @property
    def built(self) -> bool:
        return self.obs_space is not None

    @property
    def online(self) -> ReplayBuffer:
        return self.replay.online

    @property
    def demo(self) -> ReplayBuffer:
        return self.replay.demo

    # ---------------------------------------------------------------- resume

    def _resume(self, demo_episodes: list) -> None:
        state = self.folder.resume(self.agent, self.replay,
                                   loop_state=("acked", "streams", "log_segment", "weights_version"))
        first_segment = 0
        if state is None:
            self.replay.add_demos(encode_episodes(demo_episodes, self.agent))
        else:
            self.counters.update(state["counters"])
            self.acked = dict(state["acked"])
            for actor, stream in state["streams"].items():
                self._storage_for(actor).load_state(stream)
            self.weights_version = int(state["weights_version"])
            first_segment = int(state["log_segment"])
        replayed = 0
        for _, frames in self.log.read(first_segment):
            message = transport.read_message(frames)  # we wrote it after checking it
            replayed += self.accept(message, frames=None)
        if state is not None or replayed:
            where = state["path"].name if state is not None else "an empty start"
            console.print(f"resuming {self.out} from {where} + {replayed} logged transitions: "
                          f"{self.counters['env_steps']} stored, {self.counters['updates']} updates, "
                          f"acked {self.acked}", soft_wrap=True)

    def _storage_for(self, actor: str) -> TransitionStorage:
        if actor not in self.storage:
            self.storage[actor] = TransitionStorage(self.replay, self.copy_interventions)
        return self.storage[actor]

    # ---------------------------------------------------------------- storing

    @property
    def done(self) -> bool:
        return self.counters["env_steps"] >= self.config.train.steps

    def accept(self, message: dict[str, Any], frames: list[Any] | None) -> int:
        """Store the steps of a checked batch that follow its actor's acked seq; log ``frames`` first (live only).

        Returns how many steps were stored. A batch that starts after ``acked + 1`` (a gap) stores none.
        """
        actor, first, t = message["actor"], message["seq"], message["t"]
        n, acked = len(t["reward"]), self.acked.get(actor, 0)
        if self.done or first > acked + 1 or first + n - 1 <= acked:
            return 0
        skip = acked + 1 - first  # steps this learner already holds
        take = min(n - skip, self.config.train.steps - self.counters["env_steps"])
        if frames is not None:
            self.log.append(frames)
        # one image per step to the ring: next_obs stays in the shared form the wire brought (buffers.py)
        steps = rows(t, slice(skip, skip + take))
        self._storage_for(actor).extend(steps, steps["episode_start"])
        self.recent_intervened.extend(steps["intervened"].tolist())
        self.acked[actor] = acked + take
        counters = self.counters
        ends = steps["terminated"] | steps["truncated"]
        counters["env_steps"] += take
        counters["interventions"] += int(steps["intervention_start"].sum())
        counters["intervened_steps"] += int(steps["intervened"].sum())
        counters["episodes"] += int(ends.sum())
        counters["successes"] += int((ends & steps["is_success"]).sum())
        return take

    def stored_reward_terms(self) -> Any:
        """The reward-term names the online buffer holds (``None`` while it is empty)."""
        return self.online.reward_terms if len(self.online) else None

    def rejoin(self, actor: str, acked: int) -> None:
        """An actor's hello says it was acked up to ``acked``, past what this learner holds: the learner lost
        transitions it once acked (a run folder wiped or replaced), and they are gone from the actor too, so
        continue after them rather than wait forever for them."""
        console.print(f"[yellow]actor {actor} was acked up to {acked}, this learner has "
                      f"{self.acked.get(actor, 0)}; continuing from {acked}[/yellow]")
        self.acked[actor] = acked
        self._storage_for(actor).episode = None  # the steps between are gone: the next step opens an episode

    def end_round(self) -> None:
        """After a round of messages: acked means written (every append is in the OS already; fsync it with
        ``runtime.fsync``); the pager moves ahead of the online ring's head."""
        self.log.sync()
        if self.pager is not None:
            self.pager.advance(len(self.online))

    def _serve(self, timeout_ms: int, limit: int = DRAIN_TRANSITIONS) -> None:
        """One round of the server (:meth:`LearnerServer.serve`); tests and benchmarks drive it by hand."""
        self.server.serve(timeout_ms, limit)

    # ---------------------------------------------------------------- checkpoints and weights

    def publish(self) -> None:
        self.weights_version += 1
        self.weights = self.agent.policy_weights()
        self.server.publish()

    def checkpoint(self) -> Path:
        """Learner + buffers + acked seqs + each actor's episode marks; names the first log segment it does not
        contain (the run folder's checkpoint layout, :mod:`hilrl.runtime.run`)."""
        segment = self.log.rotate()
        tag = self.counters["env_steps"]
        path = self.folder.checkpoint(tag, self.agent, self.counters, self.replay, acked=dict(self.acked),
                                   streams={a: s.state() for a, s in self.storage.items()}, log_segment=segment,
                                   weights_version=self.weights_version)
        self.log.drop_before(segment)
        self.last_checkpoint_steps = tag
        return path

    # ---------------------------------------------------------------- main loop

    def update_budget(self) -> float:
        """Updates allowed now: as the local loop, one per stored transition after ``learning_starts``."""
        training, ratio = self.config.train, self.config.runtime.max_update_ratio
        if self.counters["env_steps"] < training.learning_starts or len(self.online) == 0:
            return 0
        if ratio is None:
            return float("inf") if not self.done else self.counters["updates"]
        return ratio * (self.counters["env_steps"] - training.learning_starts + 1)

    def run(self) -> EvalResult | None:
        """Serve actors and train until ``train.steps`` transitions are stored and updated on; then evaluate."""
        training, runtime, counters = self.config.train, self.config.runtime, self.counters
        metrics: dict[str, Any] = {}
        started, start_updates = time.perf_counter(), counters["updates"]
        next_log = counters["env_steps"] + training.log_every
        last_serve = time.monotonic()
        console.print(f"learner on {self.address} (weights on {self.weights_address}), run folder {self.out}",
                      soft_wrap=True)
        with make_progress(not self.show_progress) as bar:
            task = bar.add_task(f"learner {self.config.env.id}", total=training.steps, completed=counters["env_steps"],
                                stats="")
            while not self.built:  # env.remote: waiting for the first actor's hello
                self._serve(100)
            while True:
                can_update = counters["updates"] < self.update_budget()
                # Paced (max_update_ratio set): take new transitions only once their updates are done, a few
                # at a time, so the actors' un-acked window (runtime.max_unacked) bounds their policy's lag, as
                # the local loop's one update per step does.
                paced = runtime.max_update_ratio is not None and counters["env_steps"] >= training.learning_starts
                if not (paced and can_update):
                    self._serve(0 if can_update else 20, PACED_DRAIN if paced else DRAIN_TRANSITIONS)
                    last_serve = time.monotonic()
                elif time.monotonic() - last_serve > PACED_SERVE_PERIOD_S:
                    # ... but never silent for long: an actor without news for runtime.ack_timeout_s re-sends its
                    # whole window. Taking a batch here instead let actors outrun a slow learner (reach_ray.yaml:
                    # ~750 of 2801 updates done when the 3000th step was stored; 65/85% vs the local loop's 98%).
                    self.server.hold()
                    last_serve = time.monotonic()
                if can_update:
                    metrics = self.agent.update(self.replay)
                    counters["updates"] += 1
                    if counters["updates"] % runtime.publish_every == 0:
                        self.publish()
                if counters["env_steps"] - self.last_checkpoint_steps >= training.checkpoint_every:
                    self.checkpoint()
                if counters["env_steps"] >= next_log or (self.done and not can_update):
                    next_log = counters["env_steps"] + training.log_every
                    rate = (counters["updates"] - start_updates) / max(time.perf_counter() - started, 1e-9)
                    intervened = float(np.mean(self.recent_intervened)) if self.recent_intervened else 0.0
                    self.folder.scalars(counters["env_steps"], metrics, "train/")
                    self.folder.scalars(counters["env_steps"], {"intervention_rate": intervened}, "rollout/")
                    bar.update(task, completed=counters["env_steps"],
                               stats=f"intervened {intervened:.0%}  {counters['updates']} updates ({rate:.0f}/s)  "
                                     f"actors {dict(self.acked)}")
                if self.done and counters["updates"] >= self.update_budget():
                    break
            self.publish()
            self.checkpoint()
            self._serve(0)  # tell waiting actors the run is done
        train_seconds = time.perf_counter() - started
        result = None
        if self.config.env.remote is None:  # evaluating on a real arm is the user's call, not the learner's
            result = final_evaluation(self.config, self.agent, self.ckpt_dir / f"step_{counters['env_steps']}.pt",
                                      self.folder.final_video, self.show_progress)
        return self.folder.finish(result, counters, training.steps, runtime="distributed", acked=dict(self.acked),
                                  weights_version=self.weights_version, reward=repr(self.online.reward_source),
                                  train_seconds_this_session=round(train_seconds, 2))

    def close(self) -> None:
        if self.pager is not None:
            self.pager.close()
        self.log.close()
        if self.server is not None:
            self.server.close()


def run_learner(config: ExperimentConfig, out: str | os.PathLike, bind: str | None = None,
                show_progress: bool = True) -> EvalResult | None:
    """The learner of `hilrl learner`: the run folder gets config, demos, log, checkpoints, scalars and metrics.json.

    What the run reads and may lack (the value gate's reference critic) is made before, by
    :func:`hilrl.runtime.train.train_learner`, the command's entry point."""
    check_distributable(config)
    run = RunFolder(config, out)
    episodes = run.demo_episodes(show_progress)
    learner = Learner(config, run, bind=bind, demo_episodes=episodes, show_progress=show_progress)
    try:
        return learner.run()
    finally:
        learner.close()


def train_distributed(config: ExperimentConfig, run: RunFolder, demo_episodes: list,
                      show_progress: bool = True) -> EvalResult:
    """`hilrl train` with ``runtime: distributed``: this process is the learner; ``runtime.actors`` actor
    processes (``hilrl actor``) run beside it with folders ``OUT/actors/actorI``."""
    out = run.out
    learner = Learner(config, run, demo_episodes=demo_episodes, show_progress=show_progress)
    actors: list[subprocess.Popen] = []
    try:
        for index in range(config.runtime.actors):
            actors.append(subprocess.Popen([
                sys.executable, "-m", "hilrl.cli", "actor", str(out / "config.yaml"), "--learner", learner.address,
                "--out", str(out / "actors" / f"actor{index}"), "--id", f"actor{index}", "--index", str(index),
                "--quiet"]))
        result = learner.run()
    finally:
        learner.close()
        for actor in actors:
            if actor.poll() is None:
                actor.send_signal(signal.SIGTERM)  # it saves its spool state and exits
        for actor in actors:
            try:
                actor.wait(30)
            except subprocess.TimeoutExpired:
                actor.kill()
                actor.wait()
    if result is None:
        raise HilrlError("the distributed run stored its transitions but did not evaluate (env.remote is set)")
    return result
