"""One LoRA fine-tuning job: load data, load model, wrap with LoRA, train, save, report.

    python -m lora_sweep train job.yaml [key.sub=value ...]
    accelerate launch <flags> -m lora_sweep.job.train job.yaml

Leaves in `output_dir`: config.yaml (what ran), events.jsonl, adapter/ (the adapter of the
best evaluation), result.json, Trainer checkpoints under checkpoints/, and with compare.enabled
compare.jsonl (the base model's and the adapter's answers to the compare file's prompts).
With training.skip_finetune it trains nothing: it evaluates (and compares) model.adapter_path.
With training.resume_from_checkpoint it goes on from a killed job's checkpoint: see `Reporter.resume`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.utils import logging as hf_logging

from lora_sweep.job.data import Collator, RowDataset, Tokenized, answer_warning, check_packing, prepare
from lora_sweep.job.samples import load_samples
from lora_sweep.config.job import ConfigError, JobConfig
from lora_sweep.config.files import dump_yaml, load_job
from lora_sweep.config.space import plan_steps
from lora_sweep.job.evaluate import (
    GenerationMetric,
    Prompt,
    causal_lm_loss,
    check_scorer,
    compare,
    eval_loss,
    perplexity,
    read_compare,
    write_predictions,
)
from lora_sweep.events import (
    PARENT_PID_ENV,
    EvalEvent,
    EventLog,
    JobFolder,
    JobResult,
    best_eval,
    better,
    checkpoint_problem,
    checkpoint_step,
    evals_before,
)
from lora_sweep.job.models import (
    find_model,
    load_base_model,
    load_for_inference,
    load_tokenizer,
    model_key,
    pick_dtype,
    primed,
    tokenizer_key,
)
from lora_sweep.job.tracking import trainer_kwargs
from lora_sweep.job.variants import loraplus_optimizer, quantized_base, save_adapter, variant, wrap

log = logging.getLogger("lora_sweep.job.train")

EXIT_ERROR = 1
EXIT_ORPHANED = 75


class NonFiniteLoss(RuntimeError):
    pass


# ---------------------------------------------------------------- model


def load_model(config: JobConfig, path: str) -> Any:
    """The base model (the warm runner's, when it loaded it already) with LoRA adapters on
    `lora.target_modules`, of the lora group's variant (job.variants)."""
    dtype, trust = pick_dtype(config.model.dtype), config.model.trust_remote_code
    lora, checkpointing = config.lora, config.training.gradient_checkpointing  # QLoRA: never the warm runner's copy
    model = (quantized_base(path, dtype, trust, lora, checkpointing) if lora.load_in_4bit
             else primed(model_key(path, dtype, trust), lambda: load_base_model(path, dtype, trust)))
    # LoRA's A matrices start random: seeded, so a job config reruns the same (the Trainer seeds
    # only later, and in-process callers leave the global generator anywhere)
    set_seed(config.training.seed)
    return wrap(model, config.lora, Path(config.output_dir), int(os.environ.get("RANK", "0")) == 0)


# ---------------------------------------------------------------- schedule


def warmup_steps(config: JobConfig, max_steps: int) -> tuple[int, str | None]:
    """Warmup of the schedule, and a warning when it had to be clamped to the run."""
    t = config.training
    if not t.lr_scheduler_type.endswith("_with_warmup"):
        return 0, None  # the reference: plain linear / cosine have no warmup
    if t.num_warmup_steps <= max_steps:
        return t.num_warmup_steps, None
    return max_steps, (
        f"num_warmup_steps ({t.num_warmup_steps}) is longer than the run ({max_steps} steps): "
        f"clamped to {max_steps}, so the learning rate rises for the whole run"
    )


# transformers 5.x renamed gradient_checkpointing; use the name this version has.
CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)
# Batches of rows of similar length (transformers' LengthGroupedSampler: a shuffle, sorted by length
# within groups of 4 x 50 batches at most; `LoraTrainer` seeds it); later 5.x versions name it as a
# sampling strategy.
GROUP_BY_LENGTH = (
    {"train_sampling_strategy": "group_by_length"}
    if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__
    else {"group_by_length": True}
)


