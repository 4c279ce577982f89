"""The sweep: an Optuna study whose trials are launched fine-tuning jobs.

    python -m lora_sweep run study.yaml [key.sub=value ...]     # start or resume
    python -m lora_sweep worker study.yaml                      # join from another process or machine

This module is the loop: study set-up (storage, sampler, pruner, the defaults trial, the
base-model evaluation), one thread per trial slot that takes trials in optuna's own shape
(claim, ask, release, run, tell), stopping (max_failures, timeout, Ctrl+C and SIGTERM) and the
summary. A trial's own life, from params to result, is in trial.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from lora_sweep.launch import ray_tasks as cluster
from lora_sweep.launch import local as launch
from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudyConfig, load_study
from lora_sweep.config.places import creation_problem, storage_file, storage_problem
from lora_sweep.sweep.records import write_study_note
from lora_sweep.events import Evaluation, LauncherLost
from lora_sweep.sweep.records import BASE_ERROR_ATTR, DEFAULTS, honest_lines, is_defaults
from lora_sweep.sweep.holdout import honest_scores
from lora_sweep.sweep.prior import INFORMED_ATTR, Prior, apply_prior, informed_params
from lora_sweep.config.space import Space, build_space, default_params, describe, fit_to_run, record
from lora_sweep.sweep.storage import (
    BASE_ATTR,
    DEFAULTS_ATTR,
    OWNER_ATTR,
    StudyClaim,
    StudyFolder,
    best_trial,
    check_reachable,
    file_identity,
    fail_dead_trials,
    load_existing,
    make_storage,
    masked,
    own_trials,
    shown_config,
    this_worker,
)
from lora_sweep.sweep.trackers import study_callbacks, tracker_problems
from lora_sweep.sweep import trial as trial_life
from lora_sweep.sweep.search import converged, make_pruner, make_sampler, prompt_scores
from lora_sweep.sweep.trial import TrialFailed, run_base_model
from lora_sweep.sweep.variants import variant_lines
from lora_sweep.sweep.warmstart import seed_study, source_study

log = logging.getLogger("lora_sweep.sweep")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT_POLL_S = 2.0  # how often a worker waiting for other workers' trials looks again
MAX_LOST_IN_A_ROW = 3  # trials in a row whose warm runner or Ray node died under them: the sweep stops
JOIN_POLL_S = 0.2  # how often the main thread looks whether the slots are done (or a signal came)


def device_groups(config: StudyConfig) -> list[list[int] | None]:
    """One entry per trial slot: the GPU ids it uses, or None for a CPU slot."""
    s = config.study
    if s.devices == "cpu" or s.executor == "ray":  # on Ray the task's resources pick the GPUs, on its node
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
    # trials_per_gpu slots share each group: slot k runs on group k mod len(groups), so the groups
    # fill evenly before any takes a second trial
    slots = [groups[k % len(groups)] for k in range(len(groups) * s.trials_per_gpu)]
    if s.parallel > len(slots):
        log.warning("study.parallel is %d but the GPUs make %d groups of %d, %d trial(s) each: running %d at once",
                    s.parallel, len(groups), s.gpus_per_trial, s.trials_per_gpu, len(slots))
    return slots[: s.parallel]


# ---------------------------------------------------------------- the trial loop


@dataclass
class Sweep:
    config: StudyConfig
    space: Space
    study: optuna.Study
    failures_in_a_row: int = 0
    lost_in_a_row: int = 0  # trials whose launcher died under them (warm runner, Ray node), in a row
    stop_reason: str | None = None  # why the sweep stopped before its budget; None: it did not
    interrupted: str | None = None  # the signal that stopped it
    note: str | None = None  # why fewer than n_trials finished although nothing failed
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting_logged: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.claim = StudyClaim(self.config.storage_url, self.config.study.name)
        self.trackers = study_callbacks(self.config)
        self.identity = file_identity(self.config.storage_url)  # the database file this sweep writes
        self.storage_lost: str | None = None

    def check_storage(self) -> bool:
        """Is the study's database file gone (deleted, or deleted and made again empty)? Then nothing
        more can be recorded: say why once, stop the running jobs, and let every slot stop."""
        if self.storage_lost is None and self.identity is not None:
            if file_identity(self.config.storage_url) == self.identity:
                return False
            with self.lock:
                if self.storage_lost is None:
                    path = storage_file(self.config.storage_url)[1]
                    self.storage_lost = (f"the study database {path} was deleted while the sweep ran: nothing more "
                                         f"can be recorded, so the sweep stopped its jobs; their folders are set aside "
                                         f"by the next run")
                    self.stop_reason = self.storage_lost
                    stop_jobs(self.config)
        return self.storage_lost is not None

    def work(self, slot: list[int] | None, deadline: float | None) -> None:
        """One slot's loop (`slot`: its GPU ids, None on the CPU): take a trial while the study
        needs one, run it, record it, until the budget is spent or the sweep stops.

        Taking a trial is optuna's `ask` under the StudyClaim: the count of finished and running
        trials (of every worker) and the new trial's creation happen under one lock, so parallel
        slots and workers never overshoot n_trials, and failed trials are made up."""
        try:
            while self.stop_reason is None and not self.check_storage():
                if deadline is not None and time.monotonic() >= deadline:
                    self.note = self.note or f"study.timeout ({self.config.study.timeout} s) reached"
                    return
                taken = self.take()
                if taken is None:
                    return
                if taken is False:  # other workers' trials are running: wait for them
                    time.sleep(WAIT_POLL_S)
                    continue
                trial, params = taken
                self.run(trial, params, slot)
        except BaseException as exc:  # re-raised by run_sweep in the main thread
            if self.check_storage():  # the database went away under the slot: said in one line
                return
            self.error = exc
            self.stop_reason = self.stop_reason or f"stopped by an error: {exc!r}"

    def take(self) -> tuple[optuna.Trial, dict[str, Any]] | bool | None:
        """Under the claim: a new trial and its params; False to wait for others' running trials;
        None when the study needs no more."""
        with self.claim:
            need = self.needs_trial()
            if need is not True:
                return need
            return trial_life.ask(self.config, self.space, self.study)

    def needs_trial(self) -> bool | None:
        """True while finished and running trials (of every worker) are fewer than n_trials;
        False to wait for other workers' running trials; None when no more are needed."""
        trials = own_trials(self.study)  # a warm start's copies are not this study's budget
        running = [t for t in trials if t.state == TrialState.RUNNING]
        done = sum(t.state in FINISHED for t in trials)
        sampler = self.study.sampler
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(self.study):
            self.note = "the grid sampler's grid is exhausted"
            return None
        why = converged(self.config, trials, self.space.run_steps or self.config.training.num_training_steps)
        if why is not None:
            self.note = why
            return None if not running else self.wait_for(running)
        if done + len(running) < self.config.study.n_trials:
            return True
        if done >= self.config.study.n_trials:
            return None
        return self.wait_for(running)

    def wait_for(self, running: list[FrozenTrial]) -> bool | None:
        """The budget is taken but not finished: wait while another worker's trials run (a dead
        worker's are failed by their owner check or stale heartbeat, and run again here)."""
        me = this_worker()
        if any(t.user_attrs.get(OWNER_ATTR) == me for t in running):
            return None  # this worker's own trials: the slot running them makes up a failure
        fail_dead_trials(self.study)
        new = [t.number for t in running if t.number not in self.waiting_logged]
        if new:
            self.waiting_logged.update(new)
            owners = ", ".join(f"{t.number} ({owner_text(t)})" for t in running)
            log.info("waiting for running trials of other workers: %s; a dead worker's trials run again "
                     "once their heartbeat is stale", owners)
        return False

    def run(self, trial: optuna.Trial, params: dict[str, Any], slot: list[int] | None) -> None:
        """Run a taken trial (trial.run: its life up to tell), then the progress line and the trackers."""
        ended = trial_life.run(self.config, self.space, self.study, trial, params, slot, self)
        if ended is None:  # the storage is gone: nothing was recorded
            return
        finished_trial, error, lost = ended
        self.after_trial(finished_trial, error, lost=lost)
        for tracker in self.trackers:  # the trial's value and state in the team's tracker
            tracker(self.study, finished_trial)

    # ---------------------------------------------------------------- progress and stopping

    def best_text(self) -> str:
        if self.config.objective.also:
            return f"{len(self.study.best_trials)} trials on the Pareto front"
        try:
            best = best_trial(self.study)
        except ValueError:
            return "none yet"
        return f"{best.value:.4f} (trial {best.number})"

    def after_trial(self, trial: FrozenTrial, error: str | None, lost: bool = False) -> None:
        """One line per finished trial; stop after max_failures failures in a row. A trial whose
        launcher was lost (`lost`: its params run again) is not the trial's failure; MAX_LOST_IN_A_ROW
        of them in a row stop the sweep (a runner or a node that keeps dying)."""
        with self.lock:
            if lost:
                self.lost_in_a_row += 1
            elif trial.state == TrialState.FAIL:
                self.failures_in_a_row += 1
                self.lost_in_a_row = 0
            else:
                self.failures_in_a_row = self.lost_in_a_row = 0
            counts = Counter(t.state for t in self.study.get_trials(deepcopy=False))
            if trial.state == TrialState.PRUNED and trial.intermediate_values:
                value = self.pruned_text(trial)
            else:
                value = ("/".join(f"{v:.4f}" for v in trial.values) if trial.values
                         else trial.user_attrs.get("error") or error or "-")
            log.info("trial %d %s  %s  [%d complete, %d pruned, %d failed; best %s]", trial.number,
                     trial.state.name, value, counts[TrialState.COMPLETE], counts[TrialState.PRUNED],
                     counts[TrialState.FAIL], self.best_text())
            if self.failures_in_a_row >= self.config.study.max_failures and self.stop_reason is None:
                self.stop_reason = (f"{self.failures_in_a_row} trials failed in a row (study.max_failures): "
                                    f"stopping; see the trials' error and log_tail user attrs")
            if self.lost_in_a_row >= MAX_LOST_IN_A_ROW and self.stop_reason is None:
                self.stop_reason = f"{self.lost_in_a_row} trials in a row lost what ran their job: stopping; the last: {error}"

    def pruned_text(self, trial: FrozenTrial) -> str:
        """Where a pruned trial stopped and the value the pruner judged it on (the eval loss itself
        under prune_on: eval_loss, not the sign-adjusted value optuna keeps as the trial's)."""
        objective = self.config.objective
        step = max(trial.intermediate_values)
        scores = prompt_scores(trial).get(step) if self.config.study.pruner.type == "wilcoxon" else None
        if scores:  # what the wilcoxon pruner judged: the metric, prompt by prompt
            return (f"at step {step}: {objective.metric} {sum(scores) / len(scores):.4f} on {len(scores)} prompts, "
                    f"worse prompt by prompt than the best trial's there")
        name = "eval_loss" if objective.prunes_on == "eval_loss" else objective.metric
        return f"at step {step}: {name} {objective.pruner_sign * trial.intermediate_values[step]:.4f}"


