"""Reward search with an LLM: Eureka and ICPL on the run core (`hilrl reward-search eureka|icpl`).

**Eureka** (Ma et al. 2023, "Eureka: Human-Level Reward Design via Coding Large Language Models";
eureka-research/Eureka, ``eureka/eureka.py``). The context is the task's observation fields and
success condition (:mod:`hilrl.llm.tasks`); each iteration samples ``K`` reward programs. A program
that does not parse or breaks the sandbox's rules is skipped (Eureka skips unparsable samples); one
that raises on real transitions, checked on a probe batch before training or raised while training,
gets fitness ``DUMMY_FAILURE`` and its traceback as feedback (``execution_error_feedback``). Every
valid one trains a policy (our SAC on state obs, a short budget) through the run core; fitness is the
task's success metric, the best validation success rate over training, never the generated reward.
The reflection lists each reward component's values at ~10 checkpoints over training with
max/mean/min, the task score and episode lengths, plus the paper's tips (``policy_feedback``,
``code_feedback``, ``code_output_tip``). The next conversation is [system, user, best sample, its
feedback] (replaced, not appended). When every sample fails, Eureka repeats the iteration from the same
messages; with a few samples of a small model that repeats the same mistake, so here the next conversation
is [system, user, one failed sample, its feedback]: the runtime error with its hint, or the sandbox's
refusal with the fix of each problem (:func:`hilrl.llm.sandbox.check_code` checks the signature and
catches a batch unpacked by rows before anything runs). Execute rate = samples that trained / K.

Candidates train while the LLM writes: each sample starts training as soon as it is checked
(:class:`~hilrl.apps.candidates.CandidatePool`), so with ``samples_per_request=1`` (a local model, which
writes one sample after another) sample k+1 is generated while sample k trains. Iterations do not overlap:
iteration i+1's prompt needs iteration i's results. Each iteration's cost (LLM generation, training, total
wall time, and how much the two overlapped) is logged and kept in ``iter_I/summary.json`` (``cost``).

At the end the best reward is retrained with several seeds, beside the task's sparse reward and its own
dense reward (the "human" reward), and the human-normalised score (Method - Sparse) / |Human - Sparse|,
clipped to [0, 3], is reported.

**ICPL** (Yu et al. 2024, "Few-shot In-Context Preference Learning Using Large Language Models";
icpl-research/ICPL). The same loop, except: failed samples are regenerated until ``K`` run (up to
``max_regenerations`` extra requests); after training a person names the best and the worst
candidate from their rollout videos (terminal prompt; synthetic mode ranks by task score), and the
next prompt, [system, initial user, feedback], carries both reward codes with their component
traces as good and bad examples, the preference, Eureka's tips, and the LLM's summary of the
differences between the good rewards of successive iterations.

The search folder (every candidate kept: code, reflection, curves, logs)::

    OUT/search.json                   settings; a folder of another search is refused
    OUT/llm_calls.jsonl               every LLM call (messages, responses, tokens, latency), replayable
    OUT/iter_I/messages.json          the conversation sent in iteration I
    OUT/iter_I/responses.json         the LLM's answers (kept: a resumed search does not ask again)
    OUT/iter_I/sample_K/              response.txt, reward.py, status.json, feedback.txt, run/ (the
                                      candidate's run folder: TensorBoard curves, metrics), result.json
    OUT/iter_I/summary.json           execute rate, fitness of each sample, the best one, the cost (seconds)
    OUT/best/reward.py                the best reward so far: `reward: {source: code, path: OUT/best/reward.py}`
    OUT/final/{best,sparse,human}_seed_S/   the retrainings
    OUT/summary.json                  the figures of the search
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from hilrl.config import is_hilrl_task
from hilrl.errors import HilrlError
from hilrl.llm.providers import LLM
from hilrl.llm.reward_code import extract_code
from hilrl.llm.sandbox import CodeError, Sandbox, SandboxError, check_code, check_row_by_row
from hilrl.llm.tasks import task_text
from hilrl.apps.candidates import CandidateJob, CandidatePool, default_workers, run_jobs

__all__ = ["DUMMY_FAILURE", "SearchSettings", "human_normalised", "reward_search"]

DUMMY_FAILURE = -10000.0  # Eureka's fitness of a sample whose code failed to run
PROMPTS = Path(__file__).parents[1] / "llm" / "prompts"

# a small SAC/RLPD on state obs: what each candidate trains with unless --base names another experiment
DEFAULT_BASE: dict[str, Any] = {
    "demos": {"episodes": 5},
    "algo": {"name": "sac", "hidden": [64, 64], "batch_size": 64, "gamma": 0.9, "init_temperature": 0.01,
             "normalisation": {"enabled": True}},
    "train": {"learning_starts": 200, "eval_episodes": 5, "video": False},
}


def prompt(name: str) -> str:
    """A prompt file of :mod:`hilrl.llm` (``prompts/NAME.txt``)."""
    return (PROMPTS / f"{name}.txt").read_text()


@dataclass
class SearchSettings:
    """A search's settings (what ``search.json`` holds; a resumed search must have the same).

    Args:
        method: ``eureka`` or ``icpl``.
        task: the gymnasium id.
        samples: K, reward programs per iteration (Eureka's paper: 16; ICPL: 6).
        iterations: I (both papers: 5).
        steps: env steps of each candidate training.
        seed: seed of the candidate trainings (and of the probe batch).
        evaluations: validation evaluations over a candidate's training (fitness: the best of them).
        final_seeds: seeds the best reward is retrained with (0: no retraining).
        final_steps: env steps of each retraining (default ``steps``).
        base: the experiment's other sections (``demos``, ``algo``, ``train``...), deep-merged over the default.
        human: ICPL: a person picks best and worst in the terminal (else synthetic, by task score).
        max_regenerations: ICPL: extra LLM requests allowed per iteration to replace failed samples.
        temperature: sampling temperature (Eureka: 1.0); None = the LLM config's.
        samples_per_request: answers asked for in one LLM request; 0: all K at once (Eureka; a server samples
            them in parallel). 1 suits a local model, which writes one after another: each candidate then
            trains while the next sample is written.
        task_file: a text file describing the task, read as its description (a foreign env's; default: hilrl's
            text of its tasks, or one generated from a foreign env's spaces and docstring).
    """

    method: Literal["eureka", "icpl"]
    task: str
    samples: int = 4
    iterations: int = 2
    steps: int = 1000
    seed: int = 0
    evaluations: int = 4
    final_seeds: int = 2
    final_steps: int | None = None
    base: dict[str, Any] = field(default_factory=dict)
    human: bool = False
    max_regenerations: int = 3
    temperature: float | None = None
    samples_per_request: int = 0
    task_file: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("eureka", "icpl"):
            raise HilrlError(f"reward search method {self.method!r}: allowed are eureka, icpl")
        for name in ("samples", "iterations", "steps", "evaluations"):
            if int(getattr(self, name)) < 1:
                raise HilrlError(f"--{name} must be at least 1, got {getattr(self, name)}")
        task_text(self.task, self.task_file)  # a clear error for a task without an LLM description

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class DifferenceSummary(BaseModel):
    """ICPL: the LLM's summary of how a preferred reward differs from the previous preferred one."""

    summary: str


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def human_normalised(method: float, sparse: float, human: float) -> float | None:
    """Eureka's human-normalised score, (Method - Sparse) / |Human - Sparse| clipped to [0, 3]; None when
    the human and sparse rewards score the same (undefined)."""
    if abs(human - sparse) < 1e-12:
        return None
    return float(np.clip((method - sparse) / abs(human - sparse), 0.0, 3.0))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def probe_batch(env_config: Any, rows: int = 64, seed: int = 0) -> tuple[dict, np.ndarray, dict]:
    """Real transitions of the task under random actions: what a reward is tried on before it trains."""
    from hilrl.envs.make import make_env

    env = make_env(env_config)
    rng = np.random.default_rng(seed)
    obs_rows, next_rows, actions = [], [], []
    try:
        obs, _ = env.reset(seed=seed)
        while len(actions) < rows:
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            next_obs, _, terminated, truncated, _ = env.step(action)
            obs_rows.append(obs)
            next_rows.append(next_obs)
            actions.append(action)
            obs = env.reset()[0] if terminated or truncated else next_obs
    finally:
        env.close()
    stack = lambda seq: {k: np.stack([o[k] for o in seq]) for k in seq[0]}  # noqa: E731
    return stack(obs_rows), np.stack(actions), stack(next_rows)


def format_traces(result: dict[str, Any]) -> str:
    """Eureka's policy feedback: each component, the task score and episode lengths at the checkpoints."""
    traces = result["traces"]
    lines = [prompt("policy_feedback").format(window=traces["window"]).rstrip()]

    def line(name: str, values: list[float | None]) -> None:
        known = [v for v in values if v is not None]
        if not known:
            lines.append(f"{name}: no episode ended in any window")
            return
        shown = ", ".join("-" if v is None else f"{v:.2f}" for v in values)
        lines.append(f"{name}: [{shown}], Max: {max(known):.2f}, Mean: {np.mean(known):.2f}, Min: {min(known):.2f}")

    for name, values in traces["components"].items():
        line(name, values)
    line("task_score (success rate of the episodes ending in each window)", traces["success_rate"])
    line("episode_length", traces["episode_length"])
    lines.append(f"Best validation success rate during training: {result['fitness']:.2f}; final test success rate: "
                 f"{result['success_rate']:.2f}")
    return "\n".join(lines) + "\n"


class RewardSearch:
    """One search in one folder (see the module docstring); :meth:`run` does everything, resuming.

    Args:
        settings: what to search.
        llm: the provider (its call log is written where it was made, normally ``out/llm_calls.jsonl``).
        out: the search folder.
        backend: where candidates train (``serial``, ``local``, ``ray``).
        workers: parallel trainings (default: the machine's CPUs).
        show_progress: live tables and progress lines.
        choose: ICPL's person: ``choose(results) -> (best_index, worst_index)`` over the trained ones;
            default a terminal prompt (``human``) or the task score (synthetic).
        name_sample: ``name_sample(response) -> name or None``: what a sample is, shown in the table and kept in
            ``iter_I/summary.json`` (``names``); e.g. the demo's programs of known quality.
    """

    def __init__(self, settings: SearchSettings, llm: LLM, out: str | os.PathLike, backend: str = "local",
                 workers: int | None = None, show_progress: bool = True,
                 choose: Callable[[list[dict[str, Any]]], tuple[int, int]] | None = None,
                 name_sample: Callable[[str], str | None] | None = None) -> None:
        from hilrl.apps.candidates import BACKENDS

        if backend not in BACKENDS:
            raise HilrlError(f"--backend {backend!r}: allowed values are {', '.join(BACKENDS)}")
        self.settings, self.llm, self.out = settings, llm, Path(out)
        self.backend, self.workers, self.show_progress = backend, workers, show_progress
        self.choose, self.name_sample = choose, name_sample
        self._generation_s = 0.0
        self.text = task_text(settings.task, settings.task_file)
        self.out.mkdir(parents=True, exist_ok=True)
        stored = _read_json(self.out / "search.json")
        if stored is not None and stored != json.loads(json.dumps(settings.to_dict())):
            changed = sorted(k for k in set(stored) | set(settings.to_dict())
                             if stored.get(k) != json.loads(json.dumps(settings.to_dict())).get(k))
            raise HilrlError(f"{self.out} holds a search with other settings ({', '.join(changed)} differ); resume it "
                             "with the same options or pass a new --out")
        _write_json(self.out / "search.json", settings.to_dict())
        self._probe: tuple | None = None

    # ---------------------------------------------------------------- pieces
    def log(self, text: str) -> None:
        if self.show_progress:
            from hilrl.runtime.progress import console

            console.print(text, soft_wrap=True)  # one line each when piped to a file

    def experiment(self, reward: dict[str, Any], seed: int, steps: int, video: bool = False,
                   env: dict[str, Any] | None = None) -> dict[str, Any]:
        """The experiment a candidate (or a retraining) runs."""
        s = self.settings
        raw = _merge(DEFAULT_BASE, s.base)
        every = max(1, steps // s.evaluations)
        raw = _merge(raw, {"env": {"id": s.task, **(env or {})},
                           "train": {"steps": steps, "seed": seed, "eval_every": every, "keep_best": True,
                                     "checkpoint_every": steps, "log_every": every}})
        if video:
            raw["train"]["video"] = True
        raw["reward"] = reward
        return raw

    def messages_start(self) -> list[dict[str, str]]:
        system = prompt("initial_system") + prompt("code_output_tip")
        user = prompt("initial_user").format(observation=self.text.observation, description=self.text.description,
                                             success=self.text.success)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def probe(self) -> tuple:
        if self._probe is None:
            from hilrl.config import EnvConfig

            env = {**self.settings.base.get("env", {}), "id": self.settings.task}
            self._probe = probe_batch(EnvConfig(**env), seed=self.settings.seed)
        return self._probe

    def check_sample(self, folder: Path, text: str) -> dict[str, Any]:
        """Extract, check and try a sample's code: ``status`` ``valid``, ``unparsable`` or ``runtime_error``."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "response.txt").write_text(text)
        code = extract_code(text)
        (folder / "reward.py").write_text(code)
        status = _read_json(folder / "status.json")
        if status is not None:
            return status
        try:
            check_code(code)
            with Sandbox(code) as sandbox:
                check_row_by_row(sandbox, *self.probe())
            status = {"status": "valid"}
        except CodeError as exc:  # Eureka: a sample that does not parse is skipped
            status = {"status": "unparsable", "error": str(exc), "problems": exc.problems}
        except SandboxError as exc:  # Eureka: a runtime error goes back to the LLM as a traceback
            status = {"status": "runtime_error", "traceback": exc.message}
        _write_json(folder / "status.json", status)
        return status

    def answers(self, iteration: int, messages: list[dict[str, str]], n: int, tag: str) -> Iterator[str]:
        """``n`` answers, yielded as they arrive (``samples_per_request`` per LLM request; default all ``n`` in one)
        and kept in ``iter_I/responses.json`` as they come (a resumed search reads them back and asks only for
        the rest). The caller acts on each answer (checks it, starts its training) while the next is written."""
        path = self.out / f"iter_{iteration}" / "responses.json"
        got = list((_read_json(path) or {}).get(tag, []))[:n]
        yield from got
        per_request = self.settings.samples_per_request or n
        while len(got) < n:
            started = time.perf_counter()
            new = self.llm.chat(messages, n=min(per_request, n - len(got)), temperature=self.settings.temperature,
                                purpose="reward")
            self._generation_s += time.perf_counter() - started
            got.extend(new)
            kept = _read_json(path) or {}
            kept[tag] = got
            _write_json(path, kept)
            yield from new

    # ---------------------------------------------------------------- one iteration
    def iteration(self, iteration: int, messages: list[dict[str, str]]) -> dict[str, Any]:
        """Sample, check and train one iteration's programs. Each valid sample starts training as soon as it is
        checked, so with ``samples_per_request`` 1 the LLM writes sample k+1 while sample k trains (the next
        iteration's prompt needs this one's results, so iterations themselves do not overlap)."""
        s = self.settings
        folder = self.out / f"iter_{iteration}"
        _write_json(folder / "messages.json", messages)
        started = time.perf_counter()
        samples: list[dict[str, Any]] = []
        submitted: list[float] = []
        workers = self.workers or max(1, min(default_workers(), s.samples))
        with CandidatePool(self.backend, workers, self.show_progress, f"{s.method} iteration {iteration}") as pool:
            def take(text: str, regenerated: bool = False) -> None:
                index = len(samples)
                sample = {"index": index, "folder": folder / f"sample_{index}", "response": text,
                          **({"regenerated": True} if regenerated else {}),
                          **self.check_sample(folder / f"sample_{index}", text)}
                name = self.name_sample(text) if self.name_sample is not None else None
                if name:
                    sample["name"] = name
                samples.append(sample)
                key = f"iter_{iteration}/sample_{index}"
                running = sum(x["status"] == "valid" for x in samples[:-1])
                if sample["status"] == "valid" and (s.method == "eureka" or running < s.samples):
                    submitted.append(time.perf_counter())
                    reward_py = Path(sample["folder"]) / "reward.py"
                    pool.submit(CandidateJob(key, str(sample["folder"]),
                                             self.experiment({"source": "code", "path": str(reward_py)}, s.seed,
                                                             s.steps, video=s.method == "icpl" and s.human),
                                             code=reward_py.read_text()), label=name)
                else:
                    pool.note(key, _sample_state(sample), label=name)

            for text in self.answers(iteration, messages, s.samples, "0"):
                take(text)
            if s.method == "icpl":  # ICPL: failed samples are regenerated until K run
                for round_ in range(1, s.max_regenerations + 1):
                    missing = s.samples - sum(sample["status"] == "valid" for sample in samples)
                    if missing <= 0:
                        break
                    self.log(f"iteration {iteration}: regenerating {missing} failed sample(s)")
                    for text in self.answers(iteration, messages, missing, str(round_)):
                        take(text, regenerated=True)
            results = pool.wait()
        ended = time.perf_counter()
        for sample in samples:
            result = results.get(f"iter_{iteration}/sample_{sample['index']}")
            if result is not None:
                sample.update(result if result["status"] == "trained" else {"status": "runtime_error",
                                                                           "traceback": result["traceback"]})
            elif sample["status"] == "valid":  # ICPL: a valid sample beyond the K that train
                sample["status"] = "not_trained"
            sample["fitness"] = sample.get("fitness", DUMMY_FAILURE) if sample["status"] == "trained" else (
                DUMMY_FAILURE if sample["status"] == "runtime_error" else None)
            self.write_feedback(sample)
        trained = [x for x in samples if x["status"] == "trained"]
        training_s = ended - submitted[0] if submitted else 0.0
        cost = {"generation_s": round(self._generation_s, 2), "training_s": round(training_s, 2),
                "candidates_s": round(sum(float(x.get("seconds", 0.0)) for x in trained), 2),
                "total_s": round(ended - started, 2)}
        cost["overlap_s"] = round(max(0.0, cost["generation_s"] + cost["training_s"] - cost["total_s"]), 2)
        self._generation_s = 0.0
        summary = {"iteration": iteration, "samples": len(samples),
                   "execute_rate": sum(x["status"] == "trained" for x in samples[:s.samples]) / s.samples
                   if s.method == "eureka" else len(trained) / max(len(samples), 1),
                   "statuses": [x["status"] for x in samples], "fitness": [x["fitness"] for x in samples],
                   "cost": cost}
        if any("name" in x for x in samples):
            summary["names"] = [x.get("name") for x in samples]
        if trained:
            best = max(trained, key=lambda x: (x["fitness"], _mean(x["traces"]["success_rate"]), -x["index"]))
            summary["best"] = best["index"]
            summary["best_fitness"] = best["fitness"]
        _write_json(folder / "summary.json", summary)
        self.log(f"{s.method} iteration {iteration}: execute rate {summary['execute_rate']:.2f}, fitness "
                 f"{[round(f, 2) if f is not None and f > DUMMY_FAILURE else f for f in summary['fitness']]}, best "
                 f"{summary.get('best', 'none')}")
        self.log(f"{s.method} iteration {iteration} cost: generation {cost['generation_s']:.1f} s, training "
                 f"{cost['training_s']:.1f} s ({cost['candidates_s']:.1f} s of candidate trainings), total "
                 f"{cost['total_s']:.1f} s; generation and training overlapped {cost['overlap_s']:.1f} s")
        return {"summary": summary, "samples": samples, "trained": trained}

    def write_feedback(self, sample: dict[str, Any]) -> None:
        """The sample's feedback text (Eureka: reflection for a trained one, the traceback for a failed one)."""
        if sample["status"] == "trained":
            text = format_traces(sample) + prompt("code_feedback") + prompt("code_output_tip")
        elif sample["status"] == "runtime_error":
            text = prompt("execution_error_feedback").format(traceback=sample["traceback"]) + prompt("code_output_tip")
        elif sample["status"] == "unparsable":
            problems = sample.get("problems") or [sample.get("error", "")]
            text = prompt("code_refused_feedback").format(problems="\n".join(f"- {p}" for p in problems)) + prompt(
                "code_output_tip")
        else:
            text = "Not trained: the iteration had its K samples already.\n"
        (Path(sample["folder"]) / "feedback.txt").write_text(text)
        sample["feedback"] = text

    # ---------------------------------------------------------------- the loops
    @staticmethod
    def failed_example(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
        """When no sample trained: the one whose feedback helps most (it ran furthest: a runtime error on real
        transitions before a refusal), first by index."""
        for status in ("runtime_error", "unparsable"):
            found = [x for x in samples if x["status"] == status]
            if found:
                return found[0]
        return None

    def next_messages_eureka(self, start: list[dict[str, str]], outcome: dict[str, Any]) -> list[dict[str, str]] | None:
        best = next(x for x in outcome["samples"] if x["index"] == outcome["summary"]["best"])
        return [*start, {"role": "assistant", "content": best["response"]}, {"role": "user", "content": best["feedback"]}]

    def pick(self, trained: list[dict[str, Any]], iteration: int) -> tuple[int, int]:
        """ICPL's person: best and worst of the trained candidates (positions in ``trained``), kept in
        ``iter_I/preference.json``."""
        path = self.out / f"iter_{iteration}" / "preference.json"
        kept = _read_json(path)
        if kept is not None:
            return kept["best"], kept["worst"]
        if self.choose is not None:
            best, worst = self.choose(trained)
            who = "callback"
        elif self.settings.human:
            best, worst = _ask_in_terminal(trained)
            who = "person"
        else:  # synthetic: the task score
            order = sorted(range(len(trained)), key=lambda i: (trained[i]["fitness"],
                                                                 _mean(trained[i]["traces"]["success_rate"])))
            best, worst, who = order[-1], order[0], "synthetic (task score)"
        _write_json(path, {"best": best, "worst": worst, "by": who,
                           "best_sample": trained[best]["index"], "worst_sample": trained[worst]["index"]})
        return best, worst

    def next_messages_icpl(self, start: list[dict[str, str]], outcome: dict[str, Any], iteration: int,
                           history: list[dict[str, Any]]) -> list[dict[str, str]]:
        trained = outcome["trained"]
        best, worst = self.pick(trained, iteration)
        good, bad = trained[best], trained[worst]
        if history:  # the LLM's summary of the differences between successive good rewards
            path = self.out / f"iter_{iteration}" / "difference.json"
            kept = _read_json(path)
            if kept is None:
                ask = prompt("icpl_difference").format(previous=history[-1]["code"], current=_code(good))
                started = time.perf_counter()
                kept = self.llm.chat_json([{"role": "user", "content": ask}], DifferenceSummary, temperature=0.0,
                                          purpose="difference").model_dump()
                self._generation_s += time.perf_counter() - started  # counted in the next iteration's generation
                _write_json(path, kept)
            history[-1]["summary"] = kept["summary"]
        history.append({"iteration": iteration, "code": _code(good)})
        summaries = [f"- iteration {h['iteration']} -> next: {h['summary']}" for h in history if h.get("summary")]
        feedback = prompt("icpl_feedback").format(
            count=len(trained), good_code=_code(good).strip(), good_traces=format_traces(good),
            bad_code=_code(bad).strip(), bad_traces=format_traces(bad),
            history=prompt("icpl_history").format(summaries="\n".join(summaries)) if summaries else "")
        return [*start, {"role": "user", "content": feedback + prompt("code_feedback") + prompt("code_output_tip")}]

    def run(self) -> dict[str, Any]:
        """Every iteration, then the retrainings; returns (and writes) ``summary.json``'s figures."""
        s = self.settings
        start = self.messages_start()
        messages = start
        overall: dict[str, Any] | None = None
        history: list[dict[str, Any]] = []
        iterations = []
        for iteration in range(s.iterations):
            outcome = self.iteration(iteration, messages)
            iterations.append(outcome["summary"])
            if not outcome["trained"]:  # every sample failed (module docstring)
                failed = self.failed_example(outcome["samples"])
                if failed is not None and iteration + 1 < s.iterations:
                    messages = [*start, {"role": "assistant", "content": failed["response"]},
                                {"role": "user", "content": failed["feedback"]}]
                continue
            best = next(x for x in outcome["samples"] if x["index"] == outcome["summary"]["best"])
            if overall is None or best["fitness"] > overall["fitness"]:
                overall = {"iteration": iteration, "sample": best["index"], "fitness": best["fitness"],
                           "code": _code(best)}
                _write_json(self.out / "best" / "best.json", {k: v for k, v in overall.items() if k != "code"})
                (self.out / "best" / "reward.py").write_text(overall["code"])
            if iteration + 1 < s.iterations:
                messages = (self.next_messages_eureka(start, outcome) if s.method == "eureka"
                            else self.next_messages_icpl(start, outcome, iteration, history))
        summary: dict[str, Any] = {"method": s.method, "task": s.task, "iterations": iterations,
                                   "execute_rate": float(np.mean([it["execute_rate"] for it in iterations])),
                                   "cost": {k: round(sum(it["cost"][k] for it in iterations), 2)
                                            for k in iterations[0]["cost"]} if iterations else {},
                                   "best": {k: v for k, v in (overall or {}).items() if k != "code"} or None,
                                   "reward_path": str(self.out / "best" / "reward.py") if overall else None}
        if overall is not None and s.final_seeds:
            summary["final"] = self.retrain()
        _write_json(self.out / "summary.json", summary)
        return summary

    def retrain(self) -> dict[str, Any]:
        """The best reward, the sparse reward and the task's dense ("human") reward, each with ``final_seeds``
        seeds; the human-normalised score of the mean test success rates."""
        s = self.settings
        steps = s.final_steps or s.steps
        seeds = [s.seed + 1000 + i for i in range(s.final_seeds)]
        rewards = {"best": ({"source": "code", "path": str(self.out / "best" / "reward.py")}, {})}
        if is_hilrl_task(s.task):
            rewards["sparse"] = ({"source": "env"}, {"reward_type": "sparse"})
            rewards["human"] = ({"source": "env"}, {"reward_type": "dense"})
        else:  # a foreign env: its own reward as configured; no dense reward of its authors is known here
            rewards["sparse"] = ({"source": "env"}, {})
        jobs = [CandidateJob(f"{name}_seed_{seed}", str(self.out / "final" / f"{name}_seed_{seed}"),
                             self.experiment(reward, seed, steps, env=env), extra={"reward": name, "seed": seed},
                             code=(self.out / "best" / "reward.py").read_text() if name == "best" else None)
                for name, (reward, env) in rewards.items() for seed in seeds]
        results = run_jobs(jobs, self.backend, self.workers, self.show_progress, title="retraining")
        scores: dict[str, Any] = {}
        for name in rewards:
            mine = [r for r in results if r.get("reward") == name]
            failed = [r for r in mine if r["status"] != "trained"]
            if failed:
                raise HilrlError(f"retraining {failed[0]['key']} failed: {failed[0].get('traceback')}")
            scores[name] = {"success_rate": float(np.mean([r["success_rate"] for r in mine])),
                            "per_seed": [r["success_rate"] for r in mine]}
        if "human" not in scores:
            self.log(f"retrained over seeds {seeds}: best reward {scores['best']['success_rate']:.0%}, the env's own "
                     f"reward {scores['sparse']['success_rate']:.0%}")
            return {"seeds": seeds, "steps": steps, "scores": scores, "human_normalised": None}
        score = human_normalised(scores["best"]["success_rate"], scores["sparse"]["success_rate"],
                                 scores["human"]["success_rate"])
        self.log(f"retrained over seeds {seeds}: best reward {scores['best']['success_rate']:.0%}, sparse "
                 f"{scores['sparse']['success_rate']:.0%}, task's dense {scores['human']['success_rate']:.0%}; "
                 f"human-normalised score {'undefined' if score is None else f'{score:.2f}'}")
        return {"seeds": seeds, "steps": steps, "scores": scores, "human_normalised": score}


def _sample_state(sample: dict[str, Any]) -> str:
    """A sample that does not train, as its row in the table reads."""
    if sample["status"] == "unparsable":
        problems = sample.get("problems") or [sample.get("error", "")]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"refused before running: {problems[0][:110]}{more}"
    if sample["status"] == "runtime_error":
        lines = [line for line in sample.get("traceback", "").strip().splitlines() if not line.startswith("Hint:")]
        return "failed on real transitions: " + (lines[-1][:110] if lines else "")
    return "valid, not trained (the iteration had its K samples)"


def _mean(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else 0.0


def _code(sample: dict[str, Any]) -> str:
    return (Path(sample["folder"]) / "reward.py").read_text()


def _ask_in_terminal(trained: list[dict[str, Any]]) -> tuple[int, int]:
    """The person names the best and the worst rollout (the labelling page is another room's)."""
    print("Watch each candidate's rollout, then name the best and the worst:")
    for position, sample in enumerate(trained):
        print(f"  [{position}] sample {sample['index']}: {sample.get('video') or '(no video)'}")

    def ask(what: str) -> int:
        while True:
            answer = input(f"{what} (0-{len(trained) - 1}): ").strip()
            if answer.isdigit() and int(answer) < len(trained):
                return int(answer)
            print(f"type a number from 0 to {len(trained) - 1}")

    return ask("best"), ask("worst")


def reward_search(settings: SearchSettings, llm: LLM, out: str | os.PathLike, backend: str = "local",
                  workers: int | None = None, show_progress: bool = True,
                  choose: Callable[[list[dict[str, Any]]], tuple[int, int]] | None = None,
                  name_sample: Callable[[str], str | None] | None = None) -> dict[str, Any]:
    """Run (or resume) the search ``settings`` describes in ``out``; see :class:`RewardSearch`."""
    return RewardSearch(settings, llm, out, backend, workers, show_progress, choose, name_sample).run()
