"""No dead regions in the search space: a step-counted setting (the warmup, and eval_steps /
save_steps where searched) is searched over what a run can use, 0 .. the run's length, unless the
user wrote its range; a written range past the run is kept, with one warning at `validate`; and
what a trial ran is what is shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution

from helpers import memorization_samples, run_cli, validated_chat, write_jsonl, write_yaml
from lora_sweep.config import space as S
from lora_sweep.config.study import StudyConfig


def study_config(tmp_path, training: dict | None = None, search_space: dict | None = None,
                 **data) -> StudyConfig:
    return StudyConfig.model_validate({
        "study": {"name": "fit", "dir": str(tmp_path / "studies")},
        "data": {"train_file": "train.json", "test_file": "test.json", "train_batch_size": 4, **data},
        "training": training or {"num_training_steps": 40, "eval_steps": 10, "save_steps": 10},
        "search_space": search_space or {}})


def fitted(config: StudyConfig, rows: int | None = None) -> S.Space:
    return S.fit_to_run(config, S.build_space(config), rows)


def test_the_standard_warmup_range_is_fitted_to_the_run(tmp_path):
    space = fitted(study_config(tmp_path))
    assert space.run_steps == 40
    assert space.distributions["num_warmup_steps"] == IntDistribution(0, 40)
    assert space.notes == ["num_warmup_steps searched over 0..40, not the documented 0..10000: the trials run 40 "
                           "steps, and every value from 40 up is one and the same schedule (the learning rate rises "
                           "for the whole run)"]
    assert S.describe(space)["num_warmup_steps"] == repr(IntDistribution(0, 40))
    assert S.past_the_run(space) == []
    # the documented defaults move into the fitted range: 400 warmup steps of a 40-step run ran as 40
    config = study_config(tmp_path, training={"num_training_steps": 40, "eval_steps": 10, "save_steps": 10,
                                              "lr_scheduler_type": "cosine_with_warmup"})
    params, notes = S.default_params(config, fitted(config))
    assert params["num_warmup_steps"] == 40 and "num_warmup_steps 400 is outside [0, 40]: runs as 40" in notes


def test_the_run_length_is_the_jobs_count(tmp_path):
    # epochs x rows / batch / accumulation, as train.plan_steps counts it: ceil(50 / 4) = 13 batches an epoch
    config = study_config(tmp_path, training={"epochs": 2, "eval_steps": 5, "save_steps": 5})
    assert fitted(config, rows=50).run_steps == 26
    assert fitted(config, rows=50).distributions["num_warmup_steps"].high == 26
    # searched, the longest run counts: the smallest batch, the most epochs
    config = study_config(tmp_path, training={"epochs": 2, "eval_steps": 5, "save_steps": 5},
                          search_space={"finetune_train_batch_size": {"type": "categorical", "choices": [8, 2]},
                                        "epochs": {"type": "float", "low": 1, "high": 3}})
    assert fitted(config, rows=50).run_steps == 75  # 25 batches of 2, 3 epochs
    # a searched setting that changes the rows themselves: not known before the trials, range kept
    config = study_config(tmp_path, training={"epochs": 1, "eval_steps": 5, "save_steps": 5},
                          search_space={"data.train_seqlen": {"type": "categorical", "choices": [32, 64]}})
    space = fitted(config, rows=50)
    assert space.run_steps is None and space.distributions["num_warmup_steps"] == IntDistribution(0, 10000)
    assert space.notes == ["num_warmup_steps keeps its documented range 0..10000: the run's length is not known "
                           "before the trials (each trial's training rows depend on data.train_seqlen, which is "
                           "searched)"]
    # num_training_steps fixes the length: no rows needed
    assert fitted(study_config(tmp_path), rows=None).run_steps == 40


def test_a_users_range_past_the_run_is_kept_with_a_warning(tmp_path):
    config = study_config(tmp_path, training={"num_training_steps": 40, "eval_steps": 10, "save_steps": 100},
                          search_space={"num_warmup_steps": {"type": "int", "low": 0, "high": 10000},
                                        "training.eval_steps": {"type": "categorical", "choices": [10, 20, 50, 100]},
                                        "num_training_steps": 40})
    space = fitted(config)
    assert space.distributions["num_warmup_steps"] == IntDistribution(0, 10000) and space.notes == []
    assert space.distributions["training.eval_steps"] == CategoricalDistribution([10, 20, 50, 100])
    assert S.past_the_run(space) == [
        "search_space.num_warmup_steps: 0..10000 reaches past the run's 40 steps: 99.6% of it (every value from 40 "
        "up) is one and the same schedule (the learning rate rises for the whole run); values up to 40 cover what "
        "can differ",
        "search_space.training.eval_steps: 2 of its 4 choices (50, 100) reach the run's 40 steps: they are one and "
        "the same run (evaluated only at its end)"]
    # a log range: the share the sampler draws, on its scale
    config = study_config(tmp_path, search_space={"num_warmup_steps": {"type": "int", "low": 1, "high": 1000,
                                                                       "log": True}})
    assert "reaches past the run's 40 steps: 42.5% of it" in S.past_the_run(fitted(config))[0]


def test_what_a_trial_ran(tmp_path):
    params = {"num_warmup_steps": 4561, "training.eval_steps": 100, "learning_rate": 1e-3}
    # the job's start event says what it ran (0 warmup for a plain schedule); else the study's run length
    assert S.ran(params, {"max_steps": 40, "warmup_steps": 0}, None) == {
        "num_warmup_steps": 0, "training.eval_steps": 40, "learning_rate": 1e-3}
    assert S.ran(params, None, 40) == {"num_warmup_steps": 40, "training.eval_steps": 40, "learning_rate": 1e-3}
    assert S.ran(params, None, None) == params


@pytest.mark.integration
def test_validate_warns_once_and_keeps_the_range(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "train.json", memorization_samples())
    write_jsonl(tmp_path / "test.json", memorization_samples())
    tree = {"study": {"name": "v", "dir": str(tmp_path / "studies")}, "model": {"name_or_path": str(tiny_llama)},
            "data": {"train_file": str(tmp_path / "train.json"), "test_file": str(tmp_path / "test.json"),
                     "train_seqlen": 32, "test_seqlen": 32, "train_batch_size": 2},
            "training": {"epochs": 5, "eval_steps": 5, "save_steps": 5},
            "search_space": {"num_warmup_steps": {"type": "int", "low": 0, "high": 10000}}}
    proc = run_cli(["validate", str(write_yaml(tmp_path / "s.yaml", tree))], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # 8 samples packed into rows of 32 tokens, 2 a batch, 5 epochs: what the job would count
    config = StudyConfig.model_validate(tree)
    from lora_sweep.job import data
    from lora_sweep.job.models import find_model, load_tokenizer

    tokenizer = load_tokenizer(find_model(str(tiny_llama)), False)
    rows = len(data.tokenize(config.data, 42, tokenizer, memorization_samples(), memorization_samples()).train)
    steps = S.fit_to_run(config, S.build_space(config), rows).run_steps
    assert steps == 5 * -(-rows // 2)
    share = (10000 - steps + 1) / 10001
    assert proc.stderr.splitlines() == [
        f"warning: search_space.num_warmup_steps: 0..10000 reaches past the run's {steps} steps: {share:.1%} of it "
        f"(every value from {steps} up) is one and the same schedule (the learning rate rises for the whole run); "
        f"values up to {steps} cover what can differ"]
    assert proc.stdout.splitlines() == [
        f"{tmp_path / 's.yaml'}: valid study config (8 train and 8 test samples, 8 parameters searched over 20 trials)",
        *validated_chat(tmp_path / "train.json", tmp_path / "test.json")]
    assert not (tmp_path / "studies").exists()  # validate writes nothing


@pytest.mark.integration
def test_a_sweep_of_24_step_trials_searches_what_the_run_can_use(tiny_llama, chat_data, tmp_path):
    """Real sweeps of 24-step trials (1, then 2): by default the warmup is drawn from 0..24, said once
    at the start and in the study's note; a user's 0..10000 is drawn from as written, and the report,
    `best` and the AI Toolkit export show the warmup each job ran."""
    import json

    import optuna
    import yaml

    from helpers import run_module, study_tree
    from lora_sweep.sweep import records
    from lora_sweep.views import report

    def sweep(name: str, search_space: dict, n_trials: int) -> tuple[optuna.Study, str, Path]:
        tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", name=name, n_trials=n_trials)
        tree["study"]["base_space"] = "standard"
        tree["study"]["lr_prior"] = False  # trial 1 is drawn, not the informed one; only the warmup's note
        tree["training"] = {"num_training_steps": 24, "eval_steps": 12, "save_steps": 12}
        tree["search_space"] = search_space
        path = write_yaml(tmp_path / f"{name}.yaml", tree)
        proc = run_module(["run", str(path)], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/studies/{name}.db"), proc.stderr, path

    study, log, _ = sweep("fitted", {}, n_trials=1)  # the space is the study's: its defaults trial shows it
    note = ("num_warmup_steps searched over 0..24, not the documented 0..10000: the trials run 24 steps, and every "
            "value from 24 up is one and the same schedule (the learning rate rises for the whole run)")
    assert log.count(note) == 1 and f"search space: {note}" in log  # the start-up line, once
    assert study.user_attrs["run"] == {"steps": 24, "notes": [note]}
    assert f"- search space: {note}" in records.study_note(study)
    assert report.summary_lines(report.load_frame(study))[-1] == f"Search space: {note}."
    assert len(study.trials) == 1
    for trial in study.trials:
        assert trial.distributions["num_warmup_steps"] == IntDistribution(0, 24)
        assert 0 <= trial.params["num_warmup_steps"] <= 24
    assert "clamped" not in log  # no job clamped its warmup

    study, log, path = sweep("written", {"num_warmup_steps": {"type": "int", "low": 0, "high": 10000}}, n_trials=2)
    assert "search space:" not in log and study.user_attrs["run"] == {"steps": 24, "notes": []}
    asked = [t.params["num_warmup_steps"] for t in study.trials]
    assert all(t.distributions["num_warmup_steps"] == IntDistribution(0, 10000) for t in study.trials)
    assert asked[0] == 0 and asked[1] > 24  # the defaults trial (0: the plain schedule), then a draw
    frame = report.load_frame(study)
    assert list(frame["params_num_warmup_steps"]) == [0, 24]  # the jobs' start events
    assert list(frame["requested_num_warmup_steps"].astype(object).where(frame["requested_num_warmup_steps"].notna(),
                                                                            None)) == [None, asked[1]]
    shown = report.as_run(study, frame)
    assert [t.params["num_warmup_steps"] for t in shown.trials] == [0, 24]
    best = json.loads(run_cli(["best", str(path)], cwd=tmp_path).stdout)
    assert best["params"]["num_warmup_steps"] == [0, 24][best["trial"]]
    assert best.get("requested_params", {}) == ({"num_warmup_steps": asked[1]} if best["trial"] == 1 else {})
    out = tmp_path / "lora.yaml"
    proc = run_cli(["export", str(path), "--trial", "1", "--aitk-yaml", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(out.read_text())["num_warmup_steps"] == 24
