"""A PostgreSQL password never leaves the URL it was given in: not in output, files, study attrs,
the dashboard or the report; an unreachable server is one line, before anything is written.
Against the real PostgreSQL server the suite starts (conftest), with a password-checked role."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy

from helpers import free_port, run_cli, run_module, study_tree, write_yaml
from lora_sweep.config.job import ConfigError
from lora_sweep.sweep.records import has_note
from lora_sweep.sweep.storage import PASSWORD_FILE_ENV, check_reachable, load_existing

PASSWORD = "s3cret-pw-7731"


@pytest.fixture(scope="module")
def secret_server(postgres_url) -> tuple[str, int]:
    """Role `lora` with a password that the server checks (scram) on 127.0.0.1, and its own
    database; returns the URL without the password, and the port."""
    engine = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE ROLE lora LOGIN PASSWORD '{PASSWORD}'"))
        c.execute(sqlalchemy.text("CREATE DATABASE secrets OWNER lora"))
        hba = Path(c.execute(sqlalchemy.text("SHOW hba_file")).scalar())
        hba.write_text("host all lora 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        c.execute(sqlalchemy.text("SELECT pg_reload_conf()"))
    engine.dispose()
    port = sqlalchemy.engine.make_url(postgres_url).port
    return f"postgresql://lora@127.0.0.1:{port}/secrets", port


def with_pw(url: str, password: str = PASSWORD) -> str:
    return url.replace("://lora@", f"://lora:{password}@")


@pytest.mark.integration
def test_a_wrong_password_or_a_closed_port_is_one_line(secret_server, tiny_llama, chat_data, tmp_path):
    url, port = secret_server
    for storage, reason in [(with_pw(url, "wrong-pw-55"), 'password authentication failed for user "lora"'),
                            (f"postgresql://lora:{PASSWORD}@127.0.0.1:{free_port()}/secrets", "Connection refused")]:
        tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", storage=storage)
        proc = run_module(["run", str(write_yaml(tmp_path / "study.yaml", tree))], cwd=tmp_path, timeout=120)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot open the study storage postgresql://lora:***@")
        assert reason in lines[0]
        assert PASSWORD not in proc.stderr and "wrong-pw-55" not in proc.stderr
        assert not (tmp_path / "studies").exists()  # no cache, no trial folder


def test_the_password_can_come_from_a_file(secret_server, tmp_path, monkeypatch):
    url, _ = secret_server
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(secret))
    check_reachable(url)  # connects
    secret.write_text("not-it\n")
    with pytest.raises(ConfigError) as err:
        check_reachable(url)
    assert str(err.value).startswith(f"cannot open the study storage {url}: ")


@pytest.mark.integration
def test_the_password_is_in_no_output_file_attr_or_report(secret_server, tiny_llama, chat_data, tmp_path):
    url, _ = secret_server
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=1)  # no storage in the YAML
    config = write_yaml(tmp_path / "study.yaml", tree)
    env = {**os.environ, "LORA_SWEEP_STORAGE": with_pw(url)}
    outputs = []
    run = run_module(["run", str(config)], cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "study tiny in postgresql://lora:***@127.0.0.1" in run.stderr
    os.environ["LORA_SWEEP_STORAGE"] = with_pw(url)  # in process: the report reads the same variable
    try:
        report = run_cli(["report", str(config), "-o", str(tmp_path / "report.html")], cwd=tmp_path)
    finally:
        del os.environ["LORA_SWEEP_STORAGE"]
    assert report.returncode == 0, report.stderr[-3000:]
    outputs += [run.stdout, run.stderr, report.stdout, report.stderr]

    dashboard = subprocess.Popen([sys.executable, "-m", "lora_sweep", "dashboard", str(config), "--port", "0"],
                                 cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = [dashboard.stdout.readline() for _ in range(2)]
    finally:
        dashboard.terminate()
        rest, _ = dashboard.communicate(timeout=30)
    assert "in postgresql://lora:***@127.0.0.1" in first[1]
    outputs += [*first, rest]

    study = load_existing(with_pw(url), "tiny")
    assert study.user_attrs["config"]["study"]["storage"] is None  # it came from the environment
    attrs = json.dumps([study.user_attrs, study._storage.get_study_system_attrs(study._study_id),
                        [t.user_attrs for t in study.trials],
                        [t.system_attrs for t in study.trials]])
    assert has_note(study)  # the dashboard's note (objective, space, config) is among them
    files = [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert any("postgresql://lora:***@" in text for text in files)  # the report shows the masked URL
    for text in [*outputs, attrs, *files]:
        assert PASSWORD not in text
