"""Seeing the sweep: the report's frame and figures, the notebook run headless, the dashboard
over real HTTP, artifacts, and the HTML report opened in headless Chromium.

One real tiny-model sweep (conftest's session fixture `mixed_sweep`, shared with test_sweep.py)
makes a study with completed, pruned and failed trials and a base-model baseline; a synthetic
generation-metric study (no training) covers what that sweep does not reach: many completed
trials, a score, predictions."""

from __future__ import annotations

import io
import json
import math
import os
import queue
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from helpers import REPO, run_module, write_jsonl, write_yaml
from lora_sweep.sweep import records
from lora_sweep.views import report
from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudyConfig

NOTEBOOK = REPO / "notebooks" / "sweep_report.ipynb"
N_FIGURES = 6  # report.views: history, curves, parallel, importance, slices, best vs base


def synthetic_study(folder: Path, name: str = "rich") -> optuna.Study:
    """A generation-metric study (maximized) made without training, shaped as the demo's: the pruner
    hears the eval loss (objective.prune_on's default, negated in a maximizing study), json_fields is
    scored only at the last of a 40-step trial's evaluations, so the two pruned trials (stopped at step
    20) have none and optuna records the negated loss as their value. Varied params, a warmup range
    of 0..10000 that the 40-step jobs clamp, every trial state, a base-model baseline, predictions for
    the completed trials and the base model, and each job's events (but trial 7's: its folder is gone)."""
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder}/{name}.db", direction="maximize")
    study.set_user_attr("metric", "json_fields")
    study.set_user_attr("config", {"objective": {"metric": "json_fields", "generate_every": 100}})
    study.set_user_attr("run", {"steps": 40, "notes": []})
    study.set_user_attr("baseline", {"eval_loss": 2.5, "perplexity": 12.2, "metric": "json_fields", "score": 0.1})
    dists = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True), "r": IntDistribution(4, 32, step=4),
             "lr_scheduler_type": CategoricalDistribution(["linear_with_warmup", "cosine_with_warmup"]),
             "num_warmup_steps": IntDistribution(0, 10000)}
    rng = random.Random(0)
    records = [{"input": [{"role": "user", "content": f"fields of item {i}?"}], "reference": f'{{"id": {i}}}',
                "prediction": f'{{"id": {i if i % 2 else 0}}}', "score": float(i % 2)} for i in range(6)]
    write_jsonl(_mkdir(folder / name / "baseline") / "predictions.jsonl",
                [{**r, "prediction": "{}", "score": 0.0} for r in records])
    for n in range(8):
        params = {"learning_rate": 10 ** rng.uniform(-4, -2), "r": rng.choice(range(4, 33, 4)),
                  "lr_scheduler_type": rng.choice(dists["lr_scheduler_type"].choices),
                  "num_warmup_steps": [4561, 12, 9000, 30, 700, 5, 40, 2500][n]}
        state = TrialState.FAIL if n == 5 else TrialState.PRUNED if n in (2, 6) else TrialState.COMPLETE
        quality = 1 - abs(math.log10(params["learning_rate"]) + 3) / 2  # best near 1e-3
        steps = {TrialState.COMPLETE: [10, 20, 30, 40], TrialState.PRUNED: [10, 20], TrialState.FAIL: []}[state]
        loss = {s: round(2.0 - 1.2 * quality * (i + 1) / 4 + rng.uniform(0, 0.03), 4) for i, s in enumerate(steps)}
        score = round(0.1 + 0.7 * quality + rng.uniform(0, 0.03), 4) if state == TrialState.COMPLETE else None
        trial_dir = _mkdir(folder / name / "trials" / str(n))
        attrs = {"trial_dir": str(trial_dir), "steps_run": steps[-1] if steps else 0,
                 "eval_curve": [[40, score]] if score is not None else [],
                 "stop_reason": {TrialState.FAIL: "error", TrialState.PRUNED: "pruned"}.get(state, "completed")}
        if n == 0:
            attrs["baseline"] = "documented defaults"
        if state == TrialState.FAIL:
            attrs.update(error="CUDA out of memory <b>not html</b>", log_tail="Traceback ...")
        if state == TrialState.COMPLETE:
            write_jsonl(trial_dir / "predictions.jsonl", records)
            attrs.update(best_score=score, best_eval_loss=loss[40], best_step=40,
                         adapter_path=str(trial_dir / "adapter"), predictions_path=str(trial_dir / "predictions.jsonl"))
        if n != 7:
            write_jsonl(trial_dir / "events.jsonl", [
                {"event": "start", "max_steps": 40, "warmup_steps": min(params["num_warmup_steps"], 40)},
                *[{"event": "train", "step": s, "loss": round(loss.get(10 * math.ceil(s / 10), 2.0) + 0.1, 4)}
                  for s in range(1, (steps[-1] if steps else 3) + 1)],
                *[{"event": "eval", "step": s, "eval_loss": v, **({"score": score} if s == 40 else {})}
                  for s, v in loss.items()]])
        heard = {s: -v for s, v in loss.items()}  # the pruner hears the negated loss
        value = score if state == TrialState.COMPLETE else (heard[steps[-1]] if steps else None)
        study.add_trial(create_trial(state=state, value=value, params=params, distributions=dists,
                                     intermediate_values=heard, user_attrs=attrs))
    return study


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def single_trial_study(source: optuna.Study, storage: str) -> optuna.Study:
    """A study of one real (completed) trial, with the source's study attrs."""
    one = optuna.create_study(study_name="one", storage=storage, direction="minimize")
    for key, value in source.user_attrs.items():
        one.set_user_attr(key, value)
    one.add_trial(source.trials[0])
    return one


