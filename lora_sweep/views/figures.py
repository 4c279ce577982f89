"""The report's plotly figures, from the frame (frame.py) and the study: optimization history,
learning curves, importances with their uncertainty, parallel coordinates, slices, best vs the
base model, and the answers side by side."""

from __future__ import annotations

import html
import json
import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from lora_sweep.events import JobFolder
from lora_sweep.sweep.storage import BASE_ATTR, StudyFolder

from lora_sweep.views.frame import (
    _missing,
    BOOTSTRAP_RESAMPLES,
    LOSS_UNIT,
    STATE_COLOURS,
    best_row,
    completed,
    defaults_row,
    load_frame,
    minimize,
    state_counts,
)


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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def base_value(frame: pd.DataFrame, metric: str) -> float | None:
    """The base model's value of `metric`, if the sweep evaluated the base model."""
    baseline = frame.attrs.get(BASE_ATTR) or {}
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
    baseline = frame.attrs.get(BASE_ATTR) or {}
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
    baseline = frame.attrs.get(BASE_ATTR) or {}
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
                      None if _missing(row.get("trial_dir")) else JobFolder(row["trial_dir"]).predictions):
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
    base = JobFolder(StudyFolder(Path(best["trial_dir"]).parents[1]).baseline).evaluation()[1] if not _missing(
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


