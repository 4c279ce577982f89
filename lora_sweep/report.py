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
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import optuna
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from lora_sweep.config import ConfigError, StudyConfig, load_study
from lora_sweep.events import best_eval
from lora_sweep.holdout import honest_lines
from lora_sweep.storage import WARM_START_ATTR, StudyFolder, load_existing, masked, shown_config, storage_file

# Trial user attrs worth a column, in this order; any other scalar user attr follows them
# (so a score-like metric the sweep adds later shows up without a change here).
KEY_ATTRS = ("baseline", "best_step", "steps_run", "stop_reason", "train_tokens_per_s", "peak_memory_mb",
             "wall_time_s", "job_wall_time_s", "adapter_path", "error", "trial_dir")
# Long or list-valued attrs that have a better place than a table cell.
SKIP_ATTRS = {"eval_curve", "log_tail"}
# Column names of the frame itself, which a user attr must not overwrite.
RESERVED = {"number", "state", "value", "value_2", "best_intermediate", "last_step", "n_evals", "duration_s",
            "datetime_start", "curve"}

STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#7f7f7f", "FAIL": "#d62728"}
DEFAULTS_LABEL = "documented defaults"

ABOUT = {
    "compare": "The AI Toolkit's compare step (compare.enabled): the compare file's prompts answered by the base "
               "model and by the best trial's adapter, sampled at compare.temperature.",
    "table": "Every trial, best first: its parameters, how far it ran and why it stopped. A pruned trial "
             "carries the value at which it was stopped, a failed one its error.",
    "history": "The objective of each trial in the order they ran, with the best so far: whether the sweep "
               "is still finding better settings or has levelled off.",
    "curves": "The evaluation metric over training steps for every trial on one plot. Pruned trials end "
              "early (dashed, ✕ where the pruner stopped them): how early good and bad settings separate.",
    "parallel": "Each completed trial is a line through its parameter values to its objective: which "
                "regions of the space the good trials share.",
    "importance": "How much of the objective's variation each parameter explains, over the completed "
                  "trials: what is worth tuning further and what can be fixed.",
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


def curve_of(trial: FrozenTrial) -> list[tuple[int, float]]:
    """(step, metric) of each evaluation that scored the metric: the `eval_curve` user attr, or the
    intermediate values of a trial that ended before recording it. (The pruner's values are eval
    loss, sign-adjusted, under objective.prune_on: eval_loss; optuna takes no reports from
    multi-objective trials.)"""
    curve = trial.user_attrs.get("eval_curve")
    if isinstance(curve, list):
        return [(int(s), float(v)) for s, v in curve if v is not None]
    return sorted(trial.intermediate_values.items())


def baseline_attr(study: optuna.Study) -> dict[str, Any] | None:
    """The base model's evaluation, when the sweep recorded one (a dict study user attr)."""
    value = study.user_attrs.get("baseline")
    return value if isinstance(value, dict) else None


def load_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, params_*, key user attrs, and its eval curve.

    `frame.attrs` carries what the figures need besides the rows: study name, direction,
    objective metric name, the base-model baseline, and the parameters' distributions."""
    trials = study.get_trials(deepcopy=False)
    direction = study.directions[0].name.lower()  # a second objective (objective.also) is a column
    rows, extra = [], []
    for t in trials:
        steps = curve_of(t)
        finite = [v for _, v in steps if v is not None and math.isfinite(v)]
        best = (min if direction == "minimize" else max)(finite) if finite else None
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "value": t.values[0] if t.values else None,
            "best_intermediate": best,
            "last_step": steps[-1][0] if steps else None,
            "n_evals": len(steps),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "datetime_start": t.datetime_start,
        }
        if len(study.directions) > 1:
            row["value_2"] = t.values[1] if t.values else None
        row.update({f"params_{k}": v for k, v in sorted(t.params.items())})
        for key, value in t.user_attrs.items():
            if key in SKIP_ATTRS or key in RESERVED or key.startswith("params_") or not is_scalar(value):
                continue
            row[key] = value
            if key not in KEY_ATTRS and key not in extra:
                extra.append(key)
        source = t.user_attrs.get(WARM_START_ATTR)
        if isinstance(source, dict):  # copied in by study.warm_start: it seeds, it does not compete
            row["warm_start_from"] = f"{source.get('study')} trial {source.get('trial')}"
        row["curve"] = [[s, v] for s, v in steps]
        rows.append(row)
    base_cols = ["number", "state", "value", *(["value_2"] if len(study.directions) > 1 else []),
                 "best_intermediate", "last_step", "n_evals", "duration_s", "datetime_start"]
    params = sorted({k for r in rows for k in r if k.startswith("params_")})
    attrs = [k for k in KEY_ATTRS if any(k in r for r in rows)] + extra
    attrs += ["warm_start_from"] if any("warm_start_from" in r for r in rows) else []
    frame = pd.DataFrame(rows, columns=base_cols + params + attrs + ["curve"])
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
        second_objective=(also or "objective 2") if len(study.directions) > 1 else None,
        baseline=baseline_attr(study),
        distributions=distributions,
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
    table = frame.drop(columns=["curve", "trial_dir", "predictions_path", "datetime_start"], errors="ignore")
    table = table.sort_values(["value", "number"], ascending=[minimize(frame), True], na_position="last")
    table.columns = [c.removeprefix("params_") if c.startswith("params_") and c.removeprefix("params_") not in
                     table.columns else c for c in table.columns]
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


