"""Seeing a sweep: the study as a table and plotly figures, and one self-contained HTML report.

    python -m lora_sweep report study.yaml [-o report.html] [--png]

The notebook `notebooks/sweep_report.ipynb` calls the same functions, so the notebook and
the HTML report show the same views. Every builder copes with pruned and failed trials and
with a study of one trial: a view that needs more than the study has is a figure that says so.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import sys
import textwrap
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from lora_sweep.config import ConfigError, ObjectiveSection, StudyConfig, load_study
from lora_sweep.events import best_eval, read_events
from lora_sweep.holdout import honest_lines
from lora_sweep.space import RUN_ATTR, ran, start_event
from lora_sweep.storage import WARM_START_ATTR, StudyFolder, load_existing, masked, shown_config, storage_file

# Trial user attrs worth a column, in this order; any other scalar user attr follows them
# (so a score-like metric the sweep adds later shows up without a change here).
KEY_ATTRS = ("baseline", "best_step", "steps_run", "stop_reason", "train_tokens_per_s", "peak_memory_mb",
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
        path = Path(folder) / "events.jsonl" if folder else None
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
    value = study.user_attrs.get("baseline")
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
    if "baseline" in frame:
        marked = frame[frame["baseline"] == DEFAULTS_LABEL]
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


# ---------------------------------------------------------------- figures


def note_figure(title: str, message: str) -> go.Figure:
    """A figure that says why a view is empty, so every view has its place in the report."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 15})
    fig.update_layout(title=title, height=220, xaxis={"visible": False}, yaxis={"visible": False},
                      template="plotly_white")
    return fig


def params_text(row: pd.Series) -> str:
    items = [(k.removeprefix("params_"), v) for k, v in row.items() if k.startswith("params_") and not _missing(v)]
    return "<br>".join(f"{k}: {_fmt(v)}" for k, v in items)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def base_value(frame: pd.DataFrame, metric: str) -> float | None:
    """The base model's value of `metric`, if the sweep evaluated the base model."""
    baseline = frame.attrs.get("baseline") or {}
    if metric in baseline and isinstance(baseline[metric], (int, float)):
        return float(baseline[metric])
    if baseline.get("metric") == metric and isinstance(baseline.get("score"), (int, float)):
        return float(baseline["score"])
    return None


def value_range(values: list[float]) -> tuple[float, float]:
    """The y range that shows `values` with a margin (a single value gets one of its own size)."""
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 0.1
    return low - pad, high + pad


