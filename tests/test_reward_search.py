"""Reward search as a user runs it: `hilrl reward-search` against a local OpenAI-compatible server that answers
from a script of reward programs of known quality, a search stopped and resumed, ICPL's regeneration and
preference prompt, and the winner trained on with `hilrl train` and `reward: {source: code, path: ...}`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hilrl.llm.scripted_server import ScriptedServer

ROOT = Path(__file__).parents[1]
HILRL = [sys.executable, "-m", "hilrl.cli"]


def program(body):
    return f"Here is the reward.\n```python\nimport numpy as np\n\ndef compute_reward(obs, action, next_obs):\n{body}\n```"


# what the scripted LLM answers: programs of known quality
SYNTAX_ERROR = "```python\ndef compute_reward(obs, action, next_obs)\n    return 0\n```"
RUNTIME_ERROR = program("    return next_obs['goal_position'][:, 0]")  # no such key: a KeyError on real rows
GOOD = program("    distance = np.linalg.norm(next_obs['ee_pos'] - next_obs['object'], axis=-1)\n"
               "    return -distance, {'distance': distance}")
SHAPED_WRONG = program("    distance = np.linalg.norm(next_obs['ee_pos'] - next_obs['object'], axis=-1)\n"
                       "    return distance, {'distance_bonus': distance}")  # pays for moving away
# a small RLPD run that reaches the goal sometimes in 600 env steps with the good reward (~25 s on one core)
BASE = {"demos": {"episodes": 10},
        "algo": {"name": "sac", "hidden": [64, 64], "batch_size": 64, "utd": 4, "gamma": 0.9, "init_temperature": 0.01,
                 "normalisation": {"enabled": True}, "obs_keys": ["ee_pos", "object"]},
        "train": {"learning_starts": 100, "eval_episodes": 10, "video": False}}


def search_command(tmp_path, server, method="eureka", *extra):
    llm = tmp_path / "llm.yaml"
    llm.write_text(yaml.safe_dump({"provider": "openai", "base_url": server.base_url, "model": "scripted-gpt",
                                   "backoff_s": 0.01, "retries": 1}))
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    return [*HILRL, "reward-search", method, "--task", "hilrl/Reach-v0", "--llm", str(llm), "--base", str(base),
            "--steps", "600", "--final-seeds", "0", "--out", str(tmp_path / "search"), *extra]


def read(path):
    return json.loads(Path(path).read_text())


def test_eureka_keeps_the_better_reward_feeds_back_tracebacks_and_resumes_after_a_stop(tmp_path):
    search = tmp_path / "search"
    # iteration 0: a syntax error, a runtime error and two valid rewards of different quality;
    # iteration 1: nothing usable, so the conversation must stay as it was
    script = [[SYNTAX_ERROR, RUNTIME_ERROR, SHAPED_WRONG, GOOD], [SYNTAX_ERROR] * 4]
    with ScriptedServer(script) as server:
        command = search_command(tmp_path, server, "eureka", "--samples", "4", "--iterations", "2", "--workers", "1")
        first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        done = search / "iter_0" / "sample_2" / "result.json"
        deadline = time.monotonic() + 300
        while not done.is_file() and first.poll() is None:
            assert time.monotonic() < deadline, "the first candidate never finished"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)  # stopped mid-search: sample 3 not trained yet
        first.wait()
        assert not (search / "iter_0" / "sample_3" / "result.json").is_file()
        assert len(server.requests) == 1
        stamp = done.stat().st_mtime_ns

        resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert done.stat().st_mtime_ns == stamp, "a finished candidate was trained again"
    assert "done earlier" in resumed.stderr  # the live table (on stderr, like every progress display)

    iteration = read(search / "iter_0" / "summary.json")
    assert iteration["statuses"] == ["unparsable", "runtime_error", "trained", "trained"]
    assert iteration["execute_rate"] == 0.5
    assert iteration["fitness"][3] > iteration["fitness"][2], iteration  # the good reward succeeds more often
    assert iteration["best"] == 3

    feedback = {i: (search / "iter_0" / f"sample_{i}" / "feedback.txt").read_text() for i in range(4)}
    assert "Traceback" in feedback[1] and "KeyError: 'goal_position'" in feedback[1]
    assert all("Traceback" not in feedback[i] for i in (0, 2, 3))
    assert "distance: [" in feedback[3] and "Max:" in feedback[3] and "task_score" in feedback[3]
    assert "rewrite the entire reward function" in feedback[3]  # the paper's tips

    # the second request (iteration 1) was [system, user, best sample, its feedback]: no traceback in it
    # (requests: iteration 0 before the stop; the resumed run asked only for iteration 1)
    second = server.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == GOOD and second[3]["content"] == feedback[3]
    assert "Traceback" not in json.dumps(second)
    assert "hilrl/Reach-v0" not in second[1]["content"] and "within 2 cm of the goal" in second[1]["content"]
    assert read(search / "iter_1" / "summary.json")["execute_rate"] == 0.0
    assert (search / "best" / "reward.py").read_text().strip() == GOOD.split("```python\n")[1].rstrip("`").strip()

    calls = [json.loads(line) for line in (search / "llm_calls.jsonl").read_text().splitlines()]
    assert [len(c["responses"]) for c in calls] == [4, 4] and all(c["model"] == "scripted-gpt" for c in calls)
    summary = read(search / "summary.json")
    assert summary["best"] == {"iteration": 0, "sample": 3, "fitness": iteration["fitness"][3]}

    # the winner, used by `hilrl train` as reward: {source: code, path: ...}
    experiment = {"env": {"id": "hilrl/Reach-v0"}, **BASE,
                  "train": {**BASE["train"], "steps": 150, "eval_episodes": 2},
                  "reward": {"source": "code", "path": summary["reward_path"]}}
    config = tmp_path / "winner.yaml"
    config.write_text(yaml.safe_dump(experiment))
    trained = subprocess.run([*HILRL, "train", str(config), "--out", str(tmp_path / "winner")], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert read(tmp_path / "winner" / "metrics.json")["reward"] == f"CodeReward({summary['reward_path']})"


def test_icpl_regenerates_failed_samples_and_prompts_with_the_preferred_and_the_rejected_reward(tmp_path):
    search = tmp_path / "search"
    # iteration 0: one good, one broken sample; the broken one is regenerated (shaped wrong, but it runs)
    script = [[GOOD, SYNTAX_ERROR], [SHAPED_WRONG], [RUNTIME_ERROR, SYNTAX_ERROR], [SYNTAX_ERROR, SYNTAX_ERROR],
              [SYNTAX_ERROR, SYNTAX_ERROR], [SYNTAX_ERROR, SYNTAX_ERROR]]
    with ScriptedServer(script) as server:
        result = subprocess.run(search_command(tmp_path, server, "icpl", "--samples", "2", "--iterations", "2"),
                                cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "regenerating 1 failed sample" in result.stderr
    first = read(search / "iter_0" / "summary.json")
    assert first["statuses"] == ["trained", "unparsable", "trained"]  # K = 2 ran, after one regeneration
    assert [r["n"] for r in server.requests[:2]] == [2, 1]
    preference = read(search / "iter_0" / "preference.json")
    assert preference["by"] == "synthetic (task score)"
    assert (preference["best_sample"], preference["worst_sample"]) == (0, 2)

    # iteration 1's prompt: [system, initial user, feedback] with both codes, their traces and the preference
    messages = server.requests[2]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "user"]
    feedback = messages[2]["content"]
    good_at, bad_at = feedback.index("Good example"), feedback.index("Bad example")
    assert good_at < feedback.index("distance = np.linalg.norm") < bad_at < feedback.index("distance_bonus")
    assert "distance: [" in feedback and "distance_bonus: [" in feedback and "preferred the good example" in feedback
    # iteration 1 never gets two runnable samples: it stops regenerating after max_regenerations
    assert read(search / "iter_1" / "summary.json")["statuses"].count("trained") == 0


def same_results(folder):
    results = {}
    for path in sorted(Path(folder).glob("iter_*/sample_*/result.json")):
        result = read(path)
        result.pop("seconds")
        results[str(path.relative_to(folder))] = result
    return results


@pytest.mark.slow
def test_a_search_on_a_local_ray_instance_gives_what_the_process_pool_gives(tmp_path):
    pytest.importorskip("ray")
    tiny = ["--samples", "2", "--iterations", "1", "--steps", "200"]
    outcomes = {}
    for backend in ("ray", "local"):
        folder = tmp_path / backend
        folder.mkdir()
        with ScriptedServer([[GOOD, SHAPED_WRONG]]) as server:
            command = search_command(folder, server, "eureka", *tiny, "--backend", backend, "--workers", "2")
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                                    env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        assert result.returncode == 0, result.stdout + result.stderr
        assert "candidates on " + backend in result.stdout
        outcomes[backend] = same_results(folder / "search")
    assert len(outcomes["ray"]) == 2 and all(r["status"] == "trained" for r in outcomes["ray"].values())
    assert outcomes["ray"] == outcomes["local"]  # same seeds, same results, whichever backend ran them


def test_reward_code_in_a_config_is_checked_and_a_refused_file_stops_hilrl_train_with_one_line(tmp_path):
    from hilrl.config import ConfigError, validate_config

    base = {"env": {"id": "hilrl/Reach-v0"}, "algo": {"name": "sac"}}
    with pytest.raises(ConfigError, match="reward source 'code' needs path: FILE"):
        validate_config({**base, "reward": {"source": "code"}})
    with pytest.raises(ConfigError, match="path: is used only with source: code"):
        validate_config({**base, "reward": {"source": "env", "path": "reward.py"}})

    hostile = tmp_path / "reward.py"
    hostile.write_text("import os\n\ndef compute_reward(obs, action, next_obs):\n    return os.getpid()\n")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**base, "demos": {"episodes": 0}, "train": {"steps": 10, "video": False},
                                      "reward": {"source": "code", "path": str(hostile)}}))
    refused = subprocess.run([*HILRL, "train", str(config), "--out", str(tmp_path / "run")], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert "line 1: import of 'os' is not allowed (allowed: math, numpy)" in refused.stderr
    assert "Traceback" not in refused.stderr
    from hilrl.errors import HilrlError
    from hilrl.feedback.rewards import make_reward_source

    hostile.unlink()
    with pytest.raises(HilrlError, match="reward.path .*: no such file"):
        make_reward_source(validate_config(yaml.safe_load(config.read_text())).reward_config)


def test_icpl_asks_the_llm_how_successive_preferred_rewards_differ_and_carries_the_summaries(tmp_path):
    from hilrl.llm.providers import LLMConfig, make_llm
    from hilrl.apps.reward_search import RewardSearch, SearchSettings

    traces = {"window": 60, "components": {"distance": [0.3, 0.2]}, "success_rate": [0.0, 0.5],
              "episode_length": [50.0, 30.0], "reward": [-0.3, -0.2]}
    trained = []
    for index, code in enumerate((GOOD, SHAPED_WRONG)):
        folder = tmp_path / "search" / "iter_1" / f"sample_{index}"
        folder.mkdir(parents=True)
        (folder / "reward.py").write_text(code.split("```python\n")[1].rstrip("`"))
        trained.append({"index": index, "folder": folder, "fitness": 0.5 - index * 0.5, "success_rate": 0.5,
                        "traces": traces})
    answer = '{"summary": "the later reward measures the distance to the goal instead of the height"}'
    with ScriptedServer([[answer]]) as server:
        llm = make_llm(LLMConfig(base_url=server.base_url, model="m"), tmp_path / "calls.jsonl")
        search = RewardSearch(SearchSettings("icpl", "hilrl/Reach-v0", samples=2), llm, tmp_path / "search",
                              show_progress=False)
        history = [{"iteration": 0, "code": "def compute_reward(obs, action, next_obs):\n    return 0\n"}]
        messages = search.next_messages_icpl(search.messages_start(), {"trained": trained}, 1, history)
    (asked,) = server.requests
    assert asked["response_format"]["type"] == "json_schema"
    assert "return 0" in asked["messages"][0]["content"] and "distance" in asked["messages"][0]["content"]
    assert "measures the distance to the goal instead of the height" in messages[-1]["content"]
    assert history[0]["summary"].startswith("the later reward") and history[-1]["iteration"] == 1
    assert (tmp_path / "search" / "iter_1" / "difference.json").is_file()
