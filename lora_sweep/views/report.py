"""Seeing a sweep: the study as a table and plotly figures, and one self-contained HTML report.

    python -m lora_sweep report study.yaml [-o report.html] [--png]

The notebook `notebooks/sweep_report.ipynb` calls the same functions, so the notebook and
the HTML report show the same views. Every builder copes with pruned and failed trials and
with a study of one trial: a view that needs more than the study has is a figure that says so.
"""

from __future__ import annotations

import html
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from lora_sweep.config.study import StudyConfig
from lora_sweep.sweep.records import honest_lines
from lora_sweep.sweep.storage import masked, shown_config
from lora_sweep.sweep.variants import variant_lines

from lora_sweep.views.figures import (
    as_run,
    best_vs_base_figure,
    compare_frame,
    curves_figure,
    history_figure,
    importance_figure,
    param_importances,
    parallel_figure,
    predictions_frame,
    slice_figure,
    views,
)
from lora_sweep.views.frame import ABOUT, _missing, best_row, find_config, load_frame, open_study, state_counts, trials_table

# What the notebook and the tests use, in one place: the report's figures and frame, through this module
__all__ = ["as_run", "best_row", "best_vs_base_figure", "compare_frame", "curves_figure", "find_chromium",
           "find_config", "history_figure", "importance_figure", "load_frame", "open_study", "param_importances",
           "parallel_figure", "predictions_frame", "slice_figure", "state_counts", "summary", "summary_lines",
           "trials_table", "views", "write_html", "write_report"]


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
    return summary_lines(frame) + honest_lines(study, frame.attrs["metric"]) + variant_lines(study, frame.attrs["metric"])


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
