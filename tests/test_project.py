"""The project's promises to a new user: starter YAMLs validate, the README's parameter
tables match the code, .ci/run runs the README's test command."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REPO, run_module
from lora_sweep.config import reference_tables


@pytest.mark.integration  # the real command line, as the README tells a new user to run it
@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_yaml_validates(path: Path):
    proc = run_module(["validate", str(path.relative_to(REPO))])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"sweeps/{path.name}: valid study config (400 train and 48 test samples")


def test_readme_parameter_tables_match_the_code():
    assert reference_tables() in (REPO / "README.md").read_text(), (
        "README's parameter tables are stale: paste `python -m lora_sweep.config` into it")


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / "README.md").read_text()
    assert (REPO / ".ci/run").read_text().strip().endswith("make test")
