"""One trial's whole life, top to bottom, as optuna's `_run_trial` reads:

    ask (under the study's claim) ─► heartbeat ─► trials/<n>/job.yaml ─► launch ─► follow
        (each evaluation reported, the pruner's verdict stops the job, a silent job is stopped)
        ─► outcome ─► tell, or fail and requeue (what ran the job died, or the sweep was interrupted)

`ask` takes a trial and samples its params; `run` is the rest, and `launch_and_follow` its middle:
it writes the job a trial runs, launches it, follows its events and turns what the job left behind
into the trial's value, or a pruned or failed trial with its reason. The study database is written
only here and in the sweep: the job never opens it. `start_job` runs a job on this machine
(launch.run_local) or with study.executor: ray as a Ray task on a node of the cluster
(cluster.run_on_ray); the rest of a trial's life is the same either way. The base-model
evaluation (`run_base_model`) is a launched job like a trial's.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from lora_sweep.launch import ray_tasks as cluster
from lora_sweep.launch import local as launch
from lora_sweep.config.job import JobConfig, ObjectiveSection
from lora_sweep.config.study import StudyConfig
from lora_sweep.config.files import dump_yaml, format_errors
from lora_sweep.sweep.records import upload_trial_artifacts
from lora_sweep.events import EvalEvent, Evaluation, JobFolder, JobResult, LauncherLost, best_eval, last_checkpoint
from lora_sweep.sweep.optuna_private import fixed_params, storage_of, trial_id
from lora_sweep.sweep.prior import holding
from lora_sweep.sweep.search import make_sampler, record_scores
from lora_sweep.config.space import Space, apply, suggest
from lora_sweep.job.tracking import absolute
from lora_sweep.sweep.storage import (
    OWNER_ATTR,
    RESUMES_ATTR,
    StudyFolder,
    fail_and_requeue,
    set_trial_attrs,
    this_worker,
)

log = logging.getLogger("lora_sweep.trial")

# A job that sends no event for this long is stopped, unless its evaluations have shown that
# they take longer: then three of its longest evaluation intervals (study.stall_timeout overrides).
STALL_FLOOR_S = 300.0
CPU_THREADS_ENV = "LORA_SWEEP_CPU_THREADS"


class TrialFailed(RuntimeError):
    """The job of a trial failed; the trial is recorded as FAIL and the sweep goes on."""


# ---------------------------------------------------------------- a trial's life


class Loop(Protocol):
    """What a trial asks of the sweep running it (sweep.Sweep)."""

    stop_reason: str | None  # the sweep is stopping: a trial not started yet fails at once
    interrupted: str | None  # the signal that stopped the sweep (its trials run again next time)

    def check_storage(self) -> bool: ...  # is the study's database gone (nothing can be recorded)?

    def best_text(self) -> str: ...  # the study's best, for the progress lines


def ask(config: StudyConfig, space: Space, study: optuna.Study) -> tuple[optuna.Trial, dict[str, Any]]:
    """Take a trial: called under the study's claim (every worker's count of trials is the same
    there), the sampler seeded for this draw, a new trial (or the next queued one), its owner and
    its params."""
    study.sampler = make_sampler(config, space, len(study.get_trials(deepcopy=False)))
    with warnings.catch_warnings():  # heartbeats are recorded by `heartbeat` below, as optimize does
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        trial = study.ask()
    trial.set_user_attr(OWNER_ATTR, this_worker())
    return trial, suggest(trial, holding(space, fixed_params(trial)))


def run(config: StudyConfig, space: Space, study: optuna.Study, trial: optuna.Trial, params: dict[str, Any],
        slot: list[int] | None, loop: Loop) -> tuple[FrozenTrial, str | None, bool] | None:
    """The rest of a taken trial's life: heartbeat, launch and follow its job, then tell the study
    how it ended, or fail it and queue its params again (what ran it was lost, or the sweep was
    interrupted). A failure is a result, not a crash. Returns the finished trial, its error and
    whether its launcher was lost (not the trial's failure); None when the storage is gone."""
    state, values, error = TrialState.COMPLETE, None, None
    requeue = None  # why the trial fails and its params run again
    with heartbeat(study, trial):
        try:
            if loop.stop_reason is not None:
                raise TrialFailed("the sweep was stopping before the trial started")
            values = launch_and_follow(config, space, study, trial, params, slot, loop.best_text)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except LauncherLost as exc:  # a lost node or warm runner, not the trial: its params run again
            state, error, requeue = TrialState.FAIL, str(exc), str(exc)
        except TrialFailed as exc:
            state, error = TrialState.FAIL, str(exc)
        except Exception as exc:  # a disk full, a storage error: this trial fails, the sweep goes on
            state, error = TrialState.FAIL, f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", error)
    if loop.check_storage():  # nowhere to record it
        return None
    lost = requeue is not None
    if loop.interrupted and state != TrialState.COMPLETE:
        # stopped by Ctrl+C / SIGTERM: failed, and its params queued for the next run
        requeue, lost = f"interrupted by {loop.interrupted}", False
    if requeue:
        fail_and_requeue(study, storage_of(study).get_trial(trial_id(trial)), requeue)
    else:
        study.tell(trial, values, state=state)
    return study.get_trials(deepcopy=False)[trial.number], error, lost


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat while its job runs (RDB storages that have them), so a killed
    sweep's trials are found stale by the next run."""
    storage = storage_of(study)
    interval = storage.get_heartbeat_interval() if isinstance(storage, RDBStorage) else None
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id(trial))
            except Exception:  # noqa: BLE001 (a storage gone mid-trial: the slot says so, once)
                return
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial.number}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def launch_and_follow(config: StudyConfig, space: Space, study: optuna.Study, trial: optuna.Trial,
                      params: dict[str, Any], slot: list[int] | None,
                      study_best: Callable[[], str]) -> float | tuple[float, float]:
    """Write the job of `trial` (its `params` already sampled), launch it, follow its events and
    turn what it left into the trial's value; raises optuna.TrialPruned or TrialFailed with the
    reason, recorded on the trial."""
    objective = config.objective
    folder = StudyFolder(config.folder.resolve()).trial(trial.number)
    shutil.rmtree(folder, ignore_errors=True)  # a number reused after a database was deleted
    folder.mkdir(parents=True)
    trial.set_user_attr("trial_dir", str(folder))
    job = job_config(config, space, params, folder)
    checkpoint = resume_point(config, trial)
    if checkpoint is not None:  # a re-run of a killed trial goes on from its last checkpoint
        job.training = job.training.model_copy(update={"resume_from_checkpoint": str(checkpoint)})
        log.info("trial %d resumes trial %d from %s", trial.number, trial.user_attrs[RESUMES_ATTR]["trial"],
                 checkpoint.name)
    dump_yaml(job, JobFolder(folder).job_yaml)

    progress = Progress(objective.key, objective.direction)
    steps = StepLine(trial.number)

    def evaluated(evaluation: EvalEvent) -> bool:
        """Report an evaluation to the trial (the pruner sees objective.prune_on's value); True: prune."""
        steps.clear()
        progress.evals.append(evaluation)
        progress.eval_times.append(time.monotonic())
        value = evaluation.value(objective.key)
        if value is not None:  # the generation metric is not scored at every evaluation
            log.info("trial %d  step %d/%s  %s %.4f  (trial best %.4f; study best %s)", trial.number,
                     evaluation.step, progress.max_steps, objective.metric, value,
                     progress.best().value(objective.key), study_best())
        else:
            log.info("trial %d  step %d/%s  eval_loss %.4f", trial.number, evaluation.step, progress.max_steps,
                     evaluation.eval_loss)
        if objective.also:  # optuna prunes single-objective studies only
            return False
        if evaluation.scores is not None and config.study.pruner.type == "wilcoxon":
            record_scores(study, trial, evaluation.step, evaluation.scores)
        if any(e.step == evaluation.step for e in progress.evals[:-1]):
            return False  # an evaluation scored late (a run stopped early): the run is over, nothing to prune
        pruned_on = pruner_value(objective, evaluation)
        if pruned_on is None:
            return False
        trial.report(pruned_on, evaluation.step)
        # a job at its last evaluation has spent its steps: pruning it saves nothing
        return evaluation.step < progress.max_steps and trial.should_prune()

    uploader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"upload-{trial.number}")
    upload: concurrent.futures.Future | None = None

    def on_event(event: dict[str, Any]) -> bool:
        """Follow the job: its size, its training steps, each evaluation; True stops it (pruned)."""
        nonlocal upload
        progress.seen_event = True
        if event["event"] == "start":
            progress.max_steps = event["max_steps"]
        elif event["event"] == "train":
            steps.update(event["step"], progress.max_steps, event.get("loss"), event.get("time"))
        elif event["event"] == "resume":  # the killed trial's evaluations, kept once in this curve
            return any([evaluated(EvalEvent.of(e)) for e in event.get("evals", [])])
        elif event["event"] == "eval":
            return evaluated(EvalEvent.of(event))
        elif event["event"] == "done" and upload is None:  # adapter and predictions are final: upload
            upload = uploader.submit(upload_trial_artifacts, study, trial, config)  # while the job exits
        return False

    began = time.time()
    run = start_job(config, folder, slot, on_event, timeout=config.study.trial_timeout,
                    silence_limit=lambda: progress.stall_limit(config.study.stall_timeout),
                    placed=lambda node: trial.set_user_attr("node", node))
    steps.clear()
    # what the run gave, in one database write, then the artifacts (trial system attrs, which the
    # storage refuses once the trial is finished)
    attrs = {"eval_curve": progress.curve,
             "steps_run": max((e["step"] for e in run.events if e["event"] == "train"), default=0),
             "wall_time_s": round(time.time() - began, 2)}
    if run.skipped_lines:
        attrs["skipped_event_lines"] = run.skipped_lines
    try:
        return outcome(config, trial, run, folder, progress, attrs)
    finally:
        set_trial_attrs(study, trial_id(trial), attrs)
        with uploader:  # before the trial is finished: artifacts are trial system attrs
            (upload or uploader.submit(upload_trial_artifacts, study, trial, config)).result()


