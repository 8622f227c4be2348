"""`--once` on a terminal (a real pseudo-terminal) versus in a pipe."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, make_corpus, write_config


def run_on_a_terminal(command: list[str], timeout_s: float = 300) -> tuple[int, str]:
    """Run `command` with stdin, stdout and stderr on one pseudo-terminal; all it printed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower,
                               cwd=REPO, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return process.wait(timeout_s), b"".join(chunks).decode(errors="replace")


def test_once_on_a_terminal_shows_progress_then_a_summary(
        tmp_path: Path, database_url: str) -> None:
    """On a terminal, `--once` draws a bar with files/s and an ETA and ends with a table of
    outcomes; no JSON lines. In a pipe it prints JSON lines only."""
    path = write_config(tmp_path, database=database_url)
    make_corpus(tmp_path / "zones" / "docs", 30)
    command = [sys.executable, "-m", "daemon", "--once", "--config", str(path)]
    code, screen = run_on_a_terminal(command)
    assert code == 0, screen
    assert "storing" in screen and "files/s" in screen and "ETA" in screen, screen
    assert "30/30 files" in screen, screen
    table = screen[screen.rindex("outcome"):].splitlines()
    assert table[1].split() == ["stored", "30"] and "files/s" in table[-1], screen
    assert '{"' not in screen, screen

    piped = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert lines and all(json.loads(line)["event"] for line in lines)
    assert "ETA" not in piped.stdout + piped.stderr
