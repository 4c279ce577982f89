"""A study as a table: opening a study (from its YAML, or its storage), and one row per trial with
its params as run, values, curves, state and recorded attrs (`load_frame`); the figures
(figures.py) and the HTML report (report.py) read this frame."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from lora_sweep.config.job import ConfigError, ObjectiveSection
from lora_sweep.config.study import StudyConfig, load_study
from lora_sweep.events import JobFolder, best_eval, read_events
from lora_sweep.config.space import RUN_ATTR, ran, start_event
from lora_sweep.sweep.storage import BASE_ATTR, DEFAULTS_ATTR, WARM_START_ATTR, load_existing
from lora_sweep.config.places import storage_file


# Trial user attrs worth a column, in this order; any other scalar user attr follows them
# (so a score-like metric the sweep adds later shows up without a change here).
KEY_ATTRS = (DEFAULTS_ATTR, "best_step", "steps_run", "stop_reason", "train_tokens_per_s", "peak_memory_mb",
             "wall_time_s", "job_wall_time_s", "adapter_path", "error", "trial_dir")
# Long or list-valued attrs that have a better place than a table cell.
SKIP_ATTRS = {"eval_curve", "log_tail"}
# The frame's curves: [[step, value], ...] of the metric where it was scored, of the eval loss at every
# evaluation, and of the training loss (thinned to TRAIN_POINTS); figures, not table cells.
CURVES = ("curve", "loss_curve", "train_curve")
TRAIN_POINTS = 200
# Column names of the frame itself, which a user attr must not overwrite.
RESERVED = {"number", "state", "value", "value_2", "best_intermediate", "last_step", "n_evals", "duration_s",
            "datetime_start", "stopped_eval_loss", *CURVES}
# The eval loss is the mean cross-entropy per answer token, in nats (natural log).
LOSS_UNIT = "nats/token"
# The trials table's names for columns that carry a unit or need a word.
SHOWN_NAMES = {"stopped_eval_loss": f"eval_loss when stopped ({LOSS_UNIT})",
               "best_eval_loss": f"best_eval_loss ({LOSS_UNIT})"}
BOOTSTRAP_RESAMPLES = 30  # resamples of the completed trials behind each importance's range

STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#7f7f7f", "FAIL": "#d62728"}
DEFAULTS_LABEL = "documented defaults"

ABOUT = {
    "compare": "The AI Toolkit's compare step (compare.enabled): the compare file's prompts answered by the base "
               "model and by the best trial's adapter, sampled at compare.temperature.",
    "table": "Every trial, best first: its parameters as its job ran them, how far it ran and why it "
             "stopped. A pruned trial carries the metric only where it was scored before the pruner stopped "
             "it, and the eval loss it was stopped at in a column of its own; a failed one its error.",
    "history": "The objective of each trial in the order they ran, with the best so far: whether the sweep "
               "is still finding better settings or has levelled off. A trial pruned before the metric was "
               "scored has no value on its axis: it is marked at the axis' worse end.",
    "curves": "The eval loss at every evaluation (the pruner's signal under objective.prune_on: eval_loss) and "
              "the training loss, every trial on one plot, with the metric where it was scored. Pruned "
              "trials end early (dashed, ✕ where the pruner stopped them): how early good and bad settings "
              "separate.",
    "parallel": "Each completed trial is a line through its parameter values (as its job ran them) to its "
                "objective: which regions of the space the good trials share.",
    "importance": "How much of the objective's variation each parameter explains, over the completed "
                  "trials, with the range it takes over bootstrap resamples of those trials: what is worth "
                  "tuning further and what can be fixed.",
    "slices": "The objective against each of the most important parameters, a point per completed trial: "
              "where in each range the good values lie.",
    "best_vs_base": "The best trial against the base model (or, where the base model was not evaluated, the "
                    "documented-defaults trial 0) on the task metric: what the sweep bought.",
    "predictions": "A few test inputs with the best trial's prediction beside the reference (generation "
                   "metrics only).",
}


# ---------------------------------------------------------------- opening a study


def rebase(config: StudyConfig, root: Path) -> StudyConfig:
    """The config with its relative study folder and storage path taken from `root`.

    A sweep runs from the folder its YAML path is relative to (the repository root, for
    `sweeps/demo.yaml`); a notebook runs in notebooks/, so relative paths are pinned first."""
    s = config.study
    update: dict[str, Any] = {}
    if not Path(s.dir).is_absolute():
        update["dir"] = str(root / s.dir)
    file = storage_file(s.storage or "")
    if file is not None and not Path(file[1]).is_absolute():
        update["storage"] = file[0] + str(root / file[1])
    return config.model_copy(update={"study": s.model_copy(update=update)}) if update else config


def find_config(study_yaml: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """Load a study YAML; a relative path not found here is looked for in the parent folders."""
    path = Path(study_yaml)
    bases = [Path.cwd()] if path.is_absolute() else [Path.cwd(), *Path.cwd().parents]
    for base in bases:
        if (base / path).is_file():
            return rebase(load_study(base / path, overrides), base)
    raise ConfigError([f"no such file: {study_yaml} (looked in {Path.cwd()} and its parents)"])


def open_study(study_yaml: str | Path | None = None, storage: str | None = None,
               study_name: str | None = None) -> tuple[optuna.Study, StudyConfig | None]:
    """The study of a YAML, or of a storage URL and name (the name may be left out if the storage
    holds one study); storage and study_name given with a YAML override the YAML's."""
    config = find_config(study_yaml) if study_yaml else None
    url = storage or (config.storage_url if config else None)
    if url is None:
        raise ConfigError(["give a study YAML or a storage URL"])
    return load_existing(url, study_name or (config.study.name if config else None)), config