def outcome(config: StudyConfig, trial: optuna.Trial, run: launch.JobRun, folder: Path,
            progress: Progress, attrs: dict[str, Any]) -> float | tuple[float, float]:
    """The trial's value, or TrialPruned / TrialFailed with what the job left behind; what to
    record on the trial goes into `attrs`."""
    if run.lost:  # not the job's doing: the sweep queues its params again
        attrs.update(error=run.lost, log_tail=run.log_tail, stop_reason="error")
        raise LauncherLost(run.lost)
    if run.stopped:
        attrs["stop_reason"] = "pruned"
        raise optuna.TrialPruned(f"pruned at step {progress.evals[-1].step}")
    errors = [e.get("message", "") for e in run.events if e["event"] == "error"]
    files = JobFolder(folder)
    if run.timed_out or run.stalled or run.returncode != 0 or errors or not files.result.is_file():
        if run.timed_out:
            message = f"timed out after {config.study.trial_timeout} s (study.trial_timeout)"
        elif run.stalled:
            message = (f"the job sent no event for {run.stalled:.0f} s: stopped as hung "
                       f"(study.stall_timeout; a scorer or data loader that never returns?)")
        elif errors:
            message = errors[-1]
        else:
            message = f"job {signal_text(run.returncode, run.log_tail)}"
        attrs.update(error=message, log_tail=run.log_tail, stop_reason="error")
        raise TrialFailed(f"trial {trial.number}: {message} (log: {files.log})")
    result = JobResult.read(files.result)
    attrs.update(result.trial_attrs())
    if JobFolder(folder).predictions.is_file():
        attrs["predictions_path"] = str(JobFolder(folder).predictions)
    # the best evaluation, not the last; none seen (their event lines were unreadable): the job's own
    # account of its best
    value = config.objective.value(progress.best() or result)
    if config.objective.also == "eval_loss":
        return value, result.best_eval_loss
    if config.objective.also == "wall_time":
        return value, result.wall_time_s
    return value


