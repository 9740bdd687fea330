"""Reward search as a small model meets it (issue 28): `hilrl reward-search` against a scripted server whose
samples make exactly the mistakes Qwen2.5-Coder-1.5B made. Every mistake is named with its fix in the sample's
feedback; when no sample trains, the next iteration is shown one failed sample and that feedback; samples are
asked for one per request and each candidate trains while the next is written; each iteration's cost is kept."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hilrl.llm.scripted_server import ScriptedServer

ROOT = Path(__file__).parents[1]
HILRL = [sys.executable, "-m", "hilrl.cli"]


def program(body, signature="obs, action, next_obs"):
    return f"```python\nimport numpy as np\n\ndef compute_reward({signature}):\n{body}\n```"


ROWS_UNPACKED = program("    dx, dy, dz, gripper = action\n    return -abs(dx), {}")
EXTRA_ARGUMENT = program("    return -np.abs(action[:, 0]) * t, {}", "obs, action, next_obs, t")
# `object` as a local name is fine now; the norm lost its batch axis, found on real transitions
LOST_AXIS = program("    object = next_obs['object']\n"
                    "    distance = np.linalg.norm(next_obs['ee_pos'] - object)\n"
                    "    return -distance, {'distance': distance}")
# Qwen's best program of a Reach search (it retrained to 0%): `ee_pos[0]` is the batch's first row, and a norm
# without axis one number for the batch, so each row's reward depends on the rows sampled with it
ROWS_MIXED = program("    ee_pos = next_obs['ee_pos']\n"
                     "    distance = np.linalg.norm(next_obs['object'] - ee_pos, axis=-1)\n"
                     "    moved = np.linalg.norm(ee_pos - ee_pos[0])\n"
                     "    return np.exp(-distance / 0.1) + np.exp(-moved / 0.05), {'moved': moved}")
SYNTAX_ERROR = "```python\ndef compute_reward(obs, action, next_obs)\n    return 0\n```"
GOOD = program("    object = next_obs['object']\n"
               "    distance = np.linalg.norm(next_obs['ee_pos'] - object, axis=-1)\n"
               "    return -distance, {'distance': distance}")
BASE = {"demos": {"episodes": 2},
        "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 32, "obs_keys": ["ee_pos", "object"]},
        "train": {"learning_starts": 50, "eval_episodes": 1, "video": False}}


def search(tmp_path, server, *extra):
    llm = tmp_path / "llm.yaml"
    llm.write_text(yaml.safe_dump({"provider": "openai", "base_url": server.base_url, "model": "small-coder",
                                   "backoff_s": 0.01, "retries": 1}))
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    return subprocess.run([*HILRL, "reward-search", "eureka", "--task", "hilrl/Reach-v0", "--llm", str(llm),
                           "--base", str(base), "--final-seeds", "0", "--out", str(tmp_path / "search"),
                           "--samples-per-request", "1", *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def read(path):
    return json.loads(Path(path).read_text())


def test_each_mistake_is_fed_back_with_its_fix_and_the_next_iteration_sees_a_failed_sample(tmp_path):
    script = [[ROWS_UNPACKED], [EXTRA_ARGUMENT], [LOST_AXIS], [ROWS_MIXED], [SYNTAX_ERROR], [SYNTAX_ERROR]]
    with ScriptedServer(script) as server:
        done = search(tmp_path, server, "--samples", "3", "--iterations", "2", "--steps", "100")
        requests = server.requests
    assert done.returncode == 1 and "no reward program trained" in done.stdout, done.stdout + done.stderr
    assert [r["n"] for r in requests] == [1] * 6  # one sample per request
    folder = tmp_path / "search" / "iter_0"
    assert read(folder / "summary.json")["statuses"] == ["unparsable", "unparsable", "runtime_error"]
    feedback = [(folder / f"sample_{i}" / "feedback.txt").read_text() for i in range(3)]
    assert "index its columns instead, `dx, dy, dz, gripper = action[:, 0], action[:, 1]" in feedback[0]
    assert "the extra argument(s) 't', but it is called as compute_reward(obs, action, next_obs)" in feedback[1]
    assert "is a single number, the same for every row" in feedback[2] and "miss axis=-1?" in feedback[2]
    assert "refused before running: line 4: `dx, dy, dz, gripper = action` unpacks" in done.stderr  # the table
    mixed = (tmp_path / "search" / "iter_1" / "sample_0" / "feedback.txt").read_text()
    assert "of a row changes with the other rows of its batch" in mixed and "x[0]" in mixed

    # iteration 1 is shown the sample that ran furthest (a runtime error) and its feedback, not the same prompt
    first, second = requests[0]["messages"], requests[3]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[:2] == first and second[2]["content"] == LOST_AXIS and second[3]["content"] == feedback[2]
    # the contract with its worked example on a batch, in the system prompt
    assert "Never unpack a batch into rows" in first[0]["content"] and "reward ≈ [0.0, -0.982, -0.998]" in first[0][
        "content"]
    cost = read(folder / "summary.json")["cost"]
    assert set(cost) == {"generation_s", "training_s", "candidates_s", "total_s", "overlap_s"}
    assert cost["training_s"] == 0.0 and cost["generation_s"] > 0.0  # nothing trained; three requests made
    assert "eureka iteration 0 cost: generation" in done.stderr  # and the log line says it


@pytest.mark.slow
def test_a_candidate_trains_while_the_llm_writes_the_next_sample(tmp_path):
    run_dir = tmp_path / "search" / "iter_0" / "sample_0" / "run"
    seen = {}

    def turn(body):
        if not seen:  # the first sample
            seen["first"] = True
            return [GOOD]
        deadline = time.monotonic() + 120  # the second sample is written only once the first one trains
        while not (run_dir / "config.yaml").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        seen["training_while_asked"] = (run_dir / "config.yaml").is_file()
        return [SYNTAX_ERROR]

    with ScriptedServer(turn) as server:
        done = search(tmp_path, server, "--samples", "2", "--iterations", "1", "--steps", "150")
    assert done.returncode == 0, done.stdout + done.stderr
    assert seen["training_while_asked"]
    summary = read(tmp_path / "search" / "iter_0" / "summary.json")
    assert summary["statuses"] == ["trained", "unparsable"]
    assert summary["cost"]["overlap_s"] > 0 and summary["cost"]["candidates_s"] > 0
    totals = read(tmp_path / "search" / "summary.json")["cost"]
    assert totals["total_s"] == summary["cost"]["total_s"]
