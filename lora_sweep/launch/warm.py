"""The warm launcher (`study.launcher: warm`): one runner process per sweep imports torch,
transformers, peft and lora_sweep's job once, then forks a fresh process for each single-process
job. A trial skips the interpreter start and the imports (most of its fixed cost) and is still a
process of its own, in a session of its own, that frees all its memory when it exits.

The runner imports no bitsandbytes (PEFT would, wherever it is installed: about a second a sweep), so
it serves the jobs that do not load their base in 4 bits; a QLoRA job starts in its own interpreter.

The runner never touches CUDA or torch's thread pool before it forks: a child starts them itself,
with its own CUDA_VISIBLE_DEVICES and thread count, as a freshly launched job would.

The runner speaks JSON lines. On its stdin, one request per job: {"id", "module", "argv", "env",
"cwd", "log"}. On its stdout: {"ready": pid} once imported, {"id", "pid"} when a child leads its own
session (from then on a signal to its process group reaches it), {"exited": pid, "rc"} when a child
has ended (rc as subprocess reports it: negative for a signal).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import itertools
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any

from lora_sweep.events import NO_BITSANDBYTES_ENV, LauncherLost

log = logging.getLogger("lora_sweep.launch.warm")

START_TIMEOUT_S = 300  # the runner's own imports, on a slow disk


# ---------------------------------------------------------------- the runner process

ANSWERS_FD: int = 1


def serve() -> int:
    """The runner's loop; a forked child runs its job and exits (leave)."""
    global ANSWERS_FD
    ANSWERS_FD = os.dup(1)  # answers only: whatever an import prints goes to stderr
    os.dup2(2, 1)
    # if an import asks whether CUDA is there, NVML answers without starting the driver in the runner
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    import torch

    import lora_sweep.job.evaluate  # noqa: F401 (the imports every job does, done once here)
    import lora_sweep.job.train  # noqa: F401

    if torch.cuda.is_initialized():  # a child would inherit a CUDA context it cannot use
        raise RuntimeError("CUDA was initialised while importing; the warm runner cannot fork jobs")
    answer({"ready": os.getpid()})
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        if readable:
            chunk = os.read(0, 1 << 16)
            if not chunk:  # the sweep closed us, or is gone: its jobs watch it themselves
                return 0
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                code = fork_job(json.loads(line))
                if code is not None:  # this is the child, and its job has ended
                    leave(code)
        reap()


def leave(code: int) -> None:
    """End a forked job as an interpreter would (its threads joined, atexit run: trackers end their
    runs, logs flush) but without tearing down torch and every module one by one, which takes a
    second or more and frees nothing that the process's exit does not."""
    threading._shutdown()  # what the interpreter's exit does first: threading's exit hooks, then the join
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def answer(message: dict[str, Any]) -> None:
    os.write(ANSWERS_FD, (json.dumps(message) + "\n").encode())


def reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        answer({"exited": pid, "rc": os.waitstatus_to_exitcode(status)})


def prime(request: dict[str, Any]) -> None:
    """Load a training job's tokenizer and base model (CPU, no CUDA) once, in the runner, for this
    job and every later one on the same model. Whatever fails here the job meets and reports itself."""
    if request["module"] != "lora_sweep.job.train":
        return
    from lora_sweep.config.files import load_job
    from lora_sweep.job.models import (
        PRIMED,
        find_model,
        load_base_model,
        load_tokenizer,
        model_key,
        pick_dtype,
        tokenizer_key,
    )

    import torch

    try:
        config = load_job(request["argv"][0])
        path, trust = find_model(config.model.name_or_path), config.model.trust_remote_code
    except Exception:  # noqa: BLE001 (the job's own error, in its own log)
        return
    loads = [(tokenizer_key(path, trust), lambda: load_tokenizer(path, trust))]
    # dtype auto on a GPU asks the GPU whether it has bfloat16, which starts CUDA: there the job loads
    # its model itself
    if config.model.dtype != "auto" or not torch.cuda.is_available():
        dtype = pick_dtype(config.model.dtype)
        loads.append((model_key(path, dtype, trust), lambda: load_base_model(path, dtype, trust)))
    for key, load in loads:
        if key not in PRIMED:
            try:
                PRIMED[key] = load()
            except Exception:  # noqa: BLE001
                PRIMED[key] = None  # not tried again: each job loads it itself and says why it fails