def training_arguments(config: JobConfig, out: Path, max_steps: int, warmup: int, dtype: torch.dtype) -> TrainingArguments:
    t, d = config.training, config.data
    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(JobFolder(out).checkpoints),
        max_steps=max_steps,
        per_device_train_batch_size=d.train_batch_size,
        per_device_eval_batch_size=d.test_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type.removesuffix("_with_warmup"),
        warmup_steps=warmup,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        max_grad_norm=t.max_grad_norm,
        eval_strategy=t.evaluation_strategy,  # transformers 5 name of `evaluation_strategy`
        eval_steps=t.eval_steps,
        eval_delay=t.eval_delay,
        eval_accumulation_steps=t.eval_accumulation_steps,
        save_strategy="epoch" if t.evaluation_strategy == "epoch" else "steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,  # the Trainer always keeps the latest one too, to resume from
        save_only_model=False,  # a checkpoint to resume from needs the optimizer, scheduler and RNG states
        # the early-stopping counter goes on from the checkpoint's, as in an uninterrupted run
        restore_callback_states_from_checkpoint=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # the filter would hide a diverged run behind earlier losses
        **{CHECKPOINTING: t.gradient_checkpointing, f"{CHECKPOINTING}_kwargs": {"use_reentrant": False}},
        seed=t.seed,
        data_seed=t.seed,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu,
        # packed training rows hold no padding, and bounded ones no attention mask, which is what
        # "non_padding" counts by (else tokens equal to pad, the end-of-turn, go uncounted)
        include_num_input_tokens_seen="non_padding" if d.varied_seqlen else "all",
        **(GROUP_BY_LENGTH if d.varied_seqlen else {}),  # packed rows all have the same length
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient
        remove_unused_columns=False,
        disable_tqdm=True,  # events and log lines show progress
        **trainer_kwargs(config.tracking),  # report_to the trackers asked for, else "none"
    )


class EpochSeededSampler(LengthGroupedSampler):
    """transformers' length-grouped order, shuffled by `seed` + the epoch. Its own shuffle draws from the
    global RNG at an epoch's start, which a run resumed in that epoch has in another state (the Trainer
    restores it only after skipping the batches already trained on): another order than the killed run's."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it before each epoch, a resumed one too
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class LoraTrainer(Trainer):
    """The Trainer, with the length-grouped order of varied_seqlen rows seeded per epoch, so that a
    resumed run goes on in the order the killed one had, and LoRA+'s optimizer when asked for."""

    loraplus_lr_ratio: float | None = None

    def create_optimizer(self, model: Any = None) -> Any:
        if self.optimizer is None and self.loraplus_lr_ratio is not None:
            self.optimizer = loraplus_optimizer(self, self.model if model is None else model, self.loraplus_lr_ratio)
        return super().create_optimizer(model)  # keeps one already made

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            return EpochSeededSampler(sampler.batch_size, sampler.lengths, self.args.data_seed)
        return sampler


# ---------------------------------------------------------------- events