def owner_text(trial: FrozenTrial) -> str:
    owner = trial.user_attrs.get(OWNER_ATTR) or {}
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"


# ---------------------------------------------------------------- the sweep


def prepare_data(config: StudyConfig) -> int:
    """Check the data and tokenize it once into the study's cache, before any trial starts; the
    training rows (the run's length follows from them)."""
    from lora_sweep.job import data
    from lora_sweep.job.samples import load_samples
    from lora_sweep.job.evaluate import GenerationMetric, check_scorer
    from lora_sweep.job.models import find_model, load_tokenizer

    samples = load_samples(config.data)
    scorer = check_scorer(config.objective, samples[1])
    section = config.data.model_copy(update={"cache_dir": str(StudyFolder(config.folder.resolve()).cache)})
    tokenizer = load_tokenizer(find_model(config.model.name_or_path), config.model.trust_remote_code)
    tokenized = data.prepare(section, config.training.seed, tokenizer, samples)
    log.info("data: %d train rows, %d test rows of up to %d / %d tokens", len(tokenized.train),
             len(tokenized.test), config.data.train_seqlen, config.data.test_seqlen)
    if scorer is not None:  # said once here; each trial's job says it in its events too
        warning = GenerationMetric(config.objective, config.data, config.training.seed, samples[1],
                                   scorer).cut_warning(tokenizer)
        if warning:
            log.warning(warning)
    return len(tokenized.train)


