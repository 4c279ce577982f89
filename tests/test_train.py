"""The fine-tuning job, run for real on tiny models: schedules, refusals, events, results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from helpers import REPO, chat, job_tree, memorization_samples, run_module, write_jsonl, write_yaml
from lora_sweep.job import data as D
from lora_sweep.job import samples as S
from lora_sweep.job import train as T
from lora_sweep.config.files import validate_job
from lora_sweep.job.evaluate import eval_loss
from lora_sweep.events import read_events

ACCELERATE_CPU = ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no", "--num_cpu_threads_per_process", "2"]


def lr_curve(scheduler_type: str, warmup: int, steps: int = 10, lr: float = 1.0) -> list[float]:
    """The learning rate at steps 0..steps-1 of the schedule the job would build."""
    job = validate_job({"data": {"dataset": "d"}, "training": {
        "lr_scheduler_type": scheduler_type, "num_warmup_steps": warmup, "learning_rate": lr}})
    n_warmup, _ = T.warmup_steps(job, steps)
    args = T.training_arguments(job, REPO / "unused", steps, n_warmup, torch.float32)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.get_warmup_steps(steps), steps)
    curve = []
    for _ in range(steps):
        curve.append(round(scheduler.get_last_lr()[0], 6))
        optimizer.step(); scheduler.step()
    return curve


def test_four_scheduler_shapes():
    # plain linear / cosine ignore num_warmup_steps, as the reference says
    assert lr_curve("linear", 4) == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert lr_curve("linear_with_warmup", 4) == [0.0, 0.25, 0.5, 0.75, 1.0, 0.833333, 0.666667, 0.5, 0.333333, 0.166667]
    cosine = lr_curve("cosine", 4)
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5) and cosine[9] == pytest.approx(0.024472, abs=1e-6)
    warm = lr_curve("cosine_with_warmup", 4)
    assert warm[:5] == [0.0, 0.25, 0.5, 0.75, 1.0] and warm[7] == pytest.approx(0.5)


def test_warmup_longer_than_the_run_is_clamped():
    job = validate_job({"data": {"dataset": "d"}, "training": {"lr_scheduler_type": "linear_with_warmup"}})
    steps, warning = T.warmup_steps(job, 30)
    assert steps == 30
    assert warning == ("num_warmup_steps (400) is longer than the run (30 steps): clamped to 30, "
                       "so the learning rate rises for the whole run")
    assert T.warmup_steps(job, 500) == (400, None)


def test_planned_steps_from_epochs():
    job = validate_job({"data": {"dataset": "d", "train_batch_size": 4},
                        "training": {"epochs": 2.5, "gradient_accumulation_steps": 2}})
    assert T.plan_steps(job, train_rows=40, world_size=1) == 13  # 10 batches -> 5 steps an epoch
    assert T.plan_steps(job, train_rows=40, world_size=2) == 5
    fixed = validate_job({"data": {"dataset": "d"}, "training": {"num_training_steps": 7}})
    assert T.plan_steps(fixed, train_rows=40, world_size=1) == 7


@pytest.mark.integration
def test_loss_goes_down_and_adapter_reproduces_best_eval(tiny_llama, chat_data, tmp_path):
    job = validate_job(job_tree(tiny_llama, chat_data, tmp_path / "out", num_training_steps=24, eval_steps=4,
                                save_steps=8, learning_rate=3e-2, lr_scheduler_type="linear_with_warmup",
                                num_warmup_steps=2, early_stopping_patience=0))
    result = T.run(job)
    evals = [e for e in read_events(tmp_path / "out/events.jsonl") if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [4, 8, 12, 16, 20, 24]
    losses = [e["eval_loss"] for e in evals]
    assert losses[-1] < losses[0] - 0.3  # it learns
    best = min(evals, key=lambda e: e["eval_loss"])
    assert (result["best_step"], result["best_eval_loss"]) == (best["step"], best["eval_loss"])
    assert result["best_perplexity"] == pytest.approx(math.exp(best["eval_loss"]))
    assert result["steps_run"] == 24 and result["stop_reason"] == "completed"
    assert result["train_tokens"] == 24 * 2 * 32 and result["train_tokens_per_s"] > 0
    assert result["peak_memory_mb"] > 0
    trains = [e for e in read_events(tmp_path / "out/events.jsonl") if e["event"] == "train"]
    assert [e["lr"] for e in trains[:3]] == pytest.approx([0.0, 1.5e-2, 3e-2])  # warmup 2 steps, then decay
    assert json.loads((tmp_path / "out/result.json").read_text())["best_eval_loss"] == result["best_eval_loss"]

    # the saved adapter, loaded by PEFT itself into the base model, gives the best eval loss again
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "out/adapter")
    model.eval()
    rows = D.prepare(job.data, job.training.seed, tok).test
    assert eval_loss(model, rows, job.data.test_batch_size, tok.pad_token_id) == pytest.approx(result["best_eval_loss"], rel=1e-4)
    assert (tmp_path / "out/adapter/adapter_model.safetensors").is_file()


@pytest.mark.integration
def test_early_stopping_and_clamped_warmup(tiny_llama, chat_data, tmp_path):
    # a learning rate of zero after warmup never improves: patience 2 stops at the third eval
    job = validate_job(job_tree(tiny_llama, chat_data, tmp_path / "out", num_training_steps=40, eval_steps=2,
                                save_steps=2, learning_rate=1e-9, early_stopping_patience=2,
                                lr_scheduler_type="cosine_with_warmup", num_warmup_steps=400))
    result = T.run(job)
    events = read_events(tmp_path / "out/events.jsonl")
    assert result["stop_reason"] == "early_stopping" and result["steps_run"] < 40
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert warnings == ["num_warmup_steps (400) is longer than the run (40 steps): clamped to 40, "
                        "so the learning rate rises for the whole run"]
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "done"
    assert any(e["event"] == "checkpoint" for e in events)


@pytest.mark.integration
def test_non_finite_loss_stops_with_error(tiny_llama, chat_data, tmp_path):
    tree = job_tree(tiny_llama, chat_data, tmp_path / "out", learning_rate=1e38, max_grad_norm=0,
                    num_training_steps=30, eval_steps=10, save_steps=10)
    proc = run_module(["train", str(write_yaml(tmp_path / "job.yaml", tree))])
    assert proc.returncode == 1
    events = read_events(tmp_path / "out/events.jsonl")
    assert events[-1]["event"] == "error"
    assert "NonFiniteLoss: training loss is nan" in events[-1]["message"]
    assert "error: training loss is nan at step" in proc.stderr
    assert not (tmp_path / "out/result.json").exists()


@pytest.mark.integration
def test_bad_data_is_reported_and_nothing_written(tiny_llama, chat_data, tmp_path):
    (chat_data / "test.json").write_text('{"messages": [{"role": "bot", "content": "x"}]}\n')
    tree = job_tree(tiny_llama, chat_data, tmp_path / "out")
    proc = run_module(["train", str(write_yaml(tmp_path / "job.yaml", tree))])
    assert proc.returncode == 2
    assert f"{chat_data / 'test.json'}:1: messages[0].role must be \"user\", \"assistant\" or \"system\", got 'bot'" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.integration
def test_flat_lora_yaml_on_phi3_through_accelerate_launch(tiny_phi3, chat_data, tmp_path):
    flat = {"finetune_dataset": str(chat_data), "finetune_train_seqlen": 32, "finetune_test_seqlen": 32,
            "finetune_train_batch_size": 2, "num_training_steps": 4, "eval_steps": 2, "save_steps": 4,
            "learning_rate": 1e-2, "system_prompt": "Answer briefly."}
    job = write_yaml(tmp_path / "lora.yaml", flat)
    env = {**os.environ, "LORA_SWEEP_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *ACCELERATE_CPU, "-m", "lora_sweep.job.train", str(job),
           f"model.name_or_path={tiny_phi3}", "lora.target_modules=[qkv_proj, o_proj]", f"output_dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    result = json.loads((out / "result.json").read_text())
    assert result["steps_run"] == 4 and [e["step"] for e in result["evals"]] == [2, 4]
    adapter = json.loads((out / "adapter/adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["o_proj", "qkv_proj"] and adapter["r"] == 16
    ran = (out / "config.yaml").read_text()
    assert "system_prompt: Answer briefly." in ran and "num_warmup_steps: 400" in ran  # every default written
    assert len(list((tmp_path / "cache/tokenized").glob("*.pt"))) == 1


LONG = "The whale likes a deep, dark and very old blue."


def test_a_max_new_tokens_shorter_than_the_answers_is_named_with_what_would_fit(tiny_llama, chat_data, tmp_path):
    from lora_sweep.job.evaluate import GenerationMetric, check_scorer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)

    def warning(max_new_tokens: int) -> str | None:
        tree = {**job_tree(tiny_llama, chat_data, tmp_path / "job"),
                "objective": {"metric": "token_f1", "max_new_tokens": max_new_tokens}}
        job = validate_job(tree)
        samples = S.load_samples(job.data)
        metric = GenerationMetric(job.objective, job.data, job.training.seed, samples[1],
                                  check_scorer(job.objective, samples[1]))
        return metric.cut_warning(tokenizer)

    assert warning(4) == ("objective.max_new_tokens (4) is shorter than 8 of the 8 reference answers scored (the "
                          "longest: 5 tokens): an answer as long as its reference is cut off before it ends; 5 would "
                          "fit them all")
    assert warning(5) is None  # every answer of the memorization set is 5 tokens
    write_jsonl(chat_data / "test.json", [*memorization_samples(), chat("colour of the whale?", LONG)])
    longest = len(tokenizer(LONG, add_special_tokens=False).input_ids)
    assert longest > 5 and warning(5) == (
        f"objective.max_new_tokens (5) is shorter than 1 of the 9 reference answers scored (the longest: {longest} "
        f"tokens): an answer as long as its reference is cut off before it ends; {longest} would fit them all")
