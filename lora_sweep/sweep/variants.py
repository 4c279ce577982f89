"""LoRA variants compared honestly (issue 24): the best trial of each variant (its job's `variant`
name in result.json: lora, dora, pissa_niter_4+lora+, ...) against the best plain-LoRA trial, with a
paired bootstrap interval over their per-sample scores (the same prompts, in the same order) and
the words "within noise" where the interval spans zero. Per-sample scores exist for a generation
metric (each trial's predictions.jsonl); for eval_loss only the best values are shown."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lora_sweep.events import JobFolder, JobResult
from lora_sweep.stats import paired_bootstrap
from lora_sweep.sweep.records import difference, sample_scores

PLAIN = "lora"  # job.variants.variant's name of plain LoRA


def variant_of(trial: FrozenTrial) -> str | None:
    """The variant a completed trial's job ran, from its result.json (None: no folder or result here)."""
    folder = trial.user_attrs.get("trial_dir")
    if not folder or not JobFolder(folder).result.is_file():
        return None
    return JobResult.read(JobFolder(folder).result).variant.get("name", PLAIN)


def best_per_variant(study: optuna.Study) -> dict[str, FrozenTrial]:
    """The best completed trial of each variant, in the study's direction (single-objective)."""
    best: dict[str, FrozenTrial] = {}
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name = variant_of(trial)
        if name is not None and trial.values and (name not in best or sign * trial.values[0] < sign * best[name].values[0]):
            best[name] = trial
    return best


def scores(trial: FrozenTrial) -> list[float] | None:
    return sample_scores(trial.user_attrs.get("predictions_path"))


def compare(study: optuna.Study, seed: int = 0) -> list[dict[str, Any]]:
    """A row per variant: its best trial and value and, against plain LoRA's best, the paired bootstrap
    interval of the difference (positive: the variant scored higher) where both have per-sample scores."""
    if len(study.directions) != 1:
        return []
    best = best_per_variant(study)
    if len(best) < 2:
        return []
    plain = best.get(PLAIN)
    reference = scores(plain) if plain is not None else None
    rows = []
    for name, trial in sorted(best.items(), key=lambda item: (item[0] != PLAIN, item[0])):
        row: dict[str, Any] = {"variant": name, "trial": trial.number, "value": trial.values[0]}
        mine = scores(trial)
        if name != PLAIN and reference and mine and len(mine) == len(reference):
            mean, low, high = paired_bootstrap(mine, reference, seed=seed)
            row.update(mean=mean, low=low, high=high, n=len(mine),
                       verdict=difference(low, high))
        rows.append(row)
    return rows


def variant_lines(study: optuna.Study, metric: str) -> list[str]:
    """The summary's lines comparing the variants, when the study ran more than one."""
    rows = compare(study)
    lines = []
    for row in rows:
        line = f"variant {row['variant']}: best trial {row['trial']}, {metric} {row['value']:.4f}"
        if "verdict" in row:
            line += (f"; vs {PLAIN} {row['mean']:+.4f} (95 % paired bootstrap interval {row['low']:+.4f} .. "
                     f"{row['high']:+.4f}, {row['n']} prompts: {row['verdict']})")
        elif row["variant"] != PLAIN:
            why = ("no plain LoRA trial" if rows[0]["variant"] != PLAIN else
                   "per-sample scores come with a generation metric")
            line += f"; no interval against {PLAIN} ({why})"
        lines.append(line)
    return lines
