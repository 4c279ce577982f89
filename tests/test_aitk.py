"""The AI Toolkit's flat lora.yaml: its extra keys, its template byte for byte, a study built on it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from helpers import REPO, memorization_samples, run_module, validated_chat, write_jsonl, write_yaml
from lora_sweep.config.files import FLAT_KEYS, get_path, load_job, validate_job
from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudyConfig, load_study
from lora_sweep.config.space import build_space, default_params, param_path

TEMPLATE = REPO / "tests/data/aitk/lora.yaml"  # the Phi Silica template, byte for byte
AION = REPO / "tests/data/aitk/aion-1.1-lora.yaml"  # the newer form, with compare_* and skip_finetune

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
    # a flat file's problems are named in its own names
    assert err.value.problems == ["epochs: Input should be greater than 0 (got 0)",
                                  "compare_file: required when compare_enabled is true"]
    missing = str(tmp_path / "compare.json")
    with pytest.raises(ConfigError) as err:
        validate_job({**AITK_EXTRAS, "compare_enabled": True, "compare_file": missing})
    assert err.value.problems == [f"compare_file: no such file (got {missing!r})"]
    with pytest.raises(ConfigError) as err:
        validate_job({**AITK_EXTRAS, "skip_finetune": True})
    assert err.value.problems == ["adapter_path: required when skip_finetune is true"]
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


def template_overrides(tmp_path: Path, data: Path) -> list[str]:
    return [f"finetune_dataset={data}", f"model_path={tmp_path / 'model'}", f"save_dir={tmp_path / 'out'}"]


def test_template_byte_for_byte():
    # the copy is the template as published (tests/data/aitk/README.md gives its source)
    assert hashlib.sha256(TEMPLATE.read_bytes()).hexdigest() == (
        "578996959839cbf1bb98cf130f789f09e147150b2faa0e8194861c027c219672")


def test_template_loads_as_a_job_with_its_values(tmp_path, chat_data):
    job = load_job(TEMPLATE, template_overrides(tmp_path, chat_data))
    t, d = job.training, job.data
    assert (t.learning_rate, t.adam_epsilon, t.adam_beta1, t.adam_beta2) == (2e-4, 1e-8, 0.9, 0.95)
    assert (t.lr_scheduler_type, t.num_warmup_steps, t.eval_steps, t.save_steps) == ("linear_with_warmup", 400, 64, 64)
    assert (d.train_seqlen, d.test_seqlen, d.train_batch_size, d.test_batch_size) == (1024, 2048, 2, 8)
    assert (d.train_nsamples, d.test_nsamples, job.lora.lora_dropout, t.weight_decay) == (8000, 128, 0.1, 0.0)
    assert (job.model.display_name, job.model.name_or_path, job.output_dir) == (
        "Phi-3.6-mini-instruct", str(tmp_path / "model"), str(tmp_path / "out"))
    assert d.train_file == str(chat_data / "train.json")
    # every documented parameter of the template, as PyYAML reads it, is the job's value
    template = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    dumped = job.model_dump()
    for name, path in FLAT_KEYS.items():
        if name in template and name != "finetune_dataset":
            assert get_path(dumped, path) == template[name], name


def test_placeholders_are_named_with_the_override_to_give(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_job(TEMPLATE, ["learning_rate=-1"])
    assert err.value.problems == [
        'save_dir: "mount/<run_id>/save_dir" still holds the placeholder <run_id>: give the real value on the '
        "command line, e.g. save_dir=path/to/output",
        'finetune_dataset: "mount/<run_id>/dataset" still holds the placeholder <run_id>: give the real value on '
        "the command line, e.g. finetune_dataset=path/to/data",
        "learning_rate: Input should be greater than 0 (got -1)",
    ]
    # the newer template keeps a placeholder in compare_file: an error only when comparing is on
    overrides = template_overrides(tmp_path, tmp_path)
    job = load_job(AION, overrides)
    assert (job.compare.enabled, job.model.trust_remote_code, job.model.adapter_path) == (False, True, None)
    with pytest.raises(ConfigError) as err:
        load_job(AION, [*overrides, "compare_enabled=true"])
    assert err.value.problems == [
        'compare_file: "mount/<run_id>/<compare_file>" still holds the placeholders <run_id>, <compare_file>: '
        "give the real value on the command line, e.g. compare_file=path/to/compare.jsonl"]
    # a grouped job is spoken to in its own names; a system prompt may hold <tags>
    with pytest.raises(ConfigError) as err:
        validate_job({"data": {"dataset": "runs/<run_id>/data", "system_prompt": "Answer in <json>."}})
    assert err.value.problems == ['data.dataset: "runs/<run_id>/data" still holds the placeholder <run_id>: give '
                                  "the real value on the command line, e.g. data.dataset=path/to/data"]


def test_exponents_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "lora.yaml"
    path.write_text("finetune_dataset: d\nadam_epsilon: 1E-08\nlearning_rate: 1e-4\nweight_decay: !!float 1e-2\n",
                    encoding="utf-8")
    job = load_job(path)
    assert (job.training.adam_epsilon, job.training.learning_rate, job.training.weight_decay) == (1e-8, 1e-4, 1e-2)
    job = load_job(path, ["max_grad_norm=2E0", "seed=7"])
    assert (job.training.max_grad_norm, job.training.seed) == (2.0, 7)


@pytest.mark.integration
def test_cli_validates_the_template(tmp_path, chat_data, tiny_llama):
    # validate also tokenizes the data with the model's tokenizer (rows of the template's 1024
    # tokens, the answers they cut away): a real model, and data enough for such rows
    data = tmp_path / "aitk-data"
    data.mkdir()
    for name in ("train.json", "test.json"):
        write_jsonl(data / name, memorization_samples() * 8)
    done = run_module(["validate", str(TEMPLATE), f"finetune_dataset={data}", f"model_path={tiny_llama}",
                       f"save_dir={tmp_path / 'out'}"], timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [f"{TEMPLATE}: valid job config (64 train and 64 test samples)",
                                        *validated_chat(data / "train.json", data / "test.json")]
    done = run_module(["validate", str(TEMPLATE), f"finetune_dataset={chat_data}"], timeout=120)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f'error: {TEMPLATE}: save_dir: "mount/<run_id>/save_dir" still holds the placeholder '
                           "<run_id>: give the real value on the command line, e.g. save_dir=path/to/output\n")
    assert not (tmp_path / "out").exists()


def test_a_study_takes_a_lora_yaml_as_its_job_side(tmp_path, chat_data, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative `job:` is found from where lora_sweep runs, as data paths are
    (tmp_path / "lora.yaml").write_bytes(TEMPLATE.read_bytes())
    study = write_yaml(tmp_path / "study.yaml", {
        "job": "lora.yaml",
        "study": {"name": "aitk", "dir": str(tmp_path / "studies"), "n_trials": 4},
        "model": {"name_or_path": "models/tiny"},
        "data": {"dataset": str(chat_data), "train_seqlen": 32},  # the study's own groups win, key by key
    })
    config = load_study(study)
    assert (config.data.train_seqlen, config.data.test_seqlen, config.data.train_nsamples) == (32, 2048, 8000)
    assert (config.model.name_or_path, config.model.display_name) == ("models/tiny", "Phi-3.6-mini-instruct")
    assert (config.training.learning_rate, config.training.lr_scheduler_type) == (2e-4, "linear_with_warmup")
    assert "output_dir" not in config.job_tree()  # the template's save_dir: each trial has its own folder
    params, notes = default_params(config, build_space(config))
    assert params == {"learning_rate": 2e-4, "weight_decay": 1e-5, "adam_beta1": 0.9, "adam_beta2": 0.95,
                      "adam_epsilon": 1e-8, "num_warmup_steps": 400, "lora_dropout": 0.1,
                      "lr_scheduler_type": "linear_with_warmup"}
    assert notes == ["weight_decay 0.0 is outside [1e-05, 0.1]: runs as 1e-05"]

    # the lora.yaml's placeholders are named as in it, with the override that fills them
    with pytest.raises(ConfigError) as err:
        load_study(write_yaml(tmp_path / "bare.yaml", {"job": "lora.yaml", "study": {"n_trials": 0}}))
    assert err.value.problems == [
        'finetune_dataset: "mount/<run_id>/dataset" still holds the placeholder <run_id>: give the real value on '
        "the command line, e.g. finetune_dataset=path/to/data",
        "study.n_trials: Input should be greater than or equal to 1 (got 0)"]
    assert load_study(tmp_path / "bare.yaml", ["study.n_trials=2", f"finetune_dataset={chat_data}"]).data.dataset == (
        str(chat_data))
    with pytest.raises(ConfigError) as err:
        load_study(write_yaml(tmp_path / "missing.yaml", {"job": "nope.yaml", "data": {"dataset": "d"}}))
    assert str(err.value) == f"{tmp_path / 'missing.yaml'}: job: no such file: nope.yaml"


# The AI Toolkit's earlier Phi-3 / Phi-2 templates: tone data and the text_cols / text_template of their
# project-settings.json (windows-ai-studio-templates), as a user of them carries them into a lora.yaml
TONE_LINES = [{"phrase": "I can't wait for the weekend!", "tone": "joy"}, {"phrase": "The dog ran away.", "tone": "sadness"}]
PHI3_TEMPLATE = "<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"
PHI2_TEMPLATE = "### Text: {phrase}\\n### The tone is:\\n{tone}"  # its line ends as the settings file writes them


def test_phi3_text_cols_and_text_template_become_columns(tmp_path):
    from lora_sweep.job.samples import read_files

    for name in ("train.json", "test.json"):
        write_jsonl(tmp_path / name, TONE_LINES)
    lora = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    lora.update(finetune_dataset=str(tmp_path), model_path="models/phi", save_dir=str(tmp_path / "out"),
                text_cols=["phrase", "tone"], text_template=PHI3_TEMPLATE)
    job = load_job(write_yaml(tmp_path / "lora.yaml", lora))
    assert job.data.columns.model_dump() == {"prompt": "{phrase}", "answer": "{tone}", "system": None}
    assert read_files(job.data)[0] == [{"messages": [{"role": "user", "content": "I can't wait for the weekend!"},
                                                     {"role": "assistant", "content": "joy"}]},
                                       {"messages": [{"role": "user", "content": "The dog ran away."},
                                                     {"role": "assistant", "content": "sadness"}]}]
    phi2 = load_job(write_yaml(tmp_path / "phi2.yaml", {**lora, "text_template": PHI2_TEMPLATE}))
    assert phi2.data.columns.model_dump() == {"prompt": "### Text: {phrase}\n### The tone is:", "answer": "{tone}",
                                              "system": None}
    cols_only = load_job(write_yaml(tmp_path / "cols.yaml", {**lora, "text_template": None}))
    assert (cols_only.data.columns.prompt, cols_only.data.columns.answer) == ("{phrase}", "{tone}")
    # a study on the lora.yaml reads them too; its problems are named as the lora.yaml names them, all at once
    study = write_yaml(tmp_path / "study.yaml", {"job": str(tmp_path / "lora.yaml"), "study": {"dir": str(tmp_path / "studies")}})
    assert load_study(study).data.columns.answer == "{tone}"
    bad = {**lora, "text_template": "<|user|>\n{phrase} ({label})<|end|>\n<|assistant|>\n{tone}", "lora_dropout": 2}
    with pytest.raises(ConfigError) as err:
        load_job(write_yaml(tmp_path / "bad.yaml", bad))
    assert err.value.problems == ["text_template: {label} is not one of text_cols (phrase, tone)",
                                  "lora_dropout: Input should be less than 1 (got 2)"]
    with pytest.raises(ConfigError) as err:
        load_job(write_yaml(tmp_path / "bad.yaml", {**lora, "text_template": "{phrase} means"}))
    assert err.value.problems == [(
        "text_template: '{phrase} means' has neither Phi-3's <|user|> and <|assistant|> turns nor a field it ends in "
        '(the answer): write data.columns, e.g. {prompt: "{phrase}", answer: "{tone}"}')]
    assert not (tmp_path / "out").exists() and not (tmp_path / "studies").exists()
