"""The job as AI Toolkit users meet it: their lora.yaml unchanged (with its compare step), an
existing adapter evaluated without training, long prompts with short answers, rows of very
different lengths, ties of a coarse generation metric, and a model that is not there."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import REPO, chat, job_tree, memorization_samples, run_module, write_jsonl
from lora_sweep.job import data as D
from lora_sweep.job import evaluate as E
from lora_sweep.job import train as T
from lora_sweep.config.job import ConfigError
from lora_sweep.config.files import load_job, validate_job
from lora_sweep.events import read_events

pytestmark = pytest.mark.integration

TEMPLATE = REPO / "tests/data/aitk/lora.yaml"
FILLER = "hello world 0123456789 You are a helpful bot. "  # words the tiny tokenizer knows


def memorization_data(folder: Path) -> Path:
    folder.mkdir()
    write_jsonl(folder / "train.json", memorization_samples())
    write_jsonl(folder / "test.json", memorization_samples())
    return folder


@pytest.fixture(scope="module")
def tied_job(tiny_llama, tmp_path_factory):
    """A 6-step job whose generation metric scores every evaluation the same (a python: scorer
    that returns 0.5), while its eval loss falls."""
    root = tmp_path_factory.mktemp("tied")
    (root / "constant_scorer.py").write_text("def score(prediction, reference, sample):\n    return 0.5\n")
    data = memorization_data(root / "data")
    tree = job_tree(tiny_llama, data, root / "out", learning_rate=3e-2)
    tree["data"]["test_nsamples"] = 2
    tree["objective"] = {"metric": "python:constant_scorer:score", "max_new_tokens": 2}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        result = T.run(validate_job(tree))
    return root, tree, result


def test_on_tied_scores_the_lowest_eval_loss_is_kept(tied_job, tiny_llama):
    root, tree, result = tied_job
    evals = [e for e in read_events(root / "out/events.jsonl") if e["event"] == "eval"]
    assert [(e["step"], e["score"]) for e in evals] == [(2, 0.5), (4, 0.5), (6, 0.5)]
    lowest = min(evals, key=lambda e: e["eval_loss"])
    assert lowest["step"] != 2  # the first evaluation, which a tie used to keep, is not the lowest here
    assert (result["best_step"], result["best_eval_loss"], result["best_score"]) == (
        lowest["step"], lowest["eval_loss"], 0.5)
    assert [e["step"] for e in evals if e["best"]][-1] == lowest["step"]
    # adapter/ holds that step's weights: loaded by PEFT, it gives that step's eval loss again
    job = validate_job(tree)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), root / "out/adapter")
    rows = D.prepare(job.data, job.training.seed, tok).test
    assert E.eval_loss(model, rows, 4, tok.pad_token_id) == pytest.approx(lowest["eval_loss"], rel=1e-4)


def test_skip_finetune_evaluates_an_existing_adapter(tied_job, tmp_path):
    root, tree, trained = tied_job
    tree = {**tree, "output_dir": str(tmp_path / "eval"), "objective": {"metric": "eval_loss"}}
    tree["training"] = {**tree["training"], "skip_finetune": True}
    tree["model"] = {**tree["model"], "adapter_path": str(root / "out/adapter")}
    result = T.run(validate_job(tree))
    assert (result["steps_run"], result["best_step"], result["stop_reason"]) == (0, 0, "skip_finetune")
    assert result["best_eval_loss"] == pytest.approx(trained["best_eval_loss"], rel=1e-4)
    assert json.loads((tmp_path / "eval/result.json").read_text())["best_eval_loss"] == result["best_eval_loss"]
    events = read_events(tmp_path / "eval/events.jsonl")
    assert [e["event"] for e in events] == ["start", "eval", "done"]
    assert not (tmp_path / "eval/checkpoints").exists()

    tree["model"]["adapter_path"] = str(tmp_path)  # a folder without an adapter
    with pytest.raises(ConfigError) as error:
        T.run(validate_job({**tree, "output_dir": str(tmp_path / "none")}))
    assert str(error.value) == (f"model.adapter_path: no LoRA adapter at '{tmp_path}' (a folder with "
                                "adapter_config.json, as a job's adapter/)")
    assert not (tmp_path / "none").exists()


def test_batches_without_a_label_add_nothing(tiny_llama):
    """The job's loss (Trainer's compute_loss_func): no labelled token is a loss of 0 with no
    gradient, not transformers' 0/0 = NaN; with labels it is the model's own loss."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.tensor([[5, 9, 12, 40, 2, 7]])
    unlabelled = torch.full_like(ids, D.IGNORE)
    assert torch.isnan(model(input_ids=ids, labels=unlabelled).loss)  # what the guard is for
    loss = E.causal_lm_loss(model(input_ids=ids), unlabelled)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    labels = ids.clone()
    labels[0, :3] = D.IGNORE
    assert E.causal_lm_loss(model(input_ids=ids), labels).item() == pytest.approx(
        model(input_ids=ids, labels=labels).loss.item(), rel=1e-6)
    # Trainer's count over the accumulated batches, zero when none of them holds a label
    assert E.causal_lm_loss(model(input_ids=ids), unlabelled, torch.tensor(0)).item() == 0.0


