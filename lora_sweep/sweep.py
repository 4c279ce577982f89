"""The sweep: an Optuna study whose trials are launched fine-tuning jobs.

    python -m lora_sweep run study.yaml [key.sub=value ...]     # start or resume
    python -m lora_sweep worker study.yaml                      # join from another process or machine

The parent owns the study database; a job never opens it. Each trial writes its resolved
job config to `<study.dir>/<name>/trials/<number>/job.yaml`, is launched through
`accelerate launch`, and is followed through its events: every evaluation is reported to
the trial, and the pruner's verdict stops the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import filelock
import optuna
import sqlalchemy
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from lora_sweep import launch
from lora_sweep.dashboard import upload_trial_artifacts, write_study_note
from lora_sweep import space as S
from lora_sweep.config import (
    ConfigError,
    JobConfig,
    ObjectiveSection,
    StudyConfig,
    StudySection,
    dump_yaml,
    format_errors,
    load_study,
    storage_file,
)

log = logging.getLogger("lora_sweep.sweep")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialFailed(RuntimeError):
    """The job of a trial failed; the trial is recorded as FAIL and the sweep goes on."""


# ---------------------------------------------------------------- optuna pieces from the config


def make_storage(url: str, study: StudySection | None = None) -> optuna.storages.BaseStorage:
    """The storage at `url`. With the study's settings (a sweep), it is created if missing and
    RDB storages get heartbeats, so a killed sweep's trials are re-run; without (the commands
    that read a study), a missing database file is an error, not a new empty one."""
    file = storage_file(url)
    journal = file is not None and (file[0] == "journal://" or (file[0] == "" and url.endswith(".log")))
    path = Path(file[1]) if file is not None and (journal or file[0] == "sqlite:///") else None
    if path is not None:
        if study is None and not path.is_file():
            raise ConfigError([f"no study database at {path}: run the sweep first"])
        path.parent.mkdir(parents=True, exist_ok=True)
    if journal:
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        # parallel trials write from several threads: wait for the lock instead of failing
        engine_kwargs = {"connect_args": {"timeout": 60}}
    if study is None:
        return RDBStorage(url, engine_kwargs=engine_kwargs)
    # A trial whose heartbeat stops (its sweep was killed) is failed and its params run again;
    # optuna 4.9 renamed the callback argument.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters:
            retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=study.heartbeat_interval,
            grace_period=study.grace_period or 2 * study.heartbeat_interval,
            **retry,
        )


class StudyClaim:
    """The lock under which a worker counts the study's trials and creates the next one, so
    that parallel slots and workers on other processes or machines never both take the last
    trial of the budget. Threads of one worker share a threading lock; across processes it is
    a lock file beside a SQLite or journal file, or a session advisory lock on a PostgreSQL or
    MySQL server (freed by the server when a killed worker's connection drops)."""

    def __init__(self, url: str, study_name: str) -> None:
        self.threads = threading.Lock()
        self.file: filelock.FileLock | None = None
        self.engine: Any = None
        self.connection: Any = None
        file = storage_file(url)
        if file is not None:
            Path(file[1]).parent.mkdir(parents=True, exist_ok=True)
            self.file = filelock.FileLock(f"{file[1]}.claim.lock", thread_local=False)
            return
        digest = hashlib.sha256(f"lora_sweep claim {study_name}".encode()).digest()
        # the statement that waits for the server's lock of this study, with its parameters
        self.lock_statement = {
            "postgresql": ("SELECT pg_advisory_lock(:key)", {"key": int.from_bytes(digest[:8], "big", signed=True)}),
            # a name of up to 64 characters; a negative timeout waits for ever
            "mysql": ("SELECT GET_LOCK(:name, -1)", {"name": f"lora_sweep-{digest.hex()[:40]}"}),
        }.get(url.split("://", 1)[0].split("+", 1)[0])
        if self.lock_statement is not None:
            self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    def acquire(self) -> None:
        self.threads.acquire()
        try:
            if self.file is not None:
                self.file.acquire()
            elif self.engine is not None:
                self.connection = self.engine.connect()
                sql, params = self.lock_statement
                self.connection.execute(sqlalchemy.text(sql), params)
        except BaseException:
            self.threads.release()
            raise

    def release(self) -> None:
        try:
            if self.file is not None:
                self.file.release()
            elif self.connection is not None:
                self.connection.close()  # a session lock ends with its session (NullPool: really closed)
                self.connection = None
        finally:
            self.threads.release()

    def __enter__(self) -> StudyClaim:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def load_existing(url: str, name: str | None) -> optuna.Study:
    """A study a sweep made, for reading; the name may be left out when the storage holds one."""
    storage = make_storage(url)
    names = optuna.get_all_study_names(storage)
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        which = f"study {name!r} is" if name else "a study name is needed: it"
        raise ConfigError([f"{which} not in {url} (it holds: {', '.join(names) or 'none'})"])
    return optuna.load_study(study_name=name, storage=storage)


def make_sampler(config: StudyConfig, space: S.Space) -> optuna.samplers.BaseSampler:
    """The study's sampler; a ConfigError names a bad option."""
    s = config.study.sampler
    with optuna_options("sampler", s.type):
        if s.type == "tpe":
            return optuna.samplers.TPESampler(seed=s.seed, **s.options)
        if s.type == "grid":
            grid = {}
            for name, dist in space.distributions.items():
                if isinstance(dist, optuna.distributions.CategoricalDistribution):
                    grid[name] = list(dist.choices)
                elif dist.step is not None:
                    n = int(round((dist.high - dist.low) / dist.step))
                    grid[name] = [dist.low + i * dist.step for i in range(n + 1)]
                else:
                    raise ConfigError([f"search_space.{name}: the grid sampler needs a step or categorical choices"])
            return optuna.samplers.GridSampler(grid, seed=s.seed, **s.options)
        cls = {"random": optuna.samplers.RandomSampler, "cmaes": optuna.samplers.CmaEsSampler,
               "gp": optuna.samplers.GPSampler, "qmc": optuna.samplers.QMCSampler}[s.type]
        return cls(seed=s.seed, **s.options)


PRUNERS = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "percentile": optuna.pruners.PercentilePruner, "threshold": optuna.pruners.ThresholdPruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner}


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The study's pruner; a ConfigError names a bad option."""
    p = config.study.pruner
    with optuna_options("pruner", p.type):
        return PRUNERS[p.type](**p.options)


