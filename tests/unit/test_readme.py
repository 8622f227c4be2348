"""The README's Quickstart is the contract: two command lines, and CI runs the test one."""

from __future__ import annotations

import re

from tests.helpers import REPO


def quickstart_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the Quickstart has a sh code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_has_exactly_a_run_line_and_a_test_line() -> None:
    """One line installs and runs the daemon on the example config, one runs the tests."""
    run, test = quickstart_commands()
    assert "python -m daemon --config config/drop_zones.yaml" in run
    assert run.startswith("python3 -m venv .venv") and test.startswith("python3 -m venv .venv")
    assert test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs the README's test line verbatim."""
    test_line = quickstart_commands()[1]
    assert test_line in (REPO / ".ci" / "run").read_text().splitlines()