class Reporter(TrainerCallback):
    """Writes events as training goes, keeps the adapter of the best evaluation, stops on NaN.

    "Best" follows the objective: the lowest loss, or the highest generation score when the
    objective is a generation metric (scored every `generate_every` evaluations and at the end).
    """

    def __init__(self, config: JobConfig, events: EventLog, max_steps: int, tokenizer: Any,
                 metric: GenerationMetric | None, collator: Collator | None = None):
        self.objective, self.lora = config.objective, config.lora
        self.out = Path(config.output_dir)
        self.events = events
        self.max_steps = max_steps
        self.tokenizer = tokenizer
        self.metric = metric
        self.best: EvalEvent | None = None
        self.evals: list[EvalEvent] = []
        self.eval_seconds = 0.0  # evaluations, generation included
        self.save_seconds = 0.0  # best-adapter saves
        # The collator counts every batch, evaluations' too: the tokens collated up to a step's end
        # (evaluations come after it) less those of evaluations are the training batches' (real, padded).
        self.collator = collator
        self.train_tokens = (0, 0)
        self.eval_tokens = (0, 0)
        self.tokens_before = 0  # tokens trained on before this process began (a resumed checkpoint's)
        self.resumed: dict[str, Any] | None = None  # the `resume` event, when it goes on from a checkpoint

    def resume(self, checkpoint: Path, main_process: bool) -> None:
        """Go on from a killed job's `checkpoint`: take over its evaluations up to the checkpoint's step
        (so "best", early stopping and generate_every count as in an uninterrupted run) and, when the
        best of them is the one whose adapter that job kept, that adapter and its predictions.
        `resumed` holds the `resume` event, which carries both, so that a re-run of this job can do
        the same from its own checkpoints. (When the killed job's adapter is of a step past the
        checkpoint, this run evaluates that step again and keeps its own.)"""
        step = checkpoint_step(checkpoint)
        before, adapter_step = evals_before(checkpoint)
        self.evals = [EvalEvent.of({"perplexity": perplexity(e["eval_loss"]), **e, "best": False}) for e in before]
        found = best_eval([e.event() for e in self.evals], self.objective.key, self.objective.direction)
        self.best = EvalEvent.of(found) if found else None
        old, here = JobFolder(checkpoint.parent.parent), JobFolder(self.out)
        if self.best is None or adapter_step != self.best.step or not old.adapter.is_dir():
            adapter_step = None
        elif main_process and old.root.resolve() != here.root.resolve():
            shutil.copytree(old.adapter, here.adapter, dirs_exist_ok=True)
            if old.predictions.is_file():
                shutil.copy2(old.predictions, here.predictions)
        self.resumed = {"step": step, "from": str(checkpoint.resolve()), "evals": [e.event() for e in self.evals],
                        "adapter_step": adapter_step}
        log.info("resuming from %s (step %d): %d evaluations before it, best at step %s", checkpoint, step,
                 len(self.evals), self.best and self.best.step)

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_before = state.num_input_tokens_seen  # the Trainer has loaded a checkpoint's state by now

    def collated(self) -> tuple[int, int]:
        return (self.collator.real_tokens, self.collator.batch_tokens) if self.collator else (0, 0)

    def on_step_end(self, args, state, control, **kwargs):
        (real, padded), (eval_real, eval_padded) = self.collated(), self.eval_tokens
        self.train_tokens = (real - eval_real, padded - eval_padded)

    def real_token_share(self) -> float | None:
        """Real tokens over the tokens of the padded training batches (this process's)."""
        real, padded = self.train_tokens
        return round(real / padded, 4) if padded else None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        loss = logs["loss"]
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"training loss is {loss} at step {state.global_step}")
        self.events.emit(
            "train", step=state.global_step, loss=loss, lr=logs.get("learning_rate"),
            tokens=logs.get("num_input_tokens_seen"), epoch=logs.get("epoch"),
        )

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        (real, padded), (train_real, train_padded) = self.collated(), self.train_tokens
        self.eval_tokens = (real - train_real, padded - train_padded)
        loss = metrics["eval_loss"]
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"evaluation loss is {loss} at step {state.global_step}")
        self.eval_seconds += metrics.get("eval_runtime", 0.0)
        self.evals.append(EvalEvent(step=state.global_step, eval_loss=loss, perplexity=perplexity(loss)))
        due = len(self.evals) % self.objective.generate_every == 0 or state.global_step >= self.max_steps
        self.conclude(model, state.is_world_process_zero, score=self.metric is not None and due)

    def conclude(self, model: Any, main_process: bool, score: bool) -> None:
        """Score the last evaluation if asked, keep it if it is the best so far, and report it."""
        record, records = self.evals[-1], None
        if score:
            began = time.time()
            scored, records = self.metric(model, self.tokenizer)
            record = self.evals[-1] = dataclasses.replace(record, score=scored,
                                                          scores=tuple(r["score"] for r in records))
            self.eval_seconds += time.time() - began
        value, best = self.objective.value(record), self.best
        # on equal values (a generation metric often ties) the lower eval loss wins
        improved = value is not None and better(self.objective.direction, value, record.eval_loss,
                                                best and self.objective.value(best), best and best.eval_loss)
        if improved:
            self.best = record
            if main_process:
                began = time.time()
                folder = JobFolder(self.out)
                save_adapter(model, folder.adapter, self.lora, self.out)
                if records is not None:
                    write_predictions(folder.predictions, records)
                self.save_seconds += time.time() - began
        self.events.emit("eval", **dataclasses.replace(record, best=improved).event())
        scored = f"  {self.objective.metric} {record.score:.4f}" if record.score is not None else ""
        log.info("step %d/%d  eval_loss %.4f  perplexity %.2f%s%s", record.step, self.max_steps,
                 record.eval_loss, record.perplexity, scored, "  (best)" if improved else "")

    def score_last(self, model: Any, main_process: bool) -> None:
        """Score the last evaluation when the run ended (early stop) between scored ones."""
        if self.metric is not None and self.evals and self.evals[-1].score is None:
            self.conclude(model, main_process, score=True)

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.events.emit("checkpoint", step=state.global_step, path=str(path))


