"""The search space, written the way optuna thinks of it.

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    lr_scheduler_type: {type: categorical, choices: [linear_with_warmup, cosine_with_warmup]}
    r: 8                       # a bare value fixes the parameter for every trial
    learning_rate:             # a range per choice of a searched categorical (`dependent`)
      depends_on: init_lora_weights
      cases: {true: {type: float, low: 1.0e-4, high: 1.0e-2, log: true},
              pissa: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}

Names are the reference's parameter names (the flat lora.yaml ones) plus LoRA's `r`, `alpha`
and `target_modules`, or a dotted path into the job config (`data.train_seqlen`). One table
maps names to their place in the job config; there is no per-parameter code.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import ValidationError

import dataclasses
import logging
import optuna
from lora_sweep.events import JobFolder, read_events
from lora_sweep.config.job import DataSection, JobConfig, TrainingSection
from lora_sweep.config.files import FLAT_KEYS, get_path, parse_scalar, set_path

# A study.StudyConfig: study.py imports this module to check its space, so the type is named, not imported
StudyConfig = Any

log = logging.getLogger("lora_sweep.space")

# Job settings counted in optimizer steps that a run of N steps uses only up to N: a warmup past the
# run is clamped to it, an evaluation or checkpoint interval past it falls only at the run's end.
# Every value from N up is one and the same run; what that means, per setting:
RUN_BOUNDED = {
    "training.num_warmup_steps": "one and the same schedule (the learning rate rises for the whole run)",
    "training.eval_steps": "one and the same run (evaluated only at its end)",
    "training.save_steps": "one and the same run (no checkpoint before its end)",
}
# Settings the run's length follows from besides the training rows; the longest run a space allows
# takes the most steps and epochs and the smallest batches.
LONGEST = {"training.num_training_steps": max, "training.epochs": max, "data.train_batch_size": min,
           "training.gradient_accumulation_steps": min}
# data settings that leave the training rows as they are; any other searched data setting (and the
# seed that samples the data) makes each trial's rows its own, not countable before the trials
SAME_ROWS = {"data.train_batch_size", "data.test_batch_size", "data.test_seqlen", "data.test_nsamples",
             "data.inference_system_prompt", "data.cache_dir"}
RUN_ATTR = "run"  # study user attr: {"steps": the longest trial's steps or None, "notes": [...]}


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
    for name in ordered(space):
        dist = case_of(space, name, params)
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
    for name in ordered(space):
        dist = case_of(space, name, params)
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
    lines.update({name: f"depends on {parent}: " + "; ".join(f"{choice!r}: {dist!r}" for choice, dist in cases.items())
                  for name, (parent, cases) in space.depends.items()})
    lines.update({name: f"fixed {value!r}" for name, value in space.fixed.items()})
    return lines


# ---------------------------------------------------------------- the space and the run's length


def run_steps(config: StudyConfig, space: Space, train_rows: int | None) -> tuple[int | None, str | None]:
    """The longest run a trial of the space can have, in optimizer steps (train.plan_steps' count,
    with the searched length settings at their longest), or None and why it is not known before the
    trials. `train_rows`: the tokenized training rows of the study's data (None: not counted)."""
    tree = apply(config.job_tree(), space, {})
    searched = {space.paths[name]: dist for name, dist in space.distributions.items()}
    for path, pick in LONGEST.items():
        dist = searched.get(path)
        if dist is not None:
            values = ([v for v in dist.choices if isinstance(v, (int, float))]
                      if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high])
            set_path(tree, path, pick(values))
    own_rows = sorted(p for p in searched if (p.startswith("data.") and p not in SAME_ROWS) or p == "training.seed")
    job = config.model_copy(update={"training": TrainingSection.model_construct(**tree["training"]),
                                    "data": DataSection.model_construct(**tree["data"])})
    if job.training.num_training_steps is None:
        if own_rows:
            return None, f"each trial's training rows depend on {', '.join(own_rows)}, which is searched"
        if train_rows is None:
            return None, "the training rows are not counted yet"
    return plan_steps(job, train_rows or 0, config.study.gpus_per_trial), None


