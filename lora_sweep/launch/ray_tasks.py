"""Trials on a Ray cluster (`study.executor: ray`): each trial's job is a Ray task on whichever
node holds `study.ray.resources_per_trial`.

    driver (the sweep, the only writer of the study DB)       a node Ray picks
    job.yaml ─► trial_task.remote(spec) ───────────────────────► job.yaml (paths made node-local when
                                                                  the node does not see study.dir)
                                                                  ─► launch.run_local, as on one machine
    placed(node) ◄─ first item: the node ─────────────────────── │
    on_event(e)  ◄─ batches of events, as the job writes them ── events.jsonl
    prune / trial_timeout / stall / Ctrl+C ─► ray.cancel ─► the task's finally stops the job's
                                                            session (launch.stop) and clears its folder
    trials/<n>/  ◄─ last item: returncode, log tail, and a tar of the folder when it is not shared
    node lost    ─► NodeLost: the sweep fails the trial and queues its params again

The task is a streaming generator (`num_returns="streaming"`) with max_retries=0: the driver,
not Ray, decides what a lost trial becomes. Ray is imported only once a sweep asks for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import queue
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lora_sweep.launch import local as launch
from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudyConfig
from lora_sweep.events import JobFolder, LauncherLost
from lora_sweep.job import tables

log = logging.getLogger("lora_sweep.cluster")

DATA_SIDES = ("train_file", "test_file", "validation_file")
# Ray's own resources; any other name a node declares (`ray start --resources`) is a custom one
RAY_BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}
# A node's own folder for trial folders and the tokenized cache, when it does not see study.dir
# (set it in the environment of `ray start`); default <tmp>/lora_sweep-ray-<uid>.
NODE_DIR_ENV = "LORA_SWEEP_NODE_DIR"
CANCEL_WAIT_S = 30.0  # a cancelled task has this long (plus study.stop_grace) to stop its job


class NodeLost(LauncherLost):
    """The node (or the Ray worker) running a trial died: the trial fails and its params run again."""


# ---------------------------------------------------------------- the driver's connection


def require_ray() -> Any:
    """The ray module; a ConfigError saying how to install it when it is missing."""
    try:
        import ray
    except ImportError:
        raise ConfigError(["study.executor: ray needs Ray, which is not installed: pip install -e '.[ray]' "
                           "(or pip install 'ray>=2.40')"]) from None
    return ray


@dataclass
class Session:
    """This sweep's hold on Ray: the task, its options and the trials in flight."""

    config: StudyConfig
    task: Any  # the remote trial_task
    probe: Path  # a file that only nodes seeing study.dir can read
    token: str
    started_ray: bool
    stopping: threading.Event = field(default_factory=threading.Event)
    shipped: dict[str, tuple[str, Any, str, bool]] = field(default_factory=dict)  # data path -> packed_data's, put
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> its record
    lock: threading.Lock = field(default_factory=threading.Lock)


_session: Session | None = None


@contextlib.contextmanager
def executor(config: StudyConfig) -> Iterator[None]:
    """Around a sweep's trials: nothing for study.executor: local; for ray, connect (or start a
    local Ray when study.ray.address is null) and disconnect at the end."""
    global _session
    if config.study.executor != "ray":
        yield
        return
    ray = require_ray()
    address = config.study.ray.address
    started = address is None
    ray.init(address=address, include_dashboard=False if started else None, logging_level=logging.WARNING)
    token = uuid.uuid4().hex
    probe = config.folder.resolve() / f".ray-probe-{token}"
    probe.write_text(token, encoding="utf-8")
    task = ray.remote(num_returns="streaming", max_retries=0)(trial_task)
    _session = Session(config, task, probe, token, started)
    totals = ray.cluster_resources()
    resources = ", ".join(f"{k} {v:g}" for k, v in {**{k: totals[k] for k in ("CPU", "GPU") if k in totals},
                                                     **custom(totals)}.items())
    log.info("ray: %s %s (%d nodes: %s); a trial holds %s", "started locally" if started else "connected to",
             "" if started else address, len([n for n in ray.nodes() if n["Alive"]]), resources,
             config.study.ray.resources_per_trial)
    try:
        yield
    finally:
        _session = None
        probe.unlink(missing_ok=True)
        ray.shutdown()


def stop_all() -> None:
    """Ctrl+C / SIGTERM: every trial in flight cancels its task (the nodes stop their jobs)."""
    if _session is not None:
        _session.stopping.set()


def custom(resources: dict[str, float]) -> dict[str, float]:
    """The custom resources among Ray's resource totals (`ray start --resources`)."""
    return {k: v for k, v in resources.items() if k not in RAY_BUILTIN and not k.startswith(("node:", "accelerator_type:"))}


