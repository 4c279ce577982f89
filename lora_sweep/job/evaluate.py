"""Evaluation beyond the loss: the model answers each test conversation, a scorer compares
the answer with the reference (the conversation's last assistant message). Also the loss itself
(one function for the Trainer and for evaluations outside it), and the AI Toolkit's compare step:
the base model's and the adapter's answers to a file of prompts, side by side.

    python -m lora_sweep.job.evaluate job.yaml [--adapter DIR] [--split test] [--out NAME]

scores the base model (or it with the adapter in DIR) on the set a job evaluates (the validation
set when the job has one, else test.json; `--split test`: test.json always) and writes
<output_dir>/NAME.json and NAME_predictions.jsonl (default: baseline.json and predictions.jsonl,
the sweep's base-model baseline).

Generation is batched (left padding, answers decoded without special tokens), greedy unless a
temperature is given.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed
from transformers.loss.loss_utils import ForCausalLMLoss

from lora_sweep.job.data import IGNORE, Collator, RowDataset, Rows, chat_template, check_bounded, prepare, render
from lora_sweep.job.samples import (
    Split,
    Unreadable,
    capped,
    check_sample,
    eval_set,
    load_samples,
    select,
    text_lines,
    with_system_prompt,
)
from lora_sweep.events import BASE_EVALUATION, Evaluation, JobFolder
from lora_sweep.config.job import CompareSection, ConfigError, DataSection, JobConfig, ObjectiveSection
from lora_sweep.config.files import load_job
from lora_sweep.job.models import load_for_inference
from lora_sweep.scorers import Scorer, ScorerError
from lora_sweep.scorers import check_scorer as try_scorer

log = logging.getLogger("lora_sweep.job.evaluate")


@dataclass
class Prompt:
    messages: list[dict]  # the conversation up to its last assistant message
    reference: str | None  # that message (a compare file's line may have none)
    sample: dict  # the whole test sample (or compare line), for user scorers


def prompt_of(sample: dict, system_prompt: str | None) -> Prompt:
    """A chat sample as a prompt: the conversation up to its last answer, and that answer."""
    messages = with_system_prompt(sample["messages"], system_prompt)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return Prompt(messages[:last], messages[last]["content"], sample)


def generation_system_prompt(data: DataSection) -> str | None:
    """The system prompt of generated answers: data.inference_system_prompt, else data.system_prompt."""
    return data.inference_system_prompt or data.system_prompt


def prompts(data: DataSection, seed: int, samples: list[dict], system_prompt: str | None) -> list[Prompt]:
    """The test conversations to answer: the same samples the loss is measured on."""
    return [prompt_of(sample, system_prompt) for sample in select(samples, data.test_nsamples, seed)]


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos and the model's generation eos ids."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted({*ids, tokenizer.eos_token_id} - {None})


@torch.no_grad()
def generate(model: Any, tokenizer: Any, conversations: list[list[dict]], max_new_tokens: int,
             batch_size: int, temperature: float = 0.0) -> list[str]:
    """Answers to each conversation, batched, shortest prompts together to pad little: greedy, or
    sampled at `temperature` (> 0; seed torch first for answers that repeat)."""
    template = chat_template(tokenizer)
    texts = [render(tokenizer, c, template, generation_prompt=True) for c in conversations]
    encoded = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    device = next(model.parameters()).device
    eos = stop_ids(model, tokenizer)
    # a temperature only with sampling: transformers warns about one given to greedy decoding
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
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
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **sampling,
                             max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    model.train(was_training)
    return answers


class GenerationMetric:
    """Scores a model on the test conversations with the objective's scorer (from check_scorer)."""

    def __init__(self, objective: ObjectiveSection, data: DataSection, seed: int, test_samples: list[dict],
                 scorer: Scorer):
        self.objective = objective
        self.scorer = scorer
        self.prompts = prompts(data, seed, test_samples, generation_system_prompt(data))

    def cut_warning(self, tokenizer: Any) -> str | None:
        """The line to warn with when objective.max_new_tokens is shorter than reference answers of
        the scored samples: a greedy answer as long as its reference is cut off (None otherwise)."""
        lengths = [len(tokenizer(p.reference, add_special_tokens=False).input_ids)
                   for p in self.prompts if p.reference]
        limit = self.objective.max_new_tokens
        cut = sum(n > limit for n in lengths)
        if not cut:
            return None
        return (f"objective.max_new_tokens ({limit}) is shorter than {cut} of the {len(lengths)} reference answers "
                f"scored (the longest: {max(lengths)} tokens): an answer as long as its reference is cut off before "
                f"it ends; {max(lengths)} would fit them all")

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


