"""Progress on a terminal is a tqdm bar; anywhere else (a log file, a pipe) a few plain lines."""

import io
import os
import pty
import subprocess
import sys

from discovery.core import progress as progress_module
from discovery.core.progress import Plain, progress


def test_plain_lines_at_each_tenth(monkeypatch):
    monkeypatch.setattr(progress_module, "MIN_S", 0.0)
    out = io.StringIO()  # not a terminal
    bar = progress(total=1000, desc="eap", file=out)
    assert isinstance(bar, Plain)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("eap: 100/1000 (10%)") and lines[-1].startswith("eap: 1000/1000 (100%)")


def test_a_fast_bar_writes_its_last_line_only():
    out = io.StringIO()
    bar = progress(total=50, desc="evaluate", file=out)
    for _ in range(50):
        bar.update()
    bar.close()
    assert [line.split(" [")[0] for line in out.getvalue().splitlines()] == ["evaluate: 50/50 (100%)"]


def test_plain_iterates_assigns_and_closes_once(monkeypatch):
    monkeypatch.setattr(progress_module, "MIN_S", 0.0)
    out = io.StringIO()
    seen = list(progress(range(7), desc="rows", file=out))
    assert seen == list(range(7))
    assert out.getvalue().splitlines()[-1].startswith("rows: 7/7 (100%)")
    out = io.StringIO()
    bar = progress(total=100, desc="queued", file=out)
    bar.n = 35  # the demo sets the percentage
    bar.set_description_str("running: eap: batch 3/8")
    bar.n = 38  # same tenth: no line
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["queued: 35/100 (35%)", "running: eap: batch 3/8: 38/100 (38%)"]
    bar.close()
    assert len(out.getvalue().splitlines()) == 2
    out = io.StringIO()
    progress(total=10, file=out, disable=True).update(10)
    assert out.getvalue() == ""


def test_a_terminal_gets_tqdm(monkeypatch):
    from tqdm.auto import tqdm

    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as term:
        bar = progress(total=3, desc="x", file=term)
        assert isinstance(bar, tqdm)
        bar.close()
    os.close(master)
    monkeypatch.setenv("CIRCUITRY_PROGRESS", "plain")
    with open(os.devnull, "w") as sink:
        assert isinstance(progress(total=3, file=sink), Plain)


def test_cli_piped_stderr_has_no_redrawn_bars(tmp_path):
    """`circuitry discover` with stderr to a pipe: no carriage-return redraws, a handful of lines."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("CIRCUITRY_PROGRESS", None)
    r = subprocess.run([sys.executable, "-m", "discovery.cli", "discover", "--model", "toy:induction", "--task",
                        "induction", "--n", "16", "--batch-size", "2", "--method", "eap-ig", "--steps", "4",
                        "--top-n", "10", "--out", str(tmp_path / "c.json")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stderr, r.stderr[:500]  # neither ours nor Hugging Face's loading bar
    progress_lines = [line for line in r.stderr.splitlines() if "%)" in line]
    assert 1 <= len(progress_lines) <= 40, r.stderr