def node_record(session: Session, node_id: str, host: str) -> dict[str, Any]:
    """What a trial records of its node: Ray's node id, the host name and its custom resources."""
    import ray

    with session.lock:
        if node_id not in session.nodes:
            info = next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
            session.nodes[node_id] = {"id": node_id, "host": host, "ip": info.get("NodeManagerAddress"),
                                      "resources": custom(info.get("Resources", {}))}
        return session.nodes[node_id]


def shipped_files(session: Session, tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The job's data files, put in Ray's object store once per sweep, for nodes that do not see
    them: {side: {name, digest, ref}}."""
    import ray

    out = {}
    for side in DATA_SIDES:
        path = tree["data"].get(side)
        if not path:
            continue
        with session.lock:
            if path not in session.shipped:
                blob, name, packed = packed_data(path)
                session.shipped[path] = (hashlib.sha256(blob).hexdigest(), ray.put(blob), name, packed)
            digest, ref, name, packed = session.shipped[path]
        out[side] = {"name": name, "digest": digest, "ref": ref, "packed": packed}
    return out


def packed_data(path: str) -> tuple[bytes, str, bool]:
    """A data path as it travels to a node: (its bytes, its name, packed). A file is its own bytes; a
    dataset saved with save_to_disk (a folder) and a pattern of Parquet shards (`data/train-*.parquet`)
    are a tar of their files (packed), which `place_data` unpacks so that the same name reads them."""
    source = Path(path)
    if not (source.is_dir() or tables.is_pattern(source)):
        return source.read_bytes(), source.name, False
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if source.is_dir():
            tar.add(source, arcname=source.name)
        for shard in [] if source.is_dir() else tables.files_of(source):
            tar.add(shard, arcname=shard.name)
    return buffer.getvalue(), source.name, True


def place_data(blob: bytes, name: str, packed: bool, folder: Path) -> Path:
    """Put shipped data (`packed_data`'s) in `folder` on this node, once (atomic: a second trial on the
    node never reads half of it), and return its path there."""
    if not folder.exists():
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if packed:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
                tar.extractall(tmp, filter="data")
        else:
            (tmp / name).write_bytes(blob)
        try:
            os.replace(tmp, folder)
        except OSError:  # another trial on this node placed it first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder / name


class RayJob:
    """A trial's Ray task as launch.follow sees it: the items its stream yields (its node, its
    events, how it ended), the events copied into the driver's folder when the node has its own."""

    def __init__(self, session: Session, stream: Any, folder: Path, run: launch.JobRun, stop_grace: float,
                 placed: Callable[[dict[str, Any]], None] | None):
        self.session, self.stream, self.folder, self.run = session, stream, folder, run
        self.stop_grace, self.placed = stop_grace, placed
        self.node: dict[str, Any] = {}
        self.copy: Any = None  # the driver's events.jsonl, written as events come when the node has its own folder
        self.started = False  # placed on a node
        self.stopped = False

    def events(self, wait: float) -> tuple[list[dict[str, Any]], bool]:
        import ray

        ready, _ = ray.wait([self.stream], timeout=wait)
        if not ready:
            return [], False
        try:
            item = ray.get(next(self.stream))
        except StopIteration:
            return [], True
        if "node" in item:
            self.place(item)
        events = item.get("events", [])
        if self.copy is not None:
            for event in events:
                self.copy.write(json.dumps(event) + "\n")
            self.copy.flush()
        if "returncode" in item:
            self.close()
            finish(self.run, item, self.folder)
        return events, "returncode" in item

    def place(self, item: dict[str, Any]) -> None:
        self.node = node_record(self.session, item["node"], item["host"])
        self.started = True
        log.info("%s: on node %s (%s)", f"trial {self.folder.name}" if self.folder.name.isdigit() else self.folder.name,
                 self.node["host"], ", ".join(self.node["resources"]) or self.node["id"][:12])
        if not item["shared"]:
            self.copy = JobFolder(self.folder).events.open("a", encoding="utf-8")
        if self.placed:
            self.placed(self.node)

    def interrupted(self) -> bool:
        return self.session.stopping.is_set()

    def stop(self) -> None:
        if not self.stopped:  # once: follow stops a job it gives up, the caller one it leaves on an error
            self.stopped = True
            stop(self.stream, self.stop_grace)

    def close(self) -> None:
        if self.copy is not None:
            self.copy.close()
            self.copy = None