@contextlib.contextmanager
def optuna_options(section: str, kind: str) -> Iterator[None]:
    """Turn optuna's complaint about study.<section>.options into a ConfigError."""
    try:
        yield
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError([f"study.{section}.options: optuna's {kind} {section} refused them: {exc}"]) from None


def device_groups(config: StudyConfig) -> list[list[int] | None]:
    """One entry per trial slot: the GPU ids it uses, or None for a CPU slot."""
    s = config.study
    if s.devices == "cpu":
        return [None] * s.parallel
    if s.devices == "auto":
        import torch

        gpus = list(range(torch.cuda.device_count()))
    else:
        gpus = list(s.devices)
    if not gpus:
        return [None] * s.parallel
    groups = [gpus[i : i + s.gpus_per_trial] for i in range(0, len(gpus), s.gpus_per_trial)]
    groups = [g for g in groups if len(g) == s.gpus_per_trial]
    if not groups:
        raise ConfigError([f"study.gpus_per_trial ({s.gpus_per_trial}) is more than the GPUs there are ({gpus})"])
    if s.parallel > len(groups):
        log.warning("study.parallel is %d but the GPUs make %d groups of %d: running %d at once",
                    s.parallel, len(groups), s.gpus_per_trial, len(groups))
    return groups[: s.parallel]


# ---------------------------------------------------------------- one trial


def job_config(config: StudyConfig, space: S.Space, params: dict[str, Any], folder: Path) -> JobConfig:
    """The job a trial runs: the study's job groups with the params applied, paths made absolute
    (the job runs in its own folder) and the study's tokenized-data cache."""
    tree = S.apply(config.job_tree(), space, params)
    tree["output_dir"] = str(folder)
    tree["data"]["cache_dir"] = str(config.folder.resolve() / "cache")
    for side in ("train_file", "test_file"):
        tree["data"][side] = str(Path(tree["data"][side]).resolve())
    tree["data"]["dataset"] = None
    if Path(tree["model"]["name_or_path"]).is_dir():
        tree["model"]["name_or_path"] = str(Path(tree["model"]["name_or_path"]).resolve())
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise TrialFailed("; ".join(format_errors(exc))) from None


def slot_launch(config: StudyConfig, slot: list[int] | None) -> tuple[list[str], dict[str, str]]:
    """Launcher flags and environment of a job on `slot` (its GPU ids, or None for the CPU)."""
    flags = config.study.launcher_args or launch.launcher_args(
        slot, cpu_threads=max(1, (os.cpu_count() or 1) // config.study.parallel),
        port=29500 + (slot[0] if slot else 0))
    env = {}
    if slot:
        env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, slot))}
    elif config.study.devices == "cpu":
        env = {"CUDA_VISIBLE_DEVICES": ""}  # keep the jobs off GPUs that are there
    return flags, env


