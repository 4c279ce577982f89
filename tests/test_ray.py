"""study.executor: ray on a real two-node Ray cluster on this machine: a head and a second node,
two `ray start` processes with their own temp dirs, one CPU and a custom resource each. The sweep
runs through the CLI in a child process (ray.init never runs in pytest); the fixture stops exactly
the processes it started. The test that kills the second node's raylet runs last."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from helpers import REPO, free_port, job_processes, load, memorization_samples, run_module, study_tree, write_jsonl, write_yaml

sys.path.insert(0, str(REPO / "bench"))

from ray_scaling import RAY_ENV, alive, cluster_pids, cmdline, start_node, started, stop_pids  # noqa: E402

pytestmark = pytest.mark.integration  # Ray nodes, sweeps, launched jobs

NODES = {"head": "head_node", "second": "second_node"}  # node name -> its custom resource


@pytest.fixture(scope="module")
def ray_cluster(tiny_llama) -> Iterator[SimpleNamespace]:
    """A head and a second node, 1 CPU each, with the custom resources head_node / second_node,
    started together (the second waits for the head's GCS); their trial folders and tokenized caches
    in <root>/<name>-node. Stops exactly the processes it started, by their PIDs."""
    pytest.importorskip("ray", reason="pip install -e '.[ray]'")
    root = Path(tempfile.mkdtemp(prefix="lsray-"))  # short: Ray's socket paths must fit in 107 bytes
    port = free_port()  # from the ephemeral range, outside Ray's worker ports (10002-19999)
    try:
        starts = {name: start_node(root, name, {resource: 1}, port, head=name == "head")
                  for name, resource in NODES.items()}
        for name, proc in starts.items():
            started(root, name, proc)
        yield SimpleNamespace(root=root, port=port, address=f"127.0.0.1:{port}",
                              nodes={name: root / f"{name}-node" for name in NODES})
    finally:
        stop_pids(cluster_pids(root, port))
        left = cluster_pids(root, port)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, [cmdline(p)[:200] for p in left]


def ray_study(ray_cluster: SimpleNamespace, model: Path, tmp_path: Path, **study) -> dict:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    ray = {"address": ray_cluster.address, **study.pop("ray", {})}
    return study_tree(model, data, tmp_path / "studies", executor="ray", ray=ray, **study)


def node_of(trial) -> str:
    """The name of the node a trial recorded (by its custom resource)."""
    (resource,) = trial.user_attrs["node"]["resources"]
    return {v: k for k, v in NODES.items()}[resource]


def test_ray_trials_spread_over_both_nodes_and_their_folders_come_back(ray_cluster, tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tree = ray_study(ray_cluster, tiny_llama, tmp_path, n_trials=4, parallel=2, ray={"shared_dir": False})
    proc = run_module(["run", str(write_yaml(tmp_path / "study.yaml", tree))], cwd=tmp_path, env={**os.environ, **RAY_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path / "studies")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4, failures(tmp_path)
    placed = [node_of(t) for t in study.trials]
    assert sorted(set(placed)) == ["head", "second"], placed  # Ray used both nodes
    assert all(t.user_attrs["node"]["id"] for t in study.trials)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    for trial in study.trials:
        folder = tmp_path / "studies" / "tiny" / "trials" / str(trial.number)
        adapter = Path(trial.user_attrs["adapter_path"])
        assert adapter == folder / "adapter" and (adapter / "adapter_config.json").is_file()  # copied back
        assert {"events.jsonl", "result.json", "train.log", "job.yaml"} <= {p.name for p in folder.iterdir()}
        assert not (folder / "checkpoints").exists()  # the Trainer's resume state stays out of the copy
        peft = PeftModel.from_pretrained(model, adapter)
        trained = [p for n, p in peft.named_parameters() if "lora_B" in n]
        assert trained and any(p.abs().sum() > 0 for p in trained)  # lora_B starts at 0: it was trained
        model = peft.unload()
        # the folder's files speak of this folder, not of the node's own copy
        assert json.loads((folder / "result.json").read_text())["adapter_path"] == str(adapter)
    # each node tokenized once into its own cache, every other trial there read it
    logs = {t.number: (tmp_path / "studies/tiny/trials" / str(t.number) / "train.log").read_text() for t in study.trials}
    tokenized = sorted(node_of(t) for t in study.trials if "tokenized data cached in" in logs[t.number])
    assert tokenized == ["head", "second"], tokenized
    for name, node_dir in ray_cluster.nodes.items():
        assert len(list((node_dir / "cache").glob("*.pt"))) == 1
        assert list((node_dir / "trials").iterdir()) == []  # nothing left of the trials on the node
    assert not job_processes(str(tmp_path))


def test_ray_pruned_trial_stops_its_job_on_the_node(ray_cluster, tiny_llama, tmp_path):
    # every evaluation past step 5 is above the threshold: pruned at step 8 of 80, on the second node
    tree = ray_study(ray_cluster, tiny_llama, tmp_path, n_trials=1, enqueue_defaults=False,
                     pruner={"type": "threshold", "options": {"upper": 1.0, "n_warmup_steps": 5}},
                     ray={"resources_per_trial": {"CPU": 1, NODES["second"]: 1}})
    tree["training"] = {"num_training_steps": 80, "eval_steps": 4, "save_steps": 4, "learning_rate": 1e-7}
    config = write_yaml(tmp_path / "study.yaml", tree)
    folder = tmp_path / "studies" / "tiny" / "trials" / "0"
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen([sys.executable, "-m", "lora_sweep", "run", str(config)], cwd=tmp_path,
                                 stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **RAY_ENV})
    seen: set[int] = set()
    state, sweep_alive = None, False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and state is None:
        seen |= set(job_processes(str(folder / "job.yaml")))
        state = trial_state(tmp_path / "studies" / "tiny.db", 0, finished_only=True)
        sweep_alive = sweep.poll() is None
        time.sleep(0.1)
    sweep.wait(timeout=120)
    output = (tmp_path / "sweep.log").read_text()
    assert sweep.returncode == 0, output[-3000:]
    assert state == "PRUNED" and sweep_alive, output[-2000:] + failures(tmp_path)
    assert seen, "the job's processes were never seen running"
    # recorded pruned only once its job's whole process group is gone from the node
    assert [p for p in seen if alive(p)] == []
    (trial,) = load(tmp_path / "studies").trials
    assert node_of(trial) == "second" and trial.user_attrs["stop_reason"] == "pruned"
    steps = [e["step"] for e in map(json.loads, (folder / "events.jsonl").read_text().splitlines()) if e["event"] == "train"]
    assert 8 <= max(steps) < 80  # stopped well before its end
    # the node saw study.dir (same machine, shared_dir null): the job wrote the trial folder itself
    assert (folder / "train.log").is_file() and not list((ray_cluster.nodes["second"] / "trials").glob("*"))


def failures(tmp_path: Path) -> str:
    """The failed trials' errors and log tails, for an assertion's message."""
    return "\n".join(f"trial {t.number}: {t.user_attrs.get('error')}\n{t.user_attrs.get('log_tail')}"
                     for t in load(tmp_path / "studies").trials if t.state == TrialState.FAIL)


def trial_state(db: Path, number: int, finished_only: bool = False) -> str | None:
    """A trial's state straight from the study's SQLite file (None: not there, or still running)."""
    if not db.is_file():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        try:
            row = con.execute("SELECT state FROM trials WHERE number = ?", (number,)).fetchone()
        except sqlite3.OperationalError:  # tables not created yet
            return None
    state = row[0] if row else None
    return None if finished_only and state in (None, "RUNNING", "WAITING") else state


def running_on(db: Path, resource: str) -> int | None:
    """The number of a RUNNING trial placed on the node with `resource`, if any."""
    if not db.is_file():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        try:
            rows = con.execute(
                "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = 'node'").fetchall()
        except sqlite3.OperationalError:
            return None
    return next((n for n, value in rows if resource in json.loads(value)["resources"]), None)


def test_ray_lost_node_fails_the_trial_and_its_params_run_again(ray_cluster, tiny_llama, tmp_path):
    """The last test on the cluster: it kills the second node."""
    tree = ray_study(ray_cluster, tiny_llama, tmp_path, n_trials=2, parallel=2)
    config = write_yaml(tmp_path / "study.yaml", tree)
    db = tmp_path / "studies" / "tiny.db"
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen([sys.executable, "-m", "lora_sweep", "run", str(config)], cwd=tmp_path,
                                 stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **RAY_ENV})
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and sweep.poll() is None:
        victim = running_on(db, NODES["second"])
        time.sleep(0.1)
    assert victim is not None, (tmp_path / "sweep.log").read_text()[-3000:]
    (raylet,) = [p for p in cluster_pids(ray_cluster.root, ray_cluster.port, "second") if "raylet/raylet" in cmdline(p)]
    os.kill(raylet, signal.SIGKILL)
    sweep.wait(timeout=180)
    output = (tmp_path / "sweep.log").read_text()
    assert sweep.returncode == 0, output[-3000:]
    study = load(tmp_path / "studies")
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states
    assert states.count(TrialState.COMPLETE) == 2 and states.count(TrialState.FAIL) == 1, failures(tmp_path)
    lost = study.trials[victim]
    assert lost.state == TrialState.FAIL
    assert lost.user_attrs["error"].startswith("node ") and "(second_node) was lost mid-trial: NodeDiedError" \
        in lost.user_attrs["error"], lost.user_attrs["error"]
    rerun = [t for t in study.trials if t.state == TrialState.COMPLETE and t.params == lost.params]
    assert len(rerun) == 1 and rerun[0].number > victim and node_of(rerun[0]) == "head"
    assert f"trial {victim} failed: node " in output and "its params run again" in output


def test_ray_not_installed_is_one_line_and_writes_nothing(tiny_llama, tmp_path, monkeypatch):
    from helpers import run_cli

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    config = write_yaml(tmp_path / "study.yaml", study_tree(tiny_llama, data, tmp_path / "studies", executor="ray"))
    proc = run_cli(["run", str(config)], cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: study.executor: ray needs Ray, which is not installed: pip install -e '.[ray]' "
        "(or pip install 'ray>=2.40')"), proc.stderr
    assert not (tmp_path / "studies").exists()  # no database, no cache, no trial folder
