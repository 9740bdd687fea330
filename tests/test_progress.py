"""Progress figures (steps done/total, time, stats) stay whole in a pipe, a log and a narrow terminal."""

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from hilrl.runtime import progress

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STATS = "own success 45%  assisted 10%  intervened 12%  1234 updates/s"
STATS_WRAPPED = r"\s+".join(STATS.split())  # the same words, a line break allowed between any two


def _train_bc(tmp_path, **env):
    config = tmp_path / "reach_bc.yaml"
    config.write_text(yaml.safe_dump({
        "env": {"id": "hilrl/Reach-v0"}, "algo": {"name": "bc"}, "demos": {"episodes": 2},
        "train": {"steps": 200, "eval_episodes": 2, "video": False, "log_every": 50},
    }))
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TTY_COMPATIBLE", "FORCE_COLOR")}
    proc = subprocess.run([sys.executable, "-m", "hilrl.cli", "train", str(config), "--out", str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**environ, **env})
    assert proc.returncode == 0, proc.stderr
    return ANSI.sub("", proc.stderr)  # the progress display writes to stderr


def test_piped_training_logs_whole_figures(tmp_path):
    log = _train_bc(tmp_path)
    assert "…" not in log
    lines = log.splitlines()
    assert any(line.startswith("record hilrl/Reach-v0  0/2") for line in lines)  # each task logs its start
    final = [line for line in lines if line.startswith("train bc  200/200")]
    assert len(final) == 1, log
    assert re.fullmatch(r"train bc  200/200  0:00:\d\d elapsed  loss \d+\.\d{4}  \d+ updates/s", final[0]), final
    assert any(line.startswith("eval  2/2  0:00:") and "success" in line for line in lines)


def test_a_narrow_terminal_keeps_the_figures(tmp_path):
    shown = _train_bc(tmp_path, TTY_COMPATIBLE="1", COLUMNS="60", TERM="xterm")  # a 60-column terminal, live display
    assert "…" not in shown
    assert re.search(r"train bc\s+200/200\s+0:00:\d\d\s+elapsed\s+loss\s+\d+\.\d{4}\s+\d+\s+updates/s", shown), shown


def _show(monkeypatch, **console):
    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, **console))
    with progress.make_progress() as bar:
        task = bar.add_task("sac hilrl/PickCube-v0", total=20000, stats="")
        for step in range(100, 20001, 100):
            bar.update(task, completed=step, stats=STATS)
    return ANSI.sub("", out.getvalue())


def test_a_log_gets_a_line_at_start_at_most_every_few_seconds_and_at_the_end(monkeypatch):
    shown = _show(monkeypatch, width=80)  # what rich sees in a pipe: no terminal, 80 columns
    assert shown.splitlines() == ["sac hilrl/PickCube-v0  0/20000  0:00:00 elapsed",
                                  f"sac hilrl/PickCube-v0  20000/20000  0:00:00 elapsed  {STATS}"]


def test_a_slow_task_logs_every_few_seconds_and_its_last_state(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, width=80))
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
    with progress.make_progress() as bar:
        task = bar.add_task("eval", total=10, stats="")
        for episode in range(1, 6):
            time.sleep(0.06)
            bar.update(task, advance=1, stats=f"success {episode}0%")
        bar.update(task, stats="stopped early")  # ended short of its total: its last state comes out at the end
    lines = out.getvalue().splitlines()
    assert lines[0] == "eval  0/10  0:00:00 elapsed" and len(lines) == 7
    assert lines[3].startswith("eval  3/10  0:00:00 elapsed  0:00:0") and lines[3].endswith(" left  success 30%")
    assert lines[-1].startswith("eval  5/10") and lines[-1].endswith("stopped early")


@pytest.mark.parametrize("width", [60, 100, 160])
def test_a_terminal_of_any_width_keeps_the_figures(monkeypatch, width):
    shown = _show(monkeypatch, width=width, force_terminal=True)
    assert "…" not in shown
    final = shown.split("\r")[-1]  # each redraw starts at the line's start
    assert re.search(r"20000/20000\s+0:00:\d\d\s.*" + STATS_WRAPPED, final, re.S)
    assert ("━" in final) == (width >= 160)  # the bar, where there is room for it


def test_disabled_shows_nothing(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, width=80))
    with progress.make_progress(disable=True) as bar:
        bar.update(bar.add_task("eval", total=3, stats=""), completed=3, stats="done")
    assert out.getvalue() == ""


def test_updates_after_the_end_are_logged_at_the_same_pace(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, width=80))
    with progress.make_progress() as bar:  # the learner keeps updating after its last transition came in
        task = bar.add_task("learner", total=10, stats="")
        bar.update(task, completed=10, stats="0 updates")
        for updates in range(1, 50):
            bar.update(task, stats=f"{updates} updates")
    assert [line.split("  ")[-1] for line in out.getvalue().splitlines()] == ["0:00:00 elapsed", "0 updates",
                                                                             "49 updates"]
