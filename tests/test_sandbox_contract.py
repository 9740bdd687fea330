"""The reward code's contract as a small model meets it (issue 28: what Qwen2.5-Coder-1.5B wrote): ordinary
local names that happen to be builtins run, the hostile ones stay refused, and each usual mistake (a batch
unpacked by rows, an extra argument, no return, a wrong shape, NaN, a missing key) is refused or reported
with the fix the next sample needs."""

import textwrap

import numpy as np
import pytest

from hilrl.llm.sandbox import CodeError, Sandbox, SandboxError, SandboxLimits, check_code, check_row_by_row

LIMITS = SandboxLimits(cpu_s=2.0, wall_s=10.0, memory_mb=1024)


def rows(n=64, seed=0):
    rng = np.random.default_rng(seed)
    obs = {"ee_pos": rng.normal(size=(n, 3)).astype(np.float32), "object": rng.normal(size=(n, 3)).astype(np.float32),
           "gripper": rng.uniform(size=(n, 1)).astype(np.float32)}
    return obs, rng.uniform(-1, 1, (n, 4)).astype(np.float32), obs


def reward_code(body, signature="obs, action, next_obs"):
    return f"import numpy as np\n\ndef compute_reward({signature}):\n" + textwrap.indent(
        textwrap.dedent(body).strip(), "    ") + "\n"


def run(code):
    with Sandbox(code, LIMITS) as sandbox:
        return sandbox(*rows())


def failure(code):
    with Sandbox(code, LIMITS) as sandbox, pytest.raises(SandboxError) as failed:
        sandbox(*rows())
    return failed.value.message


def refusal(code):
    with pytest.raises(CodeError) as refused:
        check_code(code)
    return str(refused.value)


def test_local_names_that_shadow_builtins_are_ordinary_variables():
    # the task text calls the goal `object`; a small model names its variables after it
    reward, parts = run(reward_code("""
        object = next_obs["object"]
        id = 0
        type = "distance"
        input = next_obs["ee_pos"]
        dir = object - input
        distance = np.linalg.norm(dir, axis=-1)
        return -distance, {type: distance}
    """))
    obs, _, _ = rows()
    np.testing.assert_allclose(reward, -np.linalg.norm(obs["object"] - obs["ee_pos"], axis=-1), rtol=1e-6)
    assert set(parts) == {"distance"}


@pytest.mark.parametrize("body, needle", [
    ("return type(action)(0)", "the builtin 'type' is not available"),  # used, never bound
    ("x = object\nreturn action[:, 0]", "the builtin 'object' is not available"),
    ("getattr = np.abs\nreturn getattr(action[:, 0])", "the name 'getattr' is not allowed"),  # escapes stay refused
    ("object = action\nreturn object.__class__", "the attribute '__class__' is not allowed"),
    ("eval = 1\nreturn action[:, 0]", "the name 'eval' is not allowed"),
])
def test_builtins_the_worker_lacks_are_refused_unbound_and_escapes_stay_refused_even_when_bound(body, needle):
    assert needle in refusal(reward_code(body))


def test_a_shadowed_name_bound_in_another_function_is_still_not_the_builtin():
    code = ("import numpy as np\n\ndef helper(type):\n    return type\n\n"
            "def compute_reward(obs, action, next_obs):\n    return type(action[:, 0])\n")
    assert "NameError: name 'type' is not defined" in failure(code)  # the worker hands out no `type`


@pytest.mark.parametrize("code, needle", [
    (reward_code("dx, dy, dz, gripper = action\nreturn -abs(dx)", "obs, action, next_obs"),
     "`dx, dy, dz, gripper = action` unpacks the batch by rows, but action is an array of shape (N, 4) with one row "
     "per transition: index its columns instead, `dx, dy, dz, gripper = action[:, 0], action[:, 1], action[:, 2], "
     "action[:, 3]` (or `= action.T`)"),
    (reward_code("x, y, z = next_obs['ee_pos']\nreturn -z"),
     "`x, y, z = next_obs['ee_pos']` unpacks the batch by rows"),
    (reward_code("return -np.abs(action[:, 0]) * t", "obs, action, next_obs, t"),
     "compute_reward has the extra argument(s) 't', but it is called as compute_reward(obs, action, next_obs) and "
     "nothing else is passed"),
    (reward_code("return -np.abs(action[:, 0])", "obs, action"),
     "compute_reward takes 2 argument(s) (obs, action) but is called with three: def compute_reward(obs, action, "
     "next_obs):"),
    (reward_code("return -np.abs(action[:, 0])", "obs, action, next_obs, *, scale"), "extra argument(s) 'scale'"),
])
def test_contract_mistakes_are_refused_before_running_with_their_fix(code, needle):
    assert needle in refusal(code)


