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
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from lora_sweep.config import (  # the space's names and checks are part of the config's validation
    LIST_VALUED,
    SEARCHABLE,
    STANDARD_SPACE,
    as_choice,
    Space,
    build_space,
    get_path,
    param_path,
    set_path,
    to_config_value,
)

if TYPE_CHECKING:
    from lora_sweep.config import StudyConfig

__all__ = ["LIST_VALUED", "SEARCHABLE", "STANDARD_SPACE", "Space", "apply", "build_space", "default_params",
           "describe", "param_path", "suggest"]

def apply(tree: dict[str, Any], space: Space, params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the job tree with the fixed values and a trial's params in their places."""
    tree = copy.deepcopy(tree)
    for name, value in {**space.fixed, **params}.items():
        path = space.paths[name]
        set_path(tree, path, to_config_value(path, value))
    return tree


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