def test_long_prompts_short_answers_packed(tiny_llama, tmp_path):
    """Packed rows of 16 tokens from 100-token prompts with one-word answers: most rows hold no
    answer token. The job ends with finite losses and says what the seqlen cut."""
    data = tmp_path / "data"
    data.mkdir()
    samples = [chat(f"{FILLER * 6}colour of the {a}?", c) for a, c in
               zip(["cat", "dog", "owl", "fox", "bee", "cow"], ["red", "green", "blue", "black", "white", "orange"])]
    write_jsonl(data / "train.json", samples)
    write_jsonl(data / "test.json", samples[:2])
    tree = job_tree(tiny_llama, data, tmp_path / "out", num_training_steps=4, eval_steps=2, save_steps=4)
    tree["data"].update(train_seqlen=16, test_seqlen=16, train_batch_size=1)
    result = T.run(validate_job(tree))
    events = read_events(tmp_path / "out/events.jsonl")
    losses = [e["loss"] for e in events if e["event"] == "train"] + [e["eval_loss"] for e in result["evals"]]
    assert len(losses) == 6 and all(0 < loss < 100 for loss in losses)
    assert result["steps_run"] == 4 and result["real_token_share"] == 1.0  # packed rows: no padding
    start = events[0]
    assert start["event"] == "start" and start["data"]["train_rows_without_labels"] > 0
    assert start["data"]["train_answers_cut"] == 6 and start["data"]["seqlen_to_keep_answers"] > 16
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert warnings == [D.answer_warning(start["data"], validate_job(tree).data)]
    assert f"of {start['data']['train_rows'] + start['data']['train_rows_without_labels']} packed train rows " \
           "hold no answer token (dropped)" in warnings[0]


def share_of(order: list[int], lengths: list[int], batch_size: int) -> float:
    """Real tokens over padded batch tokens when the rows are batched in `order`."""
    padded = sum(len(batch) * max(lengths[i] for i in batch)
                 for batch in (order[k:k + batch_size] for k in range(0, len(order), batch_size)))
    return sum(lengths) / padded


def test_varied_rows_are_batched_by_length(tiny_llama, tmp_path):
    """32 rows of about 20 and 90 tokens, one epoch in batches of 2: batches of similar rows pad
    far less than batches in shuffled order."""
    data = tmp_path / "data"
    data.mkdir()
    samples = [chat(f"{FILLER * (8 if i % 2 else 0)}colour of the {a}?", "red")
               for i, a in enumerate(["cat", "dog", "owl", "fox", "bee", "cow", "eel", "yak"] * 4)]
    write_jsonl(data / "train.json", samples)
    write_jsonl(data / "test.json", samples[:2])
    tree = job_tree(tiny_llama, data, tmp_path / "out", num_training_steps=16, eval_steps=16, save_steps=16)
    tree["data"].update(varied_seqlen=True, train_seqlen=128)
    job = validate_job(tree)
    result = T.run(job)
    lengths = D.prepare(job.data, job.training.seed, AutoTokenizer.from_pretrained(tiny_llama)).train.lengths()
    assert len(lengths) == 32 and min(lengths) < 25 and max(lengths) > 80
    generator = torch.Generator().manual_seed(0)
    shuffled = [share_of(torch.randperm(32, generator=generator).tolist(), lengths, 2) for _ in range(200)]
    without = sum(shuffled) / len(shuffled)
    assert result["real_token_share"] > without + 0.08
    assert json.loads((tmp_path / "out/result.json").read_text())["real_token_share"] == result["real_token_share"]


