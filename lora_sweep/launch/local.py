"""Launch one job as `accelerate launch ... -m lora_sweep.job.train job.yaml`, follow its events,
and stop it (terminate, then kill) when asked or when it runs past its time.

The job runs in a session of its own, so stopping it stops the launcher and every process
it started, and nothing is left behind.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from lora_sweep.launch import warm
from lora_sweep.events import NO_BITSANDBYTES_ENV, PARENT_PID_ENV, EventReader, JobFolder

POLL_S = 0.2  # how often the events file and the process are looked at (a stat and a read)
LOG_TAIL_LINES = 40


def launcher_args(gpus: list[int] | None, cpu_threads: int, port: int) -> list[str]:
    """Flags for `accelerate launch`: one process per GPU of the trial, or one CPU process."""
    common = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if not gpus:
        # plain `accelerate launch` sets OMP threads to 1 on the CPU: give the trial its share
        return ["--cpu", "--num_processes", "1", *common, "--num_cpu_threads_per_process", str(cpu_threads)]
    multi = ["--multi_gpu"] if len(gpus) > 1 else []
    # parallel DDP trials on one node each need their own rendezvous port
    return [*multi, "--num_processes", str(len(gpus)), *common, "--main_process_port", str(port)]


def free_port() -> int:
    """A TCP port free on this machine now, for a DDP job's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(job_path: Path, flags: list[str], module: str = "lora_sweep.job.train",
            launcher: str = "accelerate") -> tuple[list[str], dict[str, str]]:
    """The job's command line and the environment it adds. `accelerate`: `accelerate launch
    <flags> -m module job.yaml`. `direct` (a single-process job): the job's own interpreter with the
    environment `accelerate launch` would give it, one interpreter start instead of two. `warm` runs
    that same command line, forked from the warm runner (warm.become_job)."""
    if launcher in ("direct", "warm") and single_process(flags):
        return [sys.executable, "-m", module, str(job_path)], direct_env(tuple(flags))
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "-m", module, str(job_path)], {}


def job_env(job_path: Path) -> dict[str, str]:
    """What the sweep tells each job: its own pid (the job exits when the sweep is gone) and, when the
    job does not load its base in 4 bits (lora.load_in_4bit in its file), to keep bitsandbytes out."""
    env = {PARENT_PID_ENV: str(os.getpid())}
    try:
        lora = yaml.safe_load(Path(job_path).read_text(encoding="utf-8")).get("lora") or {}
        quantizes = bool(lora.get("load_in_4bit", False))
    except (OSError, yaml.YAMLError, AttributeError):
        quantizes = False  # the job reads its file itself and fails on it, with or without bitsandbytes
    if not quantizes:
        env[NO_BITSANDBYTES_ENV] = "1"
    return env


def single_process(flags: list[str]) -> bool:
    """Do the launcher flags start one process (no DDP, no other launcher)?"""
    n = flags[flags.index("--num_processes") + 1] if "--num_processes" in flags[:-1] else "1"
    return n == "1" and not any(f in flags for f in ("--multi_gpu", "--use_deepspeed", "--use_fsdp", "--tpu"))


@functools.lru_cache(maxsize=8)
def direct_env(flags: tuple[str, ...]) -> dict[str, str]:
    """The variables `accelerate launch <flags>` sets for a single process (ACCELERATE_USE_CPU,
    OMP_NUM_THREADS, mixed precision, dynamo...), from accelerate's own launch utilities, so they
    follow its version; worked out once per set of flags (it imports torch, in this process)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    try:
        args = launch_command_parser().parse_args([*flags, "-m", "lora_sweep.job.train", "job.yaml"])
        args, _, _ = _validate_launch_command(args)
    except SystemExit:  # argparse refused a flag (its usage line is on stderr): the trial fails, not the sweep
        raise RuntimeError(f"accelerate launch refuses the launcher flags {list(flags)}") from None
    _, env = prepare_simple_launcher_cmd_env(args)
    return {k: v for k, v in env.items() if os.environ.get(k) != v}


# The jobs this process runs now, so an interrupted sweep can stop them all.
_running: set[subprocess.Popen | warm.WarmJob] = set()
_running_lock = threading.Lock()


def stop_all(grace: float) -> None:
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        stop(proc, grace)


@dataclass
class JobRun:
    returncode: int
    stopped: bool = False  # stopped because on_event asked (pruned)
    timed_out: bool = False
    stalled: float = 0.0  # seconds the job was silent when it was stopped as hung (0: it was not)
    skipped_lines: int = 0  # lines of its events file that were not events
    lost: str | None = None  # what ran the job died under it (the warm runner): why; the job did nothing wrong
    events: list[dict[str, Any]] = field(default_factory=list)
    log_tail: str = ""


def stop(proc: subprocess.Popen | warm.WarmJob, grace: float) -> None:
    """SIGTERM to the job's whole process group, SIGKILL to whatever is left after `grace` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers the launcher did not reap
    except ProcessLookupError:
        pass
    proc.wait()


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


