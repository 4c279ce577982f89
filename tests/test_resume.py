"""A killed job resumes from its last checkpoint: the re-run starts at the step after it, with the
same data order and RNG state, repeats no event before it, knows the evaluations before it (best,
early stopping, the kept adapter), and ends where an uninterrupted run ends; a bad checkpoint path
is refused before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO, job_tree, memorization_samples, run_cli, write_jsonl, write_yaml
from lora_sweep.job import train as T
from lora_sweep.config.files import validate_job
from lora_sweep.events import EventReader, evals_before, last_checkpoint, read_events

# Float noise between two CPU runs of the same steps: the same kernels on the same data give the
# same bits here; the bound leaves room for a reordered reduction (float32, values ~1e-2).
WEIGHT_ATOL = 1e-6
LOSS_RTOL = 1e-5


def training(**more) -> dict:
    """8 steps at a rate that overshoots: the evaluation at step 2 is the best, the one at step 4 is
    worse (5.63 then 5.75), and early stopping (patience 1) ends the job there. So a job killed after
    its checkpoint at step 2 and resumed must know step 2's evaluation to stop at 4 and keep step 2's
    adapter; 6 packed rows in batches of 2 make step 4 the first of the second epoch (a reshuffle).
    Two checkpoints kept: with one, the Trainer deletes the last at the end when it is not the best,
    and the test compares the last one's weights."""
    return {"num_training_steps": 8, "learning_rate": 0.05, "early_stopping_patience": 1, "save_total_limit": 2,
            **more}