def check_scorer(objective: ObjectiveSection, test_samples: list[dict]) -> Scorer | None:
    """The objective's scorer (None for a loss objective), loaded once and tried on the first test
    answer against itself within a time limit, before anything runs: a user scorer that fails,
    hangs or returns a non-number is a ConfigError now, not in every trial."""
    if not objective.is_generation:
        return None
    try:
        scorer = try_scorer(objective.metric, objective.regex, test_samples[0])
    except ScorerError as exc:
        raise ConfigError([f"objective.metric: {exc}"]) from None
    return scorer


def write_predictions(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def causal_lm_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
                   ) -> torch.Tensor:
    """The job's loss (Trainer's `compute_loss_func`): next-token cross-entropy summed over the
    labelled tokens and divided by the labelled tokens of the whole accumulated batch (Trainer's
    `num_items_in_batch`; this batch's when not given). A batch without a labelled token adds 0 to
    the loss and the gradient, where transformers' own loss would give 0/0 = NaN."""
    if num_items_in_batch is None:
        num_items_in_batch = (labels[..., 1:] != IGNORE).sum()  # token i predicts token i + 1
    count = torch.clamp(torch.as_tensor(num_items_in_batch), min=1)
    return ForCausalLMLoss(outputs.logits, labels, outputs.logits.size(-1), num_items_in_batch=count)


@torch.no_grad()
def eval_loss(model: Any, rows: Rows, batch_size: int, pad_id: int) -> float:
    """Mean of per-batch losses weighted by batch size, as Trainer's evaluation computes it. Rows
    of bounded packing are first checked to stay inside their samples with this model."""
    if rows.positions is not None:
        check_bounded(model)
    dataset, collate, total = RowDataset(rows), Collator(pad_id), 0.0
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(rows), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = {k: v.to(device) for k, v in collate(items).items()}
        labels = batch.pop("labels")
        # no cache (as the Trainer runs it): with one, transformers ignores packed position ids
        total += causal_lm_loss(model(**batch, use_cache=False), labels).item() * len(items)
    return total / len(rows)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp(710) overflows a float


# ---------------------------------------------------------------- finding the model


# ---------------------------------------------------------------- the compare step


def read_compare(section: CompareSection, data: DataSection) -> list[Prompt]:
    """The compare file's prompts: one JSON object a line, the AI Toolkit's `{"query": ...,
    "response": ...}` (response optional) or a chat sample as in test.json; with the system prompt
    of generation. Every problem at once, as `file:line: ...`, in one ConfigError."""
    path, system_prompt = Path(section.file), generation_system_prompt(data)
    prompts_, problems = [], []
    try:
        for number, line, unreadable in text_lines(path):
            problem = unreadable
            if not problem and line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    problem = f"not valid JSON ({exc.msg} at column {exc.colno})"
                else:
                    prompt, problem = compare_prompt(obj, system_prompt)
                    prompts_ += [prompt] if prompt else []
            problems += [f"{path}:{number}: {problem}"] if problem else []
    except Unreadable as exc:
        raise ConfigError([exc.where(path)], "compare.file") from None
    if not prompts_ and not problems:
        problems.append(f"{path}: has no prompts")
    if problems:
        raise ConfigError(capped(problems), "compare.file")
    return prompts_