# ---------------------------------------------------------------- frame and figures


@pytest.mark.integration
def test_frame_and_figures_of_the_sweep(mixed_sweep):
    study = mixed_sweep.study
    frame = report.load_frame(study)
    assert list(frame["number"]) == [t.number for t in study.trials]
    assert list(frame["state"]) == [t.state.name for t in study.trials]
    assert {"params_learning_rate", "params_target_modules", "params_r", "best_step", "stop_reason",
            "train_tokens_per_s", "adapter_path", "error"} <= set(frame.columns)
    assert "eval_curve" not in frame and "log_tail" not in frame  # lists and logs have better places
    pruned = frame[frame["state"] == "PRUNED"].iloc[0]
    assert pruned["last_step"] == 8 and pruned["stop_reason"] == "pruned" and pd.isna(pruned["best_step"])
    assert "nope_proj" in frame.loc[frame["state"] == "FAIL", "error"].iloc[0]
    assert frame.attrs["metric"] == "eval_loss" and frame.attrs["baseline"]["eval_loss"] > 0

    # the metric is the eval loss: the pruned trial's value is on its scale (the loss it was stopped
    # at, step 8), and the same loss is in the column of its own, with its unit
    loss_at = dict(map(tuple, pruned["loss_curve"]))
    assert pruned["value"] == pytest.approx(loss_at[8]) == pytest.approx(pruned["stopped_eval_loss"])
    table = report.trials_table(frame)
    values = list(table["value"].dropna())
    assert values == sorted(values) and table.index[0] == 0 and math.isnan(table["value"].iloc[-1])
    stopped = table["eval_loss when stopped (nats/token)"]
    assert stopped[pruned["number"]] == pytest.approx(loss_at[8]) and stopped.drop(pruned["number"]).isna().all()
    assert "best_eval_loss (nats/token)" in table.columns

    curves = report.curves_figure(frame)
    traces = {t.name: t for t in curves.data}
    assert traces[f"trial {pruned['number']} (pruned)"].line.dash == "dash"
    assert list(traces[f"trial {pruned['number']} (pruned)"].x) == [4, 8]  # evaluations the pruner heard
    assert list(traces[f"trial {pruned['number']} stopped"].x) == [8]  # ✕ where it was cut short
    assert traces[f"trial {pruned['number']} stopped"].marker.symbol == "x"
    assert list(traces["trial 0 (best)"].x) == list(range(4, 81, 4))  # the eval loss at every evaluation
    assert list(traces["trial 0 training loss"].x) == list(range(1, 81))  # and the training loss per step
    assert max(traces[f"trial {pruned['number']} training loss"].x) <= 8
    assert [s.line.dash for s in curves.layout.shapes] == ["dot"]  # the base model
    assert curves.layout.yaxis.title.text == "loss (nats/token)" and "yaxis2" not in curves.layout

    history = report.history_figure(frame)
    low, high = history.layout.yaxis.range
    plotted = [y for t in history.data for y in t.y]
    assert low <= min(plotted) and max(plotted) <= high and high - low < 2  # one scale: the eval loss

    best = report.best_vs_base_figure(frame)
    assert list(best.data[0].x) == ["base model", "best (trial 0)"]
    assert best.data[0].y[0] == pytest.approx(study.user_attrs["baseline"]["eval_loss"])