def preflight(config: StudyConfig, join_only: bool = False) -> list[str]:
    """What would stop the sweep after it started, found before anything is tokenized or written
    (`validate` says the same): storage and study folder writable, the warm start's study there,
    the trackers answering."""
    problems = [storage_problem(config.storage_url, writable=True),
                creation_problem(config.study.dir, "study.dir", writable=True)]
    if config.study.warm_start and not join_only:  # a worker joins a study: a warm start seeded it already
        try:
            source_study(config)
        except ConfigError as exc:
            problems += exc.problems
    return [p for p in problems if p] + tracker_problems(config.tracking)


def start_study(config: StudyConfig, space: Space, sampler: optuna.samplers.BaseSampler,
                pruner: optuna.pruners.BasePruner, prior: Prior | None = None,
                documented: Space | None = None) -> optuna.Study:
    """The sweep's study, created with its defaults trial when missing. Under the study's claim:
    workers started together against a new database create its tables and the study once."""
    name = config.study.name
    with StudyClaim(config.storage_url, name):
        storage = make_storage(config.storage_url, config.study)
        exists = name in optuna.get_all_study_names(storage)
        study = optuna.create_study(storage=storage, study_name=name, directions=config.objective.directions,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
        if not exists:
            setup_study(config, space, study, prior, documented)
    return study


def setup_study(config: StudyConfig, space: Space, study: optuna.Study, prior: Prior | None = None,
                documented: Space | None = None) -> None:
    """A new study's attrs, the documented defaults as its first trial (in the `documented` space:
    a learning rate outside the prior's focused range stays the documented one) and, with a
    learning-rate prior, the informed trial as its second."""
    documented = documented or space
    study.set_user_attr("config", shown_config(config.model_dump(mode="json")))  # a password is never stored
    study.set_user_attr("metric", config.objective.metric)
    study.set_user_attr("space", describe(space))
    record(study, space)  # the run's length, and the ranges fitted to it: said once
    with warnings.catch_warnings():  # the dashboard shows the metric's name, not "Objective 0"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([config.objective.metric, *([config.objective.also] if config.objective.also else [])])
    if config.study.enqueue_defaults:
        params, notes = default_params(config, documented)
        study.enqueue_trial(params, user_attrs={DEFAULTS_ATTR: DEFAULTS})
        study.set_user_attr("defaults_notes", notes)
        for note in notes:
            log.info("defaults trial: %s", note)
    informed = informed_params(config, documented, prior) if prior is not None else None
    queued = 1 if config.study.enqueue_defaults else 0  # a budget of one trial is the defaults': no informed one
    if informed is not None and config.study.n_trials > queued and (not queued or informed != params):
        study.enqueue_trial(informed, user_attrs={INFORMED_ATTR: f"learning-rate prior {prior.lr:.3g}"})
    if config.study.warm_start:
        added = seed_study(config, space, study)
        log.info("warm start: %d finished trials of %s seed the sampler", added, config.study.warm_start)


def finished(study: optuna.Study) -> int:
    """This study's finished trials (a warm start's copies are not among them)."""
    return len(own_trials(study, FINISHED))


def run_sweep(config: StudyConfig, join_only: bool = False) -> tuple[optuna.Study, str | None, str | None]:
    """Run trials until study.n_trials have finished (completed or pruned).

    Returns the study, why the sweep gave up early (an error) and a note on why fewer trials
    finished without an error (timeout, an exhausted grid)."""
    deadline = time.monotonic() + config.study.timeout if config.study.timeout else None
    if config.study.executor == "ray":
        cluster.require_ray()  # missing: one line, before anything is written
    space = build_space(config)
    sampler, pruner = make_sampler(config, space), make_pruner(config)  # bad options: refused before any write
    problems = preflight(config, join_only)
    if problems:  # one line each, before anything is tokenized or written
        raise ConfigError(problems)
    check_reachable(config.storage_url)  # an unreachable server: one line, before the cache is written
    if join_only:  # a worker joins; it never starts a study (nor reads one a first `run` is creating)
        with StudyClaim(config.storage_url, config.study.name):
            load_existing(config.storage_url, config.study.name)
    folder = StudyFolder(config.folder.resolve())
    folder.check_owner(config.storage_url)
    space = fit_to_run(config, space, prepare_data(config))  # bad data or model: refused before anything is written
    documented, (space, prior) = space, apply_prior(config, space)  # study.lr_prior: the rate the model's width suggests
    sampler = make_sampler(config, space)  # of the space fitted to the run's length (a grid's points)
    folder.claim_for(config.storage_url)
    study = start_study(config, space, sampler, pruner, prior, documented)
    with cluster.executor(config):  # study.executor: ray: connected to Ray while trials run
        study, stopped, note = run_trials(config, space, study, deadline)
        # the honest comparison of what the sweep has, also when it ended early (timeout, max_failures,
        # Ctrl+C); a multi-objective study has a front, not one winner
        if not join_only and not config.objective.also and config.study.test_scores:
            try:  # the winner on test.json when a validation set chose it; bootstrap intervals
                interrupted = stopped is not None and stopped.startswith("interrupted")
                honest_scores(config, space, study, device_groups(config)[0], may_launch=not interrupted)
            except TrialFailed as exc:
                log.warning("%s; the study's own figures stand", exc)
    return study, stopped, note


def run_trials(config: StudyConfig, space: Space, study: optuna.Study,
               deadline: float | None) -> tuple[optuna.Study, str | None, str | None]:
    """The base-model evaluation, then the slots' trials until the budget is spent or the sweep stops."""
    sweep = Sweep(config, space, study)
    slots = device_groups(config)
    if config.objective.baseline and BASE_ATTR not in study.user_attrs:
        evaluate_base_model(config, space, study, slots[0])
    write_study_note(study, config)  # the dashboard's note: objective, space, baseline, config
    if BASE_ATTR in study.user_attrs:
        base = Evaluation.of(study.user_attrs[BASE_ATTR])
        log.info("base model: eval_loss %.4f%s", base.eval_loss,
                 f", {base.metric} {base.score:.4f}" if base.score is not None else "")
    fail_dead_trials(study)  # a killed sweep's trials: failed, their params queued again
    log.info("study %s in %s: %d of %d trials finished", config.study.name, masked(config.storage_url),
             finished(study), config.study.n_trials)
    # a trial that has started (not one queued: a new study's defaults trial is trial 0 too)
    started = lambda: {t.number for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING}  # noqa: E731
    aside = StudyFolder(config.folder.resolve()).set_aside(started)
    if aside is not None:  # a new trial must never reuse (and delete) the folder of a lost study's trial
        log.warning("trial folder(s) %s are not trials of this study's storage (its database was deleted or "
                    "replaced?): moved to %s", ", ".join(aside[1]), aside[0])
    workers = [threading.Thread(target=sweep.work, args=(slot, deadline), name=f"slot-{i}")
               for i, slot in enumerate(slots)]
    with interrupts() as caught:
        for worker in workers:
            worker.start()
        # wait with a timeout, never inside join(): a signal raising there makes Python 3.11 count
        # the thread as ended while it runs on (its trial then never recorded)
        while any(worker.is_alive() for worker in workers):
            if caught.wait(JOIN_POLL_S):
                sweep.interrupted = caught.name
                sweep.stop_reason = (f"interrupted by {caught.name}: the running trials were stopped, recorded "
                                     f"as failed and queued to run again")
                stop_jobs(config)
                break
            if sweep.check_storage():  # the database file was deleted: its jobs are stopped
                break
        for worker in workers:
            worker.join()
    if sweep.storage_lost:
        raise StorageLost(sweep.storage_lost)
    if sweep.error is not None:
        raise sweep.error
    done = finished(study)
    if done >= config.study.n_trials:
        sweep.note = None  # a slot that met the timeout while another ran the last trial: nothing was missed
    elif sweep.stop_reason is None and sweep.note is None:
        sweep.stop_reason = f"only {done} of {config.study.n_trials} trials finished"
    return study, sweep.stop_reason, sweep.note


def evaluate_base_model(config: StudyConfig, space: Space, study: optuna.Study, slot: list[int] | None) -> None:
    """The base model's evaluation, recorded on the study; once more if what ran it died (a warm
    runner killed under it). When it fails, why is recorded too: the summary says it."""
    for attempt in (1, 2):
        try:
            study.set_user_attr(BASE_ATTR, run_base_model(config, space, slot))
            return
        except LauncherLost as exc:
            reason = str(exc)
            if attempt == 1:
                log.warning("%s; evaluating it again", reason)
        except TrialFailed as exc:
            reason = str(exc)
            break
    study.set_user_attr(BASE_ERROR_ATTR, reason)
    log.warning("%s; the sweep goes on without a baseline (`run` again evaluates it)", reason)


def stop_jobs(config: StudyConfig) -> None:
    """Stop every job this sweep runs: local ones (their process groups) and Ray trials (each cancels
    its task, and its node stops the job)."""
    launch.stop_all(config.study.stop_grace)
    cluster.stop_all()


class StorageLost(RuntimeError):
    """The study's database went away mid-sweep: the sweep stopped; `run` says it in one line."""


class Caught(threading.Event):
    """Set by Ctrl+C or SIGTERM (what Slurm and Kubernetes send); `name` says which."""

    name: str = ""


@contextlib.contextmanager
def interrupts() -> Iterator[Caught]:
    """Catch Ctrl+C and SIGTERM while the trials run: the handler only records the signal, the
    main thread then stops the jobs and the slots record their trials."""
    caught = Caught()

    def handler(signum: int, frame: Any) -> None:
        caught.name = caught.name or signal.Signals(signum).name
        caught.set()

    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def summary(config: StudyConfig, study: optuna.Study, config_path: str) -> str:
    """What the sweep reached, and where to look next."""
    metric = config.objective.metric
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    lines = [f"study {config.study.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    winners = study.best_trials if config.objective.also else (
        [best_trial(study)] if any(t.state == TrialState.COMPLETE for t in trials) else [])
    if not winners:
        return "\n".join(lines + ["no trial completed"])
    base = study.user_attrs.get(BASE_ATTR)
    if base is not None and base.get(config.objective.key) is not None:
        lines.append(f"base model: {metric} {base[config.objective.key]:.4f}")
    elif base is None and config.objective.baseline:  # never silently missing: say why
        lines.append(f"base model: not evaluated: {study.user_attrs.get(BASE_ERROR_ATTR, 'see the log')}")
    lines += defaults_lines(config, trials)
    for best in winners:
        lines += [
            f"best: trial {best.number}, {metric} {best.values[0]:.4f}"
            + (f", {config.objective.also} {best.values[1]:.4f}" if config.objective.also else ""),
            f"  params: {json.dumps(best.params)}",
            f"  adapter: {best.user_attrs.get('adapter_path')}",
        ]
    lines += honest_lines(study, metric)
    lines += variant_lines(study, metric)  # the LoRA variants' bests against plain LoRA's, when it ran several
    lines += [
        f"dashboard: python -m lora_sweep dashboard {config_path}",
        f"report:    python -m lora_sweep report {config_path}",
    ]
    return "\n".join(lines)


def defaults_lines(config: StudyConfig, trials: list[FrozenTrial]) -> list[str]:
    """The summary's line on the documented-defaults trial: its value, or why it has none."""
    tried = [t for t in trials if is_defaults(t)]
    done = next((t for t in tried if t.state == TrialState.COMPLETE), None)
    head = "documented defaults"
    if done is not None:
        return [f"{head} (trial {done.number}): {config.objective.metric} {done.values[0]:.4f}"]
    if not tried:
        return [f"{head}: not run (study.enqueue_defaults is false)"] if not config.study.enqueue_defaults else []
    last = tried[-1]
    if last.state == TrialState.PRUNED:
        return [f"{head} (trial {last.number}): pruned at step {max(last.intermediate_values, default=0)}, no value"]
    if last.state == TrialState.WAITING:
        return [f"{head}: queued (trial {last.number}) but not run before the sweep stopped: `run` again runs it"]
    if last.state == TrialState.FAIL:
        return [f"{head} (trial {last.number}): failed: {last.user_attrs.get('error', 'no value')}"]
    return [f"{head} (trial {last.number}): still running in another worker"]


def exit_code(stopped: str) -> int:
    """128 + the signal's number for an interrupted sweep (130 Ctrl+C, 143 SIGTERM: what shells and
    schedulers expect), 1 for any other early stop."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if stopped.startswith(f"interrupted by {sig.name}"):
            return 128 + sig
    return 1


def main(config_path: str, overrides: list[str], join_only: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our lines say what its INFO lines say
    for noisy in ("kernels", "bitsandbytes"):  # bitsandbytes, when installed, warns at import that it cannot fetch
        logging.getLogger(noisy).setLevel(logging.ERROR)  # a CPU kernel from the hub offline: not the sweep's news
    config = load_study(config_path, overrides)
    try:
        study, stopped, note = run_sweep(config, join_only)
    except StorageLost as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary(config, study, config_path))
    if note:
        print(f"note: {note}: {finished(study)} of {config.study.n_trials} trials finished", file=sys.stderr)
    if stopped:
        print(f"error: {stopped}", file=sys.stderr)
        return exit_code(stopped)
    return 0