# ---------------------------------------------------------------- the frame


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def objective_of(study: optuna.Study) -> ObjectiveSection:
    """The study's objective section as the sweep recorded it (what the pruner heard, its sign); not
    validated again: a `python:` scorer need not import where the report is written."""
    recorded = (study.user_attrs.get("config") or {}).get("objective") or {}
    return ObjectiveSection.model_construct(**{"metric": study.user_attrs.get("metric") or "eval_loss", **recorded})


@dataclass
class Ran:
    """What a trial's job reported in its events (its folder's events.jsonl): each evaluation, the
    training loss per step, and its `start` event; empty where the folder is not on this machine."""

    evals: list[dict[str, Any]]
    train: list[tuple[int, float]]
    start: dict[str, Any] | None

    @classmethod
    def of(cls, trial: FrozenTrial) -> Ran:
        folder = trial.user_attrs.get("trial_dir")
        path = JobFolder(folder).events if folder else None
        if path is None or not path.is_file():
            return cls([], [], None)
        evals: dict[int, dict[str, Any]] = {}
        train: dict[int, float] = {}
        for event in read_events(path):
            if event["event"] == "resume":  # a re-run's evaluations before its checkpoint
                evals.update({int(e["step"]): e for e in event.get("evals", [])})
            elif event["event"] == "eval":
                evals[int(event["step"])] = event  # a late-scored evaluation comes twice: the last wins
            elif event["event"] == "train" and _finite(event.get("loss")):
                train[int(event["step"])] = float(event["loss"])
        return cls([evals[s] for s in sorted(evals)], sorted(train.items()), start_event(folder))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curves_of(trial: FrozenTrial, objective: ObjectiveSection, events: Ran) -> dict[str, list[list[float]]]:
    """A trial's curves, [[step, value], ...]: `curve` the metric where it was scored, `loss_curve` the
    eval loss at every evaluation, `train_curve` the training loss. From the sweep's records (the
    `eval_curve` user attr, the values the pruner heard) and the job's events; a pruned trial's end
    at the last evaluation the pruner heard (its job ran on a moment before it was stopped)."""
    heard = {int(s): v for s, v in trial.intermediate_values.items()}
    metric = trial.user_attrs.get("eval_curve")
    if isinstance(metric, list):
        curve = [[int(s), float(v)] for s, v in metric if v is not None]
    elif events.evals:
        curve = [[int(e["step"]), float(e[objective.key])] for e in events.evals if _finite(e.get(objective.key))]
    else:
        curve = [[s, v] for s, v in sorted(heard.items())] if objective.prunes_on == objective.key else []
    if events.evals:
        loss = [[int(e["step"]), float(e["eval_loss"])] for e in events.evals if _finite(e.get("eval_loss"))]
    elif objective.prunes_on == "eval_loss" and heard:  # the pruner heard the loss, sign-adjusted
        loss = [[s, objective.pruner_sign * v] for s, v in sorted(heard.items())]
    else:
        loss = [list(p) for p in curve] if objective.key == "eval_loss" else []
    train = [list(p) for p in events.train]
    if trial.state == TrialState.PRUNED and (heard or curve):
        stop = max(heard) if heard else curve[-1][0]
        curve, loss, train = ([p for p in c if p[0] <= stop] for c in (curve, loss, train))
    return {"curve": curve, "loss_curve": loss, "train_curve": thin(train, TRAIN_POINTS)}


