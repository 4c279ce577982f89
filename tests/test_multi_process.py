"""A multi-process (DDP) trial, proven on the CPU: the code path of `study.gpus_per_trial > 1`
(`launch.launcher_args` with two GPU ids: `accelerate launch --multi_gpu --num_processes 2`) runs
here as two processes joined by torch's gloo backend, since no GPU is visible.

Not `--cpu --num_processes 2`: accelerate 1.x runs that as ONE process (its simple launcher
ignores --num_processes without an MPI hostfile), which `test_cpu_flag_with_two_processes_...`
pins, so that no test or README claims DDP from those flags.

Select them with `pytest -k "ddp or multi_process"`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from helpers import job_processes, job_tree, load, memorization_samples, study_tree, write_jsonl, write_yaml
from lora_sweep.launch import local as launch
from lora_sweep.events import read_events

pytestmark = pytest.mark.integration  # launched multi-process jobs and a sweep

STEPS = 6  # optimizer steps of each compared job: 2 epochs of the 12 training rows at 4 rows a step
ON_CPU = {"CUDA_VISIBLE_DEVICES": ""}  # what a CPU study's slot sets; no GPU here anyway


def ddp_flags() -> list[str]:
    """The accelerate flags of a 2-GPU trial (`study.gpus_per_trial: 2`), exactly."""
    return launch.launcher_args([0, 1], cpu_threads=1, port=launch.free_port())


def single_flags() -> list[str]:
    """The accelerate flags of a CPU trial: one process, one thread (2 cores, two jobs at a time)."""
    return launch.launcher_args(None, cpu_threads=1, port=0)


def run(job: dict, folder: Path, flags: list[str]) -> launch.JobRun:
    folder.mkdir(parents=True)
    path = write_yaml(folder / "job.yaml", job)
    done = launch.run_local(path, folder, flags, lambda event: False, env=ON_CPU, timeout=240)
    assert done.returncode == 0, done.log_tail
    return done


@pytest.fixture(scope="module")
def pair(tiny_llama, tmp_path_factory) -> SimpleNamespace:
    """The same job, seed and global batch of 4 rows, run as 2 processes x 2 rows and as 1
    process x 4 rows. 15 training samples pack into 12 rows of 32 tokens (a multiple of the
    global batch: no step gets a partial batch, which DDP would fill up with repeated rows); 4
    test samples into 4 rows (the last one shorter), evaluated 2 per process: both runs score the
    same two batches."""
    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "train.json", (memorization_samples() * 2)[:15])
    write_jsonl(data / "test.json", memorization_samples()[:4])

    def job(folder: Path, batch: int) -> dict:
        tree = job_tree(tiny_llama, data, folder, num_training_steps=STEPS, eval_steps=2, save_steps=2,
                        learning_rate=5e-3)
        tree["data"].update(train_batch_size=batch, test_batch_size=2)
        return tree

    with ThreadPoolExecutor(2) as pool:  # at once: most of a job's time is its single-threaded start
        two = pool.submit(run, job(root / "two", 2), root / "two", ddp_flags())
        one = pool.submit(run, job(root / "one", 4), root / "one", single_flags())
        return SimpleNamespace(root=root, two=two.result(), one=one.result())


def running(pid: int) -> bool:
    """Is `pid` a live process (a zombie, which init has yet to reap, is not)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kinds(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


def test_ddp_trial_writes_one_event_stream_one_adapter_and_its_result(pair, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder, events = pair.root / "two", pair.two.events
    # two processes really ran: each step's token count is the sum over both ranks (2 processes x
    # 2 rows x 32 tokens), not one process's 64
    trains = [e for e in events if e["event"] == "train"]
    assert [e["tokens"] for e in trains] == [128 * step for step in range(1, STEPS + 1)]
    # but only rank 0 writes events: each exactly once, in order
    assert kinds(events).count("start") == 1 and kinds(events).count("done") == 1
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    assert [e["step"] for e in trains] == list(range(1, STEPS + 1))
    assert [e["step"] for e in events if e["event"] == "eval"] == [2, 4, 6]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2, 4, 6]
    assert read_events(folder / "events.jsonl") == events  # the file holds nothing more
    assert events[0]["max_steps"] == STEPS

    result = json.loads((folder / "result.json").read_text())
    best = min((e for e in events if e["event"] == "eval"), key=lambda e: e["eval_loss"])
    assert (result["best_step"], result["best_eval_loss"]) == (best["step"], best["eval_loss"])
    assert result["steps_run"] == STEPS and result["train_tokens"] == STEPS * 128
    assert [e["step"] for e in result["evals"]] == [2, 4, 6]

    adapter = folder / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["README.md", "adapter_config.json",
                                                          "adapter_model.safetensors"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter)
    lora = [name for name, _ in model.named_parameters() if "lora_A" in name]
    assert len(lora) == 2 * 7  # 2 layers x 7 linear modules (all-linear), the job's r = 16
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16


def test_ddp_losses_match_one_process_on_the_same_global_batch(pair):
    """2 processes x 2 rows and 1 process x 4 rows see the same rows at each step: the seeded
    sampler draws one permutation, which accelerate deals out batch by batch to the ranks, and the
    row count is a multiple of the global batch. Each rank divides its summed token loss by the
    labelled tokens of both ranks and scales by the world size; DDP averages the gradients: the
    same gradient as one process's. So every training and evaluation loss must agree to float
    rounding: the all-reduce sums in another order, and Adam carries such differences on (seen:
    1e-7 relative). 1e-5 relative leaves room for other CPUs and still catches what a broken DDP
    job does: a rank that updates on its half alone, a lost gradient sync, an evaluation of one
    shard only move a loss by 1e-3 or more (the losses change by ~0.1 a step here)."""
    def losses(events: list[dict], kind: str, key: str) -> list[float]:
        return [e[key] for e in events if e["event"] == kind]

    stats = pair.one.events[0]["data"]
    assert (stats["train_rows"], stats["test_rows"]) == (12, 4)  # what the batches above rely on
    two_train, one_train = losses(pair.two.events, "train", "loss"), losses(pair.one.events, "train", "loss")
    two_eval, one_eval = losses(pair.two.events, "eval", "eval_loss"), losses(pair.one.events, "eval", "eval_loss")
    assert len(two_train) == len(one_train) == STEPS and len(two_eval) == len(one_eval) == 3
    assert two_train == pytest.approx(one_train, rel=1e-5)
    assert two_eval == pytest.approx(one_eval, rel=1e-5)
    assert one_eval[-1] < one_eval[0] - 0.05  # it learned: the match is not of two idle runs
    assert [e["tokens"] for e in pair.one.events if e["event"] == "train"] == \
        [e["tokens"] for e in pair.two.events if e["event"] == "train"]


def test_cpu_flag_with_two_processes_runs_one_process(tmp_path):
    """`accelerate launch --cpu --num_processes 2` is not DDP: one process, no WORLD_SIZE. The
    multi-process trial's flags start two ranks of a world of 2."""
    def launched(flags: list[str]) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *flags, "--no_python", "printenv", "WORLD_SIZE"]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, **ON_CPU}, cwd=tmp_path)

    cpu_two = ["--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]
    procs = [launched(cpu_two), launched(ddp_flags())]  # at once: each is seconds of imports
    cpu, ddp = (proc.communicate(timeout=120)[0].split() for proc in procs)
    assert cpu == []  # printenv found no WORLD_SIZE: a plain single process
    assert ddp == ["2", "2"]


def test_pruning_a_ddp_trial_stops_both_processes(tiny_llama, tmp_path):
    """A real sweep whose one trial runs on 2 processes (study.launcher_args) and is pruned at its
    first evaluation (a threshold no loss gets under): every process of its job is gone when the
    sweep returns, and the trial is recorded as pruned."""
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    tree = study_tree(tiny_llama, data, tmp_path / "studies", n_trials=1, devices="cpu",
                      launcher_args=ddp_flags(), pruner={"type": "threshold", "options": {"upper": 0.01}})
    tree["training"].update(num_training_steps=400, eval_steps=2, save_steps=2)
    config = write_yaml(tmp_path / "study.yaml", tree)
    job = str(tmp_path / "studies/tiny/trials/0/job.yaml")

    sweep = subprocess.Popen([sys.executable, "-m", "lora_sweep", "run", str(config)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    while sweep.poll() is None:  # the job's processes while it runs: the launcher and its two ranks
        seen.update(job_processes(job))
        time.sleep(0.1)
    out, err = sweep.communicate()
    assert sweep.returncode == 0, err[-3000:]
    assert len(seen) >= 3, seen
    assert [pid for pid in seen if running(pid)] == []

    trial = load(tmp_path / "studies").trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["stop_reason"] == "pruned"
    assert list(trial.intermediate_values) == [2]  # pruned at the first evaluation
    assert trial.user_attrs["steps_run"] < 400
    events = read_events(tmp_path / "studies/tiny/trials/0/events.jsonl")
    assert kinds(events).count("start") == 1 and events[-1]["event"] != "done"
    assert next(e for e in events if e["event"] == "train")["tokens"] == 128  # both ranks trained