def compare_prompt(obj: Any, system_prompt: str | None) -> tuple[Prompt | None, str | None]:
    """One line of a compare file as a prompt, or what is wrong with it."""
    if isinstance(obj, dict) and "query" in obj:
        query, response = obj["query"], obj.get("response")
        if not isinstance(query, str) or not isinstance(response, (str, type(None))):
            return None, '"query" (and "response", if given) must be strings'
        messages = with_system_prompt([{"role": "user", "content": query}], system_prompt)
        return Prompt(messages, response, obj), None
    problems = check_sample(obj)
    if problems:
        return None, f'{problems[0]} (a line is {{"query": ..., "response": ...}} or a chat sample)'
    return prompt_of(obj, system_prompt), None


def compare(config: JobConfig, adapter: str | Path, prompts_: list[Prompt]) -> list[dict[str, Any]]:
    """The base model's and the adapter's answers to each prompt, sampled at compare.temperature
    with training.seed (each side from the same seed), as compare.jsonl's records."""
    model, tokenizer = load_for_inference(config.model, adapter, config.lora)
    objective = config.objective
    ask = functools.partial(generate, model, tokenizer, [p.messages for p in prompts_], objective.max_new_tokens,
                            objective.generation_batch_size, config.compare.temperature)
    set_seed(config.training.seed)
    with model.disable_adapter():  # the base model is these weights without the LoRA update
        base = ask()
    set_seed(config.training.seed)
    tuned = ask()
    return [{"prompt": p.messages, "reference": p.reference, "base": b, "adapter": a}
            for p, b, a in zip(prompts_, base, tuned)]


def evaluate_model(config: JobConfig, adapter: str | Path | None = None, split: Split = "eval",
                   name: str = BASE_EVALUATION) -> dict[str, Any]:
    """Loss, perplexity and (for a generation objective) the metric of the base model, or of
    the base model with `adapter`, on the set a job evaluates (`split` "eval") or on test.json
    ("test"); writes JobFolder.evaluation(name) in output_dir: the figures, with the set's name ("split")
    and its samples ("n"), and the per-sample predictions."""
    started = time.time()
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError([f"--adapter: no LoRA adapter at {str(adapter)!r} (a folder with adapter_config.json, "
                           f"as a job's adapter/)"])
    samples = load_samples(config.data, split)
    scorer = check_scorer(config.objective, samples[1])
    model, tokenizer = load_for_inference(config.model, adapter, config.lora)
    tokenized = prepare(config.data, config.training.seed, tokenizer, samples, split)
    loss = eval_loss(model, tokenized.test, config.data.test_batch_size, tokenizer.pad_token_id)
    score = None
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures, predictions = JobFolder(out).evaluation(name)
    if scorer is not None:
        metric = GenerationMetric(config.objective, config.data, config.training.seed, samples[1], scorer)
        score, records = metric(model, tokenizer)
        write_predictions(predictions, records)
    result = Evaluation(  # the typed figures the sweep reads back (Evaluation.read)
        eval_loss=loss, perplexity=perplexity(loss), metric=config.objective.metric, score=score,
        split=eval_set(config.data, split), n=tokenized.stats["eval_samples"],
        adapter=str(Path(adapter).resolve()) if adapter is not None else None,
        wall_time_s=round(time.time() - started, 3)).record()
    figures.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def checked_name(name: str) -> str:
    """--out: a file name stem, not a path (the files go to output_dir)."""
    if not name or name != Path(name).name or name.startswith("."):
        raise argparse.ArgumentTypeError(f"a file name without a folder, e.g. test_best (got {name!r})")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora_sweep.job.evaluate", description="Evaluate a model on the test data.")
    parser.add_argument("config", help="job YAML")
    parser.add_argument("--adapter", help="a LoRA adapter folder to evaluate on top of the base model")
    parser.add_argument("--split", choices=["eval", "test"], default="eval",
                        help="eval: the set a job evaluates (the validation set when the job has one, else "
                        "test.json); test: test.json")
    parser.add_argument("--out", default=BASE_EVALUATION, type=checked_name,
                        help="writes <output_dir>/OUT.json and OUT_predictions.jsonl (default: baseline.json "
                        "and predictions.jsonl)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        result = evaluate_model(load_job(args.config), args.adapter, args.split, args.out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
