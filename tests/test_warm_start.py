"""study.warm_start: an earlier study (made here directly with optuna, in a SQLite file) seeds a
new study; no training."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from helpers import memorization_samples, write_jsonl, write_yaml
from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudyConfig, load_study
from lora_sweep.config.space import build_space
from lora_sweep.sweep.storage import WARM_START_ATTR
from lora_sweep.sweep.search import make_pruner, make_sampler
from lora_sweep.sweep.loop import start_study
from lora_sweep.sweep.warmstart import seed_study

LR = FloatDistribution(1e-4, 1e-2, log=True)
R = CategoricalDistribution([8, 16])


def study_tree(tmp_path: Path, name: str, warm_start: str | None = None, **space) -> dict:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    return {
        "study": {"name": name, "dir": str(tmp_path / "studies"), "base_space": "none", "warm_start": warm_start},
        "data": {"dataset": str(data)},
        "search_space": space or {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                                  "r": {"type": "categorical", "choices": [8, 16]}},
    }


def earlier_study(tmp_path: Path, name: str = "proxy", metric: str = "eval_loss") -> str:
    """A finished proxy study as a sweep leaves it: 3 completed trials (one with r 32, outside
    the new space), a pruned and a failed one."""
    url = f"sqlite:///{tmp_path / 'proxy.db'}"
    study = optuna.create_study(study_name=name, storage=url)
    study.set_user_attr("metric", metric)
    wide_r = CategoricalDistribution([8, 16, 32])
    for lr, r, value in [(2e-3, 8, 1.5), (5e-4, 16, 1.2), (3e-3, 32, 0.9)]:
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": lr, "r": r}, value=value,
                                                  distributions={"learning_rate": LR, "r": wide_r},
                                                  user_attrs={"adapter_path": "/proxy/adapter"}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={"learning_rate": 1e-4, "r": 8},
                                              distributions={"learning_rate": LR, "r": wide_r}, value=3.0))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params={"learning_rate": 1e-3, "r": 8},
                                              distributions={"learning_rate": LR, "r": wide_r}))
    return url


def new_study(config: StudyConfig) -> optuna.Study:
    config.folder.parent.mkdir(exist_ok=True)
    return optuna.create_study(study_name=config.study.name, storage=config.storage_url)


def test_completed_trials_in_the_space_seed_the_new_study(tmp_path, caplog):
    url = earlier_study(tmp_path)
    config = StudyConfig.model_validate(study_tree(tmp_path, "real", url))
    study = new_study(config)
    with caplog.at_level(logging.INFO, "lora_sweep.warmstart"):
        assert seed_study(config, build_space(config), study) == 2
    copied = study.get_trials()
    assert [(t.state, t.params, t.values) for t in copied] == [
        (TrialState.COMPLETE, {"learning_rate": 2e-3, "r": 8}, [1.5]),
        (TrialState.COMPLETE, {"learning_rate": 5e-4, "r": 16}, [1.2]),
    ]
    assert [t.user_attrs for t in copied] == [
        {WARM_START_ATTR: {"study": "proxy", "storage": url, "trial": 0}},
        {WARM_START_ATTR: {"study": "proxy", "storage": url, "trial": 1}},
    ]
    assert copied[0].distributions == {"learning_rate": LR, "r": R}  # the new space's
    assert ("warm start: 1 completed trials of proxy skipped, their params outside this space (trials 2); "
            "1 pruned trials not copied") in caplog.text


def test_a_study_yaml_source_and_a_missing_param(tmp_path):
    url = earlier_study(tmp_path)
    source = write_yaml(tmp_path / "proxy.yaml", {**study_tree(tmp_path, "proxy"), "study": {
        "name": "proxy", "dir": str(tmp_path / "studies"), "storage": url}})
    # the new space searches a param the proxy did not: no earlier trial can say where it was
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "lora_dropout": {"type": "float", "low": 0.0, "high": 0.2}}
    config = StudyConfig.model_validate(study_tree(tmp_path, "real", str(source), **space))
    study = new_study(config)
    assert seed_study(config, build_space(config), study) == 0
    narrower = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    config = StudyConfig.model_validate(study_tree(tmp_path, "narrow", str(source), **narrower))
    study = new_study(config)
    assert seed_study(config, build_space(config), study) == 2  # 2e-3 and 3e-3 (r is not searched now)
    assert [t.params for t in study.trials] == [{"learning_rate": 2e-3}, {"learning_rate": 3e-3}]


def test_a_new_sweep_study_starts_with_defaults_and_the_copies(tmp_path):
    """sweep.start_study: the defaults trial queued, then the copies; the sampler sees them."""
    url = earlier_study(tmp_path)
    config = load_study(write_yaml(tmp_path / "real.yaml", study_tree(tmp_path, "real", url)))
    space = build_space(config)
    study = start_study(config, space, make_sampler(config, space), make_pruner(config))
    states = [(t.state, WARM_START_ATTR in t.user_attrs) for t in study.trials]
    assert states == [(TrialState.WAITING, False), (TrialState.COMPLETE, True), (TrialState.COMPLETE, True)]
    assert study.best_value == 1.2


def test_bad_sources_are_refused_and_nothing_is_written(tmp_path):
    missing = tmp_path / "nope.db"
    config = StudyConfig.model_validate(study_tree(tmp_path, "real", f"sqlite:///{missing}"))
    study = new_study(config)
    with pytest.raises(ConfigError) as exc:
        seed_study(config, build_space(config), study)
    assert exc.value.problems == [f"study.warm_start: no study database at {missing}: run the sweep first"]
    assert not missing.exists() and study.trials == []

    config = StudyConfig.model_validate(study_tree(tmp_path, "yaml", str(tmp_path / "nope.yaml")))
    with pytest.raises(ConfigError) as exc:
        seed_study(config, build_space(config), study)
    assert exc.value.problems == [f"study.warm_start: no such file: {tmp_path / 'nope.yaml'}"]

    url = earlier_study(tmp_path)
    optuna.create_study(study_name="other", storage=url)
    config = StudyConfig.model_validate(study_tree(tmp_path, "several", url))
    with pytest.raises(ConfigError) as exc:
        seed_study(config, build_space(config), study)
    assert exc.value.problems == [f"study.warm_start: {url} holds several studies (proxy, other): give the "
                                  f"study YAML of the one to start from"]
    assert study.trials == []


def test_another_objective_is_refused(tmp_path):
    url = earlier_study(tmp_path, metric="exact_match")
    config = StudyConfig.model_validate(study_tree(tmp_path, "real", url))
    with pytest.raises(ConfigError) as exc:
        seed_study(config, build_space(config), new_study(config))
    assert exc.value.problems == ["study.warm_start: proxy optimized exact_match, this study eval_loss: its values "
                                  "do not compare"]