def test_missing_model_is_one_line_and_nothing_written(tiny_llama, chat_data, tmp_path, capsys):
    for name, why in ((str(tmp_path / "no-model"), "no such folder"),
                      ("nobody/no-such-model", "not a local folder, and not in the Hugging Face cache; "
                                               "HF_HUB_OFFLINE is set, so nothing is downloaded")):
        tree = job_tree(tiny_llama, chat_data, tmp_path / "out")
        tree["model"]["name_or_path"] = name
        job = tmp_path / "job.yaml"
        job.write_text(json.dumps(tree))
        assert T.main([str(job)]) == 2
        assert capsys.readouterr().err == f"error: model.name_or_path: no model at '{name}' ({why})\n"
        assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_the_aitk_template_trains_unchanged_and_compares(tiny_llama, chat_data, tmp_path):
    prompts = [{"query": "colour of the cat?", "response": "The cat likes red."},
               {"query": "colour of the owl?", "response": "The owl likes blue."}]
    write_jsonl(tmp_path / "compare.jsonl", prompts)
    out = tmp_path / "save"
    proc = run_module(["train", str(TEMPLATE), f"finetune_dataset={chat_data}", f"model_path={tiny_llama}",
                       f"save_dir={out}", "num_training_steps=4", "finetune_train_seqlen=32",
                       "finetune_test_seqlen=32", "eval_steps=2", "save_steps=2", "learning_rate=3e-2",
                       "compare_enabled=true", f"compare_file={tmp_path / 'compare.jsonl'}",
                       "objective.max_new_tokens=8"],
                      env={**os.environ, "LORA_SWEEP_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_events(out / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "eval"] == [2, 4]
    assert [e["message"] for e in events if e["event"] == "warning"] == [
        "num_warmup_steps (400) is longer than the run (4 steps): clamped to 4, "
        "so the learning rate rises for the whole run"]
    assert (out / "adapter/adapter_model.safetensors").is_file()
    assert "display_name: Phi-3.6-mini-instruct" in (out / "config.yaml").read_text()

    compared = [e for e in events if e["event"] == "compare"]
    assert compared == [{**compared[0], "path": str(out / "compare.jsonl"), "prompts": 2, "temperature": 0.9}]
    records = [json.loads(line) for line in (out / "compare.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["reference"]) for r in records] == [
        ([{"role": "user", "content": p["query"]}], p["response"]) for p in prompts]
    assert all(set(r) == {"prompt", "reference", "base", "adapter"} for r in records)
    result = json.loads((out / "result.json").read_text())
    assert result["compare_path"] == str(out / "compare.jsonl") and result["steps_run"] == 4
    # sampled with training.seed: the same answers again
    job = load_job(out / "config.yaml")
    again = E.compare(job, out / "adapter", E.read_compare(job.compare, job.data))
    assert again == records


def test_a_bad_compare_file_is_refused_before_anything_is_written(tiny_llama, chat_data, tmp_path):
    (tmp_path / "compare.jsonl").write_text('{"query": "hi"}\n{"question": "x"}\nnot json\n', encoding="utf-8")
    tree = job_tree(tiny_llama, chat_data, tmp_path / "out")
    tree["compare"] = {"enabled": True, "file": str(tmp_path / "compare.jsonl")}
    with pytest.raises(ConfigError) as error:
        T.run(validate_job(tree))
    path = tmp_path / "compare.jsonl"
    assert error.value.problems == [
        f"{path}:2: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects "
        '(a line is {"query": ..., "response": ...} or a chat sample)',
        f"{path}:3: not valid JSON (Expecting value at column 1)"]
    assert not (tmp_path / "out").exists()

