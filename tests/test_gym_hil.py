"""gym-hil's PandaPickCube (LeRobot's HIL-SERL simulator) through hilrl's env adapter, as a user runs it with the
`hilrl` command. gym-hil needs mujoco<3.9: these run in the second venv (.venv-mujoco3) and are skipped elsewhere."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

gym_hil = pytest.importorskip("gym_hil", reason="gym-hil is not installed here (it needs mujoco<3.9: run these "
                                                "in the second venv, pip install 'hilrl[gym-hil]')")

pytestmark = pytest.mark.gym_hil

ROOT = Path(__file__).parents[1]


def hilrl(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hilrl.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(cwd)}, timeout=900)


def tiny(tmp_path: Path, **sections) -> Path:
    """The shipped gym-hil config, shortened to seconds."""
    experiment = yaml.safe_load((ROOT / "sim_configs/gym_hil_pick_cube.yaml").read_text())
    experiment["env"]["max_episode_steps"] = 40
    experiment.update(demos={"episodes": 2}, train={"steps": 60, "learning_starts": 40, "eval_episodes": 1,
                                                     "video": False, "checkpoint_every": 60})
    experiment["algo"].update(hidden=[32, 32], batch_size=32, utd=1)
    experiment.update(sections)
    path = tmp_path / "pick.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


def test_the_scripted_expert_records_and_its_demos_replay_by_states_with_no_divergence(tmp_path):
    rec = hilrl("record", ROOT / "sim_configs/gym_hil_pick_cube.yaml", "--episodes", 2, "--out", "d.hdf5",
                cwd=tmp_path)
    assert rec.returncode == 0, rec.stderr
    assert "recorded 2 episodes" in rec.stdout and "success 100%" in rec.stdout, rec.stdout
    rep = hilrl("replay", "d.hdf5", "--mode", "states", cwd=tmp_path)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "0 of 2 demos diverged beyond 1e-05" in rep.stdout, rep.stdout
    for line in rep.stdout.splitlines():
        if "demo_" in line:
            assert "│ 0 " in line, f"a state replay reproduces every observation exactly: {line}"


def test_rlpd_trains_briefly_from_expert_demos_and_the_run_evaluates(tmp_path):
    train = hilrl("train", tiny(tmp_path), "--out", "run", cwd=tmp_path)
    assert train.returncode == 0, train.stdout + train.stderr
    assert json.loads((tmp_path / "run/metrics.json").read_text())["env"] == "gym_hil/PandaPickCube-v0"
    ev = hilrl("eval", "run", "--episodes", 1, "--json", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout.strip().splitlines()[-1])["episodes"] == 1


def test_my_own_scripted_policy_given_as_module_callable_records(tmp_path):
    (tmp_path / "my_pick.py").write_text(
        "import numpy as np\n"
        "def make(env, noise=0.0, seed=None):\n"
        "    class Up:\n"
        "        def reset(self): pass\n"
        "        def __call__(self, obs): return np.array([0, 0, 0.5, -1], np.float32)  # up, open\n"
        "    return Up()\n")
    rec = hilrl("record", tiny(tmp_path), "--expert", "my_pick:make", "--episodes", 1, "--out", "d.hdf5",
                cwd=tmp_path)
    assert rec.returncode == 0, rec.stderr
    assert "recorded 1 episodes" in rec.stdout and "success 0%" in rec.stdout, rec.stdout


def test_the_shipped_gym_hil_configs_validate_and_the_pixel_one_sees_both_cameras():
    from hilrl.config import load_config
    from hilrl.envs.make import make_env

    load_config(ROOT / "sim_configs/gym_hil_pick_cube.yaml")
    env = make_env(load_config(ROOT / "sim_configs/gym_hil_pick_cube_pixels.yaml").env)
    try:
        assert sorted(env.observation_space.spaces) == ["agent_pos", "pixels/front", "pixels/wrist"]
        obs, _ = env.reset(seed=0)
        assert obs["pixels/front"].shape == (128, 128, 3) and obs["pixels/front"].dtype.name == "uint8"
        assert obs["pixels/front"].std() > 10 and obs["pixels/wrist"].std() > 10, "the cameras draw the scene"
        # gym-hil's own renderer is redrawn for software GL: no shadows, reflections or multisampling
        import mujoco

        viewer = env.unwrapped.foreign._viewer
        assert env.unwrapped.software_renderers == ["_viewer"]
        assert not viewer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW]
        assert env.unwrapped.foreign.model.vis.quality.offsamples == 0
    finally:
        env.close()


@contextmanager
def label_server(run):
    """`hilrl label RUN --port P` serving ``run``; stopped with a longer grace than the hilrl-task tests give (a
    gym-hil frame renders slower, and a render in progress finishes before the server exits)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_label_page import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hilrl.cli", "label", str(run), "--port", str(port)],
                              env={**os.environ, "MUJOCO_GL": "egl"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/api/progress", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


@pytest.mark.slow
def test_a_person_labels_a_gym_hil_pair_on_the_labelling_page_rendered_from_its_mujoco_states(tmp_path):
    pytest.importorskip("fastapi", reason="the labelling page needs the ui extra: pip install 'hilrl[ui]'")
    sys.path.insert(0, str(Path(__file__).parent))
    from playwright.sync_api import sync_playwright
    from test_label_page import CHROMIUM

    from hilrl.feedback.preferences.store import PreferenceStore

    config = tmp_path / "prefs.yaml"
    config.write_text(yaml.safe_dump({
        "env": {"id": "gym_hil/PandaPickCubeBase-v0", "max_episode_steps": 30},
        "demos": {"episodes": 0},
        "algo": {"name": "sac", "hidden": [32, 32]},
        "reward": {"source": "preferences", "kwargs": {
            "segment_length": 10, "first_query_at": 50, "query_every": 1000, "queries_per_session": 1,
            "max_queries": 1, "epochs": 5, "label_check_every": 20, "selection": "uniform"}},
        "train": {"steps": 70, "learning_starts": 100_000, "random_steps": 100_000, "eval_episodes": 1,
                  "checkpoint_every": 100_000, "video": False}}))
    train = hilrl("train", config, "--out", "run", cwd=tmp_path)
    assert train.returncode == 0, train.stdout + train.stderr
    store = PreferenceStore.for_run(tmp_path / "run")
    assert len(store.pending()) == 1  # (one pair: nothing left to render ahead when the server stops)
    with label_server(tmp_path / "run") as url, sync_playwright() as p:  # (as tests/test_label_page.py serves)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.goto(url + "/?who=dee")
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        page.wait_for_function("document.querySelector('#current video').readyState >= 2", timeout=120_000)
        shown = page.locator("#current").get_attribute("data-query")
        page.click("#btn-first")
        page.wait_for_function("window.hilrlLabelled >= 1", timeout=120_000)
        browser.close()
    labels = store.labels()
    assert labels[shown].label == "first" and labels[shown].who == "dee"


@pytest.mark.slow
def test_a_one_iteration_eureka_search_on_gym_hil_reads_a_task_text_generated_from_its_spaces(tmp_path):
    pytest.importorskip("openai", reason="reward search talks to its LLM with the openai SDK: pip install 'hilrl[llm]'")
    from hilrl.llm.scripted_server import ScriptedServer

    lift = ("Here is the reward.\n```python\nimport numpy as np\n\ndef compute_reward(obs, action, next_obs):\n"
            "    height = next_obs['environment_state'][:, 2]\n    return height, {'height': height}\n```")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"demos": {"episodes": 2},
                                    "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 32},
                                    "train": {"learning_starts": 40, "eval_episodes": 1, "video": False}}))
    with ScriptedServer([[lift]]) as server:
        llm = tmp_path / "llm.yaml"
        llm.write_text(yaml.safe_dump({"provider": "openai", "base_url": server.base_url, "model": "scripted-gpt",
                                       "backoff_s": 0.01, "retries": 1}))
        search = hilrl("reward-search", "eureka", "--task", "gym_hil/PandaPickCubeBase-v0", "--llm", llm, "--base",
                       base, "--samples", 1, "--iterations", 1, "--steps", 60, "--final-seeds", 0, "--workers", 1,
                       "--out", "search", cwd=tmp_path)
        prompt = server.requests[0]["messages"][1]["content"]
    assert search.returncode == 0, search.stdout + search.stderr
    assert "environment_state" in prompt and "agent_pos" in prompt and "Panda robot picking up a cube" in prompt
    summary = json.loads((tmp_path / "search/iter_0/summary.json").read_text())
    assert summary["statuses"] == ["trained"], summary
    assert (tmp_path / "search/best/reward.py").is_file()


