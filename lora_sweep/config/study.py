"""The study config: a sweep (`python -m lora_sweep run study.yaml`): the study group (storage,
budget, sampler, pruner, slots, launcher, Ray) and the job groups its trials vary."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from lora_sweep.config.job import (
    ColumnsSection,
    CompareSection,
    ConfigError,
    DataSection,
    LoraSection,
    ModelSection,
    ObjectiveSection,
    Section,
    TrackingSection,
    TrainingSection,
    check_job_needs,
)
from lora_sweep.config.files import (
    scorer_problems,
    apply_overrides,
    flat_names,
    format_errors,
    is_flat,
    olive_columns,
    placeholder_problems,
    read_yaml,
    unflatten,
)
from lora_sweep.config.places import creation_problem, sqlite_if_bare, storage_problem
from lora_sweep.config.space import SEARCHABLE, build_space


# ---------------------------------------------------------------- the study (a sweep)


class SamplerSection(Section):
    type: Literal["tpe", "random", "cmaes", "gp", "qmc", "grid"] = Field(
        "tpe", description="Optuna sampler, with optuna's defaults, except tpe: independent (multivariate: false) "
        "after max(3, min(10, n_trials // 4)) start-up trials unless options say otherwise (README: the search)."
    )
    seed: int | None = Field(0, description="Sampler seed, for a repeatable sequence of trials: each trial draws from its own stream, mixed from this seed and the trial's number, so workers and slots sharing a seed never draw alike (qmc keeps one scrambled sequence).")
    options: dict[str, Any] = Field({}, description="Extra keyword arguments of the optuna sampler.")


class PrunerSection(Section):
    type: Literal["none", "median", "percentile", "threshold", "successive_halving", "hyperband", "wilcoxon"] = Field(
        "median", description="Optuna pruner, fed each evaluation of a trial. wilcoxon (a generation metric only): "
        "optuna's WilcoxonPruner on the per-prompt scores of each scored evaluation, paired with the best trial's "
        "at the same step."
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
    test_scores: bool = Field(
        True, description="After the sweep, with a validation set: score the winner, the defaults trial and the "
        "base model on test.json, once each (README: an honest best score); false leaves those jobs out."
    )
    stop_when: Literal["n_trials", "converged"] = Field(
        "n_trials", description="n_trials: run the whole budget; converged: stop early once the last study.patience "
        "finished trials brought no improvement of the best beyond noise (a paired bootstrap over the prompts "
        "for a generation metric; study.min_improvement of the best for eval_loss). The summary says so."
    )
    patience: int = Field(4, ge=1, description="Finished trials without a real improvement after which "
                          "stop_when: converged stops the sweep.")
    min_improvement: float = Field(0.01, ge=0, description="For stop_when: converged on a metric without "
                                   "per-sample scores (eval_loss): the relative change of the best that counts.")
    lr_prior: bool = Field(
        True, description="Use what is published about LoRA learning rates (README: the search): an informed "
        "trial with the learning rate the model's width suggests runs after the defaults, and learning_rate, "
        "when search_space gives it no range, is searched within 5x of that rate."
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



PROMPT_KEYS = ("training.seed", "data.test_nsamples", "data.system_prompt", "data.inference_system_prompt")


def check_pruner(config: StudyConfig) -> None:
    """The wilcoxon pruner pairs per-prompt scores, which only a generation metric has, of the same
    prompts in every trial: no searched key may change which prompts are scored, or how they read."""
    if config.study.pruner.type != "wilcoxon":
        return
    if not config.objective.is_generation:
        raise ValueError(f"study.pruner.type: wilcoxon pairs the per-prompt scores of a generation metric; "
                         f"objective.metric {config.objective.metric} has none (use median, or a generation metric)")
    changing = [name for name, spec in config.search_space.items()
                if isinstance(spec, dict) and SEARCHABLE.get(name, name) in PROMPT_KEYS]
    if changing:
        raise ValueError(f"study.pruner.type: wilcoxon pairs each prompt's scores across trials; search_space."
                         f"{changing[0]} changes which prompts a trial scores or how they read (fix it, or use median)")


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
        for check in (check_job_needs, check_pruner, build_space):  # each raises ValueError with all its problems
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
        return sqlite_if_bare(self.study.storage or os.environ.get("LORA_SWEEP_STORAGE")
                              or f"sqlite:///{Path(self.study.dir) / self.study.name}.db")



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
    problems += olive_columns(tree, flat)  # the AI Toolkit's text_cols / text_template, as data.columns
    try:
        config = StudyConfig.model_validate(tree)
        problems += scorer_problems(config.objective)
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
