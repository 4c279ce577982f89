"""An honest best score: a validation set picks steps and trials, test.json scores only the winner,
the defaults trial and the base model, and paired bootstrap intervals say whether a win is noise.
Also what a user sees while it runs: a line per tenth of each trial's steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import load, memorization_samples, run_cli, run_module, study_tree, write_jsonl, write_yaml
from lora_sweep.events import read_events
from lora_sweep.views.report import write_html
from lora_sweep.stats import paired_bootstrap
from lora_sweep.sweep.storage import best_trial

pytestmark = pytest.mark.integration  # every test here reads a launched sweep


@pytest.fixture(scope="module")
def honest(tiny_llama, tmp_path_factory):
    """A finished 2-trial token_f1 study whose evaluations ran on 2 samples held out of train.json."""
    root = tmp_path_factory.mktemp("honest")
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    tree = study_tree(tiny_llama, data, root / "studies", n_trials=2)
    tree["training"].update(learning_rate=0.03, num_training_steps=8, eval_steps=4, save_steps=4)
    tree["data"].update(test_nsamples=4, validation_split=2)
    tree["objective"] = {"metric": "token_f1", "max_new_tokens": 6, "generation_batch_size": 4}
    config = write_yaml(root / "study.yaml", tree)
    proc = run_module(["run", str(config)], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, config, proc, load(root / "studies")


def scores(path: str | Path) -> list[float]:
    return [json.loads(line)["score"] for line in Path(path).read_text().splitlines()]


def test_trials_evaluate_on_the_validation_set(honest):
    _, _, _, study = honest
    for trial in study.trials:
        start = next(e for e in read_events(Path(trial.user_attrs["trial_dir"]) / "events.jsonl") if e["event"] == "start")
        assert start["data"]["eval_set"] == "validation" and start["data"]["eval_samples"] == 2
        assert len(scores(trial.user_attrs["predictions_path"])) == 2


def test_test_json_scores_the_winner_the_defaults_and_the_base_once(honest):
    root, _, proc, study = honest
    tests = study.user_attrs["test_scores"]
    best = best_trial(study)
    assert tests["best"]["trial"] == best.number and tests["defaults"]["trial"] == 0 and tests["base"]["trial"] is None
    for name in ("best", "defaults", "base"):
        per_sample = scores(tests[name]["predictions_path"])
        assert len(per_sample) == 4  # test.json's 4 samples, not the 2 validation ones
        assert tests[name]["score"] == pytest.approx(sum(per_sample) / 4)
    assert Path(tests["best"]["predictions_path"]).parent == root / "studies/tiny/test" / f"trial-{best.number}"
    assert (f"on test.json, best (trial {best.number}): token_f1 {tests['best']['score']:.4f}") in proc.stdout
    assert f"on test.json, base (base model): token_f1 {tests['base']['score']:.4f}" in proc.stdout


def test_bootstrap_intervals_pair_the_test_answers(honest):
    _, _, proc, study = honest
    tests, intervals = study.user_attrs["test_scores"], study.user_attrs["bootstrap"]
    best, base = scores(tests["best"]["predictions_path"]), scores(tests["base"]["predictions_path"])
    ci = intervals["best - base"]
    assert (ci["mean"], ci["low"], ci["high"]) == pytest.approx(paired_bootstrap(best, base, seed=0))
    assert ci["mean"] == pytest.approx(sum(b - a for b, a in zip(best, base)) / 4) and ci["n"] == 4
    assert ci["low"] <= ci["mean"] <= ci["high"]
    verdict = "a real difference" if ci["low"] > 0 or ci["high"] < 0 else "within noise"
    assert (f"best - base: {ci['mean']:+.4f} (95 % paired bootstrap interval {ci['low']:+.4f} .. "
            f"{ci['high']:+.4f}, 4 prompts: {verdict})") in proc.stdout


def test_a_rerun_of_the_finished_study_does_not_score_again(honest, caplog):
    root, config, _, _ = honest
    proc = run_cli(["run", str(config)], cwd=root)
    assert proc.returncode == 0
    assert "scoring the best trial" not in caplog.text and "on test.json, best" in proc.stdout


def test_the_report_shows_both(honest, tmp_path):
    _, _, _, study = honest
    page = write_html(study, tmp_path / "report.html").read_text()
    assert "on test.json, best (trial" in page and "best - base:" in page


def test_training_steps_are_shown_between_evaluations(honest):
    _, _, proc, _ = honest
    # not a terminal: a plain line per tenth of the run, with the rate and time left after the first
    lines = re.findall(r"trial 0  step (\d)/8  loss \d+\.\d{4}(  [\d.]+ steps/s  ETA \d+ s)?", proc.stderr)
    assert [int(step) for step, _ in lines] == list(range(1, 9))
    assert all(rate for step, rate in lines if step != "1")


def test_a_sweep_stopped_early_still_prints_its_honest_comparison(tiny_llama, tmp_path):
    # the defaults trial completes, the next fails and study.max_failures stops the sweep: the
    # summary still compares what it has (best vs the base model, paired over test.json's answers)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    tree = study_tree(tiny_llama, data, tmp_path / "studies", n_trials=4, max_failures=1, base_space="none",
                      sampler={"type": "random", "seed": 3})  # seed 3 draws the missing module for trial 1
    tree["training"].update(learning_rate=0.03, num_training_steps=4, eval_steps=4, save_steps=4)
    tree["data"].update(test_nsamples=4)
    tree["search_space"] = {"target_modules": {"type": "categorical", "choices": ["all-linear", ["nope_proj"]]}}
    tree["objective"] = {"metric": "token_f1", "max_new_tokens": 6, "generation_batch_size": 4}
    proc = run_module(["run", str(write_yaml(tmp_path / "study.yaml", tree))], cwd=tmp_path)
    assert proc.returncode == 1 and "1 trials failed in a row (study.max_failures)" in proc.stderr, proc.stderr[-3000:]
    study = load(tmp_path / "studies")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    ci = study.user_attrs["bootstrap"]["best - base"]
    assert ci["n"] == 4
    assert (f"best - base: {ci['mean']:+.4f} (95 % paired bootstrap interval {ci['low']:+.4f} .. "
            f"{ci['high']:+.4f}, 4 prompts:") in proc.stdout