def fork_job(request: dict[str, Any]) -> int | None:
    """Fork the job's process: None in the runner, the job's exit code in the child."""
    prime(request)
    import torch

    if torch.cuda.is_initialized():  # never fork a CUDA context: the job fails and says why
        answer({"id": request["id"], "error": "CUDA was started in the warm runner; use study.launcher: direct"})
        return None
    # the runner's objects (its imports, the primed models) outlive every job: frozen, a child's
    # collections skip them (the Trainer runs one at its start: ~0.3 s over them here) and leave their
    # pages shared instead of copying each one they touch
    gc.freeze()
    led, lead = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(led)
        os.close(ANSWERS_FD)
        os.setsid()
        os.close(lead)  # tells the runner the session exists
        return become_job(request)
    os.close(lead)
    os.read(led, 1)  # EOF once the child leads its session (or died before)
    os.close(led)
    answer({"id": request["id"], "pid": pid})
    return None


def become_job(request: dict[str, Any]) -> int:
    """In the forked child: become the job (its log, folder, environment, threads) and run it."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # the import path `python -m` would give: the job's folder first, then its PYTHONPATH
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
        sys.path[0:1] = [os.getcwd(), *extra]
        importlib.invalidate_caches()
        import torch

        # OpenMP read OMP_NUM_THREADS when the runner loaded it: set this job's share now
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        sys.argv = [request["module"], *request["argv"]]
        return importlib.import_module(request["module"]).main(request["argv"])
    except SystemExit as exc:  # argparse, or a job that exits itself
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


# ---------------------------------------------------------------- the sweep's side

class WarmJob:
    """A forked job, with the part of subprocess.Popen that launch uses: pid, poll, wait, returncode."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self.lost: str | None = None  # why it was stopped: the runner died under it (not the job's fault)
        self.ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self.ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"job {self.pid}", timeout)
        return self.returncode

    def end(self, returncode: int) -> None:
        self.returncode = returncode
        self.ended.set()


class Runner:
    """The runner process and the thread that reads its answers."""

    def __init__(self):
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "lora_sweep.launch.warm"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errors, start_new_session=True,
                                     env={**os.environ, NO_BITSANDBYTES_ENV: "1"})
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.replies: dict[int, queue.Queue] = {}
        self.jobs: dict[int, WarmJob] = {}
        self.ready = threading.Event()
        threading.Thread(target=self.read, daemon=True, name="warm-runner").start()
        if not self.ready.wait(START_TIMEOUT_S) or self.proc.poll() is not None:
            self.close()
            raise RuntimeError(f"the warm runner did not start: {self.error_tail()}")

    def read(self) -> None:
        for line in self.proc.stdout:
            message = json.loads(line)  # only the runner writes here (serve)
            if "ready" in message:
                self.ready.set()
            elif "exited" in message:
                job = self.jobs.pop(message["exited"], None)
                if job is not None:
                    job.end(message["rc"])
            elif "error" in message:
                self.replies.pop(message["id"]).put(message["error"])
            else:
                job = self.jobs[message["pid"]] = WarmJob(message["pid"])  # before its exit can be read
                self.replies.pop(message["id"]).put(job)
        self.ready.set()
        self.proc.wait()
        with self.lock:  # the runner is gone: nobody can report these jobs' ends any more
            for job in self.jobs.values():
                try:
                    os.killpg(job.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                job.lost = f"{self.died()} mid-trial; a fresh runner starts for the next job"
                job.end(-signal.SIGKILL)
            for reply in self.replies.values():
                reply.put(None)
            self.jobs.clear()
            self.replies.clear()

    def start(self, module: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> WarmJob:
        reply: queue.Queue = queue.Queue()
        with self.lock:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the warm runner exited: {self.error_tail()}")
            request_id = next(self.ids)
            self.replies[request_id] = reply
            request = {"id": request_id, "module": module, "argv": argv, "env": env, "cwd": str(cwd),
                       "log": str(log)}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        job = reply.get(timeout=START_TIMEOUT_S)
        if job is None:
            raise LauncherLost(f"{self.died()} while it started the job: {self.error_tail()}")
        if isinstance(job, str):
            raise RuntimeError(job)
        return job

    def died(self) -> str:
        """`the warm runner (pid N) was killed by SIGKILL` (or `exited with code N`)."""
        rc = self.proc.returncode
        try:
            how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
        except ValueError:
            how = f"was killed by signal {-rc}"
        return f"the warm runner (pid {self.proc.pid}) {how}"

    def error_tail(self) -> str:
        self.errors.seek(0)
        lines = self.errors.read().decode(errors="replace").strip().splitlines()
        return "\n".join(lines[-20:]) or f"exit code {self.proc.poll()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # it exits at EOF
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_runner: Runner | None = None
_runner_lock = threading.Lock()


def start(module: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> WarmJob:
    """Fork `python -m module *argv` from this process's runner (started on first use)."""
    global _runner
    with _runner_lock:
        if _runner is None or _runner.proc.poll() is not None:
            _runner = Runner()
            atexit.register(_runner.close)
        runner = _runner
    return runner.start(module, argv, env, cwd, log)


if __name__ == "__main__":
    sys.exit(serve())
