"""The search space, written the way optuna thinks of it.

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    lr_scheduler_type: {type: categorical, choices: [linear_with_warmup, cosine_with_warmup]}
    r: 8                       # a bare value fixes the parameter for every trial

Names are the reference's parameter names (the flat lora.yaml ones) plus LoRA's `r`, `alpha`
and `target_modules`, or a dotted path into the job config (`data.train_seqlen`). One table
maps names to their place in the job config; there is no per-parameter code.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import ValidationError

from lora_sweep.config import FLAT_KEYS, JobConfig, get_path, parse_scalar, set_path

if TYPE_CHECKING:
    from lora_sweep.config import StudyConfig

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
    """Searched parameters (name -> optuna distribution), fixed ones, and each name's config path."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)


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
        raise ValueError(f"{where}: low <= high must hold, but got (low={low}, high={high})")
    if log and low <= 0:
        raise ValueError(f"{where}: a log distribution needs low > 0, got low={low}")
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


def apply(tree: dict[str, Any], space: Space, params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the job tree with the fixed values and a trial's params in their places."""
    tree = copy.deepcopy(tree)
    for name, value in {**space.fixed, **params}.items():
        path = space.paths[name]
        set_path(tree, path, to_config_value(path, value))
    return tree


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


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Ask the trial for a value of every searched parameter."""
    params = {}
    for name, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return params


def default_params(config: StudyConfig, space: Space) -> tuple[dict[str, Any], list[str]]:
    """The documented defaults as params of the space, and notes on what had to be moved into it.

    `linear` / `cosine` become `*_with_warmup` with 0 warmup steps (the same schedule) when the
    plain name is not a choice; a number outside its range goes to the nearest bound
    (weight_decay 0.0 cannot be drawn from a log range starting at 1e-5).
    """
    tree = config.job_tree()
    params, notes = {}, []
    scheduler = space.distributions.get("lr_scheduler_type")
    plain = tree["training"]["lr_scheduler_type"]
    if scheduler and plain not in scheduler.choices and f"{plain}_with_warmup" in scheduler.choices:
        notes.append(f"lr_scheduler_type {plain} runs as {plain}_with_warmup with num_warmup_steps 0 "
                     "(the same schedule)")
        tree["training"]["lr_scheduler_type"] = f"{plain}_with_warmup"
        tree["training"]["num_warmup_steps"] = 0
    for name, dist in space.distributions.items():
        value = as_choice(get_path(tree, space.paths[name]))
        if isinstance(dist, CategoricalDistribution):
            if value not in dist.choices:
                notes.append(f"{name} {value!r} is not a choice of the space: drawn instead")
                continue
        elif not dist.low <= value <= dist.high:
            clamped = min(max(value, dist.low), dist.high)
            notes.append(f"{name} {value} is outside [{dist.low}, {dist.high}]: runs as {clamped}")
            value = clamped
        params[name] = value
    return params, notes


def describe(space: Space) -> dict[str, str]:
    """A line per parameter, for logs and the study's user attrs."""
    lines = {name: repr(dist) for name, dist in space.distributions.items()}
    lines.update({name: f"fixed {value!r}" for name, value in space.fixed.items()})
    return lines