def history_figure(frame: pd.DataFrame) -> go.Figure:
    """Objective per trial in run order, the best so far, and the base model as a line. The y axis is
    the metric's: a pruned trial stopped before the metric was scored is marked at its worse end."""
    metric, title = frame.attrs.get("metric", "objective"), "Optimization history"
    valued = frame.dropna(subset=["value"])
    unscored = frame[(frame["state"] == "PRUNED") & frame["value"].isna()]
    if valued.empty and unscored.empty:
        return note_figure(title, f"No trial has a value yet ({state_counts(frame)}).")
    fig = go.Figure()
    for state, symbol in (("COMPLETE", "circle"), ("PRUNED", "x")):
        part = valued[valued["state"] == state]
        if part.empty:
            continue
        label = "completed" if state == "COMPLETE" else f"pruned ({metric} when stopped)"
        fig.add_scatter(x=part["number"], y=part["value"], mode="markers", name=label,
                        marker={"symbol": symbol, "size": 10, "color": STATE_COLOURS[state]},
                        text=[params_text(r) for _, r in part.iterrows()],
                        hovertemplate="trial %{x}<br>" + metric + " %{y:.4g}<br>%{text}<extra></extra>")
    done = completed(frame).dropna(subset=["value"]).sort_values("number")
    if not done.empty:
        best = done["value"].cummin() if minimize(frame) else done["value"].cummax()
        fig.add_scatter(x=done["number"], y=best, mode="lines", line={"shape": "hv", "color": "#2ca02c"},
                        name="best so far")
    defaults = defaults_row(frame)
    if defaults is not None and not _missing(defaults["value"]):
        fig.add_scatter(x=[defaults["number"]], y=[defaults["value"]], mode="markers", name="documented defaults",
                        marker={"symbol": "diamond-open", "size": 16, "color": "black"}, hoverinfo="skip")
    base = base_value(frame, metric)
    if base is not None:
        fig.add_hline(y=base, line_dash="dot", line_color="black", annotation_text="base model")
    low, high = value_range([*valued["value"], *([base] if base is not None else [])] or [0.0])
    if not unscored.empty:  # no value on this axis: a row of marks at its worse end, the loss in the hover
        worse = high if minimize(frame) else low
        low, high = (low, high + (high - low) * 0.08) if minimize(frame) else (low - (high - low) * 0.08, high)
        loss = [f"eval_loss {v:.4g} {LOSS_UNIT}" if not _missing(v) else "no evaluation"
                for v in unscored.get("stopped_eval_loss", pd.Series(None, index=unscored.index))]
        fig.add_scatter(x=unscored["number"], y=[worse] * len(unscored), mode="markers", cliponaxis=False,
                        name=f"pruned before {metric} was scored", text=loss,
                        marker={"symbol": "x-thin-open", "size": 12, "line": {"width": 2},
                                "color": STATE_COLOURS["PRUNED"]},
                        customdata=unscored["last_step"].astype(object).where(unscored["last_step"].notna(), "?"),
                        hovertemplate="trial %{x}, pruned at step %{customdata}<br>no " + metric + " scored<br>"
                                      "%{text}<extra></extra>")
    failed = int((frame["state"] == "FAIL").sum())
    if failed:
        title += f" ({failed} failed trial{'s' if failed > 1 else ''} not shown)"
    fig.update_layout(title=title, xaxis_title="trial", yaxis_title=metric, template="plotly_white")
    fig.update_yaxes(range=[low, high])
    fig.update_xaxes(dtick=max(1, math.ceil(len(frame) / 12)))  # whole trial numbers
    return fig


