"""study.warm_start: an earlier study's finished trials seed a new study's sampler.

    study:
      warm_start: sweeps/proxy.yaml            # the earlier study's YAML (its storage and name)
      warm_start: sqlite:///studies/proxy.db   # or a storage holding that one study

Each COMPLETE trial of the earlier study whose params fit this study's space is added to the
new study with optuna's `add_trials` (its params in this space's distributions, its values),
marked with the user attr `warm_start` ({"study", "storage" (masked), "trial"}). The sampler
learns from them; they are not trials of this study's budget, nor candidates for its best (the
adapter is the earlier study's). Not copied: PRUNED trials (their value is an early evaluation,
not the objective), failed and running ones, the earlier study's own warm-start copies, and
the intermediate values (the pruner judges this study's curves against its own).
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudyConfig, load_study
from lora_sweep.config.places import sqlite_if_bare
from lora_sweep.config.space import Space
from lora_sweep.sweep.storage import WARM_START_ATTR, load_existing, make_storage, masked, own_trials

log = logging.getLogger("lora_sweep.warmstart")


def source_study(config: StudyConfig) -> tuple[optuna.Study, str]:
    """The earlier study of study.warm_start, opened for reading, and its storage URL (masked); a
    ConfigError (nothing written)
    for a missing file or database, a storage of several studies, or another objective."""
    source = config.study.warm_start
    try:
        if source.endswith((".yaml", ".yml")):
            earlier = load_study(source)
            url, name = earlier.storage_url, earlier.study.name
        else:
            url, name = sqlite_if_bare(source), None
            names = optuna.get_all_study_names(make_storage(url))
            if len(names) > 1:
                raise ConfigError([f"{masked(url)} holds several studies ({', '.join(names)}): give the study "
                                   f"YAML of the one to start from"])
        study = load_existing(url, name)
    except ConfigError as exc:
        raise ConfigError([f"study.warm_start: {problem}" for problem in exc.problems]) from None
    metric = study.user_attrs.get("metric")
    if metric is not None and metric != config.objective.metric:
        raise ConfigError([f"study.warm_start: {study.study_name} optimized {metric}, this study "
                           f"{config.objective.metric}: its values do not compare"])
    if [d.name for d in study.directions] != [d.upper() for d in config.objective.directions]:
        raise ConfigError([f"study.warm_start: {study.study_name} has other objective directions "
                           f"({', '.join(d.name.lower() for d in study.directions)})"])
    return study, masked(url)


def fitted(trial: FrozenTrial, space: Space) -> dict[str, Any] | None:
    """The trial's params in `space` (params it searched that this space does not are left out,
    unless this space fixes them to another value), or None when one falls outside it."""
    params = {}
    for name, dist in space.distributions.items():
        if name not in trial.params or not contains(dist, trial.params[name]):
            return None
        params[name] = trial.params[name]
    for name, value in trial.params.items():
        if name in space.fixed and space.fixed[name] != value:
            return None
    return params


def contains(dist: BaseDistribution, value: Any) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):  # not one of a categorical's choices, or not a number
        return False


def seed_study(config: StudyConfig, space: Space, study: optuna.Study) -> int:
    """Add the finished trials of config.study.warm_start whose params fit `space` to `study`;
    return how many were added."""
    earlier, url = source_study(config)
    added, outside = [], []
    pruned = len(own_trials(earlier, (TrialState.PRUNED,)))
    for trial in own_trials(earlier, (TrialState.COMPLETE,)):
        params = fitted(trial, space)
        if params is None:
            outside.append(trial.number)
            continue
        added.append(optuna.trial.create_trial(
            params=params, distributions={name: space.distributions[name] for name in params},
            values=trial.values,
            user_attrs={WARM_START_ATTR: {"study": earlier.study_name, "storage": url, "trial": trial.number}},
        ))
    study.add_trials(added)
    if outside or pruned:
        log.info("warm start: %d completed trials of %s skipped, their params outside this space%s; %d pruned "
                 "trials not copied (their value is an early evaluation)", len(outside), earlier.study_name,
                 f" (trials {', '.join(map(str, outside))})" if outside else "", pruned)
    return len(added)
