"""`validate` finds what `run` would refuse or trip over after it started: each case is reported by
both, in one line, and `run` stops before anything is tokenized or written."""

from __future__ import annotations

import pytest

from helpers import run_cli, study_tree, write_yaml

UNWRITABLE = "/proc/lora-sweep-nowhere"  # /proc refuses new files, also to root (who ignores mode bits)

CASES = {
    "mlflow_unreachable": (
        {"tracking": {"mlflow": "http://127.0.0.1:9"}},
        "tracking.mlflow: nothing answers at http://127.0.0.1:9 within 5 s ([Errno 111] Connection refused): "
        "start the MLflow server, or log to a file (sqlite:///mlflow.db)"),
    "wandb_without_a_key": (
        {"tracking": {"wandb": "tiny"}},
        "tracking.wandb: no W&B API key (WANDB_API_KEY, or `wandb login`) and WANDB_MODE is not offline: set a "
        "key, or WANDB_MODE=offline to keep the runs on disk"),
    "warm_start_missing": (
        {"study": {"warm_start": "{tmp}/earlier.yaml"}},
        "study.warm_start: no such file: {tmp}/earlier.yaml"),
    "storage_not_writable": (
        {"study": {"storage": f"sqlite:///{UNWRITABLE}/tiny.db"}},
        f"study.storage: cannot be created, /proc is not writable (got 'sqlite:///{UNWRITABLE}/tiny.db')"),
    "storage_plain_path": (
        {"study": {"storage": "{tmp}/tiny.journal"}},
        "study.storage: a plain path must end in .log (a journal file) or .db (SQLite) (got '{tmp}/tiny.journal'): "
        "or write journal:///{tmp}/tiny.journal for a journal file, sqlite:///{tmp}/tiny.journal for SQLite"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_validate_reports_what_run_refuses_before_it_writes(case, tiny_llama, chat_data, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` on this machine
    change, expected = CASES[case]
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies")
    for group, values in change.items():
        tree.setdefault(group, {}).update({k: v.replace("{tmp}", str(tmp_path)) for k, v in values.items()})
    config = write_yaml(tmp_path / "study.yaml", tree)
    expected = expected.replace("{tmp}", str(tmp_path))
    for command in ("validate", "run"):
        proc = run_cli([command, str(config)], cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert any(expected in line for line in lines), (command, proc.stderr)
        assert "Traceback" not in proc.stderr and "tokenized" not in proc.stderr
        assert not (tmp_path / "studies").exists()  # no cache, no database, no trial folder
        assert not (tmp_path / "tiny.journal").exists()


def test_a_plain_db_path_is_a_sqlite_file(tiny_llama, chat_data, tmp_path):
    # the storage error's own advice (name.db) works: a bare .db path is the SQLite file it names
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", storage=str(tmp_path / "plain.db"))
    config = write_yaml(tmp_path / "study.yaml", tree)
    proc = run_cli(["validate", str(config)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from lora_sweep.config.study import load_study

    assert load_study(config).storage_url == f"sqlite:///{tmp_path}/plain.db"
