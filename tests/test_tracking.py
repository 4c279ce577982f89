"""Experiment tracking: one real sweep (2 parallel trials) with MLflow (SQLite store), W&B
(offline) and TensorBoard at once, each read back with the tracker's own reader; the run a
killed (pruned) job left open, ended by the sweep's record of the trial; and a job without a
`tracking:` key that leaves no tracker's files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from helpers import job_tree, memorization_samples, run_module, working_directory, write_jsonl, write_yaml
from lora_sweep.config.study import StudyConfig
from lora_sweep.config.job import TrackingSection
from lora_sweep.job.tracking import absolute, job_environment, trainer_kwargs, wandb_run_id
from lora_sweep.sweep.trackers import study_callbacks

STUDY = "tracked"
PROJECT = "lora-sweep-tests"


def tracked_study_tree(model: Path, data: Path, root: Path) -> dict:
    """2 trials at once (0 the defaults, 1 drawn), 10 steps each, evaluated at steps 4 and 8 and,
    after training, at 10: the evaluation the job adds after the Trainer ended its run."""
    return {
        "study": {"name": STUDY, "dir": str(root / "studies"), "n_trials": 2, "parallel": 2, "devices": "cpu",
                  "base_space": "none", "sampler": {"type": "random", "seed": 1}, "pruner": {"type": "none"},
                  "heartbeat_interval": 1, "grace_period": 2},
        "model": {"name_or_path": str(model)},
        "lora": {"lora_dropout": 0.0},
        "data": {"dataset": str(data), "train_seqlen": 32, "test_seqlen": 32, "train_batch_size": 2,
                 "test_batch_size": 4},
        "training": {"num_training_steps": 10, "eval_steps": 4, "save_steps": 4, "learning_rate": 0.03},
        "search_space": {"learning_rate": {"type": "categorical", "choices": [0.03, 1e-3]},
                         "r": {"type": "categorical", "choices": [16, 4]}},
        "objective": {"baseline": False},
        "tracking": {"mlflow": f"sqlite:///{root / 'mlflow.db'}", "wandb": PROJECT,
                     "tensorboard": str(root / "tb")},
    }


@pytest.fixture(scope="module")
def tracked(tiny_llama, tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("tracked")
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    config = write_yaml(root / "study.yaml", tracked_study_tree(tiny_llama, data, root))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb-dir"), "WANDB_SILENT": "true"}
    proc = run_module(["run", str(config)], cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{root}/studies/{STUDY}.db")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 2, (states, proc.stderr[-3000:])
    return SimpleNamespace(root=root, study=study, proc=proc)


def eval_events(trial: optuna.trial.FrozenTrial) -> dict[int, float]:
    """step -> eval_loss of the trial's events.jsonl."""
    lines = Path(trial.user_attrs["trial_dir"], "events.jsonl").read_text(encoding="utf-8").splitlines()
    return {e["step"]: e["eval_loss"] for e in map(json.loads, lines) if e["event"] == "eval"}


# ---------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_runs(tracked):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tracked.root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=[STUDY], order_by=["attributes.run_name"])
    finally:
        mlflow.set_tracking_uri(None)
    return SimpleNamespace(runs=runs, client=MlflowClient(uri))


@pytest.mark.integration
def test_mlflow_one_run_per_trial_in_the_study_experiment(tracked, mlflow_runs):
    runs = mlflow_runs.runs
    # nothing else in the experiment: the evaluation after training went into the trial's run
    assert list(runs["tags.mlflow.runName"]) == ["trial-0", "trial-1"]
    assert list(runs["status"]) == ["FINISHED", "FINISHED"]
    assert list(runs["tags.trial.state"]) == ["COMPLETE", "COMPLETE"]
    for trial, (_, run) in zip(tracked.study.trials, runs.iterrows()):
        logged = {k.removeprefix("params.trial."): v for k, v in run.items() if k.startswith("params.trial.")}
        assert logged == {**{k: str(v) for k, v in trial.params.items()}, "number": str(trial.number)}
        assert run["params.learning_rate"] == str(trial.params["learning_rate"])  # the Trainer's arguments too
    assert list(runs["metrics.trial.eval_loss"]) == [t.value for t in tracked.study.trials]