def watch_parent() -> None:
    """Exit when the sweep that launched this job dies (SIGKILL leaves no chance to stop us)."""
    pid = int(os.environ.get(PARENT_PID_ENV, "0"))
    if not pid:
        return

    def check() -> None:
        while True:
            time.sleep(2)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(EXIT_ORPHANED)

    threading.Thread(target=check, daemon=True, name="watch-parent").start()


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------- the job


def run(config: JobConfig) -> dict[str, Any]:
    """Run the job; return result.json's content. Raises ConfigError before writing anything."""
    started = time.time()
    samples = load_samples(config.data)  # every data problem, before any model is loaded
    scorer = check_scorer(config.objective, samples[1])  # loaded once, here
    compared = read_compare(config.compare, config.data) if config.compare.enabled else None
    if config.training.skip_finetune:
        check_adapter(config.model.adapter_path)
    if config.training.resume_from_checkpoint is not None:
        check_checkpoint(config)
    model_path = find_model(config.model.name_or_path)
    trust = config.model.trust_remote_code
    tokenizer = primed(tokenizer_key(model_path, trust), lambda: load_tokenizer(model_path, trust))
    tokenized = prepare(config.data, config.training.seed, tokenizer, samples)

    out = Path(config.output_dir)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, out / "config.yaml")
    events = EventLog(JobFolder(out).events, enabled=main_process)
    try:
        metric = None
        if scorer is not None:
            metric = GenerationMetric(config.objective, config.data, config.training.seed, samples[1], scorer)
        if config.training.skip_finetune:
            result = evaluate_adapter(config, tokenized, events, started, metric)
        else:
            result = fit(config, model_path, tokenizer, tokenized, events, started, metric)
        if compared is not None and main_process:
            result["compare_path"] = write_compare(config, result, compared, events)
    except Exception as exc:
        events.emit("error", message=f"{type(exc).__name__}: {exc}")
        raise
    result["wall_time_s"] = round(time.time() - started, 3)
    if main_process:  # the typed result the sweep reads back (JobResult.read): the same schema on both sides
        JobResult(**result).write(JobFolder(out).result)
    events.emit("done", **{k: v for k, v in result.items() if k not in ("evals", "data")})
    return result


def check_adapter(path: str) -> None:
    """skip_finetune evaluates an existing adapter: refuse a folder that does not hold one."""
    if not (Path(path) / "adapter_config.json").is_file():
        raise ConfigError([f"model.adapter_path: no LoRA adapter at {path!r} (a folder with adapter_config.json, "
                           f"as a job's adapter/)"])