@dataclass
class Sweep:
    config: StudyConfig
    space: S.Space
    study: optuna.Study
    failures_in_a_row: int = 0
    stop_reason: str | None = None
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)

    def __post_init__(self) -> None:
        self.claim = StudyClaim(self.config.storage_url, self.config.study.name)

    @property
    def folder(self) -> Path:
        return self.config.folder.resolve()

    def objective(self, trial: optuna.Trial) -> float:
        params = S.suggest(trial, self.space)
        folder = self.folder / "trials" / str(trial.number)
        shutil.rmtree(folder, ignore_errors=True)  # a number reused after a database was deleted
        folder.mkdir(parents=True)
        trial.set_user_attr("trial_dir", str(folder))
        try:
            job = job_config(self.config, self.space, params, folder)
        except TrialFailed as exc:
            trial.set_user_attr("error", str(exc))
            raise
        dump_yaml(job, folder / "job.yaml")

        objective = self.config.objective
        curve: list[list[float]] = []
        state: dict[str, int] = {}

        def on_event(event: dict[str, Any]) -> bool:
            if event["event"] == "start":
                state["max_steps"] = event["max_steps"]
            elif event["event"] == "eval" and event.get(objective.key) is not None:
                value = event[objective.key]
                curve.append([event["step"], value])
                log.info("trial %d  step %d/%s  %s %.4f  (trial best %.4f; study best %s)", trial.number,
                         event["step"], state.get("max_steps", "?"), objective.metric, value,
                         best_of(objective, curve), self.best_text())
                if not objective.also:  # optuna prunes single-objective studies only
                    trial.report(value, event["step"])
                    # a job at its last evaluation has spent its steps: pruning it saves nothing
                    return event["step"] < state.get("max_steps", math.inf) and trial.should_prune()
            return False

        flags, env = slot_launch(self.config, self.local.slot)
        began = time.time()
        run = launch.run_job(folder / "job.yaml", folder, flags, on_event, env=env,
                             timeout=self.config.study.trial_timeout, stop_grace=self.config.study.stop_grace)
        # artifacts are trial system attrs, which the storage refuses once the trial is finished
        upload_trial_artifacts(self.study, trial, self.config)
        trial.set_user_attr("eval_curve", curve)
        # every step the job logged, also those after the pruner's verdict and before it stopped
        trial.set_user_attr("steps_run", max((e["step"] for e in run.events if e["event"] == "train"), default=0))
        trial.set_user_attr("wall_time_s", round(time.time() - began, 2))
        return self.outcome(trial, run, folder, curve)

    def outcome(self, trial: optuna.Trial, run: launch.JobRun, folder: Path,
                curve: list[list[float]]) -> float | tuple[float, float]:
        """The trial's value, or TrialPruned / TrialFailed with what the job left behind."""
        if run.stopped:
            trial.set_user_attr("stop_reason", "pruned")
            raise optuna.TrialPruned(f"pruned at step {curve[-1][0]}")
        errors = [e["message"] for e in run.events if e["event"] == "error"]
        if run.timed_out or run.returncode != 0 or errors or not (folder / "result.json").is_file():
            if run.timed_out:
                message = f"timed out after {self.config.study.trial_timeout} s"
            elif errors:
                message = errors[-1]
            else:
                message = f"job exited with code {run.returncode}"
            trial.set_user_attr("error", message)
            trial.set_user_attr("log_tail", run.log_tail)
            trial.set_user_attr("stop_reason", "error")
            raise TrialFailed(f"trial {trial.number}: {message} (log: {folder / 'train.log'})")
        result = json.loads((folder / "result.json").read_text())
        for key in ("adapter_path", "best_step", "best_eval_loss", "best_score", "steps_run", "stop_reason",
                    "train_tokens_per_s", "peak_memory_mb", "wall_time_s"):
            if result[key] is not None:  # a loss objective has no score
                trial.set_user_attr(f"job_{key}" if key == "wall_time_s" else key, result[key])
        if (folder / "predictions.jsonl").is_file():
            trial.set_user_attr("predictions_path", str(folder / "predictions.jsonl"))
        best = best_of(self.config.objective, curve)  # the best evaluation, not the last
        if self.config.objective.also == "eval_loss":
            return best, result["best_eval_loss"]
        if self.config.objective.also == "wall_time":
            return best, result["wall_time_s"]
        return best

    # ---------------------------------------------------------------- the trial loop

    def work(self, slot: list[int] | None, deadline: float | None) -> None:
        """One slot's loop (`slot`: its GPU ids, None on the CPU): start a trial while the study
        needs one, until the sweep stops.

        A trial starts only while the finished and running trials (of every worker) are fewer
        than n_trials, so parallel trials and workers do not overshoot and failed trials are
        made up. The count and the trial's creation happen under one StudyClaim (released by
        `claimed` once the trial is RUNNING), so two slots or workers never both take the last
        trial."""
        self.local.slot = slot
        try:
            while self.stop_reason is None and (deadline is None or time.monotonic() < deadline):
                self.claim.acquire()
                self.local.holds = True
                try:
                    if not self.wants_trial():
                        return
                    self.study.optimize(self.claimed, n_trials=1, catch=(TrialFailed,),
                                        callbacks=[self.after_trial])
                finally:
                    if self.local.holds:
                        self.local.holds = False
                        self.claim.release()
        except BaseException as exc:  # re-raised by run_sweep in the main thread
            self.error = exc
            self.stop_reason = self.stop_reason or f"stopped by an error: {exc!r}"

    def wants_trial(self) -> bool:
        active = self.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        sampler = self.study.sampler
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(self.study):
            return False
        return len(active) < self.config.study.n_trials

    def claimed(self, trial: optuna.Trial) -> float | tuple[float, float]:
        """The objective, releasing the claim first: the trial exists, the others count it."""
        self.local.holds = False
        self.claim.release()
        return self.objective(trial)

    # ---------------------------------------------------------------- progress and stopping

    def best_text(self) -> str:
        if self.config.objective.also:
            return f"{len(self.study.best_trials)} trials on the Pareto front"
        try:
            best = self.study.best_trial
        except ValueError:
            return "none yet"
        return f"{best.value:.4f} (trial {best.number})"

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """One line per finished trial; stop after max_failures failures in a row."""
        with self.lock:
            if trial.state == TrialState.FAIL:
                self.failures_in_a_row += 1
            else:
                self.failures_in_a_row = 0
            counts = Counter(t.state for t in study.get_trials(deepcopy=False))
            value = ("/".join(f"{v:.4f}" for v in trial.values) if trial.values
                     else trial.user_attrs.get("error", "-"))
            log.info("trial %d %s  %s  [%d complete, %d pruned, %d failed; best %s]", trial.number,
                     trial.state.name, value, counts[TrialState.COMPLETE], counts[TrialState.PRUNED],
                     counts[TrialState.FAIL], self.best_text())
            if self.failures_in_a_row >= self.config.study.max_failures:
                self.stop_reason = (f"{self.failures_in_a_row} trials failed in a row (study.max_failures): "
                                    f"stopping; see the trials' error and log_tail user attrs")
                study.stop()