def curves_figure(frame: pd.DataFrame) -> go.Figure:
    """Every trial's eval loss at each evaluation and its training loss over steps on one plot, and
    below it (for another metric) the metric where it was scored; pruned trials dashed, ✕ where the
    pruner stopped them (on the curve it heard)."""
    metric, title = frame.attrs.get("metric", "objective"), "Learning curves"
    with_curves = frame[[bool(c or l) for c, l in zip(frame["curve"], frame["loss_curve"])]]
    if with_curves.empty:
        return note_figure(title, f"No trial has been evaluated yet ({state_counts(frame)}).")
    two = metric != "eval_loss"
    heard_row = 1 if frame.attrs.get("pruned_on", "eval_loss") == "eval_loss" or not two else 2
    loss_title = f"eval_loss ({LOSS_UNIT}); training loss thin"
    fig = make_subplots(rows=2 if two else 1, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[loss_title, f"{metric}, where it was scored"] if two else None)
    best = best_row(frame)
    palette = px.colors.qualitative.Plotly
    for i, (_, row) in enumerate(with_curves.iterrows()):
        state, number = row["state"], row["number"]
        is_best = best is not None and number == best["number"]
        name = f"trial {number}" + (" (best)" if is_best else "" if state == "COMPLETE" else f" ({state.lower()})")
        dash = {"COMPLETE": "solid", "PRUNED": "dash"}.get(state, "dot")
        colour = palette[i % len(palette)]
        line: dict[str, Any] = {"dash": dash, "width": 4 if is_best else 2, "color": colour}
        text = params_text(row)
        panels = [(1, "eval_loss", row["loss_curve"], name, True)]
        if two:
            panels.append((2, metric, row["curve"], f"trial {number} {metric}", not row["loss_curve"]))
        for panel, label, points, trace_name, legend in panels:
            if not points:
                continue
            steps, values = [p[0] for p in points], [p[1] for p in points]
            fig.add_scatter(x=steps, y=values, mode="lines+markers", name=trace_name, line=line, marker={"size": 6},
                            legendgroup=str(number), showlegend=legend, text=[text] * len(steps),
                            hovertemplate=f"trial {number} ({state.lower()})<br>step %{{x}}<br>{label} %{{y:.4g}}"
                                          "<br>%{text}<extra></extra>", row=panel, col=1)
            if state != "COMPLETE" and panel == heard_row:  # where the trial was cut short
                fig.add_scatter(x=[steps[-1]], y=[values[-1]], mode="markers", showlegend=False,
                                legendgroup=str(number), hoverinfo="skip", name=f"trial {number} stopped",
                                marker={"symbol": "x", "size": 13, "color": colour}, row=panel, col=1)
        if row["train_curve"]:
            fig.add_scatter(x=[p[0] for p in row["train_curve"]], y=[p[1] for p in row["train_curve"]], mode="lines",
                            name=f"trial {number} training loss", legendgroup=str(number), showlegend=False,
                            line={"color": colour, "width": 1, "dash": dash}, opacity=0.45,
                            hovertemplate=f"trial {number}<br>step %{{x}}<br>training loss %{{y:.4g}}<extra></extra>",
                            row=1, col=1)
    baseline = frame.attrs.get("baseline") or {}
    base_loss = number_or_none(baseline.get("eval_loss"))
    if base_loss is not None:
        fig.add_hline(y=base_loss, line_dash="dot", line_color="black", annotation_text="base model", row=1, col=1)
    base = base_value(frame, metric)
    if two and base is not None:
        fig.add_hline(y=base, line_dash="dot", line_color="black", annotation_text="base model", row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", height=720 if two else 450)
    fig.update_xaxes(title_text="step", row=2 if two else 1, col=1)
    fig.update_yaxes(title_text=f"loss ({LOSS_UNIT})", row=1, col=1)
    if two:
        fig.update_yaxes(title_text=metric, row=2, col=1)
    return fig


def primary(study: optuna.Study) -> Callable[[FrozenTrial], float] | None:
    """The first objective as optuna's plot target in a multi-objective study (None: the value)."""
    return (lambda t: t.values[0]) if len(study.directions) > 1 else None


def as_run(study: optuna.Study, frame: pd.DataFrame) -> optuna.Study:
    """The study's completed trials with their params as their jobs ran them (a warmup past the run at
    the run's length), in an in-memory study for optuna's plots and importances; the study itself
    where nothing was clamped. A range is widened where a run value lies below it."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    shown = frame.attrs.get("ran") or {}
    if all(shown.get(t.number, t.params) == t.params for t in done):
        return study
    copy = optuna.create_study(directions=study.directions)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    trials = []
    for t in done:
        params = shown.get(t.number, t.params)
        dists = dict(t.distributions)
        for name, value in params.items():
            dist = dists[name]
            if isinstance(dist, optuna.distributions.IntDistribution) and value < dist.low:
                dists[name] = optuna.distributions.IntDistribution(value, dist.high, log=dist.log and value > 0)
        trials.append(optuna.trial.create_trial(values=t.values, params=params, distributions=dists,
                                                user_attrs=t.user_attrs, state=TrialState.COMPLETE))
    copy.add_trials(trials)
    return copy


@dataclass
class Importances:
    """Parameter importances over the completed trials, most important first; `low` and `high` the
    range (the middle 90 %) each takes over bootstrap resamples of those trials; `note` why there
    are none or the evaluator's caveat; `verdict` what they can say, in words."""

    values: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    n_trials: int
    note: str | None = None
    verdict: str | None = None


def importances_of(study: optuna.Study, target: Callable[[FrozenTrial], float] | None) -> dict[str, float]:
    """optuna's default evaluator (PED-ANOVA in optuna 5: deterministic, no extra package)."""
    return dict(optuna.importance.get_param_importances(study, target=target))


def param_importances(study: optuna.Study, resamples: int = BOOTSTRAP_RESAMPLES) -> Importances:
    """Importances over the completed trials (optuna's default evaluator) and their spread over `resamples`
    bootstrap resamples of those trials (drawn with replacement, seeded). Fewer than two completed
    trials give none: with one point nothing varies."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n = len(done)
    if n < 2:
        return Importances({}, {}, {}, n, f"Parameter importances need at least 2 completed trials; the study has {n}.")
    target = primary(study)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            values = importances_of(study, target)
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter common to every completed trial
            return Importances({}, {}, {}, n, f"Parameter importances could not be computed: {exc}")
        rng = np.random.default_rng(0)
        spread: dict[str, list[float]] = {name: [] for name in values}
        for _ in range(resamples):
            sample = optuna.create_study(directions=study.directions)
            sample.add_trials([done[i] for i in rng.integers(0, n, size=n)])
            try:
                drawn = importances_of(sample, target)
            except (ValueError, RuntimeError):
                continue
            for name in spread:
                spread[name].append(drawn.get(name, 0.0))
    notes = sorted({str(w.message) for w in caught if "importance" in str(w.message).lower()})
    low = {k: float(np.percentile(v, 5)) if v else values[k] for k, v in spread.items()}
    high = {k: float(np.percentile(v, 95)) if v else values[k] for k, v in spread.items()}
    return Importances(values, low, high, n, " ".join(notes) or None, verdict(values, low, high, n, resamples))


def verdict(values: dict[str, float], low: dict[str, float], high: dict[str, float], n: int, resamples: int) -> str:
    """What the importances can say: whether the first parameter's range clears the next one's."""
    ranges = f"the bars' ranges are the middle 90 % of {resamples} bootstrap resamples of the {n} completed trials"
    names = list(values)
    if len(names) < 2:
        return f"One parameter varies; {ranges}."
    first, second = names[0], names[1]
    if low[first] <= high[second]:
        return (f"Too few trials to rank the parameters: {first} and {second} overlap ({ranges}), so their order, "
                f"and what is worth tuning, may change with more trials.")
    return f"{first} stands out: its range clears every other parameter's ({ranges})."


def importance_figure(study: optuna.Study, importances: Importances | None = None) -> go.Figure:
    """Horizontal bars of parameter importance with their bootstrap ranges, and under them in words
    whether the trials are enough to rank the parameters (and the evaluator's caveat)."""
    title = "Parameter importances"
    found = importances or param_importances(study)
    if not found.values:
        return note_figure(title, found.note or "No parameter to rank.")
    names = list(found.values)[::-1]  # plotly draws bars bottom-up: most important on top
    values = [found.values[n] for n in names]
    fig = go.Figure(go.Bar(
        x=values, y=names, orientation="h", text=[f"{v:.2f}" for v in values], textposition="inside",
        error_x={"type": "data", "symmetric": False,
                 "array": [max(0.0, found.high[n] - found.values[n]) for n in names],
                 "arrayminus": [max(0.0, found.values[n] - found.low[n]) for n in names]},
        customdata=[[found.low[n], found.high[n]] for n in names],
        hovertemplate="%{y}: %{x:.2f} (resamples: %{customdata[0]:.2f} .. %{customdata[1]:.2f})<extra></extra>"))
    words = " ".join(filter(None, [found.verdict, found.note]))
    fig.add_annotation(text="<br>".join(textwrap.wrap(html.escape(words), 120)), xref="paper", yref="paper", x=0,
                       y=0, yshift=-50, xanchor="left", yanchor="top", align="left", showarrow=False)
    fig.update_layout(title=title, xaxis_title="importance", template="plotly_white", margin={"b": 130},
                      height=max(320, 130 + 40 * len(names)))
    return fig


def parallel_figure(study: optuna.Study) -> go.Figure:
    """Parallel coordinates of the completed trials (optuna's, which knows log scales and choices)."""
    title = "Parallel coordinates"
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n < 2:
        return note_figure(title, f"Parallel coordinates need at least 2 completed trials; the study has {n}.")
    metric = study.user_attrs.get("metric") or "Objective Value"
    fig = optuna.visualization.plot_parallel_coordinate(study, target=primary(study), target_name=metric)
    fig.update_layout(title=title, template="plotly_white")
    return fig


def slice_figure(study: optuna.Study, params: list[str] | None = None, top: int = 4,
                 importances: Importances | None = None) -> go.Figure:
    """Slice plots of the `top` most important parameters (all, in study order, when unranked)."""
    title = "Slices of the most important parameters"
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return note_figure(title, "Slice plots need a completed trial; the study has none.")
    if params is None:
        ranked = list((importances or param_importances(study)).values)
        names = list(dict.fromkeys(k for t in done for k in t.params))
        params = (ranked + [n for n in names if n not in ranked])[:top]
    if not params:
        return note_figure(title, "The completed trials have no parameters.")
    metric = study.user_attrs.get("metric") or "Objective Value"
    fig = optuna.visualization.plot_slice(study, params=params, target=primary(study), target_name=metric)
    fig.update_layout(title=title, template="plotly_white")
    return fig


def number_or_none(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def attr_value(row: pd.Series, keys: list[str]) -> float | None:
    """The first numeric user attr of a trial row among `keys`."""
    for key in keys:
        value = number_or_none(row.get(key))
        if value is not None:
            return value
    return None


def compared_metrics(frame: pd.DataFrame) -> list[tuple[str, float | None, Callable[[pd.Series], float | None]]]:
    """(name, base-model value, a trial row's value) of each metric the comparison shows: the
    objective, then the other of eval_loss / the generation score where the sweep recorded it."""
    metric = frame.attrs.get("metric", "objective")
    baseline = frame.attrs.get("baseline") or {}
    panels: list[tuple[str, float | None, Callable[[pd.Series], float | None]]] = [
        (metric, base_value(frame, metric), lambda row: number_or_none(row["value"]))]
    task = baseline.get("metric")
    if task and task != metric and number_or_none(baseline.get("score")) is not None:
        panels.append((task, float(baseline["score"]), lambda row: attr_value(row, ["best_score", task, "score"])))
    if metric != "eval_loss" and (number_or_none(baseline.get("eval_loss")) is not None
                                  or "best_eval_loss" in frame.columns):
        panels.append(("eval_loss", number_or_none(baseline.get("eval_loss")),
                       lambda row: attr_value(row, ["best_eval_loss"])))
    return panels


def best_vs_base_figure(frame: pd.DataFrame) -> go.Figure:
    """Bars per metric: the base model, the documented-defaults trial and the best trial."""
    title = "Best trial vs base"
    best = best_row(frame)
    if best is None:
        return note_figure(title, f"No trial has completed ({state_counts(frame)}).")
    defaults = defaults_row(frame)
    panels = compared_metrics(frame)
    has_base = any(base is not None for _, base, _ in panels)
    runs: list[tuple[str, pd.Series | None]] = [("base model", None)] if has_base else []
    if defaults is not None and defaults["number"] != best["number"] and defaults["state"] == "COMPLETE":
        runs.append((f"defaults (trial {defaults['number']})", defaults))
    runs.append((f"best (trial {best['number']})", best))
    if len(runs) == 1:
        title += " (the base model was not evaluated and the best trial is the defaults trial)"
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[name for name, _, _ in panels])
    labels = [label for label, _ in runs]
    colours = ["#7f7f7f" if l == "base model" else "#2ca02c" if l.startswith("best") else "#1f77b4" for l in labels]
    for col, (name, base, of_row) in enumerate(panels, start=1):
        values = [base if row is None else of_row(row) for _, row in runs]
        fig.add_bar(x=labels, y=[v if v is not None else 0 for v in values], row=1, col=col, showlegend=False,
                    marker_color=colours, text=[_fmt(v) if v is not None else "n/a" for v in values],
                    textposition="auto")
        fig.update_yaxes(title_text=name, row=1, col=col)
    name, base, of_row = panels[0]
    first = base if has_base else (of_row(runs[0][1]) if runs[0][1] is not None else None)
    last = of_row(best)
    if len(runs) > 1 and first and last is not None:
        title += f": {name} {first:.4g} → {last:.4g} ({(last - first) / abs(first):+.1%})"
    fig.update_layout(title=title, template="plotly_white")
    return fig


def compare_frame(frame: pd.DataFrame, n: int = 5) -> pd.DataFrame | None:
    """The best trial's compare.jsonl (compare.enabled: the compare file's prompts answered by
    the base model and by the adapter, sampled), its first `n` prompts; None when it has none."""
    best = best_row(frame)
    if best is None or _missing(best.get("trial_dir")) or not (Path(best["trial_dir"]) / "compare.jsonl").is_file():
        return None
    rows = read_predictions(Path(best["trial_dir"]) / "compare.jsonl", n)
    return pd.DataFrame({
        "prompt": [prompt_text(r.get("prompt")) for r in rows],
        "reference": [r.get("reference") for r in rows],
        "base model": [r.get("base") for r in rows],
        f"adapter (trial {best['number']})": [r.get("adapter") for r in rows],
    })


def read_predictions(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if limit and len(rows) >= limit:
                    break
    return rows


def prompt_text(value: Any) -> str:
    """A prediction's input for a table cell: the last user message of a conversation."""
    if isinstance(value, list):
        users = [m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else json.dumps(value, ensure_ascii=False)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def predictions_path(row: pd.Series) -> Path | None:
    for candidate in (row.get("predictions_path"),
                      None if _missing(row.get("trial_dir")) else Path(row["trial_dir"]) / "predictions.jsonl"):
        if isinstance(candidate, (str, Path)) and Path(candidate).is_file():
            return Path(candidate)
    return None


def predictions_frame(frame: pd.DataFrame, n: int = 5) -> pd.DataFrame | None:
    """The first `n` test answers of the best trial beside their references (and the base model's
    answer, where it was evaluated); None when the best trial wrote no predictions."""
    best = best_row(frame)
    path = None if best is None else predictions_path(best)
    if path is None:
        return None
    rows = read_predictions(path, n)
    table = pd.DataFrame({
        "input": [prompt_text(r.get("input")) for r in rows],
        "reference": [r.get("reference") for r in rows],
        f"prediction (trial {best['number']})": [r.get("prediction") for r in rows],
        "score": [r.get("score") for r in rows],
    })
    # the sweep evaluates the base model in <study folder>/baseline, on the same prompts in order
    base = StudyFolder(Path(best["trial_dir"]).parents[1]).baseline / "predictions.jsonl" if not _missing(
        best.get("trial_dir")) else None
    if base is not None and base.is_file():
        base_rows = read_predictions(base, n)
        if [prompt_text(r.get("input")) for r in base_rows] == list(table["input"]):
            table["base model prediction"] = [r.get("prediction") for r in base_rows]
            table["base score"] = [r.get("score") for r in base_rows]
    return table


@dataclass
class View:
    key: str
    title: str
    figure: go.Figure


def views(study: optuna.Study, frame: pd.DataFrame | None = None) -> list[View]:
    """Every figure of the report, in order; the table and the predictions are tables, not figures.
    Parallel coordinates, importances and slices show the params as the jobs ran them (`as_run`)."""
    frame = load_frame(study) if frame is None else frame
    shown = as_run(study, frame)
    importances = param_importances(shown)
    return [
        View("history", "Optimization history", history_figure(frame)),
        View("curves", "Learning curves", curves_figure(frame)),
        View("parallel", "Parallel coordinates", parallel_figure(shown)),
        View("importance", "Parameter importances", importance_figure(shown, importances)),
        View("slices", "Slice plots", slice_figure(shown, importances=importances)),
        View("best_vs_base", "Best vs base", best_vs_base_figure(frame)),
    ]


# ---------------------------------------------------------------- the HTML report


def summary_lines(frame: pd.DataFrame) -> list[str]:
    """Trial counts, the best trial and its adapter, and how the space was fitted to the run, a line each."""
    lines = [f"{len(frame)} trial{'' if len(frame) == 1 else 's'}: {state_counts(frame)}."]
    best = best_row(frame)
    metric = frame.attrs.get("metric", "objective")
    if best is not None:
        lines.append(f"Best: trial {best['number']}, {metric} {best['value']:.4g} ({frame.attrs['direction']}).")
        if not _missing(best.get("adapter_path")):
            lines.append(f"Its adapter: {best['adapter_path']}")
    lines += [f"Search space: {note}." for note in frame.attrs.get("space_notes") or []]
    return lines


def summary(study: optuna.Study, frame: pd.DataFrame) -> list[str]:
    """The report's opening lines (the notebook prints the same): `summary_lines`, then the honest
    comparison the sweep recorded (test.json scores, bootstrap intervals of best - defaults / base)."""
    return summary_lines(frame) + honest_lines(study, frame.attrs["metric"])


def table_html(table: pd.DataFrame, kind: str = "trials", index: bool = True) -> str:
    """A DataFrame as an HTML table, missing values blank (pandas writes <NA> for nullable ints)."""
    shown = table.astype(object).where(table.notna(), "")
    return shown.to_html(classes=kind, index=index, border=0,
                         formatters={c: _cell for c in shown.columns})


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
p.about { color: #555; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
table.trials td { white-space: nowrap; }
table.predictions td { max-width: 30em; white-space: pre-wrap; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
"""


def write_html(study: optuna.Study, path: str | Path, config: StudyConfig | None = None) -> Path:
    """One self-contained HTML file of every view; plotly.js is inlined once, before the first figure."""
    import yaml

    frame = load_frame(study)
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(study.study_name)}: lora_sweep report"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Sweep report: {esc(study.study_name)}</h1>",
             "".join(f"<p>{esc(line)}</p>" for line in summary(study, frame)),
             f"<p class='about'>Written {datetime.now():%Y-%m-%d %H:%M}"
             + (f" from {esc(masked(config.storage_url))}" if config else "") + ".</p>"]
    parts += ["<h2>Trials</h2>", f"<p class='about'>{esc(ABOUT['table'])}</p>",
              f"<div class='scroll'>{table_html(trials_table(frame))}</div>"]
    for i, view in enumerate(views(study, frame)):
        parts += [f"<h2>{esc(view.title)}</h2>", f"<p class='about'>{esc(ABOUT[view.key])}</p>",
                  view.figure.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{view.key}",
                                      config={"displaylogo": False, "responsive": True})]
    predictions = predictions_frame(frame)
    if predictions is not None:
        parts += ["<h2>Predictions of the best trial</h2>", f"<p class='about'>{esc(ABOUT['predictions'])}</p>",
                  f"<div class='scroll'>{table_html(predictions, 'predictions', index=False)}</div>"]
    compared = compare_frame(frame)
    if compared is not None:
        parts += ["<h2>Base vs adapter on the compare file</h2>", f"<p class='about'>{esc(ABOUT['compare'])}</p>",
                  f"<div class='scroll'>{table_html(compared, 'predictions', index=False)}</div>"]
    # the config the sweep recorded is what ran; the YAML may have changed since
    tree = shown_config(study.user_attrs.get("config") or (config.model_dump(mode="json") if config else None))
    if tree:
        parts += ["<h2>Study config</h2>",
                  f"<details><summary>YAML</summary><pre>{esc(yaml.safe_dump(tree, sort_keys=False))}</pre></details>"]
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def export_pngs(study: optuna.Study, folder: str | Path, stem: str = "report") -> list[Path]:
    """Static PNGs of the views (`<stem>-<view>.png`), through kaleido and a Chromium; none, and
    no error, where either is missing. kaleido is optional: not a dependency of lora_sweep."""
    import os

    import plotly.io as pio

    try:
        import kaleido  # noqa: F401
    except ImportError:
        return []
    chromium = find_chromium()
    if chromium is None:
        return []
    os.environ.setdefault("BROWSER_PATH", chromium)  # kaleido 1.x (choreographer) looks here first
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shown = views(study)
    paths = [folder / f"{stem}-{view.key}.png" for view in shown]
    heights = [max(450, view.figure.layout.height or 0) for view in shown]
    try:
        if hasattr(pio, "write_images"):  # plotly >= 6.1: one browser for every figure
            pio.write_images([v.figure for v in shown], paths, width=1000, height=heights)
        else:
            for view, path, height in zip(shown, paths, heights):
                view.figure.write_image(path, width=1000, height=height)
    except Exception as exc:  # kaleido's failures vary by version: a picture is not worth a crash
        print(f"PNG export skipped: {exc}", file=sys.stderr)
        return [p for p in paths if p.is_file()]
    return paths


def write_report(config: StudyConfig, output: str | None = None, png: bool = False) -> Path:
    """`python -m lora_sweep report`: the HTML report (and PNGs) of the study of `config`."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, _ = open_study(storage=config.storage_url, study_name=config.study.name)
    out = Path(output) if output else config.folder / "report.html"
    write_html(study, out, config)
    print(f"report: {out}")
    if png:
        pngs = export_pngs(study, out.parent, out.stem)
        if pngs:
            print(f"PNGs: {', '.join(str(p) for p in pngs)}")
        else:
            print("PNGs skipped: they need the kaleido package and a Chromium", file=sys.stderr)
    return out