def history_figure(frame: pd.DataFrame) -> go.Figure:
    """Objective per trial in run order, the best so far, and the base model as a line."""
    metric, title = frame.attrs.get("metric", "objective"), "Optimization history"
    valued = frame.dropna(subset=["value"])
    if valued.empty:
        return note_figure(title, f"No trial has a value yet ({state_counts(frame)}).")
    fig = go.Figure()
    for state, symbol in (("COMPLETE", "circle"), ("PRUNED", "x")):
        part = valued[valued["state"] == state]
        if part.empty:
            continue
        label = "completed" if state == "COMPLETE" else "pruned (value when stopped)"
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
    failed = int((frame["state"] == "FAIL").sum())
    if failed:
        title += f" ({failed} failed trial{'s' if failed > 1 else ''} not shown)"
    fig.update_layout(title=title, xaxis_title="trial", yaxis_title=metric, template="plotly_white")
    fig.update_xaxes(dtick=max(1, math.ceil(len(frame) / 12)))  # whole trial numbers
    return fig


def curves_figure(frame: pd.DataFrame) -> go.Figure:
    """Every trial's evaluations over steps on one plot; pruned ones dashed, ✕ where they stopped."""
    metric, title = frame.attrs.get("metric", "objective"), "Learning curves"
    with_curves = frame[frame["n_evals"] > 0]
    if with_curves.empty:
        return note_figure(title, f"No trial has been evaluated yet ({state_counts(frame)}).")
    best = best_row(frame)
    palette = px.colors.qualitative.Plotly
    fig = go.Figure()
    for i, (_, row) in enumerate(with_curves.iterrows()):
        steps, values = zip(*row["curve"])
        state, number = row["state"], row["number"]
        is_best = best is not None and number == best["number"]
        name = f"trial {number}" + (" (best)" if is_best else "" if state == "COMPLETE" else f" ({state.lower()})")
        dash = {"COMPLETE": "solid", "PRUNED": "dash"}.get(state, "dot")
        line: dict[str, Any] = {"dash": dash, "width": 4 if is_best else 2, "color": palette[i % len(palette)]}
        fig.add_scatter(x=list(steps), y=list(values), mode="lines+markers", name=name, line=line,
                        marker={"size": 5}, legendgroup=str(number), text=[params_text(row)] * len(steps),
                        hovertemplate=f"trial {number} ({state.lower()})<br>step %{{x}}<br>{metric} %{{y:.4g}}"
                                      "<br>%{text}<extra></extra>")
        if state != "COMPLETE":  # where the trial was cut short
            fig.add_scatter(x=[steps[-1]], y=[values[-1]], mode="markers", showlegend=False,
                            legendgroup=str(number), hoverinfo="skip",
                            marker={"symbol": "x", "size": 13, "color": line["color"]})
    base = base_value(frame, metric)
    if base is not None:
        fig.add_hline(y=base, line_dash="dot", line_color="black", annotation_text="base model")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=metric, template="plotly_white")
    return fig