def best_of(objective: ObjectiveSection, curve: list[list[float]]) -> float:
    values = [v for _, v in curve]
    return max(values) if objective.direction == "maximize" else min(values)


# ---------------------------------------------------------------- the sweep


def run_baseline(config: StudyConfig, space: S.Space, slot: list[int] | None) -> dict[str, Any]:
    """Evaluate the untuned base model once, in a launched job like a trial's."""
    folder = config.folder.resolve() / "baseline"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    dump_yaml(job_config(config, space, {}, folder), folder / "job.yaml")
    flags, env = slot_launch(config, slot)
    log.info("evaluating the base model (once per study)")
    run = launch.run_job(folder / "job.yaml", folder, flags, lambda event: False, env=env,
                         module="lora_sweep.evaluate", stop_grace=config.study.stop_grace)
    if run.returncode != 0 or not (folder / "baseline.json").is_file():
        raise TrialFailed(f"the base-model evaluation failed (code {run.returncode}); see {folder / 'train.log'}")
    return json.loads((folder / "baseline.json").read_text())


def prepare_data(config: StudyConfig) -> None:
    """Check the data and tokenize it once into the study's cache, before any trial starts."""
    from lora_sweep import data as D
    from lora_sweep.evaluate import check_scorer
    from lora_sweep.models import resolve_model
    from lora_sweep.models import load_tokenizer

    samples = D.load_samples(config.data)
    check_scorer(config.objective, samples[1])
    data = config.data.model_copy(update={"cache_dir": str(config.folder.resolve() / "cache")})
    tokenizer = load_tokenizer(resolve_model(config.model.name_or_path), config.model.trust_remote_code)
    tokenized = D.prepare(data, config.training.seed, tokenizer, samples)
    log.info("data: %d train rows, %d test rows of up to %d / %d tokens", len(tokenized.train),
             len(tokenized.test), config.data.train_seqlen, config.data.test_seqlen)