def check_checkpoint(config: JobConfig) -> None:
    """Refuse a resume_from_checkpoint that is not a complete Trainer checkpoint of a LoRA job."""
    key = "training.resume_from_checkpoint"
    if config.training.skip_finetune:
        raise ConfigError([f"{key}: a job with training.skip_finetune trains nothing to resume"])
    problem = checkpoint_problem(config.training.resume_from_checkpoint)
    if problem:
        raise ConfigError([f"{key}: {problem}"])


def announce(config: JobConfig, tokenized: Tokenized, events: EventLog, warmup_warning: str | None,
             metric: GenerationMetric | None, tokenizer: Any, **fields: Any) -> None:
    """The `start` event with the data's figures; a `warning` event (and log line) for a clamped
    warmup, for answers the metric's max_new_tokens cuts off and for answers the seqlen cuts away."""
    events.emit("start", **fields, data=tokenized.stats)
    cut = metric.cut_warning(tokenizer) if metric is not None else None
    for warning in (warmup_warning, cut, answer_warning(tokenized.stats, config.data)):
        if warning:
            log.warning(warning)
            events.emit("warning", message=warning)


def fit(config: JobConfig, model_path: str, tokenizer: Any, tokenized: Tokenized, events: EventLog,
        started: float, metric: GenerationMetric | None) -> dict[str, Any]:
    """Load the model, train it with LoRA, keep the best adapter; the result's figures."""
    data_ready = time.time()
    out = Path(config.output_dir)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    model = load_model(config, model_path)
    check_packing(config.data, model)  # bounded packing: refuse a model that attends across samples
    model_ready = time.time()
    max_steps = plan_steps(config, len(tokenized.train), world_size)
    warmup, warning = warmup_steps(config, max_steps)
    collator = Collator(tokenizer.pad_token_id)
    reporter = Reporter(config, events, max_steps, tokenizer, metric, collator)
    resume = config.training.resume_from_checkpoint
    if resume is not None:  # read before this job's `start` joins the events of a folder it may share
        reporter.resume(Path(resume), main_process=events.enabled)
    announce(config, tokenized, events, warning, metric, tokenizer, max_steps=max_steps, warmup_steps=warmup,
             trainable_parameters=model.get_nb_trainable_parameters()[0], variant=variant(config.lora))
    if resume is not None:
        events.emit("resume", **reporter.resumed)

    args = training_arguments(config, out, max_steps, warmup, model.dtype)
    callbacks: list[TrainerCallback] = [reporter]
    if config.training.early_stopping_patience and config.training.evaluation_strategy != "no":
        callbacks.append(EarlyStoppingCallback(config.training.early_stopping_patience))
    trainer = LoraTrainer(
        model=model,
        args=args,
        train_dataset=RowDataset(tokenized.train),
        eval_dataset=RowDataset(tokenized.test),
        data_collator=collator,
        processing_class=tokenizer,
        compute_loss_func=causal_lm_loss,  # a batch without a labelled token adds 0, not NaN
        callbacks=callbacks,
    )
    trainer.loraplus_lr_ratio = config.lora.loraplus_lr_ratio
    trainer.remove_callback(PrinterCallback)  # our events and log lines replace its dict dumps
    output = trainer.train(resume_from_checkpoint=resume)
    eval_in_train = reporter.eval_seconds  # train_runtime holds these evaluations, not the ones below
    if not reporter.evals or reporter.evals[-1].step != trainer.state.global_step:
        trainer.evaluate()  # the end of training is always evaluated
    reporter.score_last(model, trainer.is_world_process_zero())
    trained = time.time()

    # a resumed Trainer replaces the stopper with one holding the checkpoint's counter
    stopper = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)), None)
    stopped_early = stopper is not None and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience
    train_seconds = output.metrics["train_runtime"] - eval_in_train
    # the tokens trained on in this run (a resumed one began at its checkpoint's count)
    tokens_now = trainer.state.num_input_tokens_seen - reporter.tokens_before
    return {
        **kept(config, reporter, tokenized),
        "steps_run": trainer.state.global_step,
        "max_steps": max_steps,
        "stop_reason": "early_stopping" if stopped_early else "completed",
        "variant": variant(config.lora),
        "train_tokens": trainer.state.num_input_tokens_seen,
        # tokens are summed over all processes, so this is the throughput of the whole job
        "train_tokens_per_s": round(tokens_now / max(train_seconds, 1e-9), 1),
        # real tokens over padded batch tokens in training: 1.0 for packed rows
        "real_token_share": reporter.real_token_share(),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "timings_s": {
            "data": round(data_ready - started, 3),
            "model_load": round(model_ready - data_ready, 3),
            "train": round(train_seconds, 3),
            "eval": round(reporter.eval_seconds, 3),
            "adapter_save": round(reporter.save_seconds, 3),
            "total_train_loop": round(trained - model_ready, 3),
        },
    }