def primary(study: optuna.Study) -> Callable[[FrozenTrial], float] | None:
    """The first objective as optuna's plot target in a multi-objective study (None: the value)."""
    return (lambda t: t.values[0]) if len(study.directions) > 1 else None


def param_importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """Importances over the completed trials (most important first), and a note on their quality.

    Fewer than two completed trials give none: with one point nothing varies."""
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n < 2:
        return {}, f"Parameter importances need at least 2 completed trials; the study has {n}."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importances = optuna.importance.get_param_importances(study, target=primary(study))
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter common to every completed trial
            return {}, f"Parameter importances could not be computed: {exc}"
    notes = sorted({str(w.message) for w in caught if "importance" in str(w.message).lower()})
    return dict(importances), " ".join(notes) or None


def importance_figure(study: optuna.Study, importances: tuple[dict[str, float], str | None] | None = None) -> go.Figure:
    """Horizontal bars of parameter importance, with the evaluator's caveat when it gave one."""
    title = "Parameter importances"
    values, note = importances or param_importances(study)
    if not values:
        return note_figure(title, note or "No parameter to rank.")
    names = list(values)[::-1]  # plotly draws bars bottom-up: most important on top
    fig = go.Figure(go.Bar(x=[values[n] for n in names], y=names, orientation="h",
                           text=[f"{values[n]:.2f}" for n in names], textposition="auto"))
    if note:
        title += f"<br><sup>{html.escape(note)}</sup>"
    fig.update_layout(title=title, xaxis_title="importance", template="plotly_white",
                      height=max(260, 60 + 40 * len(names)))
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
                 importances: tuple[dict[str, float], str | None] | None = None) -> go.Figure:
    """Slice plots of the `top` most important parameters (all, in study order, when unranked)."""
    title = "Slices of the most important parameters"
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return note_figure(title, "Slice plots need a completed trial; the study has none.")
    if params is None:
        ranked = list((importances or param_importances(study))[0])
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
    """Every figure of the report, in order; the table and the predictions are tables, not figures."""
    frame = load_frame(study) if frame is None else frame
    importances = param_importances(study)
    return [
        View("history", "Optimization history", history_figure(frame)),
        View("curves", "Learning curves", curves_figure(frame)),
        View("parallel", "Parallel coordinates", parallel_figure(study)),
        View("importance", "Parameter importances", importance_figure(study, importances)),
        View("slices", "Slice plots", slice_figure(study, importances=importances)),
        View("best_vs_base", "Best vs base", best_vs_base_figure(frame)),
    ]


# ---------------------------------------------------------------- the HTML report


def summary_lines(frame: pd.DataFrame) -> list[str]:
    """Trial counts, the best trial and its adapter, a line each."""
    lines = [f"{len(frame)} trial{'' if len(frame) == 1 else 's'}: {state_counts(frame)}."]
    best = best_row(frame)
    metric = frame.attrs.get("metric", "objective")
    if best is not None:
        lines.append(f"Best: trial {best['number']}, {metric} {best['value']:.4g} ({frame.attrs['direction']}).")
        if not _missing(best.get("adapter_path")):
            lines.append(f"Its adapter: {best['adapter_path']}")
    return lines


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
             "".join(f"<p>{esc(line)}</p>" for line in summary_lines(frame) + honest_lines(study, frame.attrs["metric"])),
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