def open_study(config: StudyConfig, space: S.Space, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """The study, created with its defaults trial when missing. Under the study's claim: workers
    started together against a new database create its tables and the study once."""
    name = config.study.name
    with StudyClaim(config.storage_url, name):
        storage = make_storage(config.storage_url, config.study)
        exists = name in optuna.get_all_study_names(storage)
        study = optuna.create_study(storage=storage, study_name=name, directions=config.objective.directions,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
        if not exists:
            setup_study(config, space, study)
    return study


def setup_study(config: StudyConfig, space: S.Space, study: optuna.Study) -> None:
    """A new study's attrs, and the documented defaults as its first trial."""
    study.set_user_attr("config", config.model_dump(mode="json"))
    study.set_user_attr("metric", config.objective.metric)
    study.set_user_attr("space", S.describe(space))
    if config.study.enqueue_defaults:
        params, notes = S.default_params(config, space)
        study.enqueue_trial(params, user_attrs={"baseline": "documented defaults"})
        study.set_user_attr("defaults_notes", notes)
        for note in notes:
            log.info("defaults trial: %s", note)


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_sweep(config: StudyConfig, join_only: bool = False) -> tuple[optuna.Study, str | None]:
    """Run trials until study.n_trials have finished (completed or pruned).

    Returns the study and, when the sweep gave up early, why."""
    deadline = time.monotonic() + config.study.timeout if config.study.timeout else None
    space = S.build_space(config)
    sampler, pruner = make_sampler(config, space), make_pruner(config)  # bad options: refused before any write
    if join_only:
        load_existing(config.storage_url, config.study.name)  # a worker joins; it never starts a study
    prepare_data(config)
    study = open_study(config, space, sampler, pruner)
    sweep = Sweep(config, space, study)
    slots = device_groups(config)
    if config.objective.baseline and "baseline" not in study.user_attrs:
        try:
            study.set_user_attr("baseline", run_baseline(config, space, slots[0]))
        except TrialFailed as exc:
            log.warning("%s; the sweep goes on without a baseline", exc)
    write_study_note(study, config)  # the dashboard's note: objective, space, baseline, config
    if "baseline" in study.user_attrs:
        base = study.user_attrs["baseline"]
        log.info("base model: eval_loss %.4f%s", base["eval_loss"],
                 f", {base['metric']} {base['score']:.4f}" if "score" in base else "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a killed sweep's trials: failed, their params re-queued
    log.info("study %s in %s: %d of %d trials finished", config.study.name, config.storage_url,
             finished(study), config.study.n_trials)
    workers = [threading.Thread(target=sweep.work, args=(slot, deadline), name=f"slot-{i}")
               for i, slot in enumerate(slots)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        sweep.stop_reason = "interrupted: the running trials were stopped and recorded as failed"
        launch.stop_all(config.study.stop_grace)
        for worker in workers:
            worker.join()
    if sweep.error is not None:
        raise sweep.error
    return study, sweep.stop_reason


def summary(config: StudyConfig, study: optuna.Study, config_path: str) -> str:
    """What the sweep reached, and where to look next."""
    metric = config.objective.metric
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    lines = [f"study {config.study.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    winners = study.best_trials if config.objective.also else (
        [study.best_trial] if any(t.state == TrialState.COMPLETE for t in trials) else [])
    if not winners:
        return "\n".join(lines + ["no trial completed"])
    base = study.user_attrs.get("baseline", {})
    base_value = base.get(config.objective.key)
    if base_value is not None:
        lines.append(f"base model: {metric} {base_value:.4f}")
    defaults = [t for t in trials if t.user_attrs.get("baseline") == "documented defaults" and t.values]
    if defaults:
        lines.append(f"documented defaults (trial {defaults[0].number}): {metric} {defaults[0].values[0]:.4f}")
    for best in winners:
        lines += [
            f"best: trial {best.number}, {metric} {best.values[0]:.4f}"
            + (f", {config.objective.also} {best.values[1]:.4f}" if config.objective.also else ""),
            f"  params: {json.dumps(best.params)}",
            f"  adapter: {best.user_attrs.get('adapter_path')}",
        ]
    lines += [
        f"dashboard: python -m lora_sweep dashboard {config_path}",
        f"report:    python -m lora_sweep report {config_path}",
    ]
    return "\n".join(lines)


def main(config_path: str, overrides: list[str], join_only: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our lines say what its INFO lines say
    config = load_study(config_path, overrides)
    study, stopped = run_sweep(config, join_only)
    print(summary(config, study, config_path))
    if stopped:
        print(f"error: {stopped}", file=sys.stderr)
        return 1
    return 0