@pytest.mark.slow
def test_the_pixel_config_records_replays_its_camera_images_exactly_and_trains(tmp_path):
    config = ROOT / "sim_configs/gym_hil_pick_cube_pixels.yaml"
    rec = hilrl("record", config, "--episodes", 1, "--out", "d.hdf5", cwd=tmp_path)
    assert rec.returncode == 0, rec.stderr
    rep = hilrl("replay", "d.hdf5", cwd=tmp_path)
    assert rep.returncode == 0 and "0 of 1 demos diverged beyond 1e-05" in rep.stdout, rep.stdout + rep.stderr
    train = hilrl("train", config, "--out", "run", "--set", "demos.path=d.hdf5", "--set", "demos.episodes=1",
                  "--steps", 12, "--set", "train.learning_starts=10", "--set", "train.eval_episodes=1",
                  "--set", "train.video=false", "--set", "env.max_episode_steps=6", cwd=tmp_path)
    assert train.returncode == 0, train.stdout + train.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["env_steps"] == 12 and metrics["updates"] > 0


def test_a_seeded_reset_puts_gym_hils_random_block_in_the_same_place_every_time():
    """gym-hil draws its random block position from numpy's global generator, which ``reset(seed=)`` alone does
    not seed: the adapter seeds it too, so validation and test episodes are the same episodes for every learner."""
    from hilrl.config import EnvConfig
    from hilrl.envs.make import make_env

    env = make_env(EnvConfig(id="gym_hil/PandaPickCube-v0", package="gym_hil",
                             kwargs={"random_block_position": True, "reset_delay_seconds": 0}))
    try:
        first = env.reset(seed=3)[0]["environment_state"]
        other = env.reset(seed=4)[0]["environment_state"]
        again = env.reset(seed=3)[0]["environment_state"]
    finally:
        env.close()
    assert abs(first - other).max() > 1e-3, "two seeds put the block in two places"
    assert abs(first - again).max() < 1e-9, f"seed 3 placed the block at {first}, then at {again}"