class Followed(Protocol):
    """A running job as `follow` sees it: a local process (LocalJob) or a Ray task (cluster.RayJob)."""

    started: bool  # the job runs (a Ray task: placed on a node); its time limits count from then

    def events(self, wait: float) -> tuple[list[dict[str, Any]], bool]:
        """The events since the last call, waiting up to `wait` s for the job to move, and whether
        it has ended (its last events among them)."""

    def interrupted(self) -> bool:
        """Has the sweep been interrupted (Ctrl+C, SIGTERM) in a way this job must see itself?"""

    def stop(self) -> None:
        """Stop the job and wait for it (bounded)."""


def follow(job: Followed, run: JobRun, on_event: Callable[[dict[str, Any]], bool], timeout: float | None,
           silence_limit: Callable[[], float] | None) -> bool:
    """Follow a job's events to its end, local or on Ray alike: `on_event` sees each and returns
    True to stop it (pruned); a job running past `timeout` s, or silent for `silence_limit()` s, is
    stopped (timed out, hung); an interrupted sweep stops it. Fills `run`; True if the job ended
    by itself, False if it was stopped."""
    begin = last_event = time.monotonic()
    started = job.started
    while True:
        events, ended = job.events(POLL_S)
        if job.started and not started:  # waiting for a node is neither hung nor slow
            started, begin, last_event = True, time.monotonic(), time.monotonic()
        for event in events:
            last_event = time.monotonic()
            run.events.append(event)
            if not run.stopped and on_event(event):
                run.stopped = True
        if ended:
            return True
        if run.stopped:
            break
        if job.interrupted():
            run.returncode = -signal.SIGTERM  # as a local job stopped by stop_all
            break
        if started and timeout is not None and time.monotonic() - begin > timeout:
            run.timed_out = True
            break
        silent = time.monotonic() - last_event
        if started and silence_limit is not None and silent > silence_limit():
            run.stalled = silent
            break
    job.stop()
    return False


class LocalJob:
    """A job process on this machine (launched, or forked by the warm runner), as `follow` sees it."""

    started = True

    def __init__(self, proc: subprocess.Popen | warm.WarmJob, events: Path, stop_grace: float):
        self.proc, self.reader, self.stop_grace = proc, EventReader(events), stop_grace
        self.waited = False

    def events(self, wait: float) -> tuple[list[dict[str, Any]], bool]:
        if self.waited:
            try:
                self.proc.wait(wait)  # back at once when the job exits: a trial's end is not a poll late
            except subprocess.TimeoutExpired:
                pass
        self.waited = True
        exited = self.proc.poll() is not None
        return self.reader.new(), exited  # read after poll: an exited job's last events are seen

    def interrupted(self) -> bool:
        return False  # stop_all stops local jobs itself

    def stop(self) -> None:
        stop(self.proc, self.stop_grace)


def run_local(
    job_path: Path,
    folder: Path,
    flags: list[str],
    on_event: Callable[[dict[str, Any]], bool],
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    stop_grace: float = 10.0,
    module: str = "lora_sweep.job.train",
    silence_limit: Callable[[], float] | None = None,
    launcher: str = "accelerate",
) -> JobRun:
    """Run the job to its end; `on_event` sees each event and returns True to stop the job.
    `timeout`: seconds after which the job is stopped; `silence_limit()`: seconds without a new
    event after which it is stopped as hung; `launcher`: study.launcher."""
    log_path = JobFolder(folder).log
    cmd, launch_env = command(job_path, flags, module, launcher)
    told = job_env(job_path)
    child_env = {**os.environ, **launch_env, **(env or {}), **told}
    # a single-process job, where processes fork (not Windows): forked, no interpreter start. The
    # runner has no bitsandbytes: a job that quantizes starts in its own interpreter (as `direct`).
    if launcher == "warm" and single_process(flags) and hasattr(os, "fork") and NO_BITSANDBYTES_ENV in told:
        proc = warm.start(module, cmd[3:], child_env, folder, log_path)
    else:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env=child_env, cwd=folder, start_new_session=True)
    with _running_lock:
        _running.add(proc)
    job = LocalJob(proc, JobFolder(folder).events, stop_grace)
    run = JobRun(returncode=0)
    try:
        follow(job, run, on_event, timeout, silence_limit)
    finally:
        if proc.poll() is None:  # the sweep itself is being interrupted
            stop(proc, stop_grace)
        with _running_lock:
            _running.discard(proc)
    run.events += job.reader.new()  # what the job wrote after it was told to stop
    run.returncode = proc.returncode
    run.lost = getattr(proc, "lost", None)
    run.skipped_lines = job.reader.skipped
    run.log_tail = tail(log_path)
    return run