@pytest.mark.integration
def test_single_trial_and_generation_studies(mixed_sweep, tmp_path):
    one = single_trial_study(mixed_sweep.study, f"sqlite:///{tmp_path}/one.db")
    views = report.views(one)
    assert [v.key for v in views] == ["history", "curves", "parallel", "importance", "slices", "best_vs_base"]
    notes = {v.key: v.figure.layout.annotations[0].text for v in views if not v.figure.data}
    assert set(notes) == {"parallel", "importance"}
    assert "at least 2 completed trials; the study has 1" in notes["importance"]

    rich = synthetic_study(tmp_path / "studies")
    frame = report.load_frame(rich)
    assert frame.attrs["direction"] == "maximize" and report.trials_table(frame).index[0] == 1
    importances = report.param_importances(rich)
    assert set(importances.values) == {"learning_rate", "r", "lr_scheduler_type", "num_warmup_steps"}
    assert next(iter(importances.values)) == "learning_rate"
    assert report.parallel_figure(rich).data  # optuna's figure, not our note
    best = report.best_vs_base_figure(frame)
    assert [a.text for a in best.layout.annotations] == ["json_fields", "eval_loss"]
    assert list(best.data[0].x) == ["base model", "defaults (trial 0)", "best (trial 1)"]
    assert best.data[0].y[0] == 0.1 and best.data[1].y[0] == 2.5
    predictions = report.predictions_frame(frame, n=3)
    assert list(predictions.columns) == ["input", "reference", "prediction (trial 1)", "score",
                                         "base model prediction", "base score"]
    assert list(predictions["input"]) == ["fields of item 0?", "fields of item 1?", "fields of item 2?"]