def run_on_ray(config: StudyConfig, folder: Path, on_event: Callable[[dict[str, Any]], bool], *,
               module: str = "lora_sweep.job.train", timeout: float | None = None,
               silence_limit: Callable[[], float] | None = None,
               placed: Callable[[dict[str, Any]], None] | None = None) -> launch.JobRun:
    """Run the job of `folder` (its job.yaml written) as a Ray task, followed as launch.run_local
    follows a job on this machine (launch.follow): `on_event` sees each event and returns True to
    stop it (pruned); `timeout` and `silence_limit()` count from the job's start on its node;
    `placed` hears the node. Raises NodeLost when the node dies under the job."""
    import ray

    session = _session
    if session is None:
        raise RuntimeError("cluster.run_on_ray outside cluster.executor()")
    job_yaml = JobFolder(folder).job_yaml.read_text(encoding="utf-8")
    tree = yaml.safe_load(job_yaml)
    ray_section = config.study.ray
    spec = {
        "folder": str(folder), "job_yaml": job_yaml, "study": config.study.name, "module": module, "probe": str(session.probe),
        "token": session.token, "shared": ray_section.shared_dir, "stop_grace": config.study.stop_grace,
        "launcher_args": config.study.launcher_args, "launcher": config.study.launcher, "cpus": ray_section.resources_per_trial.get("CPU", 1),
        "files": shipped_files(session, tree) if ray_section.shared_dir is not True else {},
    }
    resources = dict(ray_section.resources_per_trial)
    options = {"num_cpus": resources.pop("CPU", 0), "num_gpus": resources.pop("GPU", 0), "resources": resources}
    stream = session.task.options(**options).remote(spec)
    run = launch.JobRun(returncode=0)
    job = RayJob(session, stream, folder, run, config.study.stop_grace, placed)
    ended = False
    try:
        ended = launch.follow(job, run, on_event, timeout, silence_limit)
    except (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as exc:
        node = job.node
        where = f"node {node.get('host')} ({', '.join(node.get('resources', {})) or node.get('id', '?')[:12]})" \
            if node else "its node"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NodeLost(f"{where} was lost mid-trial: {type(exc).__name__}: {first_line}") from None
    except ray.exceptions.RayTaskError as exc:  # the task's own code raised (a model missing on the node)
        cause = exc.cause if exc.cause is not None else exc
        raise RuntimeError(f"the trial's Ray task failed on {job.node.get('host', 'its node')}: "
                           f"{type(cause).__name__}: {cause}") from None
    finally:
        job.close()
        if not ended:  # pruned, timed out, hung, interrupted, or the driver itself is going down
            job.stop()
    return run


def stop(stream: Any, grace: float) -> None:
    """Cancel the task and wait (bounded) until its finally has stopped the job on the node."""
    import ray

    with contextlib.suppress(Exception):
        ray.cancel(stream)
    deadline = time.monotonic() + grace + CANCEL_WAIT_S
    while time.monotonic() < deadline:
        try:
            ready, _ = ray.wait([stream], timeout=max(0.1, deadline - time.monotonic()))
            if not ready:
                break
            ray.get(next(stream))
        except StopIteration:
            return
        except Exception:  # TaskCancelledError (the usual end), or the node went too
            return
    log.warning("a cancelled Ray task did not end within %.0f s", grace + CANCEL_WAIT_S)


def finish(run: launch.JobRun, item: dict[str, Any], folder: Path) -> None:
    """The task's last item: how the job ended, and its folder when the node kept its own copy."""
    run.returncode = item["returncode"]
    run.skipped_lines = item["skipped_lines"]
    run.log_tail = item["log_tail"]
    if item.get("archive") is not None:
        unpack(item["archive"], folder, item["node_folder"])


# ---------------------------------------------------------------- a trial's folder between node and driver


def pack(folder: Path) -> bytes:
    """A tar of the trial folder as the driver keeps it: everything but the Trainer checkpoints
    (resume state, optimizer included: large, and of no use once the job has ended) and the
    node's job.yaml (the driver keeps the one it wrote, with its own paths)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            if path.name not in (JobFolder.CHECKPOINTS, JobFolder.JOB):
                tar.add(path, arcname=path.name)
    return buffer.getvalue()


def unpack(archive: bytes, folder: Path, node_folder: str) -> None:
    """Extract a trial's tar into its folder here; paths of the node's folder in its JSON and YAML
    files (result.json's adapter_path...) become this folder's."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        tar.extractall(folder, filter="data")
    for path in folder.rglob("*"):
        if path.suffix in (".json", ".jsonl", ".yaml") and path.is_file():
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            if node_folder in text:
                path.write_text(text.replace(node_folder, str(folder)), encoding="utf-8", errors="surrogateescape")


# ---------------------------------------------------------------- on the node


def node_root() -> Path:
    """This node's own folder for trials and the tokenized cache ($LORA_SWEEP_NODE_DIR, else one per user)."""
    return Path(os.environ.get(NODE_DIR_ENV) or Path(tempfile.gettempdir()) / f"lora_sweep-ray-{os.getuid()}")


def sees_study_dir(spec: dict[str, Any]) -> bool:
    """Does this node see the driver's study folder? study.ray.shared_dir, else the probe file."""
    if spec["shared"] is not None:
        return spec["shared"]
    try:
        return Path(spec["probe"]).read_text(encoding="utf-8") == spec["token"]
    except OSError:
        return False


def local_job(spec: dict[str, Any], job: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The job tree with this node's paths: its own trial folder, the node's tokenized cache
    (keyed by content: tokenized once per node) and the shipped data files."""
    import ray

    root = node_root()
    job["output_dir"] = str(folder)
    job["data"]["cache_dir"] = str(root / "cache")
    for side, file in spec["files"].items():
        # keyed on the content and the name: a train.json and a test.json of the same bytes are two files here
        folder = root / "data" / hashlib.sha256(f"{file['digest']}/{file['name']}".encode()).hexdigest()[:24]
        blob = b"" if folder.exists() else ray.get(file["ref"])
        job["data"][side] = str(place_data(blob, file["name"], file["packed"], folder))
    model = job["model"]["name_or_path"]
    if Path(model).is_absolute() and not Path(model).exists():
        raise FileNotFoundError(f"model.name_or_path {model} is not on node {socket.gethostname()}: put the "
                                f"model at that path on every node, or use a hub id")
    return job


def node_launch(spec: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Launcher flags and environment on this node: one process per GPU Ray gave the task (Ray has
    set CUDA_VISIBLE_DEVICES to them), else one CPU process with the trial's CPUs as threads."""
    import ray

    gpus = ray.get_gpu_ids()
    flags = spec["launcher_args"] or launch.launcher_args(
        list(range(len(gpus))) or None, cpu_threads=max(1, int(spec["cpus"])), port=launch.free_port())
    return flags, ({} if gpus else {"CUDA_VISIBLE_DEVICES": ""})


def trial_task(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The Ray task of one trial (a streaming generator): the node, then batches of events as the
    job writes them, then how it ended (and the folder's tar when the driver does not see it).
    Cancelled, its finally stops the job's whole process group and clears the node's folder."""
    import ray

    shared = sees_study_dir(spec)
    yield {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "shared": shared}
    folder = Path(spec["folder"])
    if not shared:  # a folder of this node's own, per trial
        digest = hashlib.sha256(spec["folder"].encode()).hexdigest()[:12]
        folder = node_root() / "trials" / f"{spec['study']}-{folder.name}-{digest}"
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=follow, args=(spec, folder, shared, events, outcome), daemon=True, name="job")
    try:
        thread.start()
        while thread.is_alive() or not events.empty():
            batch = drain(events, launch.POLL_S)
            if batch:
                yield {"events": batch, "shared": shared}
        if "error" in outcome:
            raise outcome["error"]
        run = outcome["run"]
        yield {"returncode": run.returncode, "skipped_lines": run.skipped_lines, "log_tail": run.log_tail,
               "shared": shared, "archive": None if shared else pack(folder), "node_folder": str(folder)}
    finally:
        launch.stop_all(spec["stop_grace"])  # cancelled: the job's session, every process of it
        if thread.is_alive():
            thread.join(timeout=spec["stop_grace"] + 5)
        if not shared:
            shutil.rmtree(folder, ignore_errors=True)


def follow(spec: dict[str, Any], folder: Path, shared: bool, events: queue.Queue[dict[str, Any]],
           outcome: dict[str, Any]) -> None:
    """The task's job thread: write the job (node-local when the study folder is not shared), run it
    with launch.run_local and queue each event; the JobRun or the exception goes into `outcome`."""
    try:
        job_path = JobFolder(folder).job_yaml
        if not shared:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            job = local_job(spec, yaml.safe_load(spec["job_yaml"]), folder)
            job_path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
        flags, env = node_launch(spec)
        outcome["run"] = launch.run_local(job_path, folder, flags, lambda event: events.put(event) or False,
                                        env=env, stop_grace=spec["stop_grace"], module=spec["module"],
                                        launcher=spec["launcher"])
    except BaseException as exc:  # re-raised by the task, so the driver sees it
        outcome["error"] = exc


def drain(events: queue.Queue[dict[str, Any]], wait: float) -> list[dict[str, Any]]:
    """The events queued now, waiting up to `wait` s for the first."""
    try:
        batch = [events.get(timeout=wait)]
    except queue.Empty:
        return []
    while True:
        try:
            batch.append(events.get_nowait())
        except queue.Empty:
            return batch
