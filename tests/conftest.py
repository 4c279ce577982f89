"""Fixtures: tiny models (built once per session), the memorization data set, one real sweep that
several modules read, a PostgreSQL server. The helpers they use are in helpers.py."""

from __future__ import annotations

import os

# One thread per job and per test process: two xdist workers each running a tiny-model job on
# this project's 2-core CI machine would otherwise oversubscribe the cores (OpenMP threads spin
# while they wait), which cost 20 % of the suite's CPU time. Set before torch is imported.
os.environ.setdefault("LORA_SWEEP_CPU_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import glob  # noqa: E402
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import filelock
import optuna
import pytest
from optuna.trial import TrialState

from helpers import build_model, free_port, memorization_samples, mixed_study_tree, run_module, write_jsonl, write_yaml


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
def mixed_sweep(tiny_llama, tmp_path_factory) -> SimpleNamespace:
    """A finished real sweep (`python -m lora_sweep run`) with a completed, a failed and a pruned
    trial and a base-model baseline (helpers.mixed_study_tree). Launched jobs cost seconds each,
    so the tests of failures, pruning, the report, the notebook and the dashboard read this one
    sweep; none of them changes its study.

    Under pytest-xdist each worker has a session of its own: the first to get here runs the sweep
    in the run's shared temporary folder, the others wait for it and read it (xdist's own recipe
    for a session fixture made once)."""
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    base = tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.getbasetemp()
    root = base / "mixed-sweep"
    with filelock.FileLock(str(base / "mixed-sweep.lock")):
        ran = root / "ran.json"
        if not ran.is_file():
            shutil.rmtree(root, ignore_errors=True)
            data = root / "data"
            data.mkdir(parents=True)
            write_jsonl(data / "train.json", memorization_samples())
            write_jsonl(data / "test.json", memorization_samples())
            config = write_yaml(root / "study.yaml", mixed_study_tree(tiny_llama, data, root / "studies"))
            proc = run_module(["run", str(config)], cwd=root)
            ran.write_text(json.dumps({"args": proc.args, "returncode": proc.returncode, "stdout": proc.stdout,
                                       "stderr": proc.stderr}), encoding="utf-8")
    proc = subprocess.CompletedProcess(**json.loads(ran.read_text(encoding="utf-8")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="seen", storage=f"sqlite:///{root}/studies/seen.db")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED], states
    return SimpleNamespace(root=root, config=root / "study.yaml", study=study, proc=proc)


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


# The files that take longest, first: pytest-xdist (--dist loadfile) hands each worker the next file
# when it is free, so the long ones start early and the short ones fill the end, instead of one
# worker running a long file alone at the end. Within a file the order stays.
LONGEST_FIRST = ["test_crash_safety.py", "test_ray.py", "test_workers.py", "test_sweep.py", "test_bench.py",
                 "test_multi_process.py", "test_gpu_check.py", "test_formats.py", "test_honest.py", "test_evaluate.py",
                 "test_launcher.py", "test_tracking.py", "test_space_fit.py", "test_train.py", "test_models.py",
                 "test_report.py", "test_storage_secrets.py", "test_resume.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
