"""The search's optuna pieces, made from the study config: the sampler over the space (seeded
per draw, so workers sharing a study seed never draw alike) and the pruner."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import optuna

from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudyConfig
from lora_sweep.config.space import Space


def make_sampler(config: StudyConfig, space: Space, draw: int | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler; a ConfigError names a bad option. `draw` (the study's trial count when
    a trial is asked for) gives it the seed of that draw: see `draw_seed`."""
    s = config.study.sampler
    seed = draw_seed(s.seed, draw) if draw is not None and s.type != "qmc" else s.seed
    with optuna_options("sampler", s.type):
        if s.type == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **s.options)
        if s.type == "grid":
            grid = {}
            for name, dist in space.distributions.items():
                if isinstance(dist, optuna.distributions.CategoricalDistribution):
                    grid[name] = list(dist.choices)
                elif dist.step is not None:
                    n = int(round((dist.high - dist.low) / dist.step))
                    grid[name] = [dist.low + i * dist.step for i in range(n + 1)]
                else:
                    raise ConfigError([f"search_space.{name}: the grid sampler needs a step or categorical choices"])
            return optuna.samplers.GridSampler(grid, seed=seed, **s.options)
        cls = {"random": optuna.samplers.RandomSampler, "cmaes": optuna.samplers.CmaEsSampler,
               "gp": optuna.samplers.GPSampler, "qmc": optuna.samplers.QMCSampler}[s.type]
        return cls(seed=seed, **s.options)


def draw_seed(seed: int | None, draw: int) -> int | None:
    """The sampler seed for the study's `draw`-th trial: every worker and slot of a study shares
    study.sampler.seed, and samplers seeded alike draw alike, so each trial gets its own stream,
    mixed from the study seed and its position. One worker with one seed still repeats its sweep.
    (QMC keeps the study seed: its points are one scrambled sequence, indexed through the storage.)"""
    if seed is None:  # unseeded: each sampler draws from fresh OS entropy
        return None
    return int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])


PRUNERS = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "percentile": optuna.pruners.PercentilePruner, "threshold": optuna.pruners.ThresholdPruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner}


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The study's pruner; a ConfigError names a bad option."""
    p = config.study.pruner
    with optuna_options("pruner", p.type):
        return PRUNERS[p.type](**p.options)


@contextlib.contextmanager
def optuna_options(section: str, kind: str) -> Iterator[None]:
    """Turn optuna's complaint about study.<section>.options into a ConfigError."""
    try:
        yield
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError([f"study.{section}.options: optuna's {kind} {section} refused them: {exc}"]) from None