def fit_to_run(config: StudyConfig, space: Space, train_rows: int | None) -> Space:
    """The space fitted to the run's length: a step-counted setting (RUN_BOUNDED) whose range the
    user did not write is searched over low .. the longest run, not the documented range past it,
    with a note saying so. A range the user wrote stays as written (`past_the_run` warns)."""
    steps, why = run_steps(config, space, train_rows)
    fitted = dataclasses.replace(space, distributions=dict(space.distributions), run_steps=steps, notes=[])
    own = {param_path(name) for name in config.search_space}
    for name, dist in space.distributions.items():
        path = space.paths[name]
        if path not in RUN_BOUNDED or path in own or not isinstance(dist, IntDistribution):
            continue
        if steps is None:
            fitted.notes.append(f"{name} keeps its documented range {dist.low}..{dist.high}: the run's length is "
                                f"not known before the trials ({why})")
        elif dist.high > steps >= dist.low:
            high = dist.low + (steps - dist.low) // dist.step * dist.step
            fitted.distributions[name] = IntDistribution(dist.low, high, log=dist.log, step=dist.step)
            fitted.notes.append(f"{name} searched over {dist.low}..{high}, not the documented {dist.low}..{dist.high}: "
                                f"the trials run {steps} steps, and every value from {steps} up is {RUN_BOUNDED[path]}")
    return fitted


