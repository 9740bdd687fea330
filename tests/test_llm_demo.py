"""`make demo-llm` as a user reads it with its output piped to a file: every sample named by the program it is,
with its status, each iteration's cost, and the table's borders on lines of their own."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_scripted_demo_names_every_sample_and_reads_well_piped_to_a_file(tmp_path):
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "hilrl.apps.llm_demo", "--out", str(tmp_path / "demo"),
                               "--steps", "150", "--final-seeds", "0", "--workers", "1"], cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT, timeout=900)
    text = log.read_text()
    assert done.returncode == 0, text
    rows = [line for line in text.splitlines() if line.startswith("│ 0 ")]  # the results table: iteration 0
    for name, status in [("shaped_wrong", "trained"), ("crashing", "crashed"), ("good", "trained"),
                         ("unparsable", "refused")]:
        assert any(f" {name} " in row and f" {status} " in row for row in rows), (name, rows)
    # the live table, piped: each sample's final state on a line of its own, named by its program
    assert "iter_0/sample_1 (crashing): failed on real transitions: KeyError: 'goal'" in text
    for line in text.splitlines():  # no border glued to the next line's text
        if "┘" in line or "┛" in line:
            assert line.rstrip().endswith(("┘", "┛")), line
    assert "iteration 0: execute rate 0.50; generation" in text and "(overlapped" in text
