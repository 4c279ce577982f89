"""The project's promises to a new user: starter YAMLs validate, the README's parameter
tables match the code, .ci/run runs the README's test command."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REPO, run_module
from lora_sweep.config.study import reference_tables


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


def test_no_two_modules_import_each_other_and_none_is_over_600_lines():
    import grimp  # import-linter's own graph of the package's imports, those inside functions too

    graph = grimp.build_graph("lora_sweep")
    modules = sorted(m for m in graph.modules if m.startswith("lora_sweep"))
    cycles = [(a, b) for a in modules for b in graph.find_modules_directly_imported_by(a)
              if b.startswith("lora_sweep") and a < b and graph.chain_exists(importer=b, imported=a)]
    assert cycles == []
    long = {p.relative_to(REPO).as_posix(): n for p in (REPO / "lora_sweep").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}