def thin(points: list[list[float]], most: int) -> list[list[float]]:
    """At most `most` points: the means of consecutive runs of points (a loss per step of a long run
    would make the report heavy and its lines a blur)."""
    if len(points) <= most:
        return points
    size = math.ceil(len(points) / most)
    runs = [points[i:i + size] for i in range(0, len(points), size)]
    return [[sum(p[0] for p in r) / len(r), sum(p[1] for p in r) / len(r)] for r in runs]


def baseline_attr(study: optuna.Study) -> dict[str, Any] | None:
    """The base model's evaluation, when the sweep recorded one (a dict study user attr)."""
    value = study.user_attrs.get(BASE_ATTR)
    return value if isinstance(value, dict) else None


def load_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, params_* (as the job ran them), key user attrs, and
    its curves (`CURVES`).

    A pruned trial's value is the metric where it was scored before the pruner stopped it, never
    the eval loss the pruner heard in another unit (optuna records that as its value under
    objective.prune_on: eval_loss); `stopped_eval_loss` is the loss it was stopped at. A step-counted
    param the run clamped (a warmup past the run) shows what ran, and `requested_<param>` what was
    asked, where they differ. `frame.attrs` carries what the figures need besides the rows: study
    name, direction, objective metric name, the base-model baseline, the parameters' distributions."""
    trials = study.get_trials(deepcopy=False)
    direction = study.directions[0].name.lower()  # a second objective (objective.also) is a column
    objective = objective_of(study)
    run_steps = (study.user_attrs.get(RUN_ATTR) or {}).get("steps")
    rows, extra, runs = [], [], {}
    for t in trials:
        events = Ran.of(t)
        curves = curves_of(t, objective, events)
        steps = curves["curve"]
        finite = [v for _, v in steps if v is not None and math.isfinite(v)]
        best = (min if direction == "minimize" else max)(finite) if finite else None
        value = t.values[0] if t.values else None
        if t.state == TrialState.PRUNED and objective.prunes_on != objective.key:
            value = steps[-1][1] if steps else None  # the metric when stopped, where it was scored
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "value": value,
            "best_intermediate": best,
            "last_step": max([p[0] for c in (steps, curves["loss_curve"]) for p in c], default=None),
            "n_evals": max(len(steps), len(curves["loss_curve"])),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "datetime_start": t.datetime_start,
        }
        if len(study.directions) > 1:
            row["value_2"] = t.values[1] if t.values else None
        if t.state == TrialState.PRUNED and curves["loss_curve"]:
            row["stopped_eval_loss"] = curves["loss_curve"][-1][1]
        shown = ran(t.params, events.start, run_steps)
        runs[t.number] = shown
        row.update({f"params_{k}": v for k, v in sorted(shown.items())})
        row.update({f"requested_{k}": t.params[k] for k in sorted(shown) if shown[k] != t.params[k]})
        for key, value in t.user_attrs.items():
            if key in SKIP_ATTRS or key in RESERVED or key.startswith("params_") or not is_scalar(value):
                continue
            row[key] = value
            if key not in KEY_ATTRS and key not in extra:
                extra.append(key)
        source = t.user_attrs.get(WARM_START_ATTR)
        if isinstance(source, dict):  # copied in by study.warm_start: it seeds, it does not compete
            row["warm_start_from"] = f"{source.get('study')} trial {source.get('trial')}"
        row.update(curves)
        rows.append(row)
    base_cols = ["number", "state", "value", *(["value_2"] if len(study.directions) > 1 else []),
                 *(["stopped_eval_loss"] if any("stopped_eval_loss" in r for r in rows) else []),
                 "best_intermediate", "last_step", "n_evals", "duration_s", "datetime_start"]
    params = sorted({k for r in rows for k in r if k.startswith("params_")})
    params = [c for p in params for c in (p, "requested_" + p.removeprefix("params_")) if any(c in r for r in rows)]
    attrs = [k for k in KEY_ATTRS if any(k in r for r in rows)] + extra
    attrs += ["warm_start_from"] if any("warm_start_from" in r for r in rows) else []
    frame = pd.DataFrame(rows, columns=base_cols + params + attrs + list(CURVES))
    frame["value"] = frame["value"].astype(float)
    for col in frame.columns:  # whole numbers stay whole where some trials have none (not 12.0)
        present = [r[col] for r in rows if r.get(col) is not None]
        if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            frame[col] = frame[col].astype("Int64")
    distributions: dict[str, Any] = {}
    for t in trials:
        distributions.update(t.distributions)
    also = (study.user_attrs.get("config") or {}).get("objective", {}).get("also")
    frame.attrs.update(
        study_name=study.study_name,
        direction=direction,
        metric=study.user_attrs.get("metric") or "objective",
        pruned_on=objective.prunes_on if objective.prunes_on == "eval_loss" else objective.metric,
        second_objective=(also or "objective 2") if len(study.directions) > 1 else None,
        baseline=baseline_attr(study),
        distributions=distributions,
        space_notes=(study.user_attrs.get(RUN_ATTR) or {}).get("notes") or [],
        ran=runs,
    )
    return frame


