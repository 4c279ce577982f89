"""Evaluation beyond the loss: the model answers each test conversation, a scorer compares
the answer with the reference (the conversation's last assistant message).

    python -m lora_sweep.evaluate job.yaml [--adapter DIR]     # the base-model baseline

Generation is greedy and batched (left padding, answers decoded without special tokens).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lora_sweep import data as D
from lora_sweep.config import ConfigError, DataSection, JobConfig, ObjectiveSection, load_job
from lora_sweep.models import load_for_inference
from lora_sweep.scorers import Scorer, load_scorer

log = logging.getLogger("lora_sweep.evaluate")


@dataclass
class Prompt:
    messages: list[dict]  # the conversation up to its last assistant message
    reference: str  # that message
    sample: dict  # the whole test sample, for user scorers


def prompts(data: DataSection, seed: int, samples: list[dict], system_prompt: str | None) -> list[Prompt]:
    """The test conversations to answer: the same samples the loss is measured on."""
    out = []
    for sample in D.select(samples, data.test_nsamples, seed):
        messages = D.with_system_prompt(sample["messages"], system_prompt)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        out.append(Prompt(messages[:last], messages[last]["content"], sample))
    return out


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos and the model's generation eos ids."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted({*ids, tokenizer.eos_token_id} - {None})


@torch.no_grad()
def generate(model: Any, tokenizer: Any, conversations: list[list[dict]], max_new_tokens: int,
             batch_size: int) -> list[str]:
    """Greedy answers to each conversation, batched; shortest prompts together to pad little."""
    template = D.chat_template(tokenizer)
    texts = [D.render(tokenizer, c, template, generation_prompt=True) for c in conversations]
    encoded = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    device = next(model.parameters()).device
    eos = stop_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding: every answer starts at the same column
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    model.train(was_training)
    return answers


class GenerationMetric:
    """Scores a model on the test conversations with the objective's scorer."""

    def __init__(self, objective: ObjectiveSection, data: DataSection, seed: int, test_samples: list[dict]):
        self.objective = objective
        self.scorer: Scorer = load_scorer(objective.metric, objective.regex)
        self.prompts = prompts(data, seed, test_samples, data.inference_system_prompt or data.system_prompt)

    def __call__(self, model: Any, tokenizer: Any) -> tuple[float, list[dict[str, Any]]]:
        """Mean score and per-sample records (input, reference, prediction, score)."""
        answers = generate(model, tokenizer, [p.messages for p in self.prompts], self.objective.max_new_tokens,
                           self.objective.generation_batch_size)
        records = []
        for prompt, answer in zip(self.prompts, answers):
            score = float(self.scorer(answer, prompt.reference, prompt.sample))
            records.append({"input": prompt.messages, "reference": prompt.reference, "prediction": answer,
                            "score": score})
        return sum(r["score"] for r in records) / len(records), records


def check_scorer(objective: ObjectiveSection, test_samples: list[dict]) -> None:
    """Try the scorer on the first test answer against itself, before anything runs: a user
    scorer that fails or returns a non-number is reported now, not in every trial."""
    if not objective.is_generation:
        return
    scorer = load_scorer(objective.metric, objective.regex)
    sample = test_samples[0]
    reference = [m for m in sample["messages"] if m["role"] == "assistant"][-1]["content"]
    try:
        scorer(reference, reference, sample)
    except Exception as exc:  # the user's code: anything can come out of it
        raise ConfigError([f"objective.metric: {exc}"]) from None


def write_predictions(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


@torch.no_grad()
def eval_loss(model: Any, rows: D.Rows, batch_size: int, pad_id: int) -> float:
    """Mean of per-batch losses weighted by batch size, as Trainer's evaluation computes it."""
    dataset, collate, total = D.RowDataset(rows), D.Collator(pad_id), 0.0
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(rows), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = {k: v.to(device) for k, v in collate(items).items()}
        total += model(**batch).loss.item() * len(items)
    return total / len(rows)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp(710) overflows a float


def evaluate_model(config: JobConfig, adapter: str | Path | None = None) -> dict[str, Any]:
    """Loss, perplexity and (for a generation objective) the metric of the base model, or of
    the base model with `adapter`; writes baseline.json and predictions.jsonl to output_dir."""
    started = time.time()
    train_samples, test_samples = D.load_samples(config.data)
    model, tokenizer = load_for_inference(config.model, adapter)
    tokenized = D.prepare(config.data, config.training.seed, tokenizer, (train_samples, test_samples))
    loss = eval_loss(model, tokenized.test, config.data.test_batch_size, tokenizer.pad_token_id)
    result: dict[str, Any] = {"eval_loss": loss, "perplexity": perplexity(loss), "metric": config.objective.metric}
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.objective.is_generation:
        metric = GenerationMetric(config.objective, config.data, config.training.seed, test_samples)
        result["score"], records = metric(model, tokenizer)
        write_predictions(out / "predictions.jsonl", records)
    result["wall_time_s"] = round(time.time() - started, 3)
    (out / "baseline.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora_sweep.evaluate", description="Evaluate a model on the test data.")
    parser.add_argument("config", help="job YAML")
    parser.add_argument("--adapter", help="a LoRA adapter folder to evaluate on top of the base model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        result = evaluate_model(load_job(args.config), args.adapter)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
