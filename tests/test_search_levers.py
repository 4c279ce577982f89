"""The search's levers (issue 23): the learning-rate prior from the model's width, and stopping a
sweep once more trials stop helping. One real sweep of the tiny model runs both; the rest is
checked on the real functions with real optuna studies and real prediction files."""

from __future__ import annotations

import json
import math
from pathlib import Path

from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from helpers import load, run_cli, study_tree, write_yaml
from lora_sweep.config.space import build_space
from lora_sweep.config.study import StudyConfig
from lora_sweep.sweep.prior import apply_prior, lr_prior
from lora_sweep.sweep.search import converged


def config_for(model: Path, **study) -> StudyConfig:
    return StudyConfig.model_validate({"study": {"lr_prior": True, **study}, "model": {"name_or_path": str(model)},
                                       "data": {"dataset": "d"}, "training": {"num_training_steps": 500}})


def test_the_prior_follows_the_model_width_family_lora_scaling_and_run_length(tiny_llama, tmp_path):
    # the tiny Llama: hidden 64, Llama's exponent; alpha 32 (the default), the fit's own
    config = config_for(tiny_llama)
    expected = 5e-4 * (2000 / 64) ** 0.781
    assert math.isclose(lr_prior(config, 500).lr, expected)
    assert math.isclose(lr_prior(config, 40).lr, expected * 1.5)  # a run under 100 steps
    rs = config.model_copy(update={"lora": config.lora.model_copy(update={"use_rslora": True, "r": 16})})
    assert math.isclose(lr_prior(rs, 500).lr, expected * 4)  # alpha / sqrt(r): 4x the plain scaling at r 16
    half = config.model_copy(update={"lora": config.lora.model_copy(update={"alpha": 16})})
    assert math.isclose(lr_prior(half, 500).lr, expected * 2)
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 896, "vocab_size": 10,
                                                  "num_hidden_layers": 1, "num_attention_heads": 2}))
    prior = lr_prior(config_for(qwen), 500)
    assert math.isclose(prior.lr, 5e-4 * (2000 / 896) ** 0.0775)
    assert prior.why == "5e-4 x (2000 / hidden size 896) ^ 0.0775 (qwen2) x 32 / alpha 32"
    assert lr_prior(config_for(tmp_path / "no-such-model"), 500) is None  # no config to read: no prior


