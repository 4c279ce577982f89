"""Experiment tracking (the `tracking:` group): MLflow, Weights & Biases, TensorBoard.

One study is one MLflow experiment / one W&B group / one TensorBoard folder, and each trial is
ONE run per tracker, named `trial-<n>`:

- the job (a child process) opens the run: the Trainer's `report_to` logs the training
  arguments and the train / eval curves at their steps (`trainer_kwargs`, which also sets the
  trackers' environment variables the Trainer's callbacks read);
- the sweep, after the trial finished (`study_callbacks`), finds that run again (MLflow: by
  experiment and run name; W&B: by the run id both sides derive; TensorBoard: the run's
  folder) and adds the trial's sampled params (`trial.<name>`), its number and state, and its
  value (`trial.<metric>`), then ends it with the trial's state. A pruned trial's job is
  killed (SIGTERM) in the middle of its run: this is what ends that run.

Nothing is imported, written or logged unless a tracker is asked for.
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import re
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

from lora_sweep.config import StudyConfig, TrackingSection

log = logging.getLogger("lora_sweep.tracking")

CHECK_S = 5.0  # how long `validate` and `run` wait for a tracking server to answer
# MLflow's client retries an unreachable server 7 times with backoff (minutes): a sweep's tracker that
# goes away costs a warning, so its sweep and jobs try twice, 10 s each (unless set otherwise)
MLFLOW_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PREFIX = "trial."  # the names of what the sweep adds to a run: never one the Trainer logs itself
MLFLOW_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


# ---------------------------------------------------------------- before the sweep


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


# ---------------------------------------------------------------- names both sides derive


def absolute(tracking: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """A `tracking` tree whose local paths (an MLflow folder or sqlite:/// file, the TensorBoard
    folder) are absolute, relative to `base` (default: the working directory): a sweep's jobs run
    in their trial folders, where a relative path would make a tracker per trial."""
    base = base or Path.cwd()
    out = dict(tracking)
    uri = out.get("mlflow")
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        out["mlflow"] = f"sqlite:///{(base / uri.removeprefix('sqlite:///')).resolve()}"
    elif uri and "://" not in uri:
        out["mlflow"] = str((base / uri).resolve())
    if out.get("tensorboard"):
        out["tensorboard"] = str((base / out["tensorboard"]).resolve())
    return out


def tensorboard_dir(tracking: TrackingSection) -> Path:
    """`<tensorboard>/<study>/trial-<n>` (a job alone: the folders it has names for)."""
    return Path(tracking.tensorboard, *filter(None, [tracking.group, tracking.run_name]))


def wandb_run_id(group: str, run_name: str, trial_dir: Path) -> str:
    """The W&B run id of a sweep's trial, the same in its job and in the sweep: study name and
    run name, and a hash of the trial folder and the time its job.yaml was written, so that a
    study deleted and run again under its name never resumes the old study's runs."""
    job = trial_dir / "job.yaml"
    stamp = job.stat().st_mtime_ns if job.is_file() else 0
    digest = hashlib.sha1(f"{trial_dir.resolve()}:{stamp}".encode()).hexdigest()[:10]
    return re.sub(r"[^\w.-]", "_", f"{group}-{run_name}")[:50] + f"-{digest}"  # W&B ids: at most 64 characters


def run_name(trial: FrozenTrial) -> str:
    """The run name a trial's job was given (trial.job_config): `trial-<folder name>`."""
    folder = trial.user_attrs.get("trial_dir")
    return f"trial-{Path(folder).name if folder else trial.number}"


# ---------------------------------------------------------------- the job side


def job_environment(tracking: TrackingSection) -> dict[str, str]:
    """The environment variables through which the Trainer's tracker callbacks take their
    settings (they have no TrainingArguments of their own)."""
    env: dict[str, str] = {}
    if tracking.mlflow:
        env["MLFLOW_TRACKING_URI"] = tracking.mlflow
        if tracking.group:
            env["MLFLOW_EXPERIMENT_NAME"] = tracking.group
    if tracking.wandb:
        env["WANDB_PROJECT"] = tracking.wandb
        if tracking.group:
            env["WANDB_RUN_GROUP"] = tracking.group
        if tracking.group and tracking.run_name:  # a sweep's job: it runs in its trial folder
            env["WANDB_RUN_ID"] = wandb_run_id(tracking.group, tracking.run_name, Path.cwd())
            env["WANDB_RESUME"] = "allow"
    if tracking.tensorboard:
        env["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir(tracking))
    return env


def trainer_kwargs(tracking: TrackingSection) -> dict[str, Any]:
    """TrainingArguments keywords of the trackers asked for ("none" when none is).

    With a tracker, this also sets up this job's process: the trackers' environment variables
    (`job_environment`) and, for MLflow, the run itself, started here so that the Trainer's
    callback logs into it and does not end it at the end of training: the evaluation the job
    adds after training (when the last step is not an evaluation step) then lands in the same
    run, not in a new one MLflow would start for it."""
    if not tracking.report_to:
        return {"report_to": "none"}
    os.environ.update(job_environment(tracking))
    # the sweep's own W&B service, whose address its jobs inherit: a job starts its own, or a
    # pruned (killed) job's run would stay open in the sweep's and block the sweep's record of it
    os.environ.pop("WANDB_SERVICE", None)
    report_to = tracking.report_to
    if tracking.mlflow and int(os.environ.get("RANK", "0")) == 0:  # only the main process logs
        import mlflow

        try:
            mlflow.set_tracking_uri(tracking.mlflow)
            if tracking.group:
                mlflow.set_experiment(tracking.group)
            if mlflow.active_run() is None:
                mlflow.start_run(run_name=tracking.run_name)  # ended (FINISHED) when the process exits
        except Exception as exc:  # a tracker gone mid-sweep costs a warning, never the trial
            log.warning("tracking: MLflow at %s failed (%s: %s): this job trains without it", tracking.mlflow,
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            report_to = [name for name in report_to if name != "mlflow"]
    return {"report_to": report_to or "none", **({"run_name": tracking.run_name} if tracking.run_name else {})}


# ---------------------------------------------------------------- the study side


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