# ---------------------------------------------------------------- what a trial runs


def job_config(config: StudyConfig, space: Space, params: dict[str, Any], folder: Path) -> JobConfig:
    """The job a trial runs: the study's job groups with the params applied, paths made absolute
    (the job runs in its own folder) and the study's tokenized-data cache."""
    tree = apply(config.job_tree(), space, params)
    tree["output_dir"] = str(folder)
    tree["data"]["cache_dir"] = str(StudyFolder(config.folder.resolve()).cache)
    for side in ("train_file", "test_file", "validation_file"):
        if tree["data"][side] is not None:
            tree["data"][side] = str(Path(tree["data"][side]).resolve())
    # the job runs in its folder: a relative tracker path would make one store per trial
    tree["tracking"] = absolute({**tree["tracking"], "run_name": f"trial-{folder.name}", "group": config.study.name})
    tree["data"]["dataset"] = None
    if Path(tree["model"]["name_or_path"]).is_dir():
        tree["model"]["name_or_path"] = str(Path(tree["model"]["name_or_path"]).resolve())
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise TrialFailed("; ".join(format_errors(exc))) from None


def slot_launch(config: StudyConfig, slot: list[int] | None) -> tuple[list[str], dict[str, str]]:
    """Launcher flags and environment of a job on `slot` (its GPU ids, or None for the CPU)."""
    # a CPU trial's threads: its share of the cores, or $LORA_SWEEP_CPU_THREADS (several sweeps at once)
    threads = int(os.environ.get(CPU_THREADS_ENV) or 0) or max(1, (os.cpu_count() or 1) // config.study.parallel)
    flags = config.study.launcher_args or launch.launcher_args(
        slot, cpu_threads=threads,
        port=launch.free_port())  # DDP trials sharing a node (or a GPU group) each need their own
    env = {}
    if slot:
        env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, slot))}
    elif config.study.devices == "cpu":
        env = {"CUDA_VISIBLE_DEVICES": ""}  # keep the jobs off GPUs that are there
    return flags, env


