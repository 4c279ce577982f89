"""The cluster recipes under deploy/: every YAML parses, the manifests hold the fields that make
them work (kinds, the worker command, the Secret, the shared volume, names that match across
files), every study YAML validates, the shell scripts parse, and the Slurm script refuses a
storage that several machines cannot share. `kubectl kustomize` renders the Kubernetes recipes
offline where kubectl is installed. The integration tests run the worker script (through the
Slurm script, as an array task would) against the PostgreSQL server the suite starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
import yaml

from helpers import REPO, study_tree, write_yaml
from lora_sweep.config.study import load_study

DEPLOY = REPO / "deploy"
SBATCH = DEPLOY / "slurm/lora_sweep.sbatch"
START_OR_JOIN = DEPLOY / "common/start_or_join.sh"


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def only(path: Path) -> dict:
    (doc,) = documents(path)
    return doc


def generated(kustomization: Path) -> dict[str, dict]:
    """A kustomization's configMapGenerator entries by name."""
    return {g["name"]: g for g in only(kustomization).get("configMapGenerator", [])}


def named(items: list[dict], name: str) -> dict:
    (item,) = [i for i in items if i["name"] == name]
    return item


def mount_of(container: dict, volumes: list[dict], key: str, value: str) -> str:
    """Where `container` mounts the volume whose `key` source names `value` (configMap name,
    secret secretName, persistentVolumeClaim claimName)."""
    field = {"configMap": "name", "secret": "secretName", "persistentVolumeClaim": "claimName"}[key]
    (volume,) = [v for v in volumes if v.get(key, {}).get(field) == value]
    return named(container["volumeMounts"], volume["name"])["mountPath"]


STUDY_YAMLS = sorted(p for p in DEPLOY.rglob("*.yaml") if "study" in (documents(p) or [{}])[0])


# ---------------------------------------------------------------- every file


def test_every_yaml_under_deploy_parses_and_every_study_validates():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "ray/rayjob.yaml", "ray/study.yaml", "ray/kustomization.yaml", "k8s/job.yaml", "k8s/study.yaml",
        "k8s/kustomization.yaml", "slurm/study.yaml", "common/pvc.yaml", "common/kustomization.yaml"}
    for path in files:
        assert documents(path), path
    assert [p.relative_to(DEPLOY).as_posix() for p in STUDY_YAMLS] == ["k8s/study.yaml", "ray/study.yaml",
                                                                          "slurm/study.yaml"]
    for path in STUDY_YAMLS:  # data paths need not exist to load: they are checked when a sweep starts
        config = load_study(path)
        assert config.study.storage is None or not urlsplit(config.study.storage).password, path


def test_shell_scripts_parse():
    for script in (SBATCH, START_OR_JOIN):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("recipe, kinds", [("k8s", ["ConfigMap", "ConfigMap", "PersistentVolumeClaim", "Job"]),
                                           ("ray", ["ConfigMap", "ConfigMap", "PersistentVolumeClaim", "RayJob"])])