def minimize(frame: pd.DataFrame) -> bool:
    return frame.attrs.get("direction", "minimize") == "minimize"


def completed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["state"] == "COMPLETE"]


def best_row(frame: pd.DataFrame) -> pd.Series | None:
    """The best completed trial, or None; trials of equal value: the lower best eval loss. A trial
    a warm start copied in is not a candidate (its adapter is the earlier study's)."""
    done = completed(frame).dropna(subset=["value"])
    if "warm_start_from" in done:
        done = done[done["warm_start_from"].isna()]
    if done.empty:
        return None
    losses = done["best_eval_loss"] if "best_eval_loss" in done else pd.Series(None, index=done.index)
    records = [{"row": i, "value": v, "eval_loss": None if _missing(l) else l}
               for i, v, l in zip(done.index, done["value"], losses)]
    return done.loc[best_eval(records, "value", "minimize" if minimize(frame) else "maximize")["row"]]


def defaults_row(frame: pd.DataFrame) -> pd.Series | None:
    """The documented-defaults trial (trial 0 unless the study enqueued none)."""
    if DEFAULTS_ATTR in frame:
        marked = frame[frame[DEFAULTS_ATTR] == DEFAULTS_LABEL]
        if not marked.empty:
            return marked.iloc[0]
    return None


def trials_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The trials, best value first (trials without a value last), for display."""
    table = frame.drop(columns=[*CURVES, "trial_dir", "predictions_path", "datetime_start"], errors="ignore")
    table = table.sort_values(["value", "number"], ascending=[minimize(frame), True], na_position="last")
    table.columns = [c.removeprefix("params_") if c.startswith("params_") and c.removeprefix("params_") not in
                     table.columns else SHOWN_NAMES.get(c, c) for c in table.columns]
    return table.set_index("number")


def state_counts(frame: pd.DataFrame) -> str:
    counts = Counter(frame["state"])
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no trials"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
