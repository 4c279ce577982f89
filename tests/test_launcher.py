"""study.launcher: a single-process job started directly (one interpreter, accelerate's own
environment) or forked from the warm runner (no interpreter start, no imports) trains exactly as
under `accelerate launch`; multi-process jobs keep the launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import chat, job_tree, write_jsonl, write_yaml
from lora_sweep.launch import local as launch
from lora_sweep.events import read_events
from lora_sweep.launch.local import command, direct_env, job_env, launcher_args

CPU_FLAGS = launcher_args(None, cpu_threads=2, port=0)


def test_direct_env_is_what_accelerate_launch_sets_for_one_cpu_process():
    env = direct_env(tuple(CPU_FLAGS))
    assert env["ACCELERATE_USE_CPU"] == "True" and env["OMP_NUM_THREADS"] == "2"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no" and env["ACCELERATE_DYNAMO_BACKEND"] == "NO"
    assert all(os.environ.get(k) != v for k, v in env.items())  # only what it adds or changes


def test_direct_starts_the_job_module_and_ddp_keeps_accelerate(tmp_path):
    cmd, env = command(tmp_path / "job.yaml", CPU_FLAGS, "lora_sweep.job.train", "direct")
    assert cmd[1:] == ["-m", "lora_sweep.job.train", str(tmp_path / "job.yaml")] and env
    ddp = launcher_args([0, 1], cpu_threads=1, port=29511)
    cmd, env = command(tmp_path / "job.yaml", ddp, "lora_sweep.job.train", "direct")
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd and env == {}
    cmd, _ = command(tmp_path / "job.yaml", CPU_FLAGS, "lora_sweep.job.train", "accelerate")
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]


def test_only_a_job_that_quantizes_imports_bitsandbytes(tmp_path):
    """PEFT imports bitsandbytes wherever it is installed (about a second per job): a job whose file
    does not ask for a 4-bit base is told to keep it out, and its interpreter does: the job package
    hides it from `importlib.util.find_spec`, which is how PEFT and transformers look for it."""
    pytest.importorskip("bitsandbytes")
    probe = "import importlib.util, lora_sweep.job; print(importlib.util.find_spec('bitsandbytes') is not None)"
    imported = {}
    for name, lora in (("lora", {"r": 8}), ("qlora", {"r": 8, "load_in_4bit": True})):
        env = job_env(write_yaml(tmp_path / f"{name}.yaml", {"lora": lora}))
        assert env["LORA_SWEEP_PARENT_PID"] == str(os.getpid())
        out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True,
                             check=True)
        imported[name] = out.stdout.split()[-1]
    assert imported == {"lora": "False", "qlora": "True"}
    (tmp_path / "broken.yaml").write_text("lora: [", encoding="utf-8")
    assert job_env(tmp_path / "broken.yaml")["LORA_SWEEP_NO_BITSANDBYTES"] == "1"  # it fails on its file anyway


@pytest.mark.integration
def test_under_the_warm_launcher_a_qlora_job_starts_in_its_own_interpreter(tiny_llama, chat_data, tmp_path):
    """The warm runner imports no bitsandbytes, so it forks only jobs that do not quantize: a QLoRA job
    under study.launcher warm runs as `direct` would, with bitsandbytes, and trains."""
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "qlora"
    out.mkdir()
    tree = job_tree(tiny_llama, chat_data, out, num_training_steps=2, eval_steps=2, save_steps=2)
    tree["lora"].update(load_in_4bit=True)
    run = launch.run_local(write_yaml(out / "job.yaml", tree), out, CPU_FLAGS, lambda event: False, launcher="warm")
    assert run.returncode == 0, run.log_tail
    log = (out / "train.log").read_text()
    assert "the warm runner's copy" not in log  # loaded by the job itself: no runner behind it
    result = json.loads((out / "result.json").read_text())
    assert result["variant"]["load_in_4bit"] is True and result["best_step"] == 2


@pytest.mark.integration
def test_every_launcher_trains_the_same_curve(tiny_llama, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    samples = [chat(f"Question {i}: what is {i} plus {i}?", f"It is {2 * i}.") for i in range(12)]
    write_jsonl(data / "train.json", samples)
    write_jsonl(data / "test.json", samples[:4])
    curves = {}
    for launcher in ("accelerate", "direct", "warm"):
        out = tmp_path / launcher
        out.mkdir()
        tree = job_tree(tiny_llama, data, out, num_training_steps=6, eval_steps=3, save_steps=3, learning_rate=0.02)
        job = write_yaml(out / "job.yaml", tree)
        run = launch.run_local(job, out, CPU_FLAGS, lambda event: False, launcher=launcher)
        assert run.returncode == 0, run.log_tail
        events = read_events(out / "events.jsonl")
        curves[launcher] = ([e["loss"] for e in events if e["event"] == "train"],
                            [e["eval_loss"] for e in events if e["event"] == "eval"])
    # the warm runner loaded the tokenizer and the base model once; its job used them
    log = (tmp_path / "warm" / "train.log").read_text()
    assert f"tokenizer {tiny_llama}: the warm runner's copy" in log and f"model {tiny_llama}: the warm runner's copy" in log
    # and it runs without bitsandbytes (QLoRA jobs start in their own interpreter)
    environ = Path(f"/proc/{launch.warm._runner.proc.pid}/environ").read_bytes().split(b"\0")
    assert b"LORA_SWEEP_NO_BITSANDBYTES=1" in environ
    (train_a, eval_a) = curves["accelerate"]
    assert len(train_a) == 6 and len(eval_a) == 2 and train_a[-1] < train_a[0]
    # same seed, same threads: the same curve (float noise only)
    for launcher in ("direct", "warm"):
        train, evals = curves[launcher]
        assert train == pytest.approx(train_a, rel=1e-5) and evals == pytest.approx(eval_a, rel=1e-5), launcher


def session_of(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[3])


@pytest.mark.integration
def test_a_warm_job_is_a_process_of_its_own_and_stops_with_its_group(tiny_llama, chat_data, tmp_path):
    # a bad job: its own exit code and its error in its own log, and the runner forks the next one
    bad = write_yaml(tmp_path / "bad.yaml", {**job_tree(tiny_llama, chat_data, tmp_path / "bad"), "lora": {"r": -1}})
    run = launch.run_local(bad, tmp_path, CPU_FLAGS, lambda event: False, launcher="warm")
    assert run.returncode == 2 and "error: " in run.log_tail and "lora.r" in run.log_tail

    # a long job, pruned at its first train event: SIGTERM to its session ends it, as a launched job
    out = tmp_path / "long"
    out.mkdir()
    job = write_yaml(out / "job.yaml", job_tree(tiny_llama, chat_data, out, num_training_steps=10_000))
    seen = {}

    def on_event(event):
        if event["event"] == "train":
            (p,) = launch._running
            seen.update(pid=p.pid, session=session_of(p.pid), parent=os.getppid())
            return True
        return False

    began = time.monotonic()
    run = launch.run_local(job, out, CPU_FLAGS, on_event, launcher="warm", stop_grace=5)
    assert run.stopped and run.returncode == -signal.SIGTERM and time.monotonic() - began < 60
    assert seen["session"] == seen["pid"] != os.getpid()  # it leads its own session, like a launched job
    assert not os.path.exists(f"/proc/{seen['pid']}")  # and is gone, reaped by the runner
    assert "Traceback" not in run.log_tail


@pytest.mark.integration
def test_a_warm_job_starts_with_the_runner_s_objects_frozen(tmp_path):
    # a job module of its own, found in the job's folder as `python -m` would find it
    (tmp_path / "gc_probe.py").write_text(
        "import gc, json\n"
        "def main(argv):\n"
        "    open('probe.json', 'w').write(json.dumps({'frozen': gc.get_freeze_count(), 'argv': argv}))\n"
        "    return 3\n")
    run = launch.run_local(tmp_path / "job.yaml", tmp_path, CPU_FLAGS, lambda event: False, module="gc_probe",
                         launcher="warm")
    assert run.returncode == 3, run.log_tail
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["argv"] == [str(tmp_path / "job.yaml")]
    # torch, transformers and peft, imported once by the runner: the child's collections skip them
    assert probe["frozen"] > 100_000