def test_allowed_signatures_and_column_unpacking_pass_the_check():
    check_code(reward_code("dx, dy, dz, gripper = action.T\nreturn -np.abs(dx)"))
    check_code(reward_code("return -np.abs(action[:, 0]) * scale", "obs, action, next_obs, scale=1.0"))
    check_code(reward_code("return -np.abs(args[0][:, 0])", "*args"))


@pytest.mark.parametrize("body, needle", [
    ("distance = np.linalg.norm(next_obs['ee_pos'] - next_obs['object'], axis=-1)",
     "compute_reward returned None; end it with return reward"),
    ("d = np.abs(action[:, 0])\nreturn d, [d]", "the second value returned is a list; it must be a dict"),
    ("d = np.abs(action[:, 0])\nreturn d, {'d': d}, 1.0", "returned 3 values; return exactly two"),
    ("return action[0]", "has shape (4,); it must have shape (64,): one value per row of the batch (one row's values"),
    ("return next_obs['ee_pos'] - next_obs['object']", "(reduce the last axis, e.g. np.linalg.norm(..., axis=-1)"),
    ("return np.log(np.zeros(len(action)))", "add a small epsilon"),
    ("return -next_obs['goal'][:, 0]", "Hint: the keys of obs and next_obs are: ee_pos, gripper, object."),
    ("return -next_obs.ee_pos[:, 0]", "Hint: obs and next_obs are dicts of arrays: write next_obs['ee_pos']"),
    ("dx, dy = np.split(action, 2)[0]\nreturn dx", "Hint: every argument is a whole batch"),
    ("return -math.fabs(1.0) * action[:, 0]", "Hint: import what you use at the top of the code"),
])
def test_mistakes_found_on_a_real_batch_come_back_with_their_fix(body, needle):
    assert needle in failure(reward_code(body))


@pytest.mark.parametrize("body, needle", [
    # what Qwen2.5-Coder-1.5B wrote on Reach: a position difference never reduced, then added to an (N,) effort
    ("error = np.abs(next_obs['object'] - next_obs['ee_pos'])\nreturn error - np.abs(action[:, 0])",
     "Hint: one operand has one vector per row, shape (N, 3) (e.g. a difference of two positions), the other one "
     "value per row, shape (N,): reduce the vector first, e.g. distance = np.linalg.norm("),
    ("done = episode_end == 1.0\nepisode_end = done\nreturn action[:, 0]",
     "Hint: episode_end is read before anything is assigned to it"),
    ("close = np.linalg.norm(next_obs['ee_pos'], axis=-1) < 1\nreturn np.where(close, 1.0, 0.0) if close else 0",
     "use np.where(condition, a, b) instead of if/else, and & | ~ instead of and/or/not"),
    ("d = np.linalg.norm(next_obs['ee_pos'] - next_obs['object'], axis=-1)\n"
     "return -d, {'done': np.all(d < 0.02) or np.sum(d) > 1.0}",
     "reward component 'done' is a single True, not one value per row; np.all / np.any without axis"),
])
def test_what_qwen_got_wrong_on_reach_comes_back_with_its_fix(body, needle):
    assert needle in failure(reward_code(body))


def test_scipy_is_refused_with_the_numpy_call_that_does_the_same():
    message = refusal("from scipy.linalg import norm\n" + reward_code("return -norm(action, axis=-1)"))
    assert "import from 'scipy.linalg' is not allowed (allowed: math, numpy); numpy has what reward code needs: a " \
           "distance per row is np.linalg.norm(a - b, axis=-1)" in message


def test_a_column_of_shape_n_by_1_is_taken_as_the_rows_values():
    reward, parts = run(reward_code("g = next_obs['gripper']\nreturn g, {'open': g}"))
    obs, _, _ = rows()
    np.testing.assert_allclose(reward, obs["gripper"][:, 0])
    assert parts["open"].shape == (64,)


def test_a_total_reward_that_lost_its_batch_axis_is_refused_and_a_constant_component_is_kept():
    message = failure(reward_code("return -np.linalg.norm(next_obs['ee_pos'] - next_obs['object'])"))
    assert "is a single number, the same for every row" in message and "miss axis=-1?" in message
    reward, parts = run(reward_code("d = np.abs(action[:, 0])\nreturn -d, {'bonus': 0.0}"))
    assert parts["bonus"].shape == (64,) and not parts["bonus"].any()


