"""The search's optuna pieces, made from the study config: the sampler over the space (seeded
per draw, so workers sharing a study seed never draw alike), the pruner, and when to stop early."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudyConfig
from lora_sweep.config.space import Space
from lora_sweep.stats import paired_bootstrap
from lora_sweep.sweep.optuna_private import storage_of, trial_id
from lora_sweep.sweep.records import sample_scores
from lora_sweep.sweep.storage import best_trial


def make_sampler(config: StudyConfig, space: Space, draw: int | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler; a ConfigError names a bad option. `draw` (the study's trial count when
    a trial is asked for) gives it the seed of that draw: see `draw_seed`."""
    s = config.study.sampler
    seed = draw_seed(s.seed, draw) if draw is not None and s.type != "qmc" else s.seed
    with optuna_options("sampler", s.type):
        if s.type == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **tpe_options(config))
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


def tpe_options(config: StudyConfig) -> dict[str, Any]:
    """TPE's settings at the budgets users run, where study.sampler.options does not give them:
    independent TPE (`multivariate: false`) after max(3, min(10, n_trials // 4)) start-up trials
    (the defaults trial and the informed one among them), not optuna's multivariate TPE after 10,
    which at 8 to 12 trials is random search. Bench 3 measured it (bench/README.md)."""
    startup = max(3, min(10, config.study.n_trials // 4))
    return {"n_startup_trials": startup, "multivariate": False, **config.study.sampler.options}


def draw_seed(seed: int | None, draw: int) -> int | None:
    """The sampler seed for the study's `draw`-th trial: every worker and slot of a study shares
    study.sampler.seed, and samplers seeded alike draw alike, so each trial gets its own stream,
    mixed from the study seed and its position. One worker with one seed still repeats its sweep.
    (QMC keeps the study seed: its points are one scrambled sequence, indexed through the storage.)"""
    if seed is None:  # unseeded: each sampler draws from fresh OS entropy
        return None
    return int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])


PROMPT_SCORES_ATTR = "prompt_scores:"  # + the step: a trial system attr, the metric per scored prompt


class PromptWilcoxon(optuna.pruners.BasePruner):
    """`pruner.type: wilcoxon`: optuna's WilcoxonPruner, judging a trial by its per-prompt scores at its
    last scored evaluation, paired with the study's best trial's at the same step (one signed-rank
    test: is this trial worse, prompt by prompt?). The scores are trial system attrs (`record_scores`),
    so the intermediate values stay one value per evaluation (the curves, the other pruners, the
    report). It judges at scored evaluations only; no pair at that step (the best trial did not score
    it) prunes nothing. The trials score the same prompts: the config refuses it with a searched key
    that changes them (`check_pruner`)."""

    def __init__(self, **options: Any):
        with warnings.catch_warnings():  # experimental in optuna 5: the interface may change, not its test
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.wilcoxon = optuna.pruners.WilcoxonPruner(**options)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        scored = prompt_scores(trial)
        step = max(scored, default=None)
        if step is None or step != trial.last_step:
            return False  # judged once, at the evaluation that scored the prompts
        try:  # the sweep's best: not a warm start's copy (it has no scores), ties broken by the loss
            best = best_trial(study)  # (a complete trial: never this running one)
        except ValueError:  # no complete trial yet
            return False
        paired = prompt_scores(best).get(step)
        if paired is None or len(paired) != len(scored[step]):
            return False
        as_steps = lambda values: dict(enumerate(values))  # noqa: E731 (one prompt per optuna "step")
        view = PairedStudy(study.direction, optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=best.value, intermediate_values=as_steps(paired)))
        mine = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0,
                                         intermediate_values=as_steps(scored[step]))
        return self.wilcoxon.prune(view, mine)  # type: ignore[arg-type]


class PairedStudy:
    """What WilcoxonPruner reads of a study: its direction and its best trial (here: the scores to pair)."""

    def __init__(self, direction: optuna.study.StudyDirection, best_trial: FrozenTrial):
        self.direction, self.best_trial = direction, best_trial


def prompt_scores(trial: FrozenTrial) -> dict[int, list[float]]:
    """A trial's per-prompt scores by the step they were scored at (`record_scores`)."""
    return {int(key[len(PROMPT_SCORES_ATTR):]): value for key, value in trial.system_attrs.items()
            if key.startswith(PROMPT_SCORES_ATTR)}


def record_scores(study: optuna.Study, trial: optuna.Trial, step: int, scores: tuple[float, ...]) -> None:
    """Keep an evaluation's per-prompt scores on the trial, for PromptWilcoxon (this trial's judgement
    and, once it is the best, every later trial's)."""
    storage_of(study).set_trial_system_attr(trial_id(trial), f"{PROMPT_SCORES_ATTR}{step}", list(scores))


PRUNERS = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "percentile": optuna.pruners.PercentilePruner, "threshold": optuna.pruners.ThresholdPruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner,
           "wilcoxon": PromptWilcoxon}


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


def converged(config: StudyConfig, trials: list[FrozenTrial], steps: int | None) -> str | None:
    """Why the sweep may stop before study.n_trials under `study.stop_when: converged`, or None:
    the study's best has not improved beyond noise over its last study.patience finished trials.
    Beyond noise: with per-sample scores (a generation metric's predictions), the paired bootstrap
    95 % interval of the best minus the best before those trials lies above zero; without them
    (eval_loss), the best moved by more than study.min_improvement of its value."""
    patience = config.study.patience
    done = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)), key=lambda t: t.number)
    if config.study.stop_when != "converged" or len(done) < patience + 2:
        return None
    maximize = config.objective.direction == "maximize"

    def best(among: list[FrozenTrial]) -> FrozenTrial | None:
        complete = [t for t in among if t.state == TrialState.COMPLETE and t.value is not None]
        # the best value for the study's direction; of a tie, the earliest trial
        return max(complete, key=lambda t: (t.value if maximize else -t.value, -t.number), default=None)

    now, before = best(done), best(done[:-patience])
    if now is None or before is None:
        return None
    if now.number != before.number:
        ours, theirs = (sample_scores(t.user_attrs.get("predictions_path")) for t in (now, before))
        if ours and theirs and len(ours) == len(theirs):
            _, low, high = paired_bootstrap(ours, theirs)
            if (low > 0) if maximize else (high < 0):
                return None
            noise = f"{low:+.3g} .. {high:+.3g}, 95 % paired bootstrap over {len(ours)} prompts: within noise"
        else:
            moved = abs(now.value - before.value)
            if moved > config.study.min_improvement * max(abs(before.value), 1e-12):
                return None
            noise = f"{moved:.3g}, under study.min_improvement {config.study.min_improvement:g} of it"
        change = f"trial {now.number}'s {now.value:.4g} against trial {before.number}'s {before.value:.4g} ({noise})"
    else:
        change = f"trial {now.number}'s {now.value:.4g} stayed the best"
    left = config.study.n_trials - len(done)
    saved = f", about {left * steps} training steps" if steps else ""
    return (f"study.stop_when converged: no improvement beyond noise in the last {patience} finished trials "
            f"({change}); {left} trial(s) not run{saved}")
