"""Online RL in one process: the loop core's online strategy (SAC/RLPD, and any ``loop="online"`` algorithm).

Read top to bottom: a step of the step source (act, or let a person act; mark; count), store it
(:class:`~hilrl.runtime.steps.TransitionStorage`), one ``algo.update(replay)`` per env step from
``train.learning_starts`` on, then the periodic log, evaluation and checkpoint of the run folder.
What the learner trains on is the run's reward source on the buffers (``reward:``; RLIF's by
default with ``intervention.learn_from: rlif``); with ``learn_from: hil_serl`` intervention steps
are also copied to the demo buffer. A stopped run resumes from its folder: algorithm, buffers,
counters, the stream's episode marks and the loop's RNG come back.

Logged besides the learner's ``train/`` metrics: ``rollout/`` figures, the learned reward sources'
``reward/`` figures, and ``value/{online,demo}_{q_start,return_start,overestimation}``: the critic's
Q(s0, a0) against the discounted return of the last finished episodes (:mod:`hilrl.runtime.diagnostics`).
"""

from __future__ import annotations

import time
from typing import Any

from hilrl.config import ExperimentConfig
from hilrl.data.buffers import Replay
from hilrl.feedback.rewards import SourceContext, make_reward_source, trainable_parts
from hilrl.policies.registry import make_algorithm
from hilrl.runtime.diagnostics import start_values
from hilrl.runtime.evaluate import EvalResult, evaluate_policy
from hilrl.runtime.progress import console, make_progress
from hilrl.runtime.run import RunFolder, load_checkpoint
from hilrl.runtime.seeds import VALIDATION_SEED, Seeds
from hilrl.runtime.steps import StepSource, TransitionStorage, fresh_counters, make_training_env


def train_online(config: ExperimentConfig, run: RunFolder, demo_episodes: list, show_progress: bool = True,
                 reward_source: Any = None, device: Any = None) -> EvalResult:
    """Run ``train.steps`` env steps of online learning in ``run``; resumes when it holds a checkpoint.

    ``reward_source`` replaces the config's ``reward:`` (any :class:`~hilrl.feedback.rewards.RewardSource`);
    ``device`` is an open teleop device for ``intervention.source: device`` (else the configured one is opened).
    """
    tc, ic = config.train, config.intervention
    seeds = Seeds(tc.seed)
    env = make_training_env(config, seeds, device=device)
    algo = make_algorithm(config.algo, env.observation_space, env.action_space, seed=seeds.network)
    replay = Replay.create(env.observation_space, env.action_space, tc.buffer_capacity)
    if reward_source is None:
        try:
            reward_source = make_reward_source(config.reward_config, SourceContext(
                run_dir=run.out, env_config=config.env, seed=tc.seed, env=env))
        except BaseException:
            env.close()
            raise
    replay.set_reward_source(reward_source)
    learned = trainable_parts(reward_source)  # reward models that learn while the robot trains (PEBBLE)
    counters = fresh_counters()
    steps = StepSource(env, algo.act, seeds, counters, random_steps=tc.random_steps,
                       sim_state=any(getattr(source, "wants_sim_state", False) for source in learned))
    storage = TransitionStorage(replay, copy_interventions=ic.learning_rule == "hil_serl",
                                copy_successes=config.demos.add_successes,
                                keep_after_success=config.demos.keep_after_success)

    resumed = run.resume(algo, replay)
    if resumed is None:
        replay.add_demos(demo_episodes + run.bc_rollouts(demo_episodes, show_progress))
    else:
        counters.update(resumed["counters"])
        steps.rng.bit_generator.state = resumed["rng"]
        if "stream" in resumed:  # (runs checkpointed before episode ids start their next step as a new episode)
            storage.load_state(resumed["stream"])
        console.print(f"resuming {run.out} from {resumed['path'].name}: {counters['env_steps']} env steps, "
                      f"{len(replay.online)} online + {len(replay.demo)} demo transitions")
    best = run.best() if tc.keep_best else None

    def checkpoint() -> None:
        run.checkpoint(counters["env_steps"], algo, counters, replay, rng=steps.rng.bit_generator.state,
                       stream=storage.state())

    q_value = getattr(algo, "q_value", None) if hasattr(config.algo, "gamma") else None
    started, start_updates = time.perf_counter(), counters["updates"]
    metrics: dict[str, Any] = {}
    reward_metrics: dict[str, Any] = {}  # the learned reward sources' latest figures
    try:
        with make_progress(not show_progress) as bar:
            task = bar.add_task(f"{config.algo.name} {config.env.id}", total=tc.steps,
                                completed=counters["env_steps"], stats="")
            while counters["env_steps"] < tc.steps:
                transition = steps.step()
                storage.add(transition)
                for source in learned:
                    reward_metrics.update(source.after_step(transition, replay, counters["env_steps"]) or {})
                if counters["env_steps"] >= tc.learning_starts and len(replay.online) > 0:
                    metrics = algo.update(replay)
                    counters["updates"] += 1

                step = counters["env_steps"]
                if step % tc.log_every == 0 or step == tc.steps:
                    rate = (counters["updates"] - start_updates) / max(time.perf_counter() - started, 1e-9)
                    run.scalars(step, metrics, "train/")
                    run.scalars(step, reward_metrics, "reward/")
                    if q_value is not None:  # Q(s0, a0) against G0, online and demo episodes apart
                        for name, buffer in (("online", replay.online), ("demo", replay.demo)):
                            values = start_values(q_value, buffer, config.algo.gamma)
                            run.scalars(step, values or {}, f"value/{name}_")
                    run.scalars(step, {"success_rate": steps.success_rate,
                                       "intervention_rate": steps.intervention_rate,
                                       "interventions": counters["interventions"]}, "rollout/")
                    bar.update(task, completed=step, stats=f"{steps.stats()}  {rate:.0f} updates/s")
                # with keep_best the last iterate competes too, so it is evaluated like the others
                if tc.eval_every and step % tc.eval_every == 0 and (step < tc.steps or tc.keep_best):
                    result = evaluate_policy(config.env, lambda o: algo.act(o, deterministic=True),
                                             tc.eval_episodes, seed=VALIDATION_SEED, show_progress=False)
                    run.scalars(step, {"success_rate": result.success_rate, "mean_return": result.mean_return},
                                "eval/")
                    if tc.keep_best and (best is None or result.success_rate > best["success_rate"]):
                        best = {"step": step, "success_rate": result.success_rate, "mean_return": result.mean_return}
                        run.save_best(algo, counters, best)
                if step % tc.checkpoint_every == 0 or step == tc.steps:
                    checkpoint()
    finally:
        for source in learned:
            source.close()
        env.close()
    train_seconds = time.perf_counter() - started

    last = run.ckpt_dir / f"step_{counters['env_steps']}.pt"
    if best is not None:  # the run's policy is the best evaluated one, judged here on unseen seeds
        algo.load_state_dict(load_checkpoint(run.best_path)["state"])
    return run.finish(algo, run.best_path if best is not None else last, counters, tc.steps, show_progress,
                      demo_episodes=len(demo_episodes), train_seconds_this_session=round(train_seconds, 2),
                      intervention_source=ic.source, learn_from=ic.learning_rule,
                      reward=repr(replay.online.reward_source), **({"best_validation": best} if best else {}))

