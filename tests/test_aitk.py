"""The AI Toolkit's flat lora.yaml: its extra keys, its template byte for byte, a study built on it."""

from __future__ import annotations

import pytest

from helpers import write_yaml
from lora_sweep.config import ConfigError, StudyConfig, load_job, validate_job
from lora_sweep.space import param_path

AITK_EXTRAS = {
    "model": "Phi-3.6-mini-instruct", "model_path": "models/phi", "save_dir": "runs/one",
    "finetune_dataset": "mydata", "compare_enabled": False, "compare_file": "mount/<run_id>/<compare_file>",
    "compare_temperature": 0.5, "skip_finetune": False, "adapter_path": "", "learning_rate": 1e-3,
}


def test_flat_extra_keys_find_their_place(tmp_path):
    job = load_job(write_yaml(tmp_path / "lora.yaml", AITK_EXTRAS))
    assert (job.model.display_name, job.model.name_or_path, job.output_dir) == (
        "Phi-3.6-mini-instruct", "models/phi", "runs/one")
    assert (job.data.train_file, job.training.learning_rate) == ("mydata/train.json", 1e-3)
    assert (job.compare.enabled, job.compare.file, job.compare.temperature) == (
        False, "mount/<run_id>/<compare_file>", 0.5)
    assert (job.training.skip_finetune, job.model.adapter_path) == (False, None)  # "" is none
    # the grouped form keeps `model` as a group
    grouped = validate_job({"model": {"name_or_path": "m", "display_name": "Phi"}, "data": {"dataset": "d"}})
    assert (grouped.model.name_or_path, grouped.model.display_name) == ("m", "Phi")


def test_compare_and_skip_finetune_need_their_files(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate_job({**AITK_EXTRAS, "compare_enabled": True, "compare_file": None, "epochs": 0})
    assert err.value.problems == ["training.epochs: Input should be greater than 0 (got 0)",
                                  "compare.file: required when compare.enabled is true"]
    missing = str(tmp_path / "compare.json")
    with pytest.raises(ConfigError) as err:
        validate_job({**AITK_EXTRAS, "compare_enabled": True, "compare_file": missing})
    assert err.value.problems == [f"compare.file: no such file (got {missing!r})"]
    with pytest.raises(ConfigError) as err:
        validate_job({**AITK_EXTRAS, "skip_finetune": True})
    assert err.value.problems == ["model.adapter_path: required when training.skip_finetune is true"]
    (tmp_path / "compare.json").write_text('{"query": "hi", "response": "hello"}\n', encoding="utf-8")
    job = validate_job({**AITK_EXTRAS, "compare_enabled": True, "compare_file": missing,
                        "skip_finetune": True, "adapter_path": "runs/old/adapter"})
    assert (job.compare.file, job.model.adapter_path) == (missing, "runs/old/adapter")


def test_file_keys_are_not_search_parameters():
    for name in ("model", "model_path", "save_dir", "compare_enabled", "compare_file", "compare_temperature",
                 "skip_finetune", "adapter_path"):
        assert param_path(name) is None, name
    assert param_path("learning_rate") == "training.learning_rate"
    assert param_path("compare.temperature") == "compare.temperature"  # a dotted path may still be searched
    study = StudyConfig.model_validate({"data": {"dataset": "d"}, "compare": {"temperature": 0.3}})
    assert study.job_tree()["compare"] == {"enabled": False, "file": None, "temperature": 0.3}