def test_kustomize_renders_the_kubernetes_recipes(recipe, kinds):
    proc = subprocess.run(["kubectl", "kustomize", str(DEPLOY / recipe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rendered = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in rendered] == kinds
    scripts = next(d for d in rendered if d["metadata"]["name"] == "lora-sweep-scripts")
    assert scripts["data"]["start_or_join.sh"] == START_OR_JOIN.read_text()  # the script, whole


# ---------------------------------------------------------------- Kubernetes: workers of a Job


def test_k8s_job_runs_indexed_workers_with_the_password_from_a_secret():
    job = only(DEPLOY / "k8s/job.yaml")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] >= 2
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    (worker,) = pod["containers"]
    volumes = pod["volumes"]
    scripts = mount_of(worker, volumes, "configMap", "lora-sweep-scripts")
    study_map = next(iter(generated(DEPLOY / "k8s/kustomization.yaml")))
    config_dir = mount_of(worker, volumes, "configMap", study_map)
    assert worker["command"] == ["bash", f"{scripts}/start_or_join.sh", f"{config_dir}/study.yaml", "$(WORKER_INDEX)"]
    assert generated(DEPLOY / "k8s/kustomization.yaml")[study_map]["files"] == ["study.yaml"]
    assert generated(DEPLOY / "common/kustomization.yaml")["lora-sweep-scripts"]["files"] == ["start_or_join.sh"]
    env = {e["name"]: e for e in worker["env"]}
    assert env["WORKER_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    url = urlsplit(env["LORA_SWEEP_STORAGE"]["value"])
    assert url.scheme == "postgresql" and url.username and url.password is None  # no password in the manifest
    secret_dir = mount_of(worker, volumes, "secret", "lora-sweep-postgres")
    assert env["LORA_SWEEP_STORAGE_PASSWORD_FILE"]["value"] == f"{secret_dir}/password"  # the Secret's key
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    shared = mount_of(worker, volumes, "persistentVolumeClaim", only(DEPLOY / "common/pvc.yaml")["metadata"]["name"])
    study = load_study(DEPLOY / "k8s/study.yaml")
    assert study.study.storage is None  # from $LORA_SWEEP_STORAGE
    for path in (study.study.dir, study.data.train_file, env["HF_HOME"]["value"]):
        assert Path(path).is_relative_to(shared), path  # outlives the pod, seen by every pod
    assert pod["terminationGracePeriodSeconds"] > study.study.stop_grace  # SIGTERM: trials stopped and recorded


# ---------------------------------------------------------------- Ray: a RayJob


def test_rayjob_runs_the_sweep_as_its_driver_with_gpu_trials_on_a_shared_volume():
    job = only(DEPLOY / "ray/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"] == "python -m lora_sweep run /config/study.yaml"
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    (study_map,) = generated(DEPLOY / "ray/kustomization.yaml")
    assert only(DEPLOY / "ray/kustomization.yaml")["generatorOptions"]["disableNameSuffixHash"] is True
    assert mount_of(head["containers"][0], head["volumes"], "configMap", study_map) == "/config"
    claim = only(DEPLOY / "common/pvc.yaml")["metadata"]["name"]
    shared = {mount_of(head["containers"][0], head["volumes"], "persistentVolumeClaim", claim)}
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        shared.add(mount_of(pod["containers"][0], pod["volumes"], "persistentVolumeClaim", claim))
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert len(shared) == 1  # the same path on the head and every worker

    config = load_study(DEPLOY / "ray/study.yaml")
    ray = config.study.ray
    assert config.study.executor == "ray" and ray.address == "auto" and ray.shared_dir is True
    assert ray.resources_per_trial["GPU"] > 0
    worker_gpus = min(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
                      for g in cluster["workerGroupSpecs"])
    assert ray.resources_per_trial["GPU"] <= worker_gpus  # a trial fits on a worker
    assert Path(config.study.dir).is_relative_to(shared.pop())
    image = (DEPLOY / "Dockerfile").read_text().split("FROM rayproject/ray:", 1)[1].split("-", 1)[0]
    assert cluster["rayVersion"] == image  # the cluster's Ray is the image's


# ---------------------------------------------------------------- Slurm: an sbatch array


def sbatch_as_bash(env: dict[str, str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The sbatch script run by bash, as a task of the array would run it (without Slurm)."""
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["bash", str(SBATCH), *args], capture_output=True, text=True, timeout=120,
                          env={**base, **env}, cwd=cwd)


def test_sbatch_script_is_an_array_of_gpu_tasks():
    directives = [line.split(None, 1)[1] for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "--array=0-3" in directives and "--gres=gpu:1" in directives
    assert "--signal=B:TERM@120" in directives  # the sweep, exec'ed, gets SIGTERM before the time limit
    assert 'exec bash "$repo/deploy/common/start_or_join.sh"' in SBATCH.read_text()
    text = START_OR_JOIN.read_text()
    assert 'exec "$python" -m lora_sweep worker "$config" "$@"' in text
    assert 'exec "$python" -m lora_sweep run "$config" "$@"' in text
    assert load_study(DEPLOY / "slurm/study.yaml").study.storage is None  # from $LORA_SWEEP_STORAGE


@pytest.mark.parametrize("storage, expected", [
    (None, "(got nothing)"),
    ("sqlite:///studies/s.db", "(got sqlite:///studies/s.db)"),
])
def test_sbatch_refuses_a_storage_other_machines_cannot_share(tmp_path, storage, expected):
    env = {"LORA_SWEEP_STORAGE": storage} if storage else {}
    proc = sbatch_as_bash(env, "deploy/slurm/study.yaml")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: set LORA_SWEEP_STORAGE to the study's PostgreSQL URL (postgresql://user@host:port/db): workers "
        f"on several machines share a server storage, not a file {expected}")
    assert proc.stdout == ""


def test_sbatch_refuses_a_password_file_it_cannot_read(tmp_path):
    missing = tmp_path / "pgpass"
    proc = sbatch_as_bash({"LORA_SWEEP_STORAGE": "postgresql://lora@db/lora_sweep",
                           "LORA_SWEEP_STORAGE_PASSWORD_FILE": str(missing)}, "deploy/slurm/study.yaml")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: LORA_SWEEP_STORAGE_PASSWORD_FILE names {missing}, which cannot be read here"
    assert list(tmp_path.iterdir()) == []


def test_sbatch_without_a_study_says_how_to_call_it():
    proc = sbatch_as_bash({"LORA_SWEEP_STORAGE": "postgresql://lora@db/lora_sweep"})
    assert proc.returncode != 0
    assert "usage: sbatch deploy/slurm/lora_sweep.sbatch STUDY_YAML [key.sub=value ...]" in proc.stderr


# ---------------------------------------------------------------- the worker script, for real


@pytest.mark.integration  # the CLI against a real PostgreSQL server
def test_array_tasks_start_and_join_a_postgresql_study(postgres_url, tiny_llama, chat_data, tmp_path):
    """Task 2 of an array submitted as --array=1-2 is index 1: it joins with `worker`. A missing
    study: it waits (here 0 s), then `worker` says what is missing, and no study is made (`run`
    would have made one). An existing study: it joins at once."""
    name = f"slurm-{uuid.uuid4().hex[:8]}"
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=1, name=name)
    config = write_yaml(tmp_path / "study.yaml", tree)

    def task(task_id: int) -> subprocess.Popen:
        env = {**os.environ, "LORA_SWEEP_STORAGE": postgres_url, "LORA_SWEEP_REPO": str(REPO), "PYTHON": sys.executable,
               "SLURM_ARRAY_TASK_ID": str(task_id), "SLURM_ARRAY_TASK_MIN": "1", "STUDY_WAIT_S": "0",
               "STUDY_POLL_S": "1"}
        env.pop("LORA_SWEEP_STORAGE_PASSWORD_FILE", None)
        return subprocess.Popen(["bash", str(SBATCH), str(config)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)

    joiner = task(2)
    out, err = joiner.communicate(timeout=120)
    assert joiner.returncode == 2, err
    assert f"waiting for the first worker to create the study: study {name!r} is not in {postgres_url}" in err
    assert err.strip().endswith(f"error: study {name!r} is not in {postgres_url} (it holds: "
                                f"{', '.join(optuna.get_all_study_names(postgres_url)) or 'none'})")
    assert name not in optuna.get_all_study_names(postgres_url)

    # the study made (as the first task would have): the joiner finds it at its first look, and
    # `worker` goes on to the checks after the study's; the first of them stops it here, a study
    # folder left by another storage (past it, a worker imports torch and transformers: seconds
    # each; test_workers.py runs workers to their end)
    optuna.create_study(study_name=name, storage=postgres_url)
    folder = tmp_path / "studies" / name
    folder.mkdir(parents=True)
    (folder / "storage.json").write_text('{"storage": "sqlite:///elsewhere.db"}')
    joiner = task(2)
    out, err = joiner.communicate(timeout=180)
    assert joiner.returncode == 2, err[-3000:]
    assert "(index 1)" in err and "waiting for the first worker" not in err
    assert err.strip().endswith(f"error: {folder} holds the trials of the study in sqlite:///elsewhere.db, not "
                                f"{postgres_url}: give this study its own study.dir or study.name"), err
    assert optuna.load_study(study_name=name, storage=postgres_url).trials == []
