"""study.launcher: a single-process job started directly (one interpreter, accelerate's own
environment) trains exactly as under `accelerate launch`; multi-process jobs keep the launcher."""

from __future__ import annotations

import os

import pytest

from helpers import chat, job_tree, write_jsonl, write_yaml
from lora_sweep import launch
from lora_sweep.events import read_events
from lora_sweep.launch import command, direct_env, launcher_args

CPU_FLAGS = launcher_args(None, cpu_threads=2, port=0)


def test_direct_env_is_what_accelerate_launch_sets_for_one_cpu_process():
    env = direct_env(tuple(CPU_FLAGS))
    assert env["ACCELERATE_USE_CPU"] == "True" and env["OMP_NUM_THREADS"] == "2"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no" and env["ACCELERATE_DYNAMO_BACKEND"] == "NO"
    assert all(os.environ.get(k) != v for k, v in env.items())  # only what it adds or changes


def test_direct_starts_the_job_module_and_ddp_keeps_accelerate(tmp_path):
    cmd, env = command(tmp_path / "job.yaml", CPU_FLAGS, "lora_sweep.train", "direct")
    assert cmd[1:] == ["-m", "lora_sweep.train", str(tmp_path / "job.yaml")] and env
    ddp = launcher_args([0, 1], cpu_threads=1, port=29511)
    cmd, env = command(tmp_path / "job.yaml", ddp, "lora_sweep.train", "direct")
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd and env == {}
    cmd, _ = command(tmp_path / "job.yaml", CPU_FLAGS, "lora_sweep.train", "accelerate")
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]


@pytest.mark.integration
def test_direct_and_accelerate_launch_train_the_same_curve(tiny_llama, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    samples = [chat(f"Question {i}: what is {i} plus {i}?", f"It is {2 * i}.") for i in range(12)]
    write_jsonl(data / "train.json", samples)
    write_jsonl(data / "test.json", samples[:4])
    curves = {}
    for launcher in ("accelerate", "direct"):
        out = tmp_path / launcher
        out.mkdir()
        tree = job_tree(tiny_llama, data, out, num_training_steps=6, eval_steps=3, save_steps=3, learning_rate=0.02)
        job = write_yaml(out / "job.yaml", tree)
        run = launch.run_job(job, out, CPU_FLAGS, lambda event: False, launcher=launcher)
        assert run.returncode == 0, run.log_tail
        events = read_events(out / "events.jsonl")
        curves[launcher] = ([e["loss"] for e in events if e["event"] == "train"],
                            [e["eval_loss"] for e in events if e["event"] == "eval"])
    (train_a, eval_a), (train_d, eval_d) = curves["accelerate"], curves["direct"]
    assert len(train_a) == 6 and len(eval_a) == 2 and train_a[-1] < train_a[0]
    # same seed, same threads: the same curve (float noise only)
    assert train_d == pytest.approx(train_a, rel=1e-5) and eval_d == pytest.approx(eval_a, rel=1e-5)
