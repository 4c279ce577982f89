"""A sweep that is killed, interrupted or fed bad bytes keeps its study whole: killed trials are
failed and re-run straight away, SIGTERM / Ctrl+C leave no RUNNING trial and no process, a hung
job is stopped, a bad event line is skipped, another worker's running trial is waited for."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from helpers import job_processes, run_cli, study_tree, write_yaml
from lora_sweep.events import EventReader, read_events
from lora_sweep.sweep.storage import StudyFolder, load_existing, masked, owner_is_gone, this_worker
from lora_sweep.sweep.trial import Progress, signal_text


# ---------------------------------------------------------------- units


def test_event_reader_skips_a_line_that_is_not_an_event(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event": "start", "max_steps": 4}\n{"event": "tr\nhello from a stray print\n'
                     b'[1, 2]\n\xff\xfe\n{"event": "eval", "step": 2, "eval_loss": 1.5}\n{"event": "tra')
    reader = EventReader(path)
    events = reader.new()
    assert [e["event"] for e in events] == ["start", "eval"]
    assert reader.skipped == 4  # the cut line, the print, a list, bytes that are not UTF-8
    with path.open("ab") as f:
        f.write(b'in", "step": 3}\n')  # the partial last line completes
    assert reader.new() == [{"event": "train", "step": 3}]


def test_exit_texts_name_the_signal():
    assert signal_text(1) == "exited with code 1"
    assert signal_text(-9) == "was killed by SIGKILL"
    assert signal_text(-15) == "was killed by SIGTERM"
    assert signal_text(137) == "exited with code 137 (killed by SIGKILL)"
    launcher_log = "subprocess.CalledProcessError: Command '['python', '-m', 'lora_sweep.job.train']' died with <Signals.SIGKILL: 9>."
    assert signal_text(1, launcher_log) == "exited with code 1 (killed by SIGKILL)"


def test_stall_limit_grows_with_the_evaluation_intervals():
    progress = Progress("eval_loss", "minimize", started=0.0)
    assert progress.stall_limit(5.0) == 300.0  # before the job's first event: loading may take long
    progress.seen_event = True
    assert progress.stall_limit(None) == 300.0
    progress.eval_times = [200.0, 400.0]  # evaluations 200 s apart: 3 x 200
    assert progress.stall_limit(None) == 600.0
    assert progress.stall_limit(5.0) == 5.0


def test_passwords_are_masked():
    assert masked("postgresql://user:s3cret@db.example:5432/optuna") == "postgresql://user:***@db.example:5432/optuna"
    assert masked("postgresql+psycopg://u:p%40ss@h/db") == "postgresql+psycopg://u:***@h/db"
    assert masked("postgresql://user@h/db") == "postgresql://user@h/db"
    assert masked("sqlite:///studies/x.db") == "sqlite:///studies/x.db"


def test_owner_of_a_dead_process_is_gone():
    me = this_worker()
    assert not owner_is_gone(me)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert owner_is_gone({**me, "pid": child.pid})
    assert owner_is_gone({**me, "started": "1"})  # the pid now names another process
    assert not owner_is_gone({**me, "host": "elsewhere", "pid": child.pid})  # remote: judged by heartbeat


@pytest.mark.integration
def test_a_study_folder_belongs_to_one_storage(tiny_llama, chat_data, tmp_path):
    first = study_tree(tiny_llama, chat_data, tmp_path / "studies", storage=f"sqlite:///{tmp_path}/a.db")
    StudyFolder(tmp_path / "studies" / "tiny").claim_for(first["study"]["storage"])
    kept = tmp_path / "studies/tiny/trials/0/adapter"
    kept.mkdir(parents=True)
    second = study_tree(tiny_llama, chat_data, tmp_path / "studies", storage=f"sqlite:///{tmp_path}/b.db")
    proc = run_cli(["run", str(write_yaml(tmp_path / "b.yaml", second))], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}/studies/tiny holds the trials of the study in sqlite:///{tmp_path}/a.db, "
        f"not sqlite:///{tmp_path}/b.db: give this study its own study.dir or study.name")
    assert kept.is_dir() and not (tmp_path / "b.db").exists()


# ---------------------------------------------------------------- real sweeps


def start_sweep(config: Path, cwd: Path) -> subprocess.Popen:
    """`run` in its own process group, as a shell job would be."""
    return subprocess.Popen([sys.executable, "-m", "lora_sweep", "run", str(config)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_training(folder: Path, sweep: subprocess.Popen, kind: str = "train") -> None:
    events = folder / "events.jsonl"
    deadline = time.time() + 120
    while not (events.is_file() and any(e["event"] == kind for e in read_events(events))):
        assert time.time() < deadline and sweep.poll() is None, sweep.communicate()
        time.sleep(0.1)


def no_jobs_left(folder: Path) -> bool:
    deadline = time.time() + 20
    while job_processes(str(folder / "job.yaml")) and time.time() < deadline:
        time.sleep(0.2)  # an orphaned job notices its parent is gone within 2 s
    return job_processes(str(folder / "job.yaml")) == []


def open_study(url: str) -> optuna.Study:
    return load_existing(url, "tiny")


def test_a_dead_workers_trial_on_journal_storage_is_failed_and_queued(tmp_path):
    # journal files have no heartbeats: the owner check is what frees a killed sweep's trial
    from lora_sweep.config.study import StudySection
    from lora_sweep.sweep.storage import fail_orphaned_trials, make_storage

    study = optuna.create_study(storage=make_storage(str(tmp_path / "s.log"), StudySection()), study_name="s")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    orphan.set_user_attr("worker", {**this_worker(), "pid": dead.pid})
    alive = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive.set_user_attr("worker", this_worker())
    remote = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    remote.set_user_attr("worker", {"host": "gpu-node-7", "pid": dead.pid, "started": "1"})

    assert fail_orphaned_trials(study) == [orphan.number]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING, TrialState.WAITING]
    assert trials[0].user_attrs["error"] == "its worker process is gone (killed or crashed)"
    assert trials[3].system_attrs["fixed_params"] == {"x": orphan.params["x"]}


@pytest.mark.integration
def test_rerun_straight_after_sigterm_and_after_a_kill(tiny_llama, chat_data, tmp_path, caplog):
    url = f"sqlite:///{tmp_path}/tiny.db"
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=1, storage=url, stop_grace=2,
                      heartbeat_interval=30, grace_period=600)  # heartbeats far from stale: the owner check acts
    tree["training"].update(num_training_steps=12)
    config = write_yaml(tmp_path / "study.yaml", tree)
    trials = tmp_path / "studies/tiny/trials"

    # SIGTERM (Slurm, Kubernetes): the job stops, the trial is FAILED and queued again
    sweep = start_sweep(config, tmp_path)
    wait_for_training(trials / "0", sweep)
    sweep.send_signal(signal.SIGTERM)
    out, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 143, err[-2000:]  # 128 + SIGTERM, as Slurm and Kubernetes expect
    assert "error: interrupted by SIGTERM" in err
    assert no_jobs_left(trials / "0")
    study = open_study(url)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[0].user_attrs["error"] == "interrupted by SIGTERM"
    assert study.trials[1].system_attrs["fixed_params"] == study.trials[0].params

    # SIGKILL to the sweep's whole process group while a trial trains, then `run` again at once:
    # the heartbeat is far from stale, the owner check fails the trial (journal: its only guard)
    sweep = start_sweep(config, tmp_path)
    killed = 1  # the queued trial 1 runs first
    wait_for_training(trials / str(killed), sweep, kind="checkpoint")  # killed after a checkpoint
    with (trials / str(killed) / "events.jsonl").open("a") as f:
        f.write("a stray print, not an event\n")  # skipped with a warning, counted on the trial
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.communicate()
    assert no_jobs_left(trials / str(killed))
    assert open_study(url).trials[killed].state == TrialState.RUNNING

    with caplog.at_level(logging.INFO, logger="lora_sweep"):
        proc = run_cli(["run", str(config)], cwd=tmp_path)  # in process: the re-run is a plain run
    assert proc.returncode == 0, caplog.text[-3000:]
    assert f"trial {killed} failed: its worker process is gone (killed or crashed); its params run again" in caplog.text
    study = open_study(url)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 1 and TrialState.RUNNING not in states
    assert study.trials[killed].state == TrialState.FAIL
    assert study.trials[killed + 1].params == study.trials[killed].params  # re-run, not re-sampled
    assert study.trials[killed + 1].user_attrs.get("baseline") == "documented defaults"

    # the re-run resumes from the killed trial's last checkpoint: no step before it runs again, and
    # the killed trial's evaluations up to it are kept, once, in the re-run's curve
    rerun = study.trials[killed + 1]
    assert rerun.user_attrs["resumes"] == {"trial": killed, "dir": str(trials / str(killed))}
    checkpoint = yaml.safe_load((trials / str(killed + 1) / "job.yaml").read_text())["training"]["resume_from_checkpoint"]
    resumed_at = int(checkpoint.rsplit("-", 1)[1])
    assert checkpoint.startswith(str(trials / str(killed) / "checkpoints" / "checkpoint-")) and resumed_at >= 2
    events = read_events(trials / str(killed + 1) / "events.jsonl")
    # every step after the checkpoint, none before it (a fast job may have checkpointed its last step
    # before the kill landed: then nothing is left to train)
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(resumed_at + 1, 13))
    assert [s for s, _ in rerun.user_attrs["eval_curve"]] == [2, 4, 6, 8, 10, 12]
    assert sorted(rerun.intermediate_values) == [2, 4, 6, 8, 10, 12]
    # (trial 1 may itself have resumed the SIGTERMed trial 0: its `resume` event carries those evaluations)
    killed_events = read_events(trials / str(killed) / "events.jsonl")
    killed_evals = {r["step"]: r["eval_loss"] for e in killed_events if e["event"] == "resume" for r in e["evals"]}
    killed_evals |= {e["step"]: e["eval_loss"] for e in killed_events if e["event"] == "eval" and e["step"] <= resumed_at}
    assert {s: v for s, v in rerun.user_attrs["eval_curve"] if s <= resumed_at} == killed_evals


@pytest.mark.integration
def test_a_hung_job_is_stopped_and_failed(tiny_llama, chat_data, tmp_path, monkeypatch):
    # a scorer that answers the pre-checks (the answer against itself) but hangs on a real answer
    (tmp_path / "hangs.py").write_text(
        "import time\n"
        "def score(prediction, reference, sample):\n"
        "    if prediction != reference:\n"
        "        time.sleep(3600)\n"
        "    return 1.0\n")
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=1, max_failures=1, stall_timeout=4,
                      enqueue_defaults=False, stop_grace=1)
    tree["objective"].update(metric="python:hangs:score", max_new_tokens=2)
    config = write_yaml(tmp_path / "study.yaml", tree)
    monkeypatch.syspath_prepend(str(tmp_path))  # the sweep's check imports the scorer here
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # and the job in its own process
    proc = run_cli(["run", str(config)], cwd=tmp_path)
    assert proc.returncode == 1
    trial = load_existing(f"sqlite:///{tmp_path}/studies/tiny.db", "tiny").trials[0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error"].startswith("the job sent no event for ")
    assert "stopped as hung (study.stall_timeout" in trial.user_attrs["error"]
    assert no_jobs_left(tmp_path / "studies/tiny/trials/0")


@pytest.mark.integration
def test_another_workers_running_trial_is_waited_for(tiny_llama, chat_data, tmp_path):
    url = f"sqlite:///{tmp_path}/tiny.db"
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=1, storage=url, enqueue_defaults=False,
                      heartbeat_interval=1, grace_period=3)
    config = write_yaml(tmp_path / "study.yaml", tree)
    # a worker on another machine took the budget's only trial, then went silent
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(storage=storage, study_name="tiny", direction="minimize")
    remote = study.ask({"num_warmup_steps": optuna.distributions.IntDistribution(0, 4)})
    remote.set_user_attr("worker", {"host": "gpu-node-7", "pid": 4242, "started": "1"})
    log = tmp_path / "run.log"
    with log.open("w") as err:
        sweep = subprocess.Popen([sys.executable, "-m", "lora_sweep", "run", str(config)], cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 120
        while "waiting for running trials" not in log.read_text() and time.time() < deadline:
            storage.record_heartbeat(remote._trial_id)  # alive: the sweep must wait, not steal the trial
            assert sweep.poll() is None, log.read_text()
            time.sleep(0.5)
        sweep.wait(timeout=120)  # the remote worker died: its heartbeat goes stale, its params run here
    assert sweep.returncode == 0, log.read_text()[-3000:]
    assert "waiting for running trials of other workers: 0 (pid 4242 on gpu-node-7)" in log.read_text()
    trials = load_existing(url, "tiny").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params["num_warmup_steps"] == trials[0].params["num_warmup_steps"]  # its params ran again


def test_export_onto_an_existing_file_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=url, study_name="s")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"adapter_path": str(adapter)}))
    (tmp_path / "data").mkdir()
    for name in ("train.json", "test.json"):
        (tmp_path / "data" / name).write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                                                        {"role": "assistant", "content": "b"}]}) + "\n")
    tree = {"study": {"name": "s", "storage": url}, "data": {"dataset": str(tmp_path / "data")}}
    out = tmp_path / "taken.txt"
    out.write_text("mine")
    proc = run_cli(["export", str(write_yaml(tmp_path / "s.yaml", tree)), "--trial", "best", "--out", str(out)],
                   cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --out {out}: a file of that name exists; give a new folder"
    assert out.read_text() == "mine"


def warm_runners(parent: int) -> list[int]:
    """The warm runner processes (`python -m lora_sweep.launch.warm`) started by process `parent`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                            if line.startswith("PPid:")))
        except (OSError, StopIteration):
            continue
        if b"lora_sweep.launch.warm" in cmdline and ppid == parent:
            found.append(int(pid))
    return found


