"""Fixtures: tiny models (built once per session), the memorization data set, a PostgreSQL
server. The helpers they use are in helpers.py."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import build_model, free_port, memorization_samples, write_jsonl


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_phi3(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-phi3"), "phi3")


@pytest.fixture
def chat_data(tmp_path) -> Path:
    """train.json / test.json of the memorization set, in a folder."""
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.json", memorization_samples())
    write_jsonl(folder / "test.json", memorization_samples())
    return folder


@pytest.fixture(scope="session")
def postgres_url():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin")) or [str(Path(p).parent) for p in [shutil.which("initdb")] if p]
    if not bins or not Path(bins[-1], "pg_ctl").exists():
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (the test extra has it)")
    pg = Path(bins[-1])
    data = Path(tempfile.mkdtemp(prefix="lora-sweep-pg-"))  # pytest's tmp folders are private to root
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
                    "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(data, ignore_errors=True)