def start_job(config: StudyConfig, folder: Path, slot: list[int] | None, on_event: Callable[[dict[str, Any]], bool],
              *, module: str = "lora_sweep.job.train", timeout: float | None = None,
              silence_limit: Callable[[], float] | None = None,
              placed: Callable[[dict[str, Any]], None] | None = None) -> launch.JobRun:
    """Run the job of `folder` (its job.yaml written) to its end: here on `slot`, or with
    study.executor: ray as a Ray task on the node Ray picks (`placed` hears which)."""
    if config.study.executor == "ray":
        return cluster.run_on_ray(config, folder, on_event, module=module, timeout=timeout,
                               silence_limit=silence_limit, placed=placed)
    flags, env = slot_launch(config, slot)
    return launch.run_local(JobFolder(folder).job_yaml, folder, flags, on_event, env=env, timeout=timeout,
                          stop_grace=config.study.stop_grace, module=module, silence_limit=silence_limit,
                          launcher=config.study.launcher)


# ---------------------------------------------------------------- following the job


@dataclass
class Progress:
    """What the parent learns from a trial's events while its job runs."""

    key: str  # the eval event field holding the objective
    direction: str
    max_steps: float = math.inf
    evals: list[EvalEvent] = field(default_factory=list)
    eval_times: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    seen_event: bool = False

    @property
    def curve(self) -> list[list[float]]:
        """[step, value] of every evaluation that scored the objective."""
        return [[e.step, e.value(self.key)] for e in self.evals if e.value(self.key) is not None]

    def best(self) -> EvalEvent | None:
        """The best evaluation so far, ties broken by eval loss."""
        found = best_eval([vars(e) for e in self.evals], self.key, self.direction)
        return EvalEvent.of(found) if found else None

    def stall_limit(self, configured: float | None) -> float:
        """Seconds of silence after which the job counts as hung. Before its first event (imports,
        tokenizing, loading a large model) at least STALL_FLOOR_S."""
        if not self.seen_event:
            return max(configured or 0.0, STALL_FLOOR_S)
        if configured:
            return configured
        marks = [self.started, *self.eval_times]
        longest = max((b - a for a, b in zip(marks, marks[1:])), default=0.0)
        return max(STALL_FLOOR_S, 3 * longest)