def evaluate_adapter(config: JobConfig, tokenized: Tokenized, events: EventLog, started: float,
                     metric: GenerationMetric | None) -> dict[str, Any]:
    """skip_finetune: evaluate model.adapter_path as the job's one evaluation (step 0), no training.
    Its eval loss is computed as the Trainer's evaluations compute theirs, so the two compare."""
    data_ready = time.time()
    model, tokenizer = load_for_inference(config.model, config.model.adapter_path, config.lora)
    model_ready = time.time()
    announce(config, tokenized, events, None, metric, tokenizer, max_steps=0, warmup_steps=0,
             adapter=config.model.adapter_path)
    reporter = Reporter(config, events, 0, tokenizer, metric)
    loss = eval_loss(model, tokenized.test, config.data.test_batch_size, tokenizer.pad_token_id)
    reporter.eval_seconds = time.time() - model_ready
    reporter.evals.append(EvalEvent(step=0, eval_loss=loss, perplexity=perplexity(loss)))
    reporter.conclude(model, main_process=events.enabled, score=metric is not None)
    return {
        **kept(config, reporter, tokenized),
        "steps_run": 0,
        "max_steps": 0,
        "stop_reason": "skip_finetune",
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "timings_s": {"data": round(data_ready - started, 3), "model_load": round(model_ready - data_ready, 3),
                      "eval": round(reporter.eval_seconds, 3), "adapter_save": round(reporter.save_seconds, 3)},
    }


def kept(config: JobConfig, reporter: Reporter, tokenized: Tokenized) -> dict[str, Any]:
    """The result's part about the evaluation the objective chose, whose adapter is kept."""
    best = reporter.best
    return {
        "metric": config.objective.metric,
        "best_step": best.step,
        "best_eval_loss": best.eval_loss,
        "best_perplexity": best.perplexity,
        "best_score": best.score,
        "adapter_path": str(JobFolder(config.output_dir).adapter.resolve()),
        "evals": [e.event() for e in reporter.evals],
        "data": tokenized.stats,
    }


def write_compare(config: JobConfig, result: dict[str, Any], prompts: list[Prompt], events: EventLog) -> str:
    """compare.jsonl: each prompt with its reference and the base model's and kept adapter's answers."""
    began = time.time()
    records = compare(config, result["adapter_path"], prompts)
    path = Path(config.output_dir) / "compare.jsonl"
    write_predictions(path, records)
    result["timings_s"]["compare"] = round(time.time() - began, 3)
    events.emit("compare", path=str(path.resolve()), prompts=len(records), temperature=config.compare.temperature)
    log.info("compare: %d prompts answered by the base model and the adapter in %s", len(records), path)
    return str(path.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora_sweep train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="job YAML (ours, or a flat AI Toolkit lora.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. training.learning_rate=1e-3")
    args = parser.parse_args(argv)
    # under DDP every rank runs this: rank 0 speaks for the job, the others only warn
    level = logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    hf_logging.disable_progress_bar()  # shard-writing bars would fill the trial logs
    watch_parent()
    try:
        config = load_job(args.config, args.overrides)
        result = run(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:  # a DDP rank exiting with its group alive can abort in gloo's teardown ("terminate called...")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    log.info("best eval_loss %.4f at step %d; adapter in %s", result["best_eval_loss"], result["best_step"],
             result["adapter_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
