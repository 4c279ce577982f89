"""Generation metrics as the objective, the base-model baseline, and using the winner:
best, generate, export (loaded back with PEFT's and transformers' own loaders)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from optuna.study import StudyDirection
from peft import PeftModel
from transformers import AutoModelForCausalLM

from helpers import load, memorization_samples, run_cli, run_module, study_tree, write_jsonl, write_yaml
from lora_sweep.events import read_events
from lora_sweep.sweep.search import prompt_scores
from lora_sweep.sweep.storage import best_trial

pytestmark = pytest.mark.integration  # every test here reads a launched sweep


@pytest.fixture(scope="module")
def gen_study(tiny_llama, tmp_path_factory):
    """A finished 2-trial study optimizing token_f1 of generated answers; the wilcoxon pruner hears
    every evaluation's per-prompt scores (p_threshold 0: it judges, and never prunes)."""
    root = tmp_path_factory.mktemp("gen")
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    tree = study_tree(tiny_llama, data, root / "studies", n_trials=2,
                      pruner={"type": "wilcoxon", "options": {"p_threshold": 0.0}})
    tree["training"].update(learning_rate=0.03, num_training_steps=8, eval_steps=4, save_steps=4)
    tree["data"].update(test_nsamples=4, inference_system_prompt="Answer briefly.")
    tree["objective"] = {"metric": "token_f1", "max_new_tokens": 6, "generation_batch_size": 3}
    config = write_yaml(root / "study.yaml", tree)
    proc = run_module(["run", str(config)], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, config, proc


def test_generation_metric_is_the_objective(gen_study):
    root, _, proc = gen_study
    study = load(root / "studies")
    assert study.directions == [StudyDirection.MAXIMIZE]
    base = study.user_attrs["baseline"]
    assert base["metric"] == "token_f1" and 0 <= base["score"] <= 1 and base["eval_loss"] > 0
    assert f"base model: token_f1 {base['score']:.4f}" in proc.stdout
    predictions = (root / "studies/tiny/baseline/predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 4
    for trial in study.trials:
        folder = Path(trial.user_attrs["trial_dir"])
        evals = [e for e in read_events(folder / "events.jsonl") if e["event"] == "eval"]
        assert [e["step"] for e in evals] == [4, 8] and all("score" in e for e in evals)
        assert trial.value == max(e["score"] for e in evals)
        # the pruner hears the eval loss at every evaluation (objective.prune_on's default for a
        # generation metric), negated since the study maximizes; the curve is the metric
        assert trial.intermediate_values == {e["step"]: -e["eval_loss"] for e in evals}
        assert trial.user_attrs["eval_curve"] == [[e["step"], e["score"]] for e in evals]
        # each scored evaluation's per-prompt scores, for the wilcoxon pruner: the score is their mean
        assert prompt_scores(trial) == {e["step"]: e["scores"] for e in evals}
        assert all(len(e["scores"]) == 4 and sum(e["scores"]) / 4 == pytest.approx(e["score"]) for e in evals)
        records = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        assert len(records) == 4 and set(records[0]) == {"input", "reference", "prediction", "score"}
        assert records[0]["input"][0] == {"role": "system", "content": "Answer briefly."}
        assert records[0]["reference"] == "The cat likes red."
        best = [e for e in evals if e["best"]][-1]
        assert sum(r["score"] for r in records) / 4 == pytest.approx(best["score"])
        assert trial.user_attrs["best_step"] == best["step"]


def test_best_and_generate(gen_study):
    root, config, _ = gen_study
    study = load(root / "studies")
    proc = run_module(["best", str(config)], cwd=root)
    info = json.loads(proc.stdout)
    best = best_trial(study)  # optuna's best_trial, except that equal values go to the lower eval loss
    assert info["trial"] == best.number and info["token_f1"] == study.best_value
    assert info["adapter_path"] == best.user_attrs["adapter_path"]
    inputs = write_jsonl(root / "ask.json", memorization_samples()[:3])
    answers = run_module(["generate", str(config), "--trial", "0", "--input", str(inputs)], cwd=root)
    assert answers.returncode == 0, answers.stderr[-2000:]
    assert [set(json.loads(l)) for l in answers.stdout.splitlines()] == [{"prediction"}] * 3
    again = run_cli(["generate", str(config), "--trial", "0", "--input", str(inputs)], cwd=root)  # in process
    assert again.stdout == answers.stdout  # greedy: the same answers
    one = run_cli(["generate", str(config), "--base", "--prompt", "colour of the cat?"], cwd=root)
    assert one.returncode == 0 and len(one.stdout.splitlines()) >= 1


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_export_loads_with_the_libraries_own_loaders(gen_study, tiny_llama):
    root, config, _ = gen_study
    study = load(root / "studies")
    trial = best_trial(study)  # what `export --trial best` takes
    ids = torch.tensor([[1, 5, 9, 12, 40, 2]])
    reference = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama),
                                                 trial.user_attrs["adapter_path"]).eval(), ids)

    proc = run_module(["export", str(config), "--trial", "best", "--out", str(root / "adapter")], cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), root / "adapter").eval()
    assert torch.allclose(logits(peft, ids), reference, atol=1e-5)
    readme = (root / "adapter/README.md").read_text()
    assert f"trial {trial.number}" in readme and f"Objective token_f1: {trial.value}" in readme

    proc = run_module(["export", str(config), "--trial", "best", "--out", str(root / "merged"), "--merge"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(root / "merged").eval()
    assert torch.allclose(logits(merged, ids), reference, atol=1e-4)
    assert (root / "merged/tokenizer_config.json").is_file()


def test_bad_metric_scorer_and_trial_are_one_line_errors(gen_study, tmp_path, monkeypatch):
    root, config, _ = gen_study
    proc = run_cli(["validate", str(config), "objective.metric=bleu"], cwd=root)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {config}: objective.metric: unknown scorer 'bleu'; valid: exact_match, contains, token_f1, "
        "rouge_l, json_valid, json_fields, regex_fields, or python:package.module:function")

    proc = run_cli(["validate", str(config), "objective.metric=python:no_such_module:score"], cwd=root)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "cannot import module 'no_such_module'" in proc.stderr

    (tmp_path / "bad_scorer.py").write_text("def score(prediction, reference, sample):\n    return 'abc'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    moved = ["objective.metric=python:bad_scorer:score", f"study.dir={tmp_path / 'studies'}"]
    proc = run_cli(["run", str(config), *moved], cwd=root)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: objective.metric: scorer python:bad_scorer:score returned 'abc' (str); "
                                   "it must return a float in [0, 1]")
    assert not (tmp_path / "studies").exists()

    proc = run_cli(["export", str(config), "--trial", "99", "--out", str(tmp_path / "x")], cwd=root)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --trial 99: no such trial; the study has trials 0..1"
    assert not (tmp_path / "x").exists()


def test_multi_objective_study(gen_study, tmp_path):
    root, config, _ = gen_study
    moved = [f"study.dir={tmp_path / 'studies'}", "objective.also=wall_time", "objective.baseline=false"]
    proc = run_module(["run", str(config), *moved], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path / "studies")
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    for trial in study.trials:
        assert len(trial.values) == 2 and trial.values[1] == trial.user_attrs["job_wall_time_s"]
        assert trial.intermediate_values == {}  # optuna takes no reports from multi-objective trials
        assert len(trial.user_attrs["eval_curve"]) == 2
    for best in study.best_trials:
        assert f"best: trial {best.number}, token_f1 {best.values[0]:.4f}, wall_time {best.values[1]:.4f}" in proc.stdout
    front = ", ".join(str(t.number) for t in study.best_trials)
    best = run_cli(["best", str(config), *moved], cwd=root)
    assert best.returncode == 2 and best.stderr.strip() == (
        f"error: --trial best: a multi-objective study has no single best; pick one of the Pareto front: {front}")


def test_a_trial_pruned_on_its_loss_before_any_generation(tiny_llama, tmp_path, caplog):
    # generate_every 2: the first evaluation scores no answers; the pruner hears its eval loss (prune_on)
    # and stops the trial there, with no metric in its curve yet
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    tree = study_tree(tiny_llama, data, tmp_path / "studies", n_trials=1,
                      pruner={"type": "threshold", "options": {"lower": 0.0}})  # -eval_loss < 0: prune
    tree["training"].update(num_training_steps=8, eval_steps=4, save_steps=4)
    tree["objective"] = {"metric": "token_f1", "max_new_tokens": 4, "generate_every": 2, "baseline": False}
    with caplog.at_level(logging.INFO, logger="lora_sweep"):
        proc = run_cli(["run", str(write_yaml(tmp_path / "study.yaml", tree))], cwd=tmp_path)
    (trial,) = load(tmp_path / "studies").trials
    assert trial.state.name == "PRUNED", proc.stderr[-2000:]
    evals = [e for e in read_events(Path(trial.user_attrs["trial_dir"]) / "events.jsonl") if e["event"] == "eval"]
    # (a tiny job may write its next evaluation before the stop reaches it: the pruner never hears it)
    assert evals[0]["step"] == 4 and "score" not in evals[0]
    assert trial.intermediate_values == {4: -evals[0]["eval_loss"]}
    assert trial.user_attrs["stop_reason"] == "pruned" and trial.user_attrs["eval_curve"] == []
    assert proc.returncode == 0 and "study tiny: 1 pruned" in proc.stdout
    # the line says where and on what it stopped: the loss itself, not optuna's negated value
    assert f"trial 0 PRUNED  at step 4: eval_loss {evals[0]['eval_loss']:.4f}  [0 complete, 1 pruned" in caplog.text
    # max_new_tokens 4 cuts off every 5-token answer of the memorization set: the sweep says so once, the job too
    cut = ("objective.max_new_tokens (4) is shorter than 8 of the 8 reference answers scored (the longest: 5 "
           "tokens): an answer as long as its reference is cut off before it ends; 5 would fit them all")
    assert caplog.text.count(cut) == 1
    warnings = [e["message"] for e in read_events(Path(trial.user_attrs["trial_dir"]) / "events.jsonl")
                if e["event"] == "warning"]
    assert warnings == [cut]


def test_the_wilcoxon_pruner_needs_a_generation_metric(tiny_llama, chat_data, tmp_path):
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", pruner={"type": "wilcoxon"})
    path = write_yaml(tmp_path / "study.yaml", tree)
    for command in ("validate", "run"):
        proc = run_cli([command, str(path)], cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1].endswith(
            "study.pruner.type: wilcoxon pairs the per-prompt scores of a generation metric; objective.metric "
            "eval_loss has none (use median, or a generation metric)")
    # and the same prompts in every trial: a searched seed would draw other test prompts
    proc = run_cli(["validate", str(path), "objective.metric=exact_match",
                    "search_space={seed: {type: int, low: 0, high: 9}}"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
        "study.pruner.type: wilcoxon pairs each prompt's scores across trials; search_space.seed changes which "
        "prompts a trial scores or how they read (fix it, or use median)")
    assert not (tmp_path / "studies").exists()
