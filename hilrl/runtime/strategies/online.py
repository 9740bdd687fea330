"""Online RL in one process: the loop core's online strategy (SAC/RLPD, and any ``loop="online"`` algorithm).

Read top to bottom: a step of the step source (act, or let a person act; mark; count), store it
(:class:`~hilrl.runtime.steps.TransitionStorage`), one ``algo.update(replay)`` per env step from
``train.learning_starts`` on, then the periodic log, evaluation and checkpoint of the run folder.
What the learner trains on is the run's reward source on the buffers (``reward:``; RLIF's by
default with ``intervention.learn_from: rlif``); with ``learn_from: hil_serl`` intervention steps
are also copied to the demo buffer. A stopped run resumes from its folder: algorithm, buffers,
counters, the stream's episode marks and the loop's RNG come back.

Logged besides the learner's ``train/`` metrics: ``rollout/`` figures, the learned reward sources'
``reward/`` figures (a preference model's labels, pending queries and version among them; its progress line
figures too, and a message it has for the person once, e.g. the ``hilrl label RUN`` command), and
``value/{online,demo}_{q_start,return_start,overestimation}``: the critic's Q(s0, a0) against the discounted
return of the last finished episodes (:mod:`hilrl.runtime.diagnostics`).

RLPD's BC rollouts (``demos.bc_rollouts``) are made here, the one strategy that takes them (the config
refuses the others): :func:`roll_out_bc` fits a BC policy on the demos and rolls it out, and the run
folder keeps the episodes (:meth:`~hilrl.runtime.run.RunFolder.record_bc_rollouts`), so a resumed run
reads them back instead of fitting again (:func:`bc_rollouts`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from hilrl.config import EnvConfig, ExperimentConfig
from hilrl.data.buffers import Replay
from hilrl.data.episode import Episode
from hilrl.envs.make import make_env
from hilrl.feedback.rewards import SourceContext, make_reward_source, trainable_parts, wrap_training_env
from hilrl.policies.registry import make_algorithm
from hilrl.runtime.diagnostics import start_values
from hilrl.runtime.evaluate import EvalResult, evaluate_policy, final_evaluation
from hilrl.runtime.progress import console, make_progress
from hilrl.runtime.rollout import RolloutStats, run_episode
from hilrl.runtime.run import RunFolder
from hilrl.runtime.seeds import VALIDATION_SEED, Seeds
from hilrl.runtime.steps import (
    StepSource,
    TransitionStorage,
    cache_frame_features,
    encode_episodes,
    fresh_counters,
    make_training_env,
    stored_observation_space,
)


def train_online(config: ExperimentConfig, run: RunFolder, demo_episodes: list, show_progress: bool = True,
                 reward_source: Any = None, device: Any = None) -> EvalResult:
    """Run ``train.steps`` env steps of online learning in ``run``; resumes when it holds a checkpoint.

    ``reward_source`` replaces the config's ``reward:`` (any :class:`~hilrl.feedback.rewards.RewardSource`);
    ``device`` is an open teleop device for ``intervention.source: device`` (else the configured one is opened).
    """
    training, intervention = config.train, config.intervention
    seeds = Seeds(training.seed)
    env = make_training_env(config, seeds, device=device)
    algo = make_algorithm(config.algo, env.observation_space, env.action_space, seed=seeds.network)
    # what the loop steps and the buffers store: with a frozen pretrained image encoder, feature maps (encoded
    # once per frame); `env` stays the task as its own wrappers see it (the interventionist's `source` below)
    stepped = cache_frame_features(env, algo)
    replay = Replay.create(stored_observation_space(env.observation_space, algo), env.action_space,
                           training.buffer_capacity)
    if reward_source is None:
        try:
            reward_source = make_reward_source(config.reward_config, SourceContext(
                run_dir=run.out, env_config=config.env, seed=training.seed, env=env))
        except BaseException:
            env.close()
            raise
    replay.set_reward_source(reward_source)
    stepped = wrap_training_env(reward_source, stepped)  # e.g. episodes ending where the success classifier says
    learned = trainable_parts(reward_source)  # reward models that learn while the robot trains (PEBBLE)
    counters = fresh_counters()
    steps = StepSource(stepped, algo.act, seeds, counters, random_steps=training.random_steps,
                       sim_state=any(getattr(source, "wants_sim_state", False) for source in learned))
    storage = TransitionStorage(replay, copy_interventions=intervention.learning_rule == "hil_serl",
                                copy_successes=config.demos.add_successes,
                                keep_after_success=config.demos.keep_after_success)

    try:
        resumed = run.resume(algo, replay, loop_state=("rng", "stream"))
        if resumed is None:
            replay.add_demos(encode_episodes(demo_episodes + bc_rollouts(config, run, demo_episodes, show_progress),
                                             algo))
    except BaseException:
        env.close()
        raise
    if resumed is not None:
        counters.update(resumed["counters"])
        steps.rng.bit_generator.state = resumed["rng"]
        storage.load_state(resumed["stream"])
        done = counters["env_steps"]  # train.steps is the run's total (hilrl.runtime.run): what is left is added
        plan = (f"{training.steps - done} more to {training.steps}" if done < training.steps
                else f"nothing more to train (train.steps {training.steps}), its final evaluation follows")
        console.print(f"resuming {run.out} at {done} env steps: {plan} ({resumed['path'].name}: "
                      f"{len(replay.online)} online + {len(replay.demo)} demo transitions)",
                      markup=False, highlight=False, soft_wrap=True)
    best = run.best() if training.keep_best else None

    def checkpoint() -> None:
        run.checkpoint(counters["env_steps"], algo, counters, replay, rng=steps.rng.bit_generator.state,
                       stream=storage.state())

    q_value = getattr(algo, "q_value", None) if hasattr(config.algo, "gamma") else None
    started, start_updates = time.perf_counter(), counters["updates"]
    metrics: dict[str, Any] = {}
    reward_metrics: dict[str, Any] = {}  # the learned reward sources' latest figures
    try:
        with make_progress(not show_progress) as bar:
            task = bar.add_task(f"{config.algo.name} {config.env.id}", total=training.steps,
                                completed=counters["env_steps"], stats="")
            while counters["env_steps"] < training.steps:
                transition = steps.step()
                storage.add(transition)
                for source in learned:
                    reward_metrics.update(source.after_step(transition, replay, counters["env_steps"]) or {})
                    notice = source_notice(source)  # e.g. queries wait: the `hilrl label RUN` command, once
                    if notice:
                        console.print(notice, markup=False, highlight=False, soft_wrap=True)
                if counters["env_steps"] >= training.learning_starts and len(replay.online) > 0:
                    metrics = algo.update(replay)
                    counters["updates"] += 1

                step = counters["env_steps"]
                if step % training.log_every == 0 or step == training.steps:
                    rate = (counters["updates"] - start_updates) / max(time.perf_counter() - started, 1e-9)
                    run.scalars(step, metrics, "train/")
                    run.scalars(step, reward_metrics, "reward/")
                    if q_value is not None:  # Q(s0, a0) against G0, online and demo episodes apart
                        for name, buffer in (("online", replay.online), ("demo", replay.demo)):
                            values = start_values(q_value, buffer, config.algo.gamma)
                            run.scalars(step, values or {}, f"value/{name}_")
                    run.scalars(step, steps.rollout_scalars(), "rollout/")
                    bar.update(task, completed=step, stats="  ".join(
                        [steps.stats(), *(source_stats(source) for source in learned), f"{rate:.0f} updates/s"]))
                # with keep_best the last iterate competes too, so it is evaluated like the others
                if (training.eval_every and step % training.eval_every == 0
                        and (step < training.steps or training.keep_best)):
                    result = evaluate_policy(config.env, lambda o: algo.act(o, deterministic=True),
                                             training.eval_episodes, seed=VALIDATION_SEED, show_progress=False)
                    run.scalars(step, {"success_rate": result.success_rate, "mean_return": result.mean_return},
                                "eval/")
                    if training.keep_best and (best is None or result.success_rate > best["success_rate"]):
                        best = {"step": step, "success_rate": result.success_rate, "mean_return": result.mean_return}
                        run.save_best(algo, counters, best)
                if step % training.checkpoint_every == 0 or step == training.steps:
                    checkpoint()
    finally:
        for source in learned:
            source.close()
        env.close()
    train_seconds = time.perf_counter() - started

    # the simulated person's takeovers by what triggered them (stall, regress, workspace, value), this session's
    source = getattr(env, "source", None)
    reasons = getattr(source, "reasons", None)
    given_up = getattr(source, "given_up", None)  # episodes it ended as failures
    # with keep_best the run's policy is the best evaluated one, judged here on unseen seeds
    policy = run.load_best(algo) if best is not None else run.ckpt_dir / f"step_{counters['env_steps']}.pt"
    result = final_evaluation(config, algo, policy, run.final_video, show_progress)
    return run.finish(result, counters, training.steps, demo_episodes=len(demo_episodes),
                      train_seconds_this_session=round(train_seconds, 2), intervention_source=intervention.source,
                      learn_from=intervention.learning_rule,
                      reward=repr(replay.online.reward_source), **({"best_validation": best} if best else {}),
                      **({"takeovers_by_reason": dict(reasons)} if reasons else {}),
                      **({"episodes_given_up": int(given_up)} if given_up is not None else {}))


def source_stats(source: Any) -> str:
    """A learned reward source's figures for the progress line (``progress_stats()``: a preference model's labels,
    pending queries and version), or its version alone."""
    stats = getattr(source, "progress_stats", None)
    return stats() if callable(stats) else f"reward v{source.version}"


def source_notice(source: Any) -> str | None:
    """A message a learned reward source has for the person at the run (``take_notice()``), printed once."""
    take = getattr(source, "take_notice", None)
    return take() if callable(take) else None


def bc_rollouts(config: ExperimentConfig, run: RunFolder, demo_episodes: list, show_progress: bool = True) -> list:
    """``demos.bc_rollouts`` episodes of a BC policy fitted on ``demo_episodes``, cut after success like the demos.

    RLPD's few-demo setting (Ball et al. 2023, ikostrikov/rlpd ``include_bc_data``) adds such rollouts
    to the offline data, so the critic sees the states just off the demos, where a policy from few demos
    drifts first. Rolled out once (:func:`roll_out_bc`, seeds after the demos', the learner's state keys)
    into the run folder; a resumed run reads them from there.
    """
    count = config.demos.bc_rollouts
    if not count:
        return []
    episodes = run.bc_rollouts()
    if episodes is None:
        run.record_bc_rollouts(roll_out_bc(config.env, demo_episodes, count,
                                           obs_keys=getattr(config.algo, "obs_keys", None),
                                           seed=Seeds(config.train.seed).demo(len(demo_episodes)),
                                           train_seed=config.train.seed, show_progress=show_progress))
        episodes = run.bc_rollouts()
    return episodes


def roll_out_bc(env_config: EnvConfig, demo_episodes: list, episodes: int, obs_keys: Any = None, seed: int = 0,
                train_seed: int = 0, bc_steps: int = 3000, show_progress: bool = True) -> Iterator[Episode]:
    """Fit :class:`~hilrl.policies.bc.BC` on ``demo_episodes`` (``bc_steps`` steps) and yield ``episodes`` of it.

    Episode ``i`` is reset with seed ``seed + i``; every episode is yielded, failed ones too (RLPD's BC
    data keeps them: they show where imitation leaves the demos), marked ``device: bc``. The BC policy
    acts deterministically.
    """
    from hilrl.policies.bc import BC
    from hilrl.policies.configs import BCConfig

    env = make_env(env_config)
    try:
        bc = BC(env.observation_space, env.action_space, BCConfig(obs_keys=obs_keys), seed=train_seed)
        bc.set_dataset(demo_episodes)
        for _ in range(bc_steps):
            bc.train_step()
        stats = RolloutStats.empty()
        with make_progress(not show_progress) as bar:
            task = bar.add_task(f"BC rollouts {env_config.id}", total=episodes, stats="")
            for i in range(episodes):
                episode = run_episode(env, bc.act, seed=seed + i)
                episode.attrs["device"] = "bc"
                stats.add(episode)
                yield episode
                bar.update(task, advance=1, stats=f"success {stats.success_rate:.0%}")
    finally:
        env.close()
