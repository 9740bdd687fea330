"""The labelling page end to end: `hilrl label RUN` served for real, driven in headless Chromium, and a run
that picks the labels up. Needs Debian's chromium (the Makefile installs it) and the ui extra."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hilrl.feedback.preferences.store import PreferenceStore

sys.path.insert(0, str(Path(__file__).parent))
from preference_helpers import human_config, pending_run  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("HILRL_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
pytest.importorskip("fastapi", reason="the labelling page needs the ui extra: pip install 'hilrl[ui]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def label_server(run):
    """`hilrl label RUN --port P` serving ``run`` in a subprocess; yields its URL."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hilrl.cli", "label", str(run), "--port", str(port)],
                              env={**os.environ, "MUJOCO_GL": "egl"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/api/progress", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A run with 10 pending queries, and `hilrl label RUN --port P` serving it in a subprocess."""
    run = pending_run(tmp_path_factory.mktemp("label") / "run", queries=10)
    with label_server(run) as url:
        yield run, url


def test_a_person_labels_by_click_and_key_and_undoes_one_in_chromium(served):
    from playwright.sync_api import sync_playwright

    run, url = served
    store = PreferenceStore.for_run(run)
    assert len(store.pending()) == 10
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.goto(url + "/?who=ann")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        assert page.locator("#current video").count() == 2, "a pair shows two videos side by side"
        page.wait_for_function("document.querySelector('#current video').readyState >= 2", timeout=60_000)

        def labelled(n):  # saved, and the next query's videos are playing (a person watches them)
            page.wait_for_function(f"window.hilrlLabelled >= {n} && window.hilrlTimings.length >= {n}",
                                   timeout=60_000)

        first_shown = page.locator("#current").get_attribute("data-query")
        page.click("#btn-first")  # by click
        labelled(1)
        page.keyboard.press("ArrowRight")  # by key
        labelled(2)
        page.keyboard.press("ArrowDown")
        labelled(3)
        page.keyboard.press(" ")
        labelled(4)
        page.wait_for_function("document.getElementById('message').textContent === ''")
        page.keyboard.press("u")  # undo the skip
        page.wait_for_function("document.getElementById('message').textContent === 'undone'", timeout=30_000)
        page.wait_for_function("document.getElementById('progress').textContent.startsWith('labelled 3')")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "label_page.png"))
        timings = page.evaluate("window.hilrlTimings")
        browser.close()
    labels = store.labels()
    assert sorted(lab.label for lab in labels.values()) == ["equal", "first", "second"]
    assert {lab.who for lab in labels.values()} == {"ann"}
    assert labels[first_shown].label == "first"
    assert len(store.pending()) == 7
    assert (ARTIFACTS / "label_page.png").stat().st_size > 0


def test_each_query_names_the_task_in_one_line_and_what_better_means(served):
    """The payload carries the task's description (hilrl.llm.tasks) and the criterion (issue 29: the page said only
    "Which segment is better?")."""
    from hilrl.feedback.preferences.source import DEFAULT_CRITERION
    from hilrl.llm.tasks import task_text

    run, url = served
    _, reply = request(url + "/api/next?client=api-reader")
    assert reply["query"]["kind"] == "pair"
    assert reply["query"]["task"] == task_text("hilrl/Reach-v0").description
    assert reply["query"]["criterion"] == DEFAULT_CRITERION


