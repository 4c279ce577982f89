"""study.warm_start: an earlier study's finished trials seed a new study's sampler."""

from __future__ import annotations

import optuna

from lora_sweep.config import StudyConfig
from lora_sweep.space import Space


def seed_study(config: StudyConfig, space: Space, study: optuna.Study) -> int:
    """Add the finished trials of config.study.warm_start whose params fit `space` to `study`;
    return how many were added."""
    return 0