def signal_text(returncode: int, log_tail: str = "") -> str:
    """How a job ended: `exited with code 1`, `was killed by SIGKILL`, or `exited with code 1
    (killed by SIGKILL)` when the launcher reports in its log that its process died of a signal."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    killed = re.findall(r"died with <Signals\.(SIG\w+)", log_tail)  # accelerate's CalledProcessError
    if killed:
        return f"exited with code {returncode} (killed by {killed[-1]})"
    if returncode > 128 and returncode - 128 in signal.Signals._value2member_map_:
        # a shell reports a child killed by a signal as 128 + its number
        return f"exited with code {returncode} (killed by {signal.Signals(returncode - 128).name})"
    return f"exited with code {returncode}"


def pruner_value(objective: ObjectiveSection, evaluation: EvalEvent) -> float | None:
    """What an evaluation reports to the pruner: the metric, or under objective.prune_on: eval_loss
    the loss, negated when the study maximizes (the pruner compares in the study's direction)."""
    value = evaluation.value(objective.prunes_on)
    return None if value is None else objective.pruner_sign * value


def resume_point(config: StudyConfig, trial: optuna.Trial) -> Path | None:
    """The last checkpoint of the killed trial this one re-runs (its `resumes` attr), if it left one
    this machine sees. (A Ray trial whose folder came back without a shared study.dir starts over:
    its checkpoint is on the node that ran it.)"""
    resumes = trial.user_attrs.get(RESUMES_ATTR)
    if not resumes or (config.study.executor == "ray" and config.study.ray.shared_dir is not True):
        return None
    return last_checkpoint(resumes["dir"])


class StepLine:
    """A trial's training steps between evaluations: on a terminal one line updated in place (step,
    loss, steps/s, ETA); otherwise a plain log line at every tenth of the run."""

    def __init__(self, number: int, stream: TextIO | None = None):
        self.number = number
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.first: tuple[int, float] | None = None  # (step, time) of the first step seen
        self.shown = False  # an in-place line is on the terminal
        self.tenth = -1  # the last tenth of the run a plain line was written for

    def update(self, step: int, max_steps: float, loss: float | None, at: float | None = None) -> None:
        """`at`: when the job took the step (its event's time; the sweep reads events in batches)."""
        now = at if at is not None else time.time()
        if self.first is None:
            self.first = (step, now)
        done, spent = step - self.first[0], now - self.first[1]
        rate = done / spent if done and spent > 0 else None
        text = f"trial {self.number}  step {step}/{max_steps}"
        text += f"  loss {loss:.4f}" if loss is not None else ""
        if rate:
            text += f"  {rate:.2f} steps/s  ETA {(max_steps - step) / rate:.0f} s"
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self.shown = True
        elif math.isfinite(max_steps) and int(10 * step / max_steps) > self.tenth:
            self.tenth = int(10 * step / max_steps)
            log.info(text)

    def clear(self) -> None:
        """Wipe the in-place line before a log line is written."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


# ---------------------------------------------------------------- the base model


def run_base_model(config: StudyConfig, space: Space, slot: list[int] | None) -> dict[str, Any]:
    """Evaluate the untuned base model once per study, in a launched job like a trial's (a Ray task
    like a trial's with study.executor: ray)."""
    folder = StudyFolder(config.folder.resolve()).baseline
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = JobFolder(folder)
    dump_yaml(job_config(config, space, {}, folder), files.job_yaml)
    log.info("evaluating the base model (once per study)")
    run = start_job(config, folder, slot, lambda event: False, module="lora_sweep.job.evaluate")
    if run.lost:
        raise LauncherLost(f"the base-model evaluation stopped: {run.lost}")
    figures = files.evaluation()[0]
    if run.returncode != 0 or not figures.is_file():
        raise TrialFailed(f"the base-model evaluation {signal_text(run.returncode, run.log_tail)}; see {files.log}")
    return Evaluation.read(figures).record()