def test_the_page_shows_the_runs_own_task_text_and_criterion_and_a_pair_the_pair_keys(tmp_path):
    """``reward.kwargs.task_text`` / ``criterion`` of the run on the page; a pair shows the pair keys (not the
    ranking's "1…K"), and 2 and = label it."""
    from playwright.sync_api import sync_playwright

    run = pending_run(tmp_path / "run", queries=3, task_text="Touch the red dot with the gripper",
                      criterion="Better: the gripper ends nearer the dot")
    store = PreferenceStore.for_run(run)
    with label_server(run) as url:
        _, reply = request(url + "/api/query/" + store.pending()[0]["id"])
        assert reply["query"]["task"] == "Touch the red dot with the gripper"
        assert reply["query"]["criterion"] == "Better: the gripper ends nearer the dot"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"])
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(url + "/?who=cy")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            assert page.inner_text("#task") == "Task: Touch the red dot with the gripper"
            assert page.inner_text("#criterion") == "Better: the gripper ends nearer the dot"
            hint = page.inner_text("#keys")
            assert "press 1" in hint and "2" in hint and "=" in hint and "1…K" not in hint, hint
            shown = [page.locator("#current").get_attribute("data-query")]
            page.keyboard.press("2")
            page.wait_for_function("window.hilrlLabelled >= 1", timeout=60_000)
            shown.append(page.locator("#current").get_attribute("data-query"))
            page.keyboard.press("=")
            page.wait_for_function("window.hilrlLabelled >= 2", timeout=60_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "label_page_task.png"))
            browser.close()
    labels = store.labels()
    assert [labels[q].label for q in shown] == ["second", "equal"] and labels[shown[0]].who == "cy"


def test_malformed_requests_get_a_4xx_with_a_reason_and_change_nothing(served):
    run, url = served
    store = PreferenceStore.for_run(run)
    before = store.labels_path.read_bytes() if store.labels_path.exists() else b""
    pending = store.pending()[0]["id"]
    cases = [({"query": pending, "label": "sideways", "who": "ann"}, 400, "not one of"),
             ({"query": "q999999", "label": "first", "who": "ann"}, 400, "no query"),
             ({"query": pending}, 422, "label"),
             ({"query": pending, "label": "first", "who": "ann", "extra": 1}, 422, "extra")]
    for body, status, reason in cases:
        code, reply = request(url + "/api/label", body)
        assert code == status and reason in json.dumps(reply), (body, code, reply)
    code, reply = request(url + "/video/../../etc/passwd")
    assert code == 404
    assert (store.labels_path.read_bytes() if store.labels_path.exists() else b"") == before


def test_two_tabs_get_different_queries_and_a_second_label_of_one_query_is_refused(served):
    run, url = served
    store = PreferenceStore.for_run(run)
    _, a = request(url + "/api/next?client=tab-a")
    _, b = request(url + "/api/next?client=tab-b")
    assert a["query"]["id"] != b["query"]["id"]
    assert request(url + "/api/label", {"query": a["query"]["id"], "label": "first", "who": "tab-a"})[0] == 200
    code, reply = request(url + "/api/label", {"query": a["query"]["id"], "label": "second", "who": "tab-b"})
    assert code == 409 and "already labelled" in reply["detail"]
    assert store.labels()[a["query"]["id"]].label == "first"


def test_labels_from_the_page_reach_the_training_run_when_it_continues(tmp_path):
    """README's flow: train (queries wait), label them (here: the terminal fallback), train on: the model fits them."""
    from hilrl.config import load_run_env
    from hilrl.feedback.ui.terminal import label_in_terminal

    run = pending_run(tmp_path / "run", queries=4)
    answers = iter(["f", "s", "u", "e", "2", "k"])
    made = label_in_terminal(run, load_run_env(run), who="bob", read=lambda prompt: next(answers), write=lambda line: None)
    store = PreferenceStore.for_run(run)
    assert made == 4 and [lab.label for lab in sorted(store.labels().values(), key=lambda x: x.id)] == [
        "first", "equal", "second", "skip"]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(human_config(steps=300, queries=4)))
    from hilrl.cli import app

    result = CliRunner().invoke(app, ["train", str(config), "--out", str(run), "--steps", "300"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert "labels=4" in metrics["reward"] and "version=1" in metrics["reward"], metrics["reward"]


def test_off_loopback_needs_a_token(tmp_path):
    from hilrl.errors import HilrlError
    from hilrl.feedback.ui.app import serve

    with pytest.raises(HilrlError, match="--token"):
        serve(tmp_path, host="0.0.0.0", port=free_port())