@pytest.mark.integration
def test_mlflow_eval_curve_is_the_events_one(tracked, mlflow_runs):
    for trial, run_id in zip(tracked.study.trials, mlflow_runs.runs["run_id"]):
        points = {m.step: m.value for m in mlflow_runs.client.get_metric_history(run_id, "eval_loss")}
        assert points == eval_events(trial)
        assert sorted(points) == [4, 8, 10]
        assert min(points.values()) == trial.value  # the objective: the best evaluation


# ---------------------------------------------------------------- TensorBoard


@pytest.mark.integration
def test_tensorboard_run_per_trial_with_curve_and_hparams(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    study_dir = tracked.root / "tb" / STUDY
    assert sorted(p.name for p in study_dir.iterdir()) == ["trial-0", "trial-1"]
    for trial in tracked.study.trials:
        acc = EventAccumulator(str(study_dir / f"trial-{trial.number}"))
        acc.Reload()
        curve = {e.step: e.value for e in acc.Scalars("eval/loss")}
        events = eval_events(trial)
        assert sorted(curve) == sorted(events) == [4, 8, 10]
        assert all(curve[s] == pytest.approx(events[s], rel=1e-6) for s in curve)  # stored as float32
        [value] = acc.Scalars("trial.eval_loss")
        assert value.value == pytest.approx(trial.value, rel=1e-6)
        start = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert {k: hparams[k].number_value for k in trial.params} == pytest.approx(trial.params)
        assert hparams["state"].string_value == "COMPLETE"


# ---------------------------------------------------------------- W&B (offline)


def wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file (LevelDB log blocks of 32 KiB, after a 7-byte
    `:W&B` header; each chunk has a 7-byte header: crc, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    records, chunk, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # too little left in the block for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        chunk += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_run(wandb_dir: Path, run_id: str) -> SimpleNamespace:
    """All parts of an offline run (`offline-run-<time>-<id>` folders): its starts, config,
    summary, eval/loss history by step and exit codes."""
    run = SimpleNamespace(starts=[], config={}, summary={}, history={}, exits=[])
    for folder in sorted(wandb_dir.glob(f"offline-run-*-{run_id}")):
        for record in wandb_records(folder / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.starts.append(record.run)
                run.config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                run.config.update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "summary":
                run.summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                    for i in record.summary.update})
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                if "eval/loss" in row:
                    run.history[row["train/global_step"]] = row["eval/loss"]
            elif kind == "exit":
                run.exits.append(record.exit.exit_code)
    return run


@pytest.mark.integration
def test_wandb_run_per_trial_in_the_study_group(tracked):
    wandb_dir = tracked.root / "wandb-dir" / "wandb"
    ids = {folder.name.split("-", 3)[3] for folder in wandb_dir.glob("offline-run-*")}
    assert len(ids) == 2  # one run id per trial: the job's part and the sweep's, resumed
    for trial in tracked.study.trials:
        [run_id] = [i for i in ids if i.startswith(f"{STUDY}-trial-{trial.number}-")]
        run = wandb_run(wandb_dir, run_id)
        assert {(s.display_name, s.run_group, s.project) for s in run.starts} == {
            (f"trial-{trial.number}", STUDY, PROJECT)}
        assert run.config["trial"] == {**trial.params, "number": trial.number, "state": "COMPLETE"}
        assert run.history == eval_events(trial)
        assert run.summary["trial.eval_loss"] == trial.value
        assert run.exits == [0, 0]  # the job's part, then the sweep's


# ---------------------------------------------------------------- a killed job's run


@pytest.mark.integration
def test_a_killed_jobs_run_is_ended_with_the_trials_state(tmp_path, monkeypatch):
    """A pruned trial's job is killed (SIGTERM) in the middle of its run, which stays RUNNING:
    the sweep's record of the trial ends it, with the trial's params, state and value."""
    import mlflow
    from mlflow import MlflowClient
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # wandb sets it here: removed again afterwards
    (tmp_path / "wandb-dir").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = StudyConfig.model_validate({
        "study": {"name": "killed", "dir": str(tmp_path / "studies")},
        "data": {"train_file": str(write_jsonl(tmp_path / "train.json", memorization_samples())),
                 "test_file": str(tmp_path / "train.json")},
        "tracking": {"mlflow": uri, "wandb": PROJECT, "tensorboard": str(tmp_path / "tb")},
    })
    callbacks = study_callbacks(config)  # the sweep's: the experiment exists before any job starts
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("killed").experiment_id
    left = client.create_run(experiment, run_name="trial-3").info.run_id  # what the killed job left
    client.log_metric(left, "eval_loss", 5.5, step=4)

    folder = tmp_path / "studies" / "killed" / "trials" / "3"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text("{}", encoding="utf-8")
    distribution = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    trial = optuna.trial.create_trial(state=TrialState.PRUNED, params={"learning_rate": 2e-3},
                                      distributions={"learning_rate": distribution}, value=5.5,
                                      user_attrs={"trial_dir": str(folder)})
    trial.number = 3
    study = optuna.create_study(study_name="killed")
    for callback in callbacks:
        callback(study, trial)
    wandb.teardown()

    run = client.get_run(left)
    assert run.info.status == "KILLED"
    assert run.data.params == {"trial.learning_rate": "0.002", "trial.number": "3"}
    assert run.data.tags["trial.state"] == "PRUNED"
    assert run.data.metrics == {"eval_loss": 5.5, "trial.eval_loss": 5.5}
    assert len(client.search_runs([experiment])) == 1  # found again by its name, not a second run

    run_id = wandb_run_id("killed", "trial-3", folder)
    part = wandb_run(tmp_path / "wandb-dir" / "wandb", run_id)
    assert part.config["trial"] == {"learning_rate": 2e-3, "number": 3, "state": "PRUNED"}
    assert part.summary["trial.eval_loss"] == 5.5 and part.exits == [0]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb" / "killed" / "trial-3"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("trial.eval_loss")] == [5.5]
    mlflow.set_tracking_uri(None)


def test_a_tracker_that_fails_is_a_warning_not_a_stopped_sweep(tmp_path, caplog):
    config = StudyConfig.model_validate({
        "study": {"name": "broken"},
        "data": {"train_file": str(write_jsonl(tmp_path / "train.json", memorization_samples())),
                 "test_file": str(tmp_path / "train.json")},
        "tracking": {"tensorboard": str(write_jsonl(tmp_path / "a-file", []))},  # a file, not a folder
    })
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0)
    trial.number = 0
    [callback] = study_callbacks(config)
    callback(optuna.create_study(), trial)
    assert "tracking: TensorBoard could not record trial 0" in caplog.text


