"""What is known about LoRA learning rates, as a prior for the search (study.lr_prior).

Published results (Schulman et al., "LoRA Without Regret", Thinking Machines Lab, 2025; the fit is
`get_lr` in their tinker-cookbook's hyperparam_utils): LoRA's best learning rate is about 10x full
fine-tuning's, more for runs under ~100 steps (about 15x), roughly independent of the rank, and it
falls with the model's width:

    lr = 5e-5 * 10 * (2000 / hidden_size) ** p      p = 0.0775 for Qwen models, 0.781 otherwise (Llama's fit)

That fit trained with alpha 32 and PEFT's alpha / r scaling; an adapter's first steps move the
model by about learning rate x scaling, so here it is scaled by 32 / alpha (rsLoRA: 32 * sqrt(r) /
(alpha * r)), and by 1.5 for a run of under 100 steps. With it the sweep (1) runs an informed trial
right after the documented defaults: the defaults with this learning rate, and (2) when the user
wrote no learning_rate range, searches learning_rate over prior / 5 .. prior * 5 within the
documented 1e-4 .. 1e-2, not the whole of it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from optuna.distributions import FloatDistribution, IntDistribution

from lora_sweep.config.space import Space, default_params, param_path
from lora_sweep.config.study import StudyConfig

log = logging.getLogger("lora_sweep.prior")

BASE_LR, LORA_FACTOR, WIDTH = 5e-5, 10.0, 2000
EXPONENT = {"qwen": 0.0775}  # by model_type prefix; every other family gets Llama's
LLAMA_EXPONENT = 0.781
SHORT_RUN, SHORT_FACTOR = 100, 1.5  # steps; 15x rather than 10x full fine-tuning's rate
FIT_ALPHA = 32
SPREAD = 5.0  # the focused range: prior / SPREAD .. prior * SPREAD
SCALING = ("lora.r", "lora.alpha", "lora.use_rslora")  # searched: no one scaling to focus the range on
INFORMED_ATTR = "informed"  # trial user attr: why the trial's params were placed, not drawn


@dataclass(frozen=True)
class Prior:
    lr: float
    why: str  # the formula with this model's figures


def model_width(config: StudyConfig) -> tuple[int, str] | None:
    """(hidden size, model_type) from the model's config, or None when it cannot be read here."""
    from transformers import AutoConfig

    from lora_sweep.job.models import resolve_model

    try:
        found = AutoConfig.from_pretrained(resolve_model(config.model.name_or_path),
                                           trust_remote_code=config.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - no config to read is no prior, said once
        log.info("no learning-rate prior: the model's config cannot be read (%s)", str(exc).splitlines()[0])
        return None
    text = getattr(found, "text_config", None) or found
    hidden = getattr(text, "hidden_size", None)
    return (int(hidden), str(getattr(text, "model_type", found.model_type))) if hidden else None


def lr_prior(config: StudyConfig, steps: int | None) -> Prior | None:
    """The prior learning rate for this model, LoRA scaling and run length (None: no model config)."""
    width = model_width(config)
    if width is None:
        return None
    hidden, kind = width
    p = next((e for prefix, e in EXPONENT.items() if kind.startswith(prefix)), LLAMA_EXPONENT)
    lora = config.lora
    scale = FIT_ALPHA / lora.alpha * (math.sqrt(lora.r) if lora.use_rslora else 1.0)
    short = steps is not None and 0 < steps < SHORT_RUN
    lr = BASE_LR * LORA_FACTOR * (WIDTH / hidden) ** p * scale * (SHORT_FACTOR if short else 1.0)
    why = (f"5e-4 x (2000 / hidden size {hidden}) ^ {p} ({kind}) x {FIT_ALPHA} / alpha {lora.alpha:g}"
           + (f" x sqrt(r {lora.r}) (rsLoRA)" if lora.use_rslora else "")
           + (f" x {SHORT_FACTOR} (a run of {steps} steps)" if short else ""))
    return Prior(lr, why)


def apply_prior(config: StudyConfig, space: Space) -> tuple[Space, Prior | None]:
    """The space with learning_rate focused around the prior when the user wrote no range for it
    (with a note), and the prior; the space as it was when study.lr_prior is off or learning_rate
    is not searched."""
    dist = space.distributions.get("learning_rate")
    if not config.study.lr_prior or not isinstance(dist, FloatDistribution):
        return space, None
    prior = lr_prior(config, space.run_steps or config.training.num_training_steps)
    if prior is None:
        return space, None
    own = {param_path(name) for name in config.search_space}
    searched = [p for p in SCALING if any(space.paths[n] == p for n in space.distributions)]
    notes = [f"learning-rate prior {prior.lr:.3g} = {prior.why}: an informed trial runs it after the defaults"]
    focused = dataclasses.replace(space, distributions=dict(space.distributions), notes=[*space.notes])
    if "training.learning_rate" in own:
        notes.append("learning_rate keeps the range search_space gives it")
    elif searched:
        notes.append(f"learning_rate keeps its documented range: {', '.join(searched)} searched, the prior's "
                     f"scaling is not one")
    else:
        low, high = max(dist.low, prior.lr / SPREAD), min(dist.high, prior.lr * SPREAD)
        if low < high:
            focused.distributions["learning_rate"] = FloatDistribution(low, high, log=dist.log)
            notes.append(f"learning_rate searched over {low:.3g}..{high:.3g} (prior / {SPREAD:g} .. prior x {SPREAD:g} "
                         f"within the documented {dist.low:g}..{dist.high:g}); study.lr_prior: false searches all of it")
    focused.notes.extend(notes)
    return focused, prior


def informed_params(config: StudyConfig, space: Space, prior: Prior) -> dict[str, Any]:
    """The documented defaults (as the defaults trial runs them: `space` is the documented one)
    with the prior's learning rate, within the documented range."""
    params, _ = default_params(config, space)
    dist = space.distributions["learning_rate"]
    params["learning_rate"] = min(max(prior.lr, dist.low), dist.high)
    return params


def holding(space: Space, fixed: dict[str, Any]) -> Space:
    """The space a queued trial is drawn from: a fixed value outside its searched range (the
    defaults trial's documented learning rate outside the prior's focused range) gets a range
    widened to hold it, for that trial only, so the value recorded is within the range recorded
    with it (a warm start or a replay can copy the trial)."""
    wider = {}
    for name, value in fixed.items():
        dist = space.distributions.get(name)
        if isinstance(dist, (FloatDistribution, IntDistribution)) and not dist.low <= value <= dist.high \
                and dist.step is None and name not in space.depends:
            wider[name] = type(dist)(min(dist.low, value), max(dist.high, value), log=dist.log)
    return dataclasses.replace(space, distributions={**space.distributions, **wider}) if wider else space
