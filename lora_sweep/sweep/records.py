"""What a sweep records on its study beside the trials, and how it reads back, for the views and
the sweep alike (none of it launches anything): the names of the study's and trials' attrs (the
defaults trial, the base model's evaluation, the test.json scores and bootstrap intervals), the
summary's honest lines, the dashboard's note and each trial's artifacts (adapter, predictions)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial, TrialState

from lora_sweep.events import JobFolder
from lora_sweep.config.study import StudyConfig
from lora_sweep.sweep.optuna_private import dashboard_note, storage_of
from lora_sweep.sweep.storage import BASE_ATTR, DEFAULTS_ATTR, StudyFolder, own_trials, shown_config


TEST_ATTR = "test_scores"  # study user attr: {"best"|"defaults"|"base": {...}}


BOOTSTRAP_ATTR = "bootstrap"  # study user attr: {"best - defaults"|"best - base": {...}}


DEFAULTS = "documented defaults"  # the `baseline` user attr of the defaults trial


BASE_ERROR_ATTR = "baseline_error"  # study user attr: why the base model has no evaluation



def defaults_trial(study: optuna.Study) -> FrozenTrial | None:
    done = own_trials(study, (TrialState.COMPLETE,))
    return next((t for t in done if is_defaults(t)), None)


def is_defaults(trial: FrozenTrial) -> bool:
    """Is this the documented-defaults trial (or a re-run of it)?"""
    return trial.user_attrs.get(DEFAULTS_ATTR) == DEFAULTS


def sample_scores(path: str | Path | None) -> list[float] | None:
    """The per-sample scores of a predictions file, in its order (the prompts' order)."""
    if not path or not Path(path).is_file():
        return None
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [float(json.loads(line)["score"]) for line in lines if line.strip()]


def difference(low: float, high: float) -> str:
    """What a 95 % bootstrap interval of a difference says: zero inside it is noise."""
    return "a real difference" if low > 0 or high < 0 else "within noise"


def honest_lines(study: optuna.Study, metric: str) -> list[str]:
    """The summary's lines: test.json scores and bootstrap intervals, when recorded."""
    lines = []
    tests = study.user_attrs.get(TEST_ATTR) or {}
    for name in ("best", "defaults", "base"):
        figures = tests.get(name)
        if figures:
            value = figures["score"] if figures.get("score") is not None else figures["eval_loss"]
            shown = metric if figures.get("score") is not None else "eval_loss"
            which = f"trial {figures['trial']}" if figures.get("trial") is not None else "base model"
            lines.append(f"on test.json, {name} ({which}): {shown} {value:.4f}")
    for name, ci in (study.user_attrs.get(BOOTSTRAP_ATTR) or {}).items():
        verdict = difference(ci["low"], ci["high"])
        lines.append(f"{name}: {ci['mean']:+.4f} (95 % paired bootstrap interval {ci['low']:+.4f} .. "
                     f"{ci['high']:+.4f}, {ci['n']} prompts: {verdict})")
    return lines


def artifact_store(config: StudyConfig) -> FileSystemArtifactStore:
    """The study's filesystem artifact store (its folder is made here: optuna does not)."""
    folder = StudyFolder(config.folder).artifacts.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def upload_trial_artifacts(study: optuna.Study, trial: optuna.Trial | FrozenTrial,
                           config: StudyConfig) -> dict[str, str]:
    """Upload a trial's adapter folder (as `adapter-trial<N>.zip`) and its `predictions.jsonl`,
    those that exist; returns {"adapter": artifact id, "predictions": artifact id}.

    Call it while the trial runs (in the objective, before it returns or raises): optuna
    records artifacts as trial system attrs, which an RDB storage refuses once the trial is
    finished. Each call uploads again, so call it once per trial."""
    store = artifact_store(config)
    folder = Path(trial.user_attrs.get("trial_dir") or StudyFolder(config.folder.resolve()).trial(trial.number))
    adapter = Path(trial.user_attrs.get("adapter_path") or JobFolder(folder).adapter)
    predictions = Path(trial.user_attrs.get("predictions_path") or JobFolder(folder).predictions)
    # a FrozenTrial carries no storage of its own; an optuna.Trial does
    storage = storage_of(study) if isinstance(trial, FrozenTrial) else None
    uploaded: dict[str, str] = {}
    if adapter.is_dir() and any(adapter.iterdir()):
        with tempfile.TemporaryDirectory() as tmp:
            archive = shutil.make_archive(str(Path(tmp) / f"adapter-trial{trial.number}"), "zip", root_dir=adapter)
            uploaded["adapter"] = upload_artifact(artifact_store=store, file_path=archive, study_or_trial=trial,
                                                  storage=storage, mimetype="application/zip")
    if predictions.is_file():
        uploaded["predictions"] = upload_artifact(artifact_store=store, file_path=str(predictions),
                                                  study_or_trial=trial, storage=storage,
                                                  mimetype="application/x-ndjson")
    return uploaded


def study_note(study: optuna.Study, config: StudyConfig | None = None) -> str:
    """A Markdown note for the study's dashboard page: objective, space, base model and the whole
    config. The dashboard cuts JSON user attrs at 1024 characters; a note is shown whole. What the
    sweep recorded in the study's user attrs comes first, `config` fills in what is missing."""
    import yaml

    from lora_sweep.config.space import RUN_ATTR, build_space, describe

    attrs = study.user_attrs
    tree = shown_config(attrs.get("config") or (config.model_dump(mode="json") if config else None))
    metric = attrs.get("metric") or (config.objective.metric if config else "the objective")
    space = attrs.get("space") or (describe(build_space(config)) if config else {})
    directions = ", ".join(d.name.lower() for d in study.directions)
    lines = [f"**Objective**: {metric} ({directions})", ""]
    if space:
        lines += ["**Search space**", "", *(f"- `{name}`: {text}" for name, text in space.items()), ""]
    fitted = (attrs.get(RUN_ATTR) or {}).get("notes") or []  # ranges fitted to the run's length
    lines += [*(f"- search space: {note}" for note in fitted), *([""] if fitted else [])]
    baseline = attrs.get(BASE_ATTR)
    if isinstance(baseline, dict):
        parts = [f"{k} {baseline[k]:.4g}" for k in ("eval_loss", "perplexity")
                 if isinstance(baseline.get(k), (int, float))]
        if isinstance(baseline.get("score"), (int, float)):
            parts.append(f"{baseline.get('metric', 'score')} {baseline['score']:.4g}")
        lines += ["**Base model** (no adapter): " + ", ".join(parts), ""]
    for note in attrs.get("defaults_notes") or []:
        lines.append(f"- defaults trial: {note}")
    if tree:
        lines += ["", "**Config**", "", "```yaml", yaml.safe_dump(tree, sort_keys=False).rstrip(), "```"]
    return "\n".join(lines).strip() + "\n"


def write_study_note(study: optuna.Study, config: StudyConfig | None = None) -> None:
    """Write `study_note` as the study's dashboard note (replacing the note there)."""
    from optuna_dashboard import save_note

    save_note(study, study_note(study, config))


def has_note(study: optuna.Study) -> bool:
    return bool(dashboard_note(study))