@pytest.mark.integration
def test_a_dying_warm_runner_is_not_the_trials_fault(tiny_llama, chat_data, tmp_path):
    # kill -9 of the warm runner while the defaults trial trains: that trial fails as the runner's
    # fault, its params run again from its checkpoint on a fresh runner, and it costs no max_failures
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=1, launcher="warm", max_failures=1,
                      stop_grace=2)
    tree["training"].update(num_training_steps=24)
    config = write_yaml(tmp_path / "study.yaml", tree)
    trials = tmp_path / "studies/tiny/trials"
    sweep = start_sweep(config, tmp_path)
    wait_for_training(trials / "0", sweep, kind="checkpoint")
    runner = warm_runners(sweep.pid)
    assert len(runner) == 1
    os.kill(runner[0], signal.SIGKILL)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err[-3000:]
    died = f"the warm runner (pid {runner[0]}) was killed by SIGKILL mid-trial; a fresh runner starts for the next job"
    assert f"trial 0 failed: {died}; its params run again" in err
    study = load_existing(f"sqlite:///{tmp_path}/studies/tiny.db", "tiny")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["error"] == died
    rerun = study.trials[1]
    assert rerun.params == study.trials[0].params and rerun.user_attrs["baseline"] == "documented defaults"
    assert rerun.user_attrs["resumes"] == {"trial": 0, "dir": str(trials / "0")}
    checkpoint = yaml.safe_load((trials / "1" / "job.yaml").read_text())["training"]["resume_from_checkpoint"]
    assert checkpoint.startswith(str(trials / "0" / "checkpoints" / "checkpoint-"))
    assert f"documented defaults (trial 1): eval_loss {rerun.value:.4f}" in out
    assert warm_runners(sweep.pid) == []  # the sweep is gone, and so is its fresh runner