# ---------------------------------------------------------------- nothing unless asked


def test_no_tracker_no_environment():
    before = dict(os.environ)
    assert trainer_kwargs(TrackingSection()) == {"report_to": "none"}
    assert dict(os.environ) == before
    assert job_environment(TrackingSection()) == {}


def test_relative_tracker_paths_are_made_absolute(tmp_path):
    tree = absolute({"mlflow": "sqlite:///ml.db", "tensorboard": "tb", "wandb": "p"}, tmp_path)
    assert tree == {"mlflow": f"sqlite:///{tmp_path / 'ml.db'}", "tensorboard": str(tmp_path / "tb"), "wandb": "p"}
    assert absolute({"mlflow": "http://host:5000"}, tmp_path) == {"mlflow": "http://host:5000"}
    assert absolute({"mlflow": "mlruns"}, tmp_path) == {"mlflow": str(tmp_path / "mlruns")}


@pytest.mark.integration
def test_a_job_without_tracking_writes_no_tracker_files(tiny_llama, tmp_path):
    from lora_sweep.job import train

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    job = write_yaml(tmp_path / "job.yaml", job_tree(tiny_llama, data, tmp_path / "out", num_training_steps=2))
    with working_directory(tmp_path):
        assert train.main([str(job)]) == 0
    found = [p.relative_to(tmp_path) for p in tmp_path.rglob("*")
             if p.name in ("mlruns", "mlflow.db", "wandb", "runs") or p.name.startswith("events.out.tfevents")]
    assert found == []
    assert (tmp_path / "out" / "adapter").is_dir()  # the job did run