def same_run_share(dist: IntDistribution, steps: int) -> float:
    """The share of an int range the sampler draws from that runs as `steps` (values >= steps)."""
    first = max(dist.low, steps)
    if first > dist.high:
        return 0.0
    if dist.log:  # optuna draws a log int uniformly in log(low - 0.5) .. log(high + 0.5)
        return math.log((dist.high + 0.5) / (first - 0.5)) / math.log((dist.high + 0.5) / (dist.low - 0.5))
    first = dist.low + math.ceil((first - dist.low) / dist.step) * dist.step
    return ((dist.high - first) // dist.step + 1) / ((dist.high - dist.low) // dist.step + 1)


def past_the_run(space: Space) -> list[str]:
    """A warning per step-counted range (RUN_BOUNDED) that reaches past the fitted space's run:
    how much of it is one and the same run. Such a range is kept as written."""
    steps, lines = space.run_steps, []
    for name, dist in space.distributions.items():
        path = space.paths[name]
        if steps is None or path not in RUN_BOUNDED:
            continue
        if isinstance(dist, IntDistribution) and dist.high > steps:
            lines.append(f"search_space.{name}: {dist.low}..{dist.high} reaches past the run's {steps} steps: "
                         f"{same_run_share(dist, steps):.1%} of it (every value from {max(dist.low, steps)} up) is "
                         f"{RUN_BOUNDED[path]}; values up to {steps} cover what can differ")
        elif isinstance(dist, CategoricalDistribution):
            past = [c for c in dist.choices if isinstance(c, int) and c >= steps]
            if len(past) > 1:
                lines.append(f"search_space.{name}: {len(past)} of its {len(dist.choices)} choices "
                             f"({', '.join(map(str, past))}) reach the run's {steps} steps: they are "
                             f"{RUN_BOUNDED[path]}")
    return lines


def record(study: optuna.Study, space: Space) -> None:
    """A new study's run length and the space's notes, kept on the study (its dashboard note and the
    report show them) and said once in the log."""
    study.set_user_attr(RUN_ATTR, {"steps": space.run_steps, "notes": space.notes})
    for note in space.notes:
        log.info("search space: %s", note)


# ---------------------------------------------------------------- what a trial ran


def start_event(trial_dir: str | Path | None) -> dict[str, Any] | None:
    """The last `start` event of a trial's job (max_steps, warmup_steps), if its folder is here."""
    if not trial_dir or not JobFolder(trial_dir).events.is_file():
        return None
    starts = [e for e in read_events(JobFolder(trial_dir).events) if e["event"] == "start"]
    return starts[-1] if starts else None


def ran(params: dict[str, Any], start: dict[str, Any] | None, run_steps: int | None) -> dict[str, Any]:
    """A trial's params as its job ran them: a step-counted setting past the run at the run's length
    (the warmup the job's `start` event reports; without one, the study's run length bounds them)."""
    steps = start.get("max_steps") if start else run_steps
    out = dict(params)
    for name, value in params.items():
        path = param_path(name)
        if path not in RUN_BOUNDED or not isinstance(value, int):
            continue
        if path == "training.num_warmup_steps" and start and start.get("warmup_steps") is not None:
            out[name] = start["warmup_steps"]
        elif steps:
            out[name] = min(value, steps)
    return out


def trial_ran(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """`ran` for a trial of the study: its folder's start event, else the study's run length."""
    steps = (study.user_attrs.get(RUN_ATTR) or {}).get("steps")
    return ran(trial.params, start_event(trial.user_attrs.get("trial_dir")), steps)


# ---------------------------------------------------------------- the space's names and checks (the config validates it, every problem at once)

SEARCHABLE: dict[str, str] = {
    **FLAT_KEYS,
    "r": "lora.r",
    "alpha": "lora.alpha",
    "target_modules": "lora.target_modules",
    "use_dora": "lora.use_dora",
    "use_rslora": "lora.use_rslora",
    "init_lora_weights": "lora.init_lora_weights",
    "loraplus_lr_ratio": "lora.loraplus_lr_ratio",
    **{key: f"lora.{key}" for key in ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
                                      "bnb_4bit_compute_dtype")},
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
    """Searched parameters (name -> optuna distribution), fixed ones, and each name's config path;
    once fitted to the run (`space.fit_to_run`), the run's length in steps and what was narrowed."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    run_steps: int | None = None
    notes: list[str] = field(default_factory=list)
    # a parameter whose distribution depends on a searched categorical's choice: name -> (that
    # categorical, {choice: distribution}); `distributions` holds the envelope of its cases, for
    # what needs one distribution per name (the run's length, warm starts, the report)
    depends: dict[str, tuple[str, dict[Any, BaseDistribution]]] = field(default_factory=dict)


def ordered(space: Space) -> list[str]:
    """The searched names, those a dependent entry depends on first (it is asked for after them)."""
    return sorted(space.distributions, key=lambda name: name in space.depends)


def case_of(space: Space, name: str, params: dict[str, Any]) -> BaseDistribution:
    """The distribution of `name` in a trial that has drawn `params` so far."""
    if name in space.depends and space.depends[name][0] in params:
        parent, cases = space.depends[name]
        return cases[params[parent]]
    return space.distributions[name]


def plan_steps(config: Any, train_rows: int, world_size: int) -> int:
    """Optimizer steps of the run: num_training_steps, or epochs over the rows. `config` is a job's
    or a study's (both have `training` and `data`): the job runs this, the study's space is fitted to it."""
    t = config.training
    if t.num_training_steps is not None:
        return t.num_training_steps
    batches = math.ceil(train_rows / (config.data.train_batch_size * world_size))
    per_epoch = max(1, batches // t.gradient_accumulation_steps)
    return max(1, math.ceil(t.epochs * per_epoch))


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
        raise ValueError(f"{where}: low <= high must hold, but got (low={spec['low']}, high={spec['high']})")
    if log and low <= 0:
        raise ValueError(f"{where}: a log distribution needs low > 0, got low={spec['low']}")
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
    dependent = {name: spec for name, spec in entries.items() if isinstance(spec, dict) and "depends_on" in spec}
    for name, spec in entries.items():
        where = f"search_space.{name}"
        path = param_path(name)
        if path is None:
            problems.append(f"{where}: unknown parameter; use a reference name ({', '.join(sorted(SEARCHABLE))}) "
                            "or a dotted path such as data.train_seqlen")
            continue
        space.paths[name] = path
        if name in dependent:
            continue  # once every categorical it may depend on is read
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
    for name, spec in dependent.items():
        if name in space.paths:
            problems += dependent_problems(config, job, space, known, name, spec)
    problems += combination_problems(job, space, known, problems)
    if not any(isinstance(spec, dict) for spec in entries.values()) and config.study.sampler.type != "grid":
        problems.append("search_space: nothing to search: every parameter is fixed")
    if problems:
        raise ValueError("\n".join(problems))
    return space




def pair_values(dist: BaseDistribution) -> list[Any]:
    """Values of a searched parameter checked in combination: every choice, or the bounds and, in an int
    range, the value after the low one (an odd r between even bounds)."""
    if isinstance(dist, IntDistribution) and dist.low + dist.step < dist.high:
        return [dist.low, dist.low + dist.step, dist.high]
    return candidates(dist)


def combination_problems(job: dict[str, Any], space: Space, known: list, reported: list[str]) -> list[str]:
    """A line per pair of lora values the space can draw together that make no valid job though each
    is valid alone (use_dora true with init_lora_weights pissa, init_lora_weights orthogonal with an odd
    r): searched against searched or fixed. Only the lora group's parameters are paired: its rules
    (config.job.lora_problems) are each about two keys, so pairs find every forbidden combination."""
    dims = {name: pair_values(dist) for name, dist in space.distributions.items()}
    for name, (parent, cases) in space.depends.items():  # with its parent: checked per case already
        dims[name] = list(dict.fromkeys(v for dist in cases.values() for v in pair_values(dist)))
    dims.update({name: [value] for name, value in space.fixed.items()})
    names = [name for name in dims if space.paths[name].startswith("lora.")]
    problems, seen = [], set(reported)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if (first in space.fixed and second in space.fixed) or space.depends.get(second, [None])[0] == first \
                    or space.depends.get(first, [None])[0] == second:
                continue  # the study's own lora group is checked as it is
            for one in dims[first]:
                for two in dims[second]:
                    tree = copy.deepcopy(job)
                    for name, value in ((first, one), (second, two)):
                        set_path(tree, space.paths[name], to_config_value(space.paths[name], value))
                    for loc, msg in job_errors(tree):
                        for line in msg.split("\n"):
                            if (loc, msg) in known or any(line in r for r in seen):
                                continue
                            seen.add(line)
                            problems.append(f"search_space: {first} {one!r} with {second} {two!r} can be drawn "
                                            f"together, and is not a valid job: {line}")
    return problems


def dependent_problems(config: StudyConfig, job: dict[str, Any], space: Space, known: list, name: str,
                       spec: dict[str, Any]) -> list[str]:
    """Read `{depends_on: CATEGORICAL, cases: {choice: distribution, ...}}` into space.depends (a case per
    choice of a searched categorical), each case's values checked with its choice; or its problems."""
    where, parent = f"search_space.{name}", spec.get("depends_on")
    unknown = sorted(set(spec) - {"depends_on", "cases"})
    if unknown:
        return [f"{where}: unknown keys {unknown} beside depends_on (give cases: {{choice: distribution}})"]
    choices = space.distributions.get(parent)
    if not isinstance(choices, CategoricalDistribution) or parent in space.depends:
        return [f"{where}.depends_on: must name a searched categorical of search_space, got {parent!r}"]
    cases = spec.get("cases")
    if not isinstance(cases, dict) or not all(isinstance(case, dict) for case in cases.values()):
        return [f"{where}.cases: give a distribution per choice of {parent}, e.g. {{{choices.choices[0]}: "
                "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}"]
    keys = {as_choice(key): key for key in cases}
    missing, extra = [c for c in choices.choices if c not in keys], [k for k in keys if k not in choices.choices]
    if missing or extra:
        return [f"{where}.cases: one per choice of {parent} ({', '.join(map(repr, choices.choices))})"
                + (f"; missing {', '.join(map(repr, missing))}" if missing else "")
                + (f"; not a choice: {', '.join(map(repr, extra))}" if extra else "")]
    if config.study.sampler.type == "grid":
        return [f"{where}: depends_on needs a sampler that asks per trial; the grid sampler's grid is fixed"]
    problems, dists = [], {}
    for choice in choices.choices:
        try:
            dists[choice] = distribution(f"{where}.cases.{choice}", cases[keys[choice]])
        except ValueError as exc:
            problems += str(exc).split("\n")
            continue
        for value in candidates(dists[choice]):
            tree = copy.deepcopy(job)
            set_path(tree, space.paths[parent], to_config_value(space.paths[parent], choice))
            set_path(tree, space.paths[name], to_config_value(space.paths[name], value))
            problems += [f"{where}.cases.{choice}: value {value!r} is not valid with {parent} {choice!r}: {msg}"
                         for loc, msg in job_errors(tree) if (loc, msg) not in known]
    kinds = {(type(d), getattr(d, "log", None), getattr(d, "step", None)) for d in dists.values()}
    if any(isinstance(d, CategoricalDistribution) for d in dists.values()):
        problems.append(f"{where}.cases: a float or int range per choice; optuna's storages keep one set of "
                        "categorical choices per parameter and study")
    elif not problems and len(kinds) > 1:
        problems.append(f"{where}.cases: every case must be of one type, log and step (one parameter in optuna)")
    if problems:
        return problems
    space.depends[name] = (parent, dists)
    space.distributions[name] = envelope(list(dists.values()))
    return []


def envelope(dists: list[Any]) -> BaseDistribution:
    """One range holding every case's values: the lowest low to the highest high."""
    first = dists[0]
    low, high = min(d.low for d in dists), max(d.high for d in dists)
    if isinstance(first, IntDistribution):
        return IntDistribution(low, high, log=first.log, step=first.step)
    return FloatDistribution(low, high, log=first.log, step=first.step)
