"""The sweep's side of experiment tracking (the job's side is tracking.py): before the sweep, the
trackers asked for are tried (an MLflow server that does not answer, W&B online without a key);
after each trial, its run (the job's, found again) gets the trial's params, number, state and value,
and is ended with the trial's state. A tracker that fails is a warning, never a stopped sweep."""

from __future__ import annotations

import logging
import netrc
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lora_sweep.config.study import StudyConfig
from lora_sweep.config.job import TrackingSection
from lora_sweep.job.tracking import tensorboard_dir, wandb_run_id


log = logging.getLogger("lora_sweep.trackers")

CHECK_S = 5.0  # how long `validate` and `run` wait for a tracking server to answer


# MLflow's client retries an unreachable server 7 times with backoff (minutes): a sweep's tracker that
# goes away costs a warning, so its sweep and jobs try twice, 10 s each (unless set otherwise)
MLFLOW_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


PREFIX = "trial."  # the names of what the sweep adds to a run: never one the Trainer logs itself


MLFLOW_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


def tracker_problems(tracking: TrackingSection, timeout: float = CHECK_S) -> list[str]:
    """What would make the trackers asked for fail every trial, found before any: an MLflow server
    that does not answer within `timeout` s, W&B online without an API key."""
    problems = []
    uri = tracking.mlflow
    if uri and uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri, timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # a server answered (an error page is still an answer)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            why = getattr(exc, "reason", exc)
            problems.append(f"tracking.mlflow: nothing answers at {uri} within {timeout:.0f} s ({why}): start the "
                            f"MLflow server, or log to a file (sqlite:///mlflow.db)")
    offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")
    if tracking.wandb and not offline and not wandb_key():
        problems.append("tracking.wandb: no W&B API key (WANDB_API_KEY, or `wandb login`) and WANDB_MODE is not "
                        "offline: set a key, or WANDB_MODE=offline to keep the runs on disk")
    return problems


def wandb_key() -> bool:
    """Is a W&B API key there: $WANDB_API_KEY, or the netrc entry `wandb login` writes?"""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_name(trial: FrozenTrial) -> str:
    """The run name a trial's job was given (trial.job_config): `trial-<folder name>`."""
    folder = trial.user_attrs.get("trial_dir")
    return f"trial-{Path(folder).name if folder else trial.number}"


def summary(config: StudyConfig, trial: FrozenTrial) -> tuple[dict[str, Any], dict[str, float]]:
    """What the sweep adds to a trial's run: its params, number and state, and its value(s)."""
    params = {f"{PREFIX}{name}": value for name, value in trial.params.items()}
    params.update({f"{PREFIX}number": trial.number, f"{PREFIX}state": trial.state.name})
    names = [config.objective.metric, *([config.objective.also] if config.objective.also else [])]
    values = {f"{PREFIX}{name}": float(value) for name, value in zip(names, trial.values or [])}
    return params, values


class Tracker:
    """One tracker's study side: `record` the trial in its run; a tracker that fails is a
    warning, never a stopped sweep."""

    name = ""

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.lock = threading.Lock()  # parallel slots finish trials in their own threads

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            with self.lock:
                self.record(trial, *summary(self.config, trial))
        except Exception as exc:
            log.warning("tracking: %s could not record trial %d: %s: %s", self.name, trial.number,
                        type(exc).__name__, exc)

    def record(self, trial: FrozenTrial, params: dict[str, Any], values: dict[str, float]) -> None:
        raise NotImplementedError


class MLflowTracker(Tracker):
    name = "MLflow"

    def __init__(self, config: StudyConfig) -> None:
        super().__init__(config)
        from mlflow import MlflowClient

        for name, value in MLFLOW_RETRIES.items():  # this process's client, and the jobs it launches
            os.environ.setdefault(name, value)
        self.client = MlflowClient(config.tracking.mlflow)
        # made now, before any job starts: parallel jobs would race to create the experiment
        # (and a new SQLite store's tables)
        found = self.client.get_experiment_by_name(config.study.name)
        self.experiment = found.experiment_id if found else self.client.create_experiment(config.study.name)

    def record(self, trial: FrozenTrial, params: dict[str, Any], values: dict[str, float]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        name = run_name(trial)
        runs = self.client.search_runs([self.experiment], f"attributes.run_name = '{name}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        # a trial that failed before its job started has no run yet: it gets one here
        run_id = runs[0].info.run_id if runs else self.client.create_run(self.experiment, run_name=name).info.run_id
        now = int(time.time() * 1000)  # ms
        self.client.log_batch(
            run_id,
            metrics=[Metric(key, value, now, 0) for key, value in values.items()],
            params=[Param(key, str(value)) for key, value in params.items() if key != f"{PREFIX}state"],
            tags=[RunTag(f"{PREFIX}state", trial.state.name)],  # a param cannot change; a tag can
        )
        self.client.set_terminated(run_id, MLFLOW_STATUS.get(trial.state, "FAILED"))


class WandbTracker(Tracker):
    name = "W&B"

    def record(self, trial: FrozenTrial, params: dict[str, Any], values: dict[str, float]) -> None:
        import wandb

        name, study = run_name(trial), self.config.study.name
        folder = Path(trial.user_attrs.get("trial_dir") or self.config.folder.resolve())
        run = wandb.init(project=self.config.tracking.wandb, id=wandb_run_id(study, name, folder), name=name,
                         group=study, resume="allow", reinit="create_new",
                         dir=os.environ.get("WANDB_DIR") or folder,  # the job's: WANDB_DIR, else its folder
                         settings=wandb.Settings(silent=True, console="off"))
        # under `trial` (shown as trial.<name>): beside, not over, the Trainer's arguments of the same names
        run.config.update({"trial": {key.removeprefix(PREFIX): value for key, value in params.items()}},
                          allow_val_change=True)
        run.summary.update(values)
        run.tags = (*run.tags, trial.state.name.lower())
        run.finish(exit_code=1 if trial.state == TrialState.FAIL else 0)


class TensorBoardTracker(Tracker):
    name = "TensorBoard"

    def record(self, trial: FrozenTrial, params: dict[str, Any], values: dict[str, float]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        section = self.config.tracking.model_copy(update={"group": self.config.study.name,
                                                           "run_name": run_name(trial)})
        # the run's own folder: TensorBoard shows its event files, the job's and this one, as one run
        with SummaryWriter(log_dir=str(tensorboard_dir(section))) as writer:
            for summary_pb in hparams({k.removeprefix(PREFIX): v for k, v in params.items()}, values):
                writer.file_writer.add_summary(summary_pb)
            for key, value in values.items():
                writer.add_scalar(key, value, 0)


def study_callbacks(config: StudyConfig) -> list[Callable[[optuna.Study, FrozenTrial], None]]:
    """Called with each finished trial by the sweep: one per tracker asked for."""
    trackers = {"mlflow": MLflowTracker, "wandb": WandbTracker, "tensorboard": TensorBoardTracker}
    return [trackers[name](config) for name in config.tracking.report_to]