def test_the_prior_focuses_only_a_learning_rate_range_the_user_did_not_write(tiny_llama):
    config = config_for(tiny_llama)
    space, prior = apply_prior(config, build_space(config))
    low = prior.lr / 5
    assert space.distributions["learning_rate"] == FloatDistribution(low, 1e-2, log=True)
    assert space.notes[-1] == (f"learning_rate searched over {low:.3g}..0.01 (prior / 5 .. prior x 5 within the "
                               f"documented 0.0001..0.01); study.lr_prior: false searches all of it")
    own = config.model_copy(update={"search_space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3,
                                                                       "log": True}}})
    space, _ = apply_prior(own, build_space(own))
    assert space.distributions["learning_rate"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert space.notes[-1] == "learning_rate keeps the range search_space gives it"
    ranked = config.model_copy(update={"search_space": {"r": {"type": "categorical", "choices": [4, 16]}}})
    space, _ = apply_prior(ranked, build_space(ranked))
    assert space.distributions["learning_rate"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space.notes[-1] == "learning_rate keeps its documented range: lora.r searched, the prior's scaling is not one"
    off = config.model_copy(update={"study": config.study.model_copy(update={"lr_prior": False})})
    assert apply_prior(off, build_space(off)) == (build_space(off), None)


def finished(values: list[float | None], folder: Path | None = None, scores: dict[int, list[float]] = {}) -> list:
    """Frozen trials with these values (None: pruned) and, for the numbers in `scores`, a
    predictions file of those per-prompt scores."""
    trials = []
    for number, value in enumerate(values):
        attrs = {}
        if number in scores:
            path = folder / f"predictions-{number}.jsonl"
            path.write_text("".join(json.dumps({"score": s}) + "\n" for s in scores[number]))
            attrs["predictions_path"] = str(path)
        trial = create_trial(state=TrialState.PRUNED if value is None else TrialState.COMPLETE, value=value,
                             params={}, distributions={}, user_attrs=attrs)
        trial.number = number
        trials.append(trial)
    return trials


def test_converged_needs_a_better_best_beyond_the_bootstrap_noise(tmp_path):
    config = StudyConfig.model_validate({"data": {"dataset": "d"}, "objective": {"metric": "json_fields"},
                                         "study": {"n_trials": 12, "stop_when": "converged", "patience": 2}})
    near = {1: [1.0] * 30 + [0.0] * 34, 3: [1.0] * 31 + [0.0] * 33}  # one prompt apart: noise
    trials = finished([0.1, 0.47, None, 0.48], tmp_path, near)
    assert converged(config, trials[:3], 20) is None  # too few trials to tell
    why = converged(config, trials, 20)
    assert why.startswith("study.stop_when converged: no improvement beyond noise in the last 2 finished trials "
                          "(trial 3's 0.48 against trial 1's 0.47 (+0 .. +0.0469, 95 % paired bootstrap over 64 "
                          "prompts: within noise)); 8 trial(s) not run, about 160 training steps"), why
    far = {1: [1.0] * 10 + [0.0] * 54, 3: [1.0] * 40 + [0.0] * 24}
    assert converged(config, finished([0.1, 0.16, None, 0.62], tmp_path, far), 20) is None  # a real improvement
    stayed = converged(config, finished([0.1, 0.6, 0.2, 0.3]), None)
    assert stayed == ("study.stop_when converged: no improvement beyond noise in the last 2 finished trials (trial 1's "
                      "0.6 stayed the best); 8 trial(s) not run")
    assert converged(config.model_copy(update={"study": config.study.model_copy(update={"stop_when": "n_trials"})}),
                     trials, 20) is None
    # eval_loss, minimized: the best is the lowest loss, and a fall of more than 1 % of it is real
    loss = StudyConfig.model_validate({"data": {"dataset": "d"}, "study": {"n_trials": 12, "stop_when": "converged",
                                                                           "patience": 2}})
    assert converged(loss, finished([2.0, 1.5, 1.4, 1.2]), 20) is None  # trial 3 beat trial 1 by 20 %
    assert converged(loss, finished([2.0, 1.2, 1.4, 1.195]), 20) == (
        "study.stop_when converged: no improvement beyond noise in the last 2 finished trials (trial 3's 1.195 "
        "against trial 1's 1.2 (0.005, under study.min_improvement 0.01 of it)); 8 trial(s) not run, about 160 "
        "training steps")


def test_a_sweep_with_the_prior_runs_the_informed_trial_and_stops_once_converged(tiny_llama, chat_data, tmp_path):
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=8, lr_prior=True, stop_when="converged",
                      patience=1, min_improvement=1.0)  # eval_loss: a change under 100 % of the best is noise
    tree["training"] = {"num_training_steps": 2, "eval_steps": 1, "save_steps": 1}
    config = write_yaml(tmp_path / "study.yaml", tree)
    proc = run_cli(["run", str(config)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load(tmp_path / "studies").get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)  # patience 1 + 2
    assert trials[0].params["learning_rate"] == 2e-4  # the documented defaults, then the informed trial
    # drawn from a range that holds it (a warm start or a replay can copy the trial), the others from the focus
    assert trials[0].distributions["learning_rate"].low == 2e-4 and trials[2].distributions["learning_rate"].low > 2e-3
    prior = 5e-4 * (2000 / 64) ** 0.781 * 1.5  # alpha 32, a run of 2 steps
    assert trials[1].user_attrs["informed"] == f"learning-rate prior {prior:.3g}"
    assert trials[1].params["learning_rate"] == 1e-2  # the prior (0.011) within the documented range
    assert {k: v for k, v in trials[1].params.items() if k != "learning_rate"} == \
        {k: v for k, v in trials[0].params.items() if k != "learning_rate"}
    low = prior / 5
    assert low <= trials[2].params["learning_rate"] <= 1e-2  # drawn from the focused range
    assert "note: study.stop_when converged: no improvement beyond noise in the last 1 finished trials" in proc.stderr
    assert "5 trial(s) not run, about 10 training steps: 3 of 8 trials finished" in proc.stderr
    notes = load(tmp_path / "studies").user_attrs["run"]["notes"]
    assert notes[-2] == (f"learning-rate prior {prior:.3g} = 5e-4 x (2000 / hidden size 64) ^ 0.781 (llama) x 32 / "
                         f"alpha 32 x 1.5 (a run of 2 steps): an informed trial runs it after the defaults")
