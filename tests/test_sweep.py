"""The sweep, for real: launched jobs, a SQLite study database, pruning, failures, resume.

Failures and pruning are read from conftest's shared `mixed_sweep` (a completed, a failed and a
pruned trial); the sweeps here are the ones whose set-up is their subject (parallel slots, a
killed sweep, failures in a row). What a command prints or refuses is checked in this process
(helpers.run_cli); the real command line runs wherever a sweep runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import typing
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from helpers import job_processes, load, run_cli, run_module, study_tree, validated_chat, write_yaml
from lora_sweep.config.study import StudyConfig
from lora_sweep.events import read_events
from lora_sweep.config.space import build_space, default_params


def test_default_space_is_the_reference_table():
    config = StudyConfig.model_validate({"data": {"dataset": "d"}})
    space = build_space(config)
    assert space.distributions == {
        "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
        "weight_decay": FloatDistribution(1e-5, 1e-1, log=True),
        "adam_beta1": FloatDistribution(0.9, 0.99),
        "adam_beta2": FloatDistribution(0.9, 0.999),
        "adam_epsilon": FloatDistribution(1e-9, 1e-6, log=True),
        "num_warmup_steps": IntDistribution(0, 10000),
        "lora_dropout": FloatDistribution(0.0, 0.5),
        "lr_scheduler_type": CategoricalDistribution(["linear_with_warmup", "cosine_with_warmup"]),
    }
    params, notes = default_params(config, space)
    assert params == {"learning_rate": 2e-4, "weight_decay": 1e-5, "adam_beta1": 0.9, "adam_beta2": 0.95,
                      "adam_epsilon": 1e-8, "num_warmup_steps": 0, "lora_dropout": 0.1,
                      "lr_scheduler_type": "linear_with_warmup"}
    assert notes == ["lr_scheduler_type linear runs as linear_with_warmup with num_warmup_steps 0 (the same schedule)",
                     "weight_decay 0.0 is outside [1e-05, 0.1]: runs as 1e-05"]


def test_space_overrides_fixes_and_lora_params():
    config = StudyConfig.model_validate({"data": {"dataset": "d"}, "search_space": {
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2}, "lora_dropout": 0.05, "r": {"type": "int", "low": 4, "high": 16, "step": 4},
        "target_modules": {"type": "categorical", "choices": [["q_proj", "v_proj"], "all-linear"]}}})
    space = build_space(config)
    assert space.distributions["learning_rate"] == FloatDistribution(1e-3, 1e-2)
    assert space.distributions["r"] == IntDistribution(4, 16, step=4)
    assert space.distributions["target_modules"].choices == ("q_proj,v_proj", "all-linear")
    assert space.fixed == {"lora_dropout": 0.05} and "lora_dropout" not in space.distributions


def test_bad_space_every_problem_at_once(tmp_path):
    path = write_yaml(tmp_path / "study.yaml", {
        "data": {"dataset": "d"},
        "training": {"save_steps": 10, "eval_steps": 4},
        "search_space": {"learning_rat": {"type": "float", "low": 1e-4, "high": 1e-2},
                         "weight_decay": {"type": "float", "low": 0.1, "high": 0.01},
                         "adam_epsilon": {"type": "float", "low": 0, "high": 1e-6, "log": True},
                         "lora_dropout": {"type": "float", "low": 0.0, "high": 1.5},
                         "r": {"type": "normal", "mean": 8}},
    })
    proc = run_cli(["validate", str(path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}: training.save_steps (10) must be a multiple of training.eval_steps (4)"
    # the training group is checked first; fix it and every space problem shows
    proc = run_cli(["validate", str(path), "training.save_steps=8"], cwd=tmp_path)
    lines = proc.stderr.splitlines()
    assert lines[0] == f"error: {path}: 5 problems:"
    assert any(l.startswith("  - search_space.learning_rat: unknown parameter; use a reference name (") for l in lines)
    assert "  - search_space.weight_decay: low <= high must hold, but got (low=0.1, high=0.01)" in lines
    assert "  - search_space.adam_epsilon: a log distribution needs low > 0, got low=0" in lines
    assert "  - search_space.lora_dropout: value 1.5 is not valid for lora_dropout: Input should be less than 1" in lines
    assert "  - search_space.r: type must be float, int or categorical, got 'normal'" in lines
    assert not (tmp_path / "studies").exists()


def test_bad_sampler_and_pruner_options_are_refused_before_anything_is_written(tiny_llama, chat_data, tmp_path):
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", sampler={"type": "tpe", "options": {"n_startup": 2}},
                      pruner={"type": "percentile", "options": {"n_startup_trials": 1}})
    path = write_yaml(tmp_path / "study.yaml", tree)
    proc = run_cli(["validate", str(path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {path}: 2 problems:",
        "  - study.sampler.options: optuna's tpe sampler refused them: "
        "TPESampler.__init__() got an unexpected keyword argument 'n_startup'",
        "  - study.pruner.options: optuna's percentile pruner refused them: "
        "PercentilePruner.__init__() missing 1 required positional argument: 'percentile'",
    ]
    proc = run_cli(["run", str(path), "study.sampler.options={}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: study.pruner.options: optuna's percentile pruner refused them: "
        "PercentilePruner.__init__() missing 1 required positional argument: 'percentile'")
    assert not (tmp_path / "studies").exists()


def test_every_sampler_type_samples_guided_trials_from_the_space():
    """Each sampler the config offers imports what it needs and keeps to the space past its startup trials."""
    from lora_sweep.config.study import SamplerSection
    from lora_sweep.sweep.search import make_sampler

    space_spec = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                  "num_warmup_steps": {"type": "int", "low": 0, "high": 4},
                  "lr_scheduler_type": {"type": "categorical", "choices": ["linear_with_warmup", "cosine_with_warmup"]}}
    startup = {"tpe": {"n_startup_trials": 1}, "gp": {"n_startup_trials": 1}, "cmaes": {"n_startup_trials": 1}}
    for kind in typing.get_args(SamplerSection.model_fields["type"].annotation):
        spec = dict(space_spec)
        if kind == "grid":  # a grid needs steps
            spec["learning_rate"] = {"type": "categorical", "choices": [1e-3, 1e-2]}
        config = StudyConfig.model_validate({"data": {"dataset": "d"}, "study": {"base_space": "none",
                                             "sampler": {"type": kind, "seed": 1, "options": startup.get(kind, {})}},
                                             "search_space": spec})
        space = build_space(config)
        study = optuna.create_study(direction="minimize", sampler=make_sampler(config, space))
        for _ in range(4):
            trial = study.ask(space.distributions)
            study.tell(trial, abs(trial.params["learning_rate"] - 3e-3) + trial.params["num_warmup_steps"])
        trials = study.get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, kind
        for t in trials:
            assert all(space.distributions[k]._contains(space.distributions[k].to_internal_repr(v))
                       for k, v in t.params.items()), (kind, t.params)
        assert len({t.params["learning_rate"] for t in trials}) > 1, kind


def test_percentile_and_threshold_pruners_judge_a_trial():
    from lora_sweep.sweep.search import make_pruner

    def verdict(pruner: dict, values: list[list[float]], new: float) -> bool:
        config = StudyConfig.model_validate({"data": {"dataset": "d"}, "study": {"pruner": pruner}})
        study = optuna.create_study(direction="maximize", pruner=make_pruner(config))
        for curve in values:
            trial = study.ask()
            for step, value in enumerate(curve, start=1):
                trial.report(value, step)
            study.tell(trial, max(curve))
        trial = study.ask()
        trial.report(new, 1)
        return bool(trial.should_prune())

    keep_top_quarter = {"type": "percentile", "options": {"percentile": 25, "n_startup_trials": 1}}
    # completed trials scored 0, 0 and 0.4 at step 1: a 0 is pruned (a median pruner keeps it: 0 is the median)
    assert verdict(keep_top_quarter, [[0.0], [0.0], [0.4]], 0.0) is True
    assert verdict({"type": "median", "options": {"n_startup_trials": 1}}, [[0.0], [0.0], [0.4]], 0.0) is False
    assert verdict(keep_top_quarter, [[0.0], [0.0], [0.4]], 0.35) is False
    floor = {"type": "threshold", "options": {"lower": 0.05}}
    assert verdict(floor, [], 0.0) is True
    assert verdict(floor, [], 0.1) is False



def test_the_wilcoxon_pruner_pairs_prompt_scores_with_the_best_trial_at_the_same_step(tmp_path):
    """Trials told and judged in a SQLite study as the sweep does it: scores recorded per evaluation
    (trial system attrs), one value per evaluation reported; the pruner pairs the last scored one."""
    from lora_sweep.sweep.search import make_pruner, record_scores

    config = StudyConfig.model_validate({"data": {"dataset": "d"}, "objective": {"metric": "exact_match"},
                                         "study": {"pruner": {"type": "wilcoxon"}}})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'w.db'}", direction="maximize",
                                pruner=make_pruner(config))
    best = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]

    def trial_scoring(scores: list[float], step: int = 10, scored: bool = True) -> optuna.Trial:
        trial = study.ask()
        if scored:
            record_scores(study, trial, step, tuple(scores))
        trial.report(sum(scores) / len(scores), step)
        return trial

    first = trial_scoring([0.0] * 10, step=5)
    record_scores(study, first, 10, tuple(best))
    first.report(0.8, 10)
    study.tell(first, 0.8)
    # a warm start's copy scoring higher has no scores: the pruner pairs with the sweep's own best
    study.add_trial(optuna.trial.create_trial(value=0.95, user_attrs={"warm_start": {"study": "proxy"}}))
    worse = trial_scoring([0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert worse.should_prune() is True  # worse: p 0.016
    study.tell(worse, state=optuna.trial.TrialState.PRUNED)
    # the sweep's line on it: the metric the pruner judged, not the value reported as the curve
    from lora_sweep.sweep.loop import Sweep
    assert Sweep.pruned_text(SimpleNamespace(config=config), study.trials[2]) == (
        "at step 10: exact_match 0.2000 on 10 prompts, worse prompt by prompt than the best trial's there")
    assert trial_scoring([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]).should_prune() is False  # one prompt worse: p 0.5
    assert trial_scoring([0.0] * 10, scored=False).should_prune() is False  # an evaluation without scores
    assert trial_scoring([0.0] * 10, step=20).should_prune() is False  # the best trial did not score step 20
    later = trial_scoring([0.0] * 10, step=10)
    later.report(0.0, 15)  # an unscored evaluation after a scored one: judged once, at the scored one
    assert later.should_prune() is False
    assert {k: v for k, v in study.trials[0].system_attrs.items() if k.startswith("prompt")} == {
        "prompt_scores:5": [0.0] * 10, "prompt_scores:10": best}


@pytest.mark.integration
def test_sweep_end_to_end_in_parallel(tiny_llama, chat_data, tmp_path, mixed_sweep):
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=4, parallel=2)
    config = write_yaml(tmp_path / "study.yaml", tree)
    assert run_cli(["validate", str(config)]).stdout.splitlines() == [
        f"{config}: valid study config (8 train and 8 test samples, 8 parameters searched over 4 trials)",
        *validated_chat(chat_data / "train.json", chat_data / "test.json")]
    proc = run_module(["run", str(config)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OperationalError" not in proc.stderr and "locked" not in proc.stderr
    study = load(tmp_path / "studies")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert trials[0].user_attrs["baseline"] == "documented defaults"
    assert trials[0].params["learning_rate"] == 2e-4 and trials[0].params["lr_scheduler_type"] == "linear_with_warmup"
    for t in trials:
        assert 1e-4 <= t.params["learning_rate"] <= 1e-2 and 0 <= t.params["num_warmup_steps"] <= 4
        assert t.params["lr_scheduler_type"] in ("linear_with_warmup", "cosine_with_warmup")
        folder = Path(t.user_attrs["trial_dir"])
        assert folder == tmp_path / "studies/tiny/trials" / str(t.number)
        evals = [e for e in read_events(folder / "events.jsonl") if e["event"] == "eval"]
        assert t.value == min(e["eval_loss"] for e in evals)  # the best evaluation, not the last
        assert t.intermediate_values == {e["step"]: e["eval_loss"] for e in evals}
        assert t.user_attrs["eval_curve"] == [[e["step"], e["eval_loss"]] for e in evals]
        assert t.user_attrs["best_step"] in (2, 4, 6) and t.user_attrs["steps_run"] == 6
        assert (Path(t.user_attrs["adapter_path"]) / "adapter_model.safetensors").is_file()
        assert t.user_attrs["train_tokens_per_s"] > 0 and t.user_attrs["peak_memory_mb"] > 0
        assert f"learning_rate: {t.params['learning_rate']}" in (folder / "job.yaml").read_text()
    assert len(list((tmp_path / "studies/tiny/cache").glob("*.pt"))) == 1  # tokenized once for all
    assert f"best: trial {study.best_trial.number}, eval_loss {study.best_value:.4f}" in proc.stdout
    # the base-model evaluation (once per study, from the same cache): the shared sweep runs it
    seen = mixed_sweep.study
    base = seen.user_attrs["baseline"]
    assert base["eval_loss"] > seen.best_value
    assert f"base model: eval_loss {base['eval_loss']:.4f}" in mixed_sweep.proc.stdout
    assert len(list((mixed_sweep.root / "studies/seen/cache").glob("*.pt"))) == 1
    assert f"documented defaults (trial 0): eval_loss {trials[0].value:.4f}" in proc.stdout
    assert proc.stderr.count(" COMPLETE ") == 4
    # run again: already finished, nothing more runs (no job is launched: in this process)
    again = run_cli(["run", str(config)], cwd=tmp_path)
    assert again.returncode == 0 and len(load(tmp_path / "studies").trials) == 4


@pytest.mark.integration
def test_pruning_stops_the_job(mixed_sweep):
    # trial 0 (the defaults) learns fast; trial 2 draws a rate too small to learn and falls behind
    steps = yaml.safe_load(mixed_sweep.config.read_text())["training"]["num_training_steps"]
    trials = mixed_sweep.study.get_trials()
    pruned = trials[2]
    assert trials[0].params["learning_rate"] == 0.03 and pruned.params["learning_rate"] == 1e-7
    assert pruned.state == TrialState.PRUNED and pruned.user_attrs["stop_reason"] == "pruned"
    assert max(pruned.intermediate_values) < steps and pruned.user_attrs["steps_run"] < steps
    assert job_processes(str(mixed_sweep.root / "studies/seen/trials/2/job.yaml")) == []
    events = read_events(mixed_sweep.root / "studies/seen/trials/2/events.jsonl")
    assert events[-1]["event"] != "done"  # stopped mid-run


@pytest.mark.integration
def test_failing_trials_are_recorded_and_the_sweep_goes_on(mixed_sweep):
    # trial 1 of the shared sweep asks LoRA for a module the model does not have
    assert mixed_sweep.proc.returncode == 0
    trials = mixed_sweep.study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # the failure is made up for: a trial after it, until the budget of 2 finished trials is met
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED] and failed
    for t in failed:
        assert t.params["target_modules"] == "nope_proj"
        assert "nope_proj" in t.user_attrs["error"] and "not found in the base model" in t.user_attrs["error"]
        assert "Traceback" in t.user_attrs["log_tail"] and t.user_attrs["stop_reason"] == "error"
    assert all(t.params["target_modules"] == "all-linear" for t in trials if t.state != TrialState.FAIL)


@pytest.mark.integration
def test_too_many_failures_in_a_row_stop_the_sweep(tiny_llama, chat_data, tmp_path):
    # the quickest real failure: `accelerate launch` refuses a flag (2 s, where a job that fails
    # in PEFT first imports the training stack for 8); a job's own failure: the test above
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=5, max_failures=2,
                      enqueue_defaults=False, launcher_args=["--no-such-flag"])
    proc = run_cli(["run", str(write_yaml(tmp_path / "study.yaml", tree))], cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: 2 trials failed in a row (study.max_failures): stopping; see the trials' error and log_tail user attrs")
    assert [t.state for t in load(tmp_path / "studies").get_trials()] == [TrialState.FAIL] * 2


def test_worker_needs_an_existing_study(tiny_llama, chat_data, tmp_path):
    config = write_yaml(tmp_path / "study.yaml", study_tree(tiny_llama, chat_data, tmp_path / "studies"))
    proc = run_cli(["worker", str(config)], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: no study database at {tmp_path}/studies/tiny.db: run the sweep first"
    assert not (tmp_path / "studies/tiny.db").exists() and not (tmp_path / "studies/tiny/trials").exists()


@pytest.mark.integration
def test_resume_after_the_sweep_is_killed(tiny_llama, chat_data, tmp_path):
    # one sampled trial (not the enqueued defaults: its params can come back only as a re-run)
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=1, enqueue_defaults=False)
    tree["training"].update(num_training_steps=30, eval_steps=2, save_steps=2)  # long enough to kill mid-trial
    config = write_yaml(tmp_path / "study.yaml", tree)
    sweep = subprocess.Popen([sys.executable, "-m", "lora_sweep", "run", str(config)], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = tmp_path / "studies/tiny/trials/0/events.jsonl"
    deadline = time.time() + 180
    while not (events.is_file() and any(e["event"] == "eval" for e in read_events(events))):
        assert time.time() < deadline and sweep.poll() is None
        time.sleep(0.2)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    killed = time.time()
    job = str(tmp_path / "studies/tiny/trials/0/job.yaml")
    deadline = time.time() + 20
    while job_processes(job) and time.time() < deadline:  # the orphaned job notices and exits
        time.sleep(0.5)
    assert job_processes(job) == []
    assert load(tmp_path / "studies").trials[0].state == TrialState.RUNNING
    time.sleep(max(0.0, killed + 3 - time.time()))  # past the heartbeat grace period (2 s)

    # the same command again (in this process: the killed run was the real command line)
    proc = run_cli(["run", str(config)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load(tmp_path / "studies").get_trials()
    assert trials[0].state == TrialState.FAIL
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and len(trials) == 2
    assert trials[1].params == trials[0].params  # the interrupted parameters ran again


def test_the_summary_never_leaves_the_defaults_or_the_base_model_silently_out():
    from lora_sweep.sweep.loop import summary

    config = StudyConfig.model_validate({"data": {"dataset": "d"}, "study": {"name": "s"}})
    x = FloatDistribution(0, 1)

    def study_with(defaults_state: TrialState, base_error: str | None) -> optuna.Study:
        study = optuna.create_study(study_name="s")
        if base_error:
            study.set_user_attr("baseline_error", base_error)
        defaults = optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": x}, state=defaults_state,
                                             value=None if defaults_state != TrialState.COMPLETE else 2.0,
                                             intermediate_values={4: 3.0} if defaults_state == TrialState.PRUNED else {},
                                             user_attrs={"baseline": "documented defaults", "error": "job exited with code 1"})
        study.add_trial(defaults)
        study.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions={"x": x}, value=1.0))
        return study

    lines = summary(config, study_with(TrialState.PRUNED, "the base-model evaluation exited with code 1"), "s.yaml")
    assert "base model: not evaluated: the base-model evaluation exited with code 1" in lines
    assert "documented defaults (trial 0): pruned at step 4, no value" in lines
    lines = summary(config, study_with(TrialState.FAIL, None), "s.yaml")
    assert "base model: not evaluated: see the log" in lines
    assert "documented defaults (trial 0): failed: job exited with code 1" in lines
    lines = summary(config, study_with(TrialState.COMPLETE, None), "s.yaml")
    assert "documented defaults (trial 0): eval_loss 2.0000" in lines
