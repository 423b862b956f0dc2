"""CI runs exactly the README's test command (linter included), so what a contributor runs is what CI runs."""

from __future__ import annotations

import re

from conftest import REPO


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    install = re.search(r'pip install -e "\.\[test\]" && (.+)$', readme, flags=re.MULTILINE)
    assert install, "the README's install-and-test line is missing"
    command = install.group(1).strip()
    assert command.startswith("ruff check . && pytest")
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in lines
