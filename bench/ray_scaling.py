"""Benchmark 6: trials per hour with `study.executor: ray` on one node vs two.

Starts a Ray cluster on this machine (`ray start` processes with their own temp dirs, one CPU
each: `--num-cpus 1`, and a job of one thread: the trial holds CPU 1), runs the demo study on the
tiny model through the CLI (`python -m lora_sweep run`, so Ray's driver is the sweep, as a user
runs it) with `study.parallel: 2` on the head alone, then adds a second node and runs the same
study again under another name. Trials per hour = finished trials / (last trial's completion -
first trial's start), from the study database; the ratio is two nodes over one.

Both nodes share this machine's cores, so the ratio also says whether the driver and Ray leave
room for a second trial: on a 2-core machine the driver, Ray's daemons and two one-thread jobs
share 2 cores.

    python bench/ray_scaling.py                    # tiny model, 6 trials x 20 steps per arm
    python bench/ray_scaling.py --trials 8 --steps 40
    python bench/ray_scaling.py --smoke --results /tmp/r.md
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import benchlib as B

TARGET = 1.8
# A cluster of this machine only: no token file in ~/.ray, no usage report.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


# ---------------------------------------------------------------- a Ray cluster on this machine
# (tests/test_ray.py starts its cluster with these too)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(root: Path, name: str, resources: dict[str, float], port: int, head: bool) -> subprocess.Popen:
    """`ray start` for one node with 1 CPU and `resources`, its temp dir `root/name`; returns the
    `ray start` process (it exits once the node runs, leaving the node's daemons). The node's trial
    folders and tokenized cache go to `root/name-node` ($LORA_SWEEP_NODE_DIR).

    --node-ip-address 127.0.0.1: Ray 2.60 resolves it to this machine's own address for a cluster
    of several nodes, so every address is this machine's; the ports are free ones outside Ray's
    worker range (10002-19999), and a second node on the machine gets its own agent port."""
    args = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--resources", json.dumps(resources),
            "--temp-dir", str(root / name), "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats"]
    if head:
        args = ["--head", "--port", str(port), "--include-dashboard", "false", "--dashboard-port", str(free_port()),
                "--ray-client-server-port", str(free_port()), *args]
    else:
        args = ["--address", f"127.0.0.1:{port}", *args]
    env = {**os.environ, **RAY_ENV, "LORA_SWEEP_NODE_DIR": str(root / f"{name}-node")}
    with open(root / f"{name}.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def started(root: Path, name: str, proc: subprocess.Popen) -> None:
    """Wait for a `ray start`; its log's end when it failed."""
    if proc.wait(timeout=120) != 0:
        raise RuntimeError(f"ray start of {name} failed:\n" + (root / f"{name}.log").read_text()[-3000:])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name: [state, ppid, ...]; [] when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not reaped, does not count)."""
    stat = proc_stat(pid)
    return bool(stat) and stat[0] != "Z"


def cluster_pids(root: Path, port: int, name: str = "") -> set[int]:
    """The live processes of the cluster under `root` (of its node `name` only, if given): those whose
    command line names its temp dir or, for the whole cluster, its GCS port (the client server), and
    their descendants (Ray's agents and workers, the trials' jobs)."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    marks = [str(root / name)] if name else [str(root), f":{port} "]
    found = {p for p in pids if any(mark in cmdline(p) for mark in marks)} - ancestors()
    while True:
        children = {p for p in pids if proc_stat(p)[1:2] and int(proc_stat(p)[1]) in found} - found
        if not children:
            return {p for p in found if alive(p)}
        found |= children


def ancestors() -> set[int]:
    """This process and the ones above it (a command line that names the cluster's folder is not
    one of its processes)."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        stat = proc_stat(pid)
        pid = int(stat[1]) if stat else 0
    return found


def stop_pids(pids: set[int], grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL after `grace` s (Ray's gcs_server and raylet may outlive SIGTERM)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if alive(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + grace
        while time.monotonic() < end and any(alive(p) for p in pids):
            time.sleep(0.1)


@contextmanager
def local_cluster(root: Path) -> Iterator[dict[str, Any]]:
    """A head node (resource head_node) under `root`; `add(name)` adds a node. Stops exactly the
    processes it started, by their PIDs."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()  # from the ephemeral range, outside Ray's worker ports
    cluster = {"root": root, "port": port, "address": f"127.0.0.1:{port}"}
    try:
        started(root, "head", start_node(root, "head", {"head_node": 1}, port, head=True))

        def add(name: str) -> None:
            started(root, name, start_node(root, name, {f"{name}_node": 1}, port, head=False))

        cluster["add"] = add
        yield cluster
    finally:
        stop_pids(cluster_pids(root, port))


