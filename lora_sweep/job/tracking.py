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
import os
import re
from pathlib import Path
from typing import Any


from lora_sweep.events import JobFolder
from lora_sweep.config.job import TrackingSection

log = logging.getLogger("lora_sweep.tracking")



# ---------------------------------------------------------------- before the sweep






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
    job = JobFolder(trial_dir).job_yaml
    stamp = job.stat().st_mtime_ns if job.is_file() else 0
    digest = hashlib.sha1(f"{trial_dir.resolve()}:{stamp}".encode()).hexdigest()[:10]
    return re.sub(r"[^\w.-]", "_", f"{group}-{run_name}")[:50] + f"-{digest}"  # W&B ids: at most 64 characters




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












