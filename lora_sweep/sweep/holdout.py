"""An honest best score: test.json scores only what the validation set chose.

With `data.validation_split` or `data.validation_file`, every trial's evaluations run on the
validation set: it picks each trial's best step and the study's best trial. After the sweep, the
winner, the documented-defaults trial and the base model are each scored once on test.json, by a
launched job like a trial's (an adapter evaluated with `training.skip_finetune`, the base model by
the base-model evaluation), in `<study folder>/test/`. Without a validation set the trials' own
figures are on test.json already (and optimistic: the same set chose them).

Either way, with per-sample scores (a generation metric's predictions), a paired bootstrap 95 %
interval of best minus defaults and best minus base says whether a win is more than noise.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from lora_sweep.config.study import StudyConfig
from lora_sweep.config.files import dump_yaml
from lora_sweep.events import Evaluation, JobFolder, JobResult
from lora_sweep.config.space import Space
from lora_sweep.stats import paired_bootstrap
from lora_sweep.sweep.records import BOOTSTRAP_ATTR, TEST_ATTR, defaults_trial, sample_scores
from lora_sweep.sweep.storage import StudyFolder, best_trial
from lora_sweep.sweep.trial import TrialFailed, job_config, signal_text, start_job

log = logging.getLogger("lora_sweep.holdout")





def test_folder(config: StudyConfig, name: str) -> Path:
    return StudyFolder(config.folder.resolve()).test(name)


def score_on_test(config: StudyConfig, space: Space, trial: FrozenTrial | None, slot: list[int] | None) -> dict[str, Any]:
    """Score a trial's kept adapter (None: the base model) on test.json in a launched job; its
    figures and the path of its per-sample predictions."""
    folder = test_folder(config, f"trial-{trial.number}" if trial else "base")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    job = job_config(config, space, trial.params if trial else {}, folder)
    job.data = job.data.model_copy(update={"validation_split": None, "validation_file": None})  # test.json
    module = "lora_sweep.job.evaluate"
    if trial is not None:  # the adapter the trial kept, evaluated as a job's one evaluation
        job.model = job.model.model_copy(update={"adapter_path": trial.user_attrs["adapter_path"]})
        job.training = job.training.model_copy(update={"skip_finetune": True})
        module = "lora_sweep.job.train"
    files = JobFolder(folder)
    dump_yaml(job, files.job_yaml)
    run = start_job(config, folder, slot, lambda event: False, module=module)  # here, or a Ray task
    out, predictions = (files.result, files.predictions) if trial else files.evaluation()
    if run.returncode != 0 or not out.is_file():
        raise TrialFailed(f"scoring {folder.name} on test.json {signal_text(run.returncode, run.log_tail)}; "
                          f"see {files.log}")
    scored = JobResult.read(out) if trial is not None else Evaluation.read(out)
    objective = config.objective
    figures = {"trial": trial.number if trial else None, "eval_loss": scored.value("eval_loss"),
               objective.key: objective.value(scored) if objective.is_generation else None}
    return {**figures, "predictions_path": str(predictions) if predictions.is_file() else None}


def intervals(scored: dict[str, dict[str, Any]], seed: int = 0) -> dict[str, dict[str, float]]:
    """Paired bootstrap 95 % intervals of best minus defaults and best minus base, from the
    per-sample scores of each (samples paired by position: every job answers the same prompts in
    the same order)."""
    best = sample_scores(scored.get("best", {}).get("predictions_path"))
    out: dict[str, dict[str, float]] = {}
    for other in ("defaults", "base"):
        theirs = sample_scores(scored.get(other, {}).get("predictions_path"))
        if best is None or theirs is None or len(best) != len(theirs) or not best:
            continue
        mean, low, high = paired_bootstrap(best, theirs, seed=seed)
        out[f"best - {other}"] = {"mean": mean, "low": low, "high": high, "n": len(best)}
    return out


def honest_scores(config: StudyConfig, space: Space, study: optuna.Study, slot: list[int] | None,
                  may_launch: bool = True) -> None:
    """After the sweep: the winner, the defaults trial and the base model on test.json (with a
    validation set), and the bootstrap intervals; recorded as study user attrs. `may_launch=False`
    (an interrupted sweep): only what needs no job (the trials' own predictions on test.json)."""
    try:
        best = best_trial(study)
    except ValueError:
        return
    if (study.user_attrs.get(TEST_ATTR) or {}).get("best", {}).get("trial") == best.number:
        return  # scored when the study finished: a re-run of a finished study does not redo it
    defaults = defaults_trial(study)
    scored: dict[str, dict[str, Any]] = {}
    if config.data.has_validation and not may_launch:
        log.info("the winner is not scored on test.json: the sweep was interrupted (`run` again scores it)")
        return
    if config.data.has_validation:
        log.info("scoring the best trial, the defaults trial and the base model on test.json (once each)")
        chosen = {"best": best, "defaults": defaults}
        for name, trial in chosen.items():
            if trial is None:
                continue
            scored[name] = (dict(scored["best"]) if name == "defaults" and trial.number == best.number
                            else score_on_test(config, space, trial, slot))
        if config.objective.baseline:
            scored["base"] = score_on_test(config, space, None, slot)
        study.set_user_attr(TEST_ATTR, scored)
    else:  # the trials' own predictions, on test.json already
        base = JobFolder(StudyFolder(config.folder.resolve()).baseline).evaluation()[1]
        scored = {"best": {"predictions_path": best.user_attrs.get("predictions_path")},
                  "defaults": {"predictions_path": defaults.user_attrs.get("predictions_path") if defaults else None},
                  "base": {"predictions_path": str(base) if base.is_file() else None}}
    found = intervals(scored)
    if found:
        study.set_user_attr(BOOTSTRAP_ATTR, found)