def test_type_annotations_from_typing_run_and_nothing_else_of_typing_is_handed_out():
    code = ("import numpy as np\nfrom typing import Dict, Tuple\n\n"
            "def compute_reward(obs: Dict[str, np.ndarray], action: np.ndarray,\n"
            "                   next_obs: Dict[str, np.ndarray]) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:\n"
            "    return -np.abs(action[:, 0]), {}\n")
    reward, _ = run(code)
    assert reward.shape == (64,)
    assert "typing offers reward code only Any, Dict, List, Optional, Tuple, Union" in refusal(
        "from typing import get_type_hints\n" + reward_code("return action[:, 0]"))
    assert "'sys' is not allowed" in refusal("import typing\n" + reward_code("return typing.sys"))
    # an attribute the check lets through: the worker's typing module holds only those names
    assert "has no attribute 'get_type_hints'" in failure(
        "import typing\n" + reward_code("return typing.get_type_hints"))


def test_an_answer_is_made_ready_as_eurekas_loop_does_before_it_runs():
    from hilrl.llm.reward_code import extract_code

    answer = ("Here you go:\n```python\ndef compute_reward(obs, action, next_obs):\n"
              "    effort = np.abs(action[:, 0])\n    return -effort, {'effort': effort}\n\n"
              "if __name__ == '__main__':\n    print(compute_reward({}, np.zeros((2, 4)), {}))\n```\n"
              "It penalises effort.")
    code = extract_code(answer)
    assert code.startswith("import numpy as np\ndef compute_reward") and "__main__" not in code
    reward, parts = run(code)
    assert reward.shape == (64,) and set(parts) == {"effort"}
    cut_off = "```python\nimport numpy as np\n\ndef compute_reward(obs, action, next_obs):\n    return -action[:, 0]"
    assert extract_code(cut_off) == "import numpy as np\n\ndef compute_reward(obs, action, next_obs):\n" \
                                    "    return -action[:, 0]\n"


@pytest.mark.parametrize("body", [
    "return -np.linalg.norm(next_obs['ee_pos'] - next_obs['ee_pos'][0], axis=-1), {}",  # the first row, not a column
    "d = np.linalg.norm(next_obs['ee_pos'] - next_obs['object'], axis=-1)\nreturn -d / d.max(), {}",  # batch scale
    "d = np.linalg.norm(next_obs['ee_pos'] - next_obs['object'], axis=-1)\n"
    "return -d, {'spread': d - np.mean(d)}",  # a component, not the total
])
def test_a_reward_whose_rows_depend_on_each_other_is_refused_with_the_usual_causes(body):
    with Sandbox(reward_code(body), LIMITS) as sandbox, pytest.raises(SandboxError) as failed:
        check_row_by_row(sandbox, *rows())
    assert "changes with the other rows of its batch" in failed.value.message
    assert "np.linalg.norm / np.sum / np.mean / np.max without axis=-1" in failed.value.message


def test_a_row_by_row_reward_passes_the_check_and_gives_the_batchs_values():
    code = reward_code("""
        distance = np.linalg.norm(next_obs["ee_pos"] - next_obs["object"], axis=-1)
        return -distance + 0.5, {"distance": distance, "bonus": 0.5}
    """)
    with Sandbox(code, LIMITS) as sandbox:
        reward, parts = check_row_by_row(sandbox, *rows())
    obs, _, _ = rows()
    np.testing.assert_allclose(reward, 0.5 - np.linalg.norm(obs["ee_pos"] - obs["object"], axis=-1), rtol=1e-6)
    assert set(parts) == {"distance", "bonus"}


def test_the_prompts_worked_example_runs_in_the_sandbox_and_returns_what_the_prompt_says():
    import re
    from pathlib import Path

    import hilrl.llm

    text = (Path(hilrl.llm.__file__).parent / "prompts" / "initial_system.txt").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    said = [float(v) for v in re.search(r"reward ≈ \[([^\]]*)\]", text).group(1).split(",")]
    ee_pos = np.array([[0.0, 0.0, 0.3], [0.1, 0.0, 0.5], [0.0, 0.2, 0.0]], np.float32)
    with Sandbox(code, LIMITS) as sandbox:
        reward, parts = check_row_by_row(sandbox, {"ee_pos": ee_pos}, np.zeros((3, 4), np.float32), {"ee_pos": ee_pos})
    np.testing.assert_allclose(reward, said, atol=1e-3)
    assert all(value.shape == (3,) for value in parts.values())