@pytest.mark.integration
def test_a_study_database_deleted_mid_sweep_stops_it_in_one_line(tiny_llama, chat_data, tmp_path, caplog):
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=2, stop_grace=2)
    tree["training"].update(num_training_steps=24)
    config = write_yaml(tmp_path / "study.yaml", tree)
    trials, db = tmp_path / "studies/tiny/trials", tmp_path / "studies/tiny.db"
    sweep = start_sweep(config, tmp_path)
    wait_for_training(trials / "0", sweep)
    db.unlink()
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"error: the study database {db} was deleted while the sweep ran: nothing more can be recorded, so the "
        f"sweep stopped its jobs; their folders are set aside by the next run")
    assert "Traceback" not in err and out == ""
    assert no_jobs_left(trials / "0")

    # the next run makes a new study: the lost study's trial 0 is moved aside, never reused
    lost = (trials / "0" / "events.jsonl").read_text()
    with caplog.at_level(logging.INFO, logger="lora_sweep"):
        proc = run_cli(["run", str(config), "study.n_trials=1"], cwd=tmp_path)
    assert proc.returncode == 0, caplog.text[-3000:]
    moved = list((tmp_path / "studies/tiny/lost-trials").glob("*/0"))
    assert len(moved) == 1 and (moved[0] / "events.jsonl").read_text() == lost
    assert (f"trial folder(s) 0 are not trials of this study's storage (its database was deleted or replaced?): "
            f"moved to {moved[0].parent}") in caplog.text
    assert [t.state for t in open_study(f"sqlite:///{db}").trials] == [TrialState.COMPLETE]
    assert (trials / "0" / "events.jsonl").read_text() != lost