def start_job(config: Path, log: Path) -> subprocess.Popen:
    """`python -m lora_sweep.job.train job.yaml` in a session of its own, as the launcher runs it."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "lora_sweep.job.train", str(config)], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_after_first_checkpoint(proc: subprocess.Popen, folder: Path, log: Path) -> dict:
    """SIGKILL the job's process group (a crash: no handler runs) as soon as its first `checkpoint`
    event is written; its next checkpoint is two steps and an evaluation (~0.3 s) away."""
    reader = EventReader(folder / "events.jsonl")
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        for event in reader.new():
            if event["event"] == "checkpoint":
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return event
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"the job wrote no checkpoint (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory) -> SimpleNamespace:
    """An uninterrupted job and a job killed after its first checkpoint (two processes at once), then
    the killed job's re-run from its last checkpoint, in a folder of its own as a sweep's re-run trial."""
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    whole = start_job(write_yaml(root / "whole.yaml", job_tree(tiny_llama, data, root / "whole", **training())),
                      root / "whole.log")
    killed_log = root / "killed.log"
    killed = start_job(write_yaml(root / "killed.yaml", job_tree(tiny_llama, data, root / "killed", **training())),
                       killed_log)
    seen = kill_after_first_checkpoint(killed, root / "killed", killed_log)
    checkpoint = last_checkpoint(root / "killed")
    assert whole.wait(timeout=120) == 0, (root / "whole.log").read_text()[-3000:]
    job = validate_job(job_tree(tiny_llama, data, root / "resumed",
                                **training(resume_from_checkpoint=str(checkpoint))))
    result = T.run(job)
    return SimpleNamespace(root=root, seen=seen, checkpoint=checkpoint, result=result, killed_code=killed.returncode,
                           whole=json.loads((root / "whole/result.json").read_text()),
                           events={name: read_events(root / name / "events.jsonl")
                                   for name in ("whole", "killed", "resumed")})


def steps(events: list[dict], kind: str) -> list[int]:
    return [e["step"] for e in events if e["event"] == kind]


@pytest.mark.integration
def test_the_rerun_starts_at_the_step_after_the_checkpoint(runs):
    assert runs.killed_code == -signal.SIGKILL
    killed = [e["event"] for e in runs.events["killed"]]  # killed before its next checkpoint: no done, no error
    assert "done" not in killed and "error" not in killed and killed.count("checkpoint") == 1
    assert runs.checkpoint == runs.root / "killed/checkpoints/checkpoint-2" == Path(runs.seen["path"])
    events = runs.events["resumed"]
    assert [e["event"] for e in events[:2]] == ["start", "resume"]
    resume = events[1]
    assert resume["step"] == 2 and resume["from"] == str(runs.checkpoint)
    assert [(r["step"], r["eval_loss"]) for r in resume["evals"]] == [(e["step"], e["eval_loss"])
                                                                   for e in runs.events["killed"] if e["event"] == "eval"]
    assert resume["adapter_step"] == 2  # the killed job's adapter/ was step 2's: copied
    assert steps(events, "train") == [3, 4]  # none at or before the checkpoint
    assert steps(events, "eval") == [4] and steps(events, "checkpoint") == [4]
    assert [e["best"] for e in events if e["event"] == "eval"] == [False]  # step 2 stays the best


@pytest.mark.integration
def test_the_rerun_ends_as_an_uninterrupted_run(runs):
    whole, resumed = runs.whole, runs.result
    # early stopping counts from step 2's evaluation, as in the uninterrupted run
    for key in ("best_step", "steps_run", "stop_reason", "train_tokens"):
        assert resumed[key] == whole[key], key
    assert (resumed["best_step"], resumed["steps_run"], resumed["stop_reason"]) == (2, 4, "early_stopping")
    assert [e["step"] for e in resumed["evals"]] == [e["step"] for e in whole["evals"]] == [2, 4]
    for mine, theirs in zip(resumed["evals"], whole["evals"]):
        assert mine["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=LOSS_RTOL)
    train = {e["step"]: e["loss"] for e in runs.events["whole"] if e["event"] == "train"}
    for e in runs.events["resumed"]:
        if e["event"] == "train":  # same batches, same weights: same loss
            assert e["loss"] == pytest.approx(train[e["step"]], rel=LOSS_RTOL), e["step"]
    # the trained weights at the end (the last checkpoint) and the kept adapter (step 2's, copied)
    for path in ("checkpoints/checkpoint-4/adapter_model.safetensors", "adapter/adapter_model.safetensors"):
        mine, theirs = load_file(runs.root / "resumed" / path), load_file(runs.root / "whole" / path)
        assert mine.keys() == theirs.keys() and len(mine) == 28, path
        worst = max((mine[k] - theirs[k]).abs().max().item() for k in mine)
        assert worst <= WEIGHT_ATOL, (path, worst)
    trained = load_file(runs.root / "resumed/checkpoints/checkpoint-4/adapter_model.safetensors")
    kept = load_file(runs.root / "resumed/adapter/adapter_model.safetensors")
    assert any(not torch.equal(trained[k], kept[k]) for k in kept)  # so the two checks differ


@pytest.mark.integration
def test_a_bad_checkpoint_is_refused_before_anything_is_written(tiny_llama, chat_data, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    config = write_yaml(tmp_path / "job.yaml", job_tree(tiny_llama, chat_data, out))
    not_one = tmp_path / "adapter"
    not_one.mkdir()
    (not_one / "adapter_model.safetensors").write_bytes(b"\0" * 64)  # an adapter folder is no checkpoint
    cases = {
        str(tmp_path / "gone/checkpoint-4"): f"no folder at '{tmp_path}/gone/checkpoint-4'",
        str(not_one): f"'{not_one}' is not a Trainer checkpoint of a LoRA job to resume from (a "
                      "checkpoints/checkpoint-<step> folder of a job): it has no optimizer.pt, scheduler.pt, "
                      "rng_state*.pth, trainer_state.json",
    }
    for path, problem in cases.items():
        proc = run_cli(["train", str(config), f"training.resume_from_checkpoint={path}"])
        assert proc.returncode == 2
        assert proc.stderr == f"error: training.resume_from_checkpoint: {problem}\n"
    not_one.joinpath("adapter_config.json").write_text("{}")
    proc = run_cli(["train", str(config), f"training.resume_from_checkpoint={not_one}",
                    "training.skip_finetune=true", f"model.adapter_path={not_one}"])
    assert proc.returncode == 2
    assert proc.stderr == ("error: training.resume_from_checkpoint: a job with training.skip_finetune trains "
                           "nothing to resume\n")
    assert not out.exists() and not cache.exists()


def fake_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    """The files of a Trainer checkpoint of a LoRA job (their contents do not matter here)."""
    path = folder / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (path / name).write_bytes(b"\0")
    history = [{"step": 2, "eval_loss": 1.5}, {"step": step, "eval_loss": 1.25}]
    if complete:  # the Trainer writes trainer_state.json last
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return path


def test_last_checkpoint_is_the_latest_complete_one(tmp_path):
    trial = tmp_path / "trial"
    assert last_checkpoint(trial) is None
    fake_checkpoint(trial, 2)
    ten = fake_checkpoint(trial, 10)
    fake_checkpoint(trial, 12, complete=False)  # killed while writing it
    (trial / "checkpoints/checkpoint-x").mkdir()
    assert last_checkpoint(trial) == ten  # by step, not by name: 10 after 2
    (ten / "trainer_state.json").write_text('{"global_st')  # cut short
    assert last_checkpoint(trial) == trial / "checkpoints/checkpoint-2"
    # a re-run killed before its first checkpoint: the one it resumed from
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    write_jsonl(rerun / "events.jsonl", [{"event": "start"}, {"event": "resume", "step": 2, "from": str(
        trial / "checkpoints/checkpoint-2")}])
    assert last_checkpoint(rerun) == trial / "checkpoints/checkpoint-2"


def test_evaluations_before_a_checkpoint_follow_a_chain_of_reruns(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    fake_checkpoint(first, 4)
    # no events: the losses of the log history
    assert evals_before(first / "checkpoints/checkpoint-4") == ([{"step": 2, "eval_loss": 1.5},
                                                                 {"step": 4, "eval_loss": 1.25}], None)
    fake_checkpoint(second, 8)
    write_jsonl(second / "events.jsonl", [
        {"event": "start"},
        {"event": "resume", "step": 4, "evals": [{"step": 2, "eval_loss": 1.5}, {"step": 4, "eval_loss": 1.25}],
         "adapter_step": 4},
        {"event": "train", "step": 5, "loss": 1.0},
        {"event": "eval", "step": 6, "eval_loss": 1.0, "best": True},
        {"event": "eval", "step": 8, "eval_loss": 1.1, "best": False},
        {"event": "eval", "step": 8, "eval_loss": 1.1, "score": 0.5, "best": False},  # scored at the end
        {"event": "eval", "step": 10, "eval_loss": 0.9, "best": True},  # after the checkpoint
    ])
    evals, adapter_step = evals_before(second / "checkpoints/checkpoint-8")
    assert evals == [{"step": 2, "eval_loss": 1.5}, {"step": 4, "eval_loss": 1.25}, {"step": 6, "eval_loss": 1.0},
                     {"step": 8, "eval_loss": 1.1, "score": 0.5}]
    assert adapter_step == 10  # its adapter/ is step 10's, which the next re-run evaluates again


@pytest.mark.integration
def test_varied_rows_resume_in_the_same_order(tiny_llama, chat_data, tmp_path):
    """varied_seqlen rows go in length-grouped batches, shuffled per epoch: a run resumed inside
    epoch 1 (8 rows in batches of 3: 3 steps an epoch, checkpoint 4) must draw that epoch's order as
    the uninterrupted run did (transformers' own sampler draws it from the RNG, restored too late)."""
    def job(name: str, **more) -> dict:
        tree = job_tree(tiny_llama, chat_data, tmp_path / name, num_training_steps=6, early_stopping_patience=0,
                        save_total_limit=3, **more)
        tree["data"].update(varied_seqlen=True, train_batch_size=3)
        return tree

    whole = T.run(validate_job(job("whole")))
    # the uninterrupted run's checkpoint holds what a killed run's would
    resumed = T.run(validate_job(job("resumed", resume_from_checkpoint=str(tmp_path / "whole/checkpoints/checkpoint-4"))))
    assert whole["data"]["train_rows"] == 8
    assert steps(read_events(tmp_path / "resumed/events.jsonl"), "train") == [5, 6]
    assert [e["step"] for e in resumed["evals"]] == [2, 4, 6]
    assert resumed["evals"][-1]["eval_loss"] == pytest.approx(whole["evals"][-1]["eval_loss"], rel=LOSS_RTOL)
    mine, theirs = (load_file(tmp_path / name / "checkpoints/checkpoint-6/adapter_model.safetensors")
                    for name in ("resumed", "whole"))
    assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) <= WEIGHT_ATOL