def test_pruned_trials_that_heard_the_loss_stay_off_the_metric_axis(tmp_path):
    # the demo's shape: json_fields scored at the last evaluation only, the pruner hears the eval loss
    study = synthetic_study(tmp_path / "studies")
    frame = report.load_frame(study)
    pruned = frame[frame["state"] == "PRUNED"].set_index("number")
    assert [t.value for t in study.trials if t.number in (2, 6)] == [-l for l in pruned["stopped_eval_loss"]]
    assert pruned["value"].isna().all()  # optuna's value is the negated loss: not json_fields
    assert list(pruned["stopped_eval_loss"]) == [dict(map(tuple, c))[20] for c in pruned["loss_curve"]]
    assert (pruned["stopped_eval_loss"] > 1).all() and list(pruned["last_step"]) == [20, 20]
    table = report.trials_table(frame)
    assert table.loc[[2, 6], "value"].isna().all()
    assert list(table.loc[[2, 6], "eval_loss when stopped (nats/token)"]) == list(pruned["stopped_eval_loss"])

    history = report.history_figure(frame)
    low, high = history.layout.yaxis.range
    scores = [t.user_attrs["best_score"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert -0.1 < low < min(scores + [0.1]) and max(scores) < high < 1.0  # json_fields' scale, 0..1
    traces = {t.name: t for t in history.data}
    assert set(traces) == {"completed", "best so far", "documented defaults", "pruned before json_fields was scored"}
    marks = traces["pruned before json_fields was scored"]
    assert list(marks.x) == [2, 6] and all(low <= y < min(scores) for y in marks.y)  # at the worse end
    assert [f"eval_loss {l:.4g} nats/token" for l in pruned["stopped_eval_loss"]] == list(marks.text)
    assert all(low <= y <= high for t in history.data for y in t.y)

    curves = report.curves_figure(frame)
    traces = {t.name: t for t in curves.data}
    assert curves.layout.yaxis.title.text == "loss (nats/token)" and curves.layout.yaxis2.title.text == "json_fields"
    for number in (0, 1, 3, 4, 7):  # every evaluation's loss (trial 7 from what the pruner heard: no events)
        loss = traces[f"trial {number}" + (" (best)" if number == 1 else "")]
        assert list(loss.x) == [10, 20, 30, 40] and loss.yaxis == "y" and min(loss.y) > 0
        score = traces[f"trial {number} json_fields"]
        assert list(score.x) == [40] and score.yaxis == "y2"  # the metric where it was scored
    assert "trial 7 training loss" not in traces and list(traces["trial 0 training loss"].x) == list(range(1, 41))
    assert list(traces["trial 2 (pruned)"].x) == [10, 20] and list(traces["trial 2 stopped"].x) == [20]
    assert traces["trial 2 stopped"].yaxis == "y" and "trial 2 json_fields" not in traces
    assert [(s.y0, s.yref) for s in curves.layout.shapes] == [(2.5, "y"), (0.1, "y2")]  # the base model on each


def test_the_summary_carries_the_honest_comparison_the_sweep_recorded(tmp_path):
    # a sweep that ended by its timeout with some trials finished records the comparison of what it
    # has (lora_sweep.holdout); the report and the notebook print it under the summary
    study = synthetic_study(tmp_path / "studies")
    study.set_user_attr("bootstrap", {"best - defaults": {"mean": 0.7344, "low": 0.6562, "high": 0.8125, "n": 16}})
    lines = report.summary(study, report.load_frame(study))
    assert lines[-1] == ("best - defaults: +0.7344 (95 % paired bootstrap interval +0.6562 .. +0.8125, 16 prompts: "
                         "a real difference)")
    page = report.write_html(study, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<p>best - defaults: +0.7344 (95 % paired bootstrap interval +0.6562 .. +0.8125" in page


def test_importances_say_how_uncertain_they_are(tmp_path):
    study = synthetic_study(tmp_path / "studies")
    found = report.param_importances(study)
    assert found.n_trials == 5 and list(found.values) == sorted(found.values, key=found.values.get, reverse=True)
    assert all(found.low[n] <= found.high[n] for n in found.values)
    assert found.low["learning_rate"] <= found.high["num_warmup_steps"]  # 5 trials: the top two overlap
    fig = report.importance_figure(study, found)
    bars = fig.data[0]
    assert list(bars.y) == list(found.values)[::-1]
    assert [round(v + e, 9) for v, e in zip(bars.x, bars.error_x.array)] == [
        round(max(found.values[n], found.high[n]), 9) for n in bars.y]
    words = fig.layout.annotations[0].text.replace("<br>", " ")
    assert words.startswith("Too few trials to rank the parameters: learning_rate and num_warmup_steps overlap")
    assert "middle 90 % of 30 bootstrap resamples of the 5 completed trials" in words
    assert fig.layout.annotations[0].yref == "paper" and fig.layout.annotations[0].y == 0  # under the plot

    # enough trials, and one parameter that decides everything: it stands out
    clear = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=1))
    clear.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2 + 0.001 * t.suggest_float("y", 0, 1), n_trials=40)
    found = report.param_importances(clear)
    assert list(found.values) == ["x", "y"] and found.low["x"] > found.high["y"]
    assert found.verdict.startswith("x stands out: its range clears every other parameter's")


def test_the_report_shows_the_warmup_each_trial_ran(tmp_path):
    study = synthetic_study(tmp_path / "studies")
    frame = report.load_frame(study).set_index("number")
    # asked 4561, 12, 9000, ...; the 40-step jobs ran at most 40 (trial 7 has no events: the study's run)
    assert list(frame["params_num_warmup_steps"]) == [40, 12, 40, 30, 40, 5, 40, 40]
    requested = frame["requested_num_warmup_steps"]
    assert requested.dropna().to_dict() == {0: 4561, 2: 9000, 4: 700, 7: 2500}  # where the run clamped it
    table = report.trials_table(report.load_frame(study))
    assert table.columns.get_loc("requested_num_warmup_steps") == table.columns.get_loc("num_warmup_steps") + 1
    shown = report.as_run(study, report.load_frame(study))
    assert shown is not study and [t.params["num_warmup_steps"] for t in shown.trials] == [40, 12, 30, 40, 40]
    slices = report.slice_figure(shown, params=["num_warmup_steps"])
    assert sorted(slices.data[0].x) == [12, 30, 40, 40, 40]
    assert "num_warmup_steps" in report.param_importances(shown).values


def test_relative_paths_are_taken_from_where_the_yaml_was_found(tmp_path, monkeypatch):
    write_yaml(_mkdir(tmp_path / "sweeps") / "s.yaml",
               {"study": {"name": "s", "dir": "studies", "storage": "journal://logs/s.log"},
                "data": {"train_file": "a", "test_file": "b"}})
    monkeypatch.chdir(_mkdir(tmp_path / "notebooks"))
    config = report.find_config("sweeps/s.yaml")
    assert config.study.dir == str(tmp_path / "studies") and config.storage_url == f"journal://{tmp_path}/logs/s.log"
    with pytest.raises(ConfigError, match="no study database at"):
        report.open_study("sweeps/s.yaml")


# ---------------------------------------------------------------- the notebook


def run_notebook(parameters: str, cwd: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1 and nb.cells.index(cells[0]) <= 1, "the parameters cell must be at the top"
    cells[0].source = parameters  # what papermill's injected cell would set
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def notebook_outputs(nb) -> tuple[list, str, list]:
    """(error outputs, all stream text, mime types of each code cell's outputs)."""
    errors, text, mimes = [], "", []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell_mimes = set()
        for out in cell.outputs:
            if out.output_type == "error":
                errors.append(f"{out.ename}: {out.evalue}")
            elif out.output_type == "stream":
                text += out.text
            else:
                cell_mimes |= set(out.get("data", {}))
        mimes.append(cell_mimes)
    return errors, text, mimes


@pytest.mark.integration
def test_notebook_runs_headless(mixed_sweep, tmp_path):
    pytest.importorskip("nbclient", reason="the notebook test needs the test extra (nbclient, ipykernel)")
    # a relative YAML path, as in a checkout: the kernel runs in notebooks/, the YAML is found above
    nb = run_notebook('study_yaml = "study.yaml"\nstorage = None\nstudy_name = None',
                      _mkdir(mixed_sweep.root / "notebooks"))
    errors, text, mimes = notebook_outputs(nb)
    assert errors == []
    n = len(mixed_sweep.study.trials)
    assert re.search(rf"^{n} trials: 1 complete, 1 fail, 1 pruned$", text, re.M), text
    table = next(o.data["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if o.output_type == "execute_result" and "text/html" in o.get("data", {}))
    assert table.split("<tbody>")[1].count("<tr") == n  # the displayed table: a row per trial
    assert sum("application/vnd.plotly.v1+json" in m for m in mimes) == N_FIGURES
    assert "No predictions" in text  # eval_loss: no generation metric

    # one trial, named by storage URL: the views that need more say so, nothing fails
    single_trial_study(mixed_sweep.study, f"sqlite:///{tmp_path}/one.db")
    nb = run_notebook(f'study_yaml = None\nstorage = "sqlite:///{tmp_path}/one.db"\nstudy_name = "one"', tmp_path)
    errors, text, mimes = notebook_outputs(nb)
    assert errors == [] and re.search(r"^1 trial: 1 complete$", text, re.M), text
    assert sum("application/vnd.plotly.v1+json" in m for m in mimes) == N_FIGURES


# ---------------------------------------------------------------- the dashboard


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.mark.integration
def test_dashboard_serves_the_study(mixed_sweep):
    proc = subprocess.Popen([sys.executable, "-m", "lora_sweep", "dashboard", str(mixed_sweep.config), "--port", "0"],
                            cwd=mixed_sweep.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
        url = lines.get(timeout=60).strip()  # the URL comes first
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/dashboard/studies/(\d+)", url)
        assert match, url
        base, study_id = f"http://127.0.0.1:{match[1]}", int(match[2])
        deadline = time.time() + 30
        while True:
            try:
                summaries = get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert [(s["study_id"], s["study_name"]) for s in summaries] == [(study_id, "seen")]
        assert {"config", "metric", "space", "baseline"} <= {a["key"] for a in summaries[0]["user_attrs"]}

        detail = get_json(f"{base}/api/studies/{study_id}?after=0")
        trials = mixed_sweep.study.trials
        assert len(detail["trials"]) == len(trials)
        assert [t["state"] for t in detail["trials"]] == [t.state.name.capitalize() for t in trials]
        assert detail["has_intermediate_values"]
        for served, trial in zip(detail["trials"], trials):
            attrs = {a["key"]: a["value"] for a in served["user_attrs"]}
            assert set(attrs) == set(trial.user_attrs)
            assert {v["step"]: v["value"] for v in served["intermediate_values"]} == trial.intermediate_values
        assert "adapter" in {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}["adapter_path"]
        assert "nope_proj" in {a["key"]: a["value"] for a in detail["trials"][1]["user_attrs"]}["error"]
        assert detail["note"]["body"].startswith("**Objective**: eval_loss (minimize)")  # the whole config
        assert "```yaml\nstudy:\n  name: seen" in detail["note"]["body"]
        with urllib.request.urlopen(url, timeout=5) as page:  # the printed URL opens the app
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert out.strip().endswith("dashboard stopped") and "Traceback" not in err


def test_trial_artifacts_are_served(tmp_path):
    config = StudyConfig.model_validate({"study": {"name": "up", "dir": str(tmp_path / "studies")},
                                         "data": {"train_file": "a", "test_file": "b"}})
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(study_name="up", storage=config.storage_url)
    trial = study.ask()
    folder = _mkdir(tmp_path / "studies/up/trials/0")
    (_mkdir(folder / "adapter") / "adapter_config.json").write_text("{}")
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    write_jsonl(folder / "predictions.jsonl", [{"input": "a", "reference": "b", "prediction": "c", "score": 0.0}])
    trial.set_user_attr("trial_dir", str(folder))
    ids = records.upload_trial_artifacts(study, trial, config)  # while the trial runs
    study.tell(trial, 1.0)
    assert (tmp_path / "studies/up/artifacts").is_dir()
    metas = {m.filename: m for m in optuna.artifacts.get_all_artifact_meta(study.trials[0], storage=study._storage)}
    assert set(metas) == {"adapter-trial0.zip", "predictions.jsonl"}
    assert metas["adapter-trial0.zip"].artifact_id == ids["adapter"]

    from optuna_dashboard import wsgi

    app = wsgi(study._storage, artifact_store=records.artifact_store(config))
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = f"/artifacts/{study._study_id}/{study.trials[0]._trial_id}/{ids['adapter']}"
    started = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: started.append((status, dict(headers)))))
    assert started[0][0] == "200 OK" and started[0][1]["Content-Type"] == "application/zip"
    assert sorted(zipfile.ZipFile(io.BytesIO(body)).namelist()) == ["adapter_config.json", "adapter_model.safetensors"]


# ---------------------------------------------------------------- the HTML report in Chromium

CHROMIUM = report.find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium to open the HTML report "
                                    "(Debian: apt-get install chromium)")

# Records script errors, rejected promises and console.error calls in <pre id="js-errors">;
# `data-loaded` says the page's load event came, so an empty <pre> means something.
PROBE = """<script>
window.__errors = [];
function __record(m) { var p = document.getElementById('js-errors'); if (p) p.textContent += m + '\\n'; else window.__errors.push(m); }
window.addEventListener('error', function (e) { __record('error: ' + e.message); });
window.addEventListener('unhandledrejection', function (e) { __record('rejection: ' + e.reason); });
var __consoleError = console.error;
console.error = function () { __record('console.error: ' + Array.from(arguments).join(' ')); __consoleError.apply(console, arguments); };
document.addEventListener('DOMContentLoaded', function () {
  var p = document.createElement('pre'); p.id = 'js-errors'; p.textContent = window.__errors.join('\\n'); document.body.prepend(p); });
window.addEventListener('load', function () { document.body.setAttribute('data-loaded', 'yes'); });
</script>"""


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # the proxy goes nowhere: a page that needed the network would not render here
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", "--mute-audio",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args, page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def rendered(html_path: Path, tmp_path: Path) -> tuple[str, str]:
    """The page's DOM once its scripts ran (without the scripts' text), and what the probe caught."""
    probed = tmp_path / f"probed-{html_path.name}"
    probed.write_text(html_path.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    dom = chromium(probed, tmp_path / "profile", "--dump-dom").stdout
    assert 'data-loaded="yes"' in dom, dom[-2000:]
    caught = re.search(r'<pre id="js-errors">(.*?)</pre>', dom, re.S)
    assert caught is not None
    return re.sub(r"<script\b.*?</script>", "", dom, flags=re.S), caught[1]


def assert_renders(html_path: Path, tmp_path: Path) -> str:
    source = html_path.read_text(encoding="utf-8")
    assert source.count("window.PlotlyConfig") == 1  # plotly.js inlined once, not per figure
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", re.sub(r"<script\b[^>]*>.*?</script>", "<script>",
                                                                  source, flags=re.S))
    assert not [t for t in tags if re.search(r"\b(src|href)=", t)]  # nothing fetched: it opens offline
    divs = re.findall(r'<div id="(fig-[\w-]+)" class="plotly-graph-div"', source)
    assert len(divs) == N_FIGURES
    dom, errors = rendered(html_path, tmp_path)
    assert errors == ""
    assert dom.count('class="plot-container plotly"') == N_FIGURES  # every figure was drawn
    starts = [dom.index(f'id="{div}"') for div in divs] + [len(dom)]
    for div, start, end in zip(divs, starts, starts[1:]):
        assert 'class="main-svg"' in dom[start:end], f"{div} has no plot"
    assert "WebGL is not supported" not in dom
    return dom


@pytest.mark.integration
@needs_chromium
def test_html_report_renders_in_chromium(mixed_sweep, tmp_path):
    # the error probe itself catches errors: a page that throws
    broken = tmp_path / "broken.html"
    broken.write_text("<html><head></head><body><script>throw new Error('probe works')</script></body></html>")
    assert "probe works" in rendered(broken, tmp_path)[1]

    out = tmp_path / "report.html"
    proc = run_module(["report", str(mixed_sweep.config), "-o", str(out)], cwd=mixed_sweep.root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and str(out) in proc.stdout
    dom = assert_renders(out, tmp_path)
    assert dom.count("<tr>") >= len(mixed_sweep.study.trials)  # the trials table

    shot = tmp_path / "report.png"
    chromium(out, tmp_path / "profile", "--window-size=1280,4400", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep = os.environ.get("LORA_SWEEP_TEST_ARTIFACTS")  # CI uploads this folder
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "sweep_report.png")
        shutil.copy(out, Path(keep) / "sweep_report.html")

    # a study with enough completed trials for parallel coordinates, importances and slices
    rich = tmp_path / "rich.html"
    report.write_html(synthetic_study(tmp_path / "studies"), rich)
    dom = assert_renders(rich, tmp_path)
    assert "Predictions of the best trial" in dom
    assert "&lt;b&gt;not html&lt;/b&gt;" in dom  # trial text is escaped