# ---------------------------------------------------------------- the two arms


def sweep(config_tree: dict[str, Any], work: Path, name: str, address: str) -> dict[str, Any]:
    """Run the study `name` through the CLI on the cluster at `address`; its trials per hour."""
    import optuna
    import yaml

    tree = json.loads(json.dumps(config_tree))
    tree["study"].update(name=name, dir=str(work / "studies"), storage=None, executor="ray",
                         ray={"address": address, "resources_per_trial": {"CPU": 1}, "shared_dir": None})
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    began = time.time()
    proc = subprocess.run([sys.executable, "-m", "lora_sweep", "run", str(path)], cwd=work, capture_output=True,
                          text=True, env={**os.environ, **RAY_ENV})
    if proc.returncode != 0:
        raise SystemExit(f"the {name} sweep failed:\n{proc.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'studies' / name}.db")
    done = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None and t.state.name == "COMPLETE"]
    first = min(t.datetime_start.timestamp() for t in done)
    last = max(t.datetime_complete.timestamp() for t in done)
    nodes = sorted({", ".join(t.user_attrs["node"]["resources"]) for t in done})
    return {"trials": len(done), "span_s": last - first, "per_hour": 3600 * len(done) / (last - first),
            "sweep_s": time.time() - began, "nodes": nodes,
            "job_s": B.median([t.user_attrs["job_wall_time_s"] for t in done])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = B.parser(__doc__)
    p.add_argument("--trials", type=int, default=6, help="trials per arm (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="training steps per trial (default: %(default)s)")
    args = p.parse_args(argv)
    if args.smoke:
        args.trials = min(args.trials, 2)

    with B.workdir(args.workdir) as work:
        args.model = args.model or "tiny"  # this benchmark is on the tiny model unless told otherwise
        model = B.model_path(args, work)
        overrides = ["study.timeout=null", f"study.n_trials={args.trials}", "study.parallel=2",
                     "study.pruner={type: none, options: {}}", "objective.baseline=false",
                     *B.smoke_overrides(model), *B.budget_overrides(2 if args.smoke else args.steps)]
        tree = B.load_demo(overrides).model_dump(mode="json")
        with local_cluster(Path(work) / "ray") as cluster:
            one = sweep(tree, work, "one-node", cluster["address"])
            cluster["add"]("second")
            two = sweep(tree, work, "two-nodes", cluster["address"])
    ratio = two["per_hour"] / one["per_hour"]
    rows = [[label, r["trials"], ", ".join(r["nodes"]), r["job_s"], r["span_s"], r["per_hour"], r["sweep_s"]]
            for label, r in (("1 node", one), ("2 nodes", two))]
    print(f"tiny-llama demo study, {args.trials} trials x {2 if args.smoke else args.steps} steps per arm, "
          f"study.parallel 2, 1 CPU per node and per trial")
    print(B.table(["arm", "trials", "nodes used", "median job s", "first start -> last end s", "trials/hour",
                   "sweep wall s"], rows))
    setup = (f"tiny-llama demo, {args.trials} trials x {2 if args.smoke else args.steps} steps per arm, parallel 2, "
             f"--num-cpus 1 per node, 1 thread per job, nodes on this machine")
    figures = (f"1 node {one['per_hour']:.0f} trials/h ({one['job_s']:.1f} s/job), 2 nodes {two['per_hour']:.0f} "
               f"trials/h ({two['job_s']:.1f} s/job; used {' + '.join(two['nodes'])})")
    row = B.conclude("6 ray scaling", args, setup, figures, ratio, "2-node / 1-node trials per hour",
                     f"ratio >= {TARGET}", ratio >= TARGET)
    return {"one": one, "two": two, "ratio": ratio, "row": row}


if __name__ == "__main__":
    main()
