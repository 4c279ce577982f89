"""Search-space values are run as written or refused with their path and value, never changed silently."""

from __future__ import annotations

import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import load_study
from lora_sweep.config.space import build_space

STUDY = """\
study: {{dir: {dir}, base_space: none}}
data: {{dataset: d}}
search_space:
{space}
"""


def write_study(tmp_path, space: str):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(dir=tmp_path / "studies", space=space), encoding="utf-8")
    return path


def test_bounds_written_as_yaml_strings_are_the_numbers_meant(tmp_path):
    path = write_study(tmp_path, """\
  learning_rate: {type: float, low: 1e-4, high: "1e-2", log: true}
  num_warmup_steps: {type: int, low: 0, high: 1e2, step: 10}
""")
    space = build_space(load_study(path))
    assert space.distributions == {
        "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
        "num_warmup_steps": IntDistribution(0, 100, step=10),
    }


def test_values_optuna_would_change_are_refused_all_at_once(tmp_path):
    path = write_study(tmp_path, """\
  num_warmup_steps: {type: int, low: 0.7, high: 10, step: 0}
  learning_rate: {type: float, low: abc, high: 1e-2, log: "yes"}
  weight_decay: {type: float, low: 0.0, high: 0.1, step: -0.01}
  r: {type: int, low: 4, high: 16, step: 4, log: true}
""")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert err.value.problems == [
        "search_space.num_warmup_steps.low: not a whole number (got 0.7)",
        "search_space.num_warmup_steps.step: must be greater than 0 (got 0)",
        "search_space.learning_rate.low: not a number (got 'abc')",
        "search_space.learning_rate.log: must be true or false (got 'yes')",
        "search_space.weight_decay.step: must be greater than 0 (got -0.01)",
        "search_space.r: Samplers and other components in Optuna only accept step is 1 when `log` argument is True.",
    ]
    assert str(err.value).startswith(f"{path}: 6 problems:\n  - ")
    assert not (tmp_path / "studies").exists()
