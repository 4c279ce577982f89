"""Config loading: defaults of the reference, the refusals, flat lora.yaml, overrides."""

from __future__ import annotations

import os

import pytest

from helpers import run_module, write_yaml
from lora_sweep.config.job import ConfigError, JobConfig
from lora_sweep.config.files import load_job, validate_job
from lora_sweep.config.study import load_study
from lora_sweep.scorers import ScorerError, check_scorer


def test_documented_defaults():
    job = JobConfig.model_validate({"data": {"dataset": "d"}})
    t, d = job.training, job.data
    assert (t.epochs, t.num_training_steps, t.eval_steps, t.save_steps) == (1, None, 64, 64)
    assert (t.learning_rate, t.lr_scheduler_type, t.num_warmup_steps) == (2e-4, "linear", 400)
    assert (t.evaluation_strategy, t.eval_delay, t.eval_accumulation_steps, t.early_stopping_patience) == ("steps", 0, None, 5)
    assert (t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay, t.max_grad_norm) == (0.9, 0.95, 1e-8, 0.0, 1.0)
    assert (t.gradient_accumulation_steps, t.gradient_checkpointing, t.seed) == (1, False, 42)
    assert (d.train_nsamples, d.test_nsamples, d.train_batch_size, d.test_batch_size) == (4096, 128, 4, 8)
    assert (d.train_seqlen, d.test_seqlen, d.varied_seqlen, d.system_prompt) == (2048, 2048, False, None)
    assert job.lora.lora_dropout == 0.1
    assert (d.train_file, d.test_file) == ("d/train.json", "d/test.json")


def test_save_steps_must_be_a_multiple_of_eval_steps():
    with pytest.raises(ConfigError) as err:
        validate_job({"data": {"dataset": "d"}, "training": {"save_steps": 100, "eval_steps": 64}})
    assert err.value.problems == ["training.save_steps (100) must be a multiple of training.eval_steps (64)"]
    # per-epoch evaluation has no step cadence to respect
    validate_job({"data": {"dataset": "d"}, "training": {"save_steps": 100, "eval_steps": 64,
                                                         "evaluation_strategy": "epoch"}})


def test_every_problem_at_once(tmp_path):
    path = write_yaml(tmp_path / "job.yaml", {
        "data": {"dataset": "d", "train_batch_size": 0},
        "training": {"lr_scheduler_type": "step", "learning_rte": 1e-3},
        "lora": {"r": "big"},
    })
    with pytest.raises(ConfigError) as err:
        load_job(path)
    problems = err.value.problems
    assert len(problems) == 4
    assert "lora.r: Input should be a valid integer, unable to parse string as an integer (got 'big')" in problems
    assert "data.train_batch_size: Input should be greater than or equal to 1 (got 0)" in problems
    assert "training.learning_rte: unknown key (check its spelling and group)" in problems
    assert any(p.startswith("training.lr_scheduler_type: Input should be 'linear', 'linear_with_warmup'") for p in problems)
    assert str(err.value).startswith(f"{path}: 4 problems:\n  - ")


def test_data_files_are_required():
    with pytest.raises(ConfigError) as err:
        validate_job({})
    assert err.value.problems == ["data: required"]
    with pytest.raises(ConfigError) as err:
        validate_job({"data": {"train_file": "t.json"}})
    assert err.value.problems == [
        "data: test_file missing: give data.train_file and data.test_file, or data.dataset "
        "(a folder with train.json and test.json)"
    ]


def test_flat_ai_toolkit_lora_yaml(tmp_path):
    flat = {
        "system_prompt": "Answer in JSON.", "varied_seqlen": True, "finetune_dataset": "mydata",
        "finetune_train_nsamples": 100, "finetune_test_nsamples": 10, "finetune_train_batch_size": 2,
        "finetune_test_batch_size": 3, "finetune_train_seqlen": 256, "finetune_test_seqlen": 128,
        "early_stopping_patience": 2, "epochs": 3, "eval_steps": 8, "save_steps": 16, "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine_with_warmup", "num_warmup_steps": 10, "seed": 7,
        "evaluation_strategy": "steps", "lora_dropout": 0.2, "adam_beta1": 0.91, "adam_beta2": 0.99,
        "adam_epsilon": 1e-7, "num_training_steps": None, "gradient_accumulation_steps": 2,
        "eval_accumulation_steps": None, "eval_delay": 0, "weight_decay": 0.01, "max_grad_norm": 0.5,
        "gradient_checkpointing": True,
    }
    job = load_job(write_yaml(tmp_path / "lora.yaml", flat))
    assert job.data.system_prompt == "Answer in JSON." and job.data.varied_seqlen
    assert (job.data.train_file, job.data.train_nsamples, job.data.test_seqlen) == ("mydata/train.json", 100, 128)
    assert (job.training.epochs, job.training.save_steps, job.training.seed) == (3, 16, 7)
    assert job.training.lr_scheduler_type == "cosine_with_warmup" and job.lora.lora_dropout == 0.2
    assert job.training.gradient_checkpointing and job.training.gradient_accumulation_steps == 2

    with pytest.raises(ConfigError) as err:
        load_job(write_yaml(tmp_path / "bad.yaml", {**flat, "finetune_train_batchsize": 4}))
    assert err.value.problems == ["finetune_train_batchsize: unknown key (check its spelling and group)"]


def test_overrides(tmp_path):
    path = write_yaml(tmp_path / "job.yaml", {"data": {"dataset": "d"}})
    job = load_job(path, ["training.learning_rate=1e-3", "lora.target_modules=[q_proj, v_proj]",
                          "data.system_prompt=null", "training.num_training_steps=5"])
    assert job.training.learning_rate == 1e-3 and isinstance(job.training.learning_rate, float)
    assert job.lora.target_modules == ["q_proj", "v_proj"] and job.training.num_training_steps == 5
    with pytest.raises(ConfigError) as err:
        load_job(path, ["training.learning_rate"])
    assert err.value.problems == ["override 'training.learning_rate' must look like key.sub=value"]


def test_a_yaml_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes("study: {name: café}\n".encode("latin-1") + b"data: {dataset: d}\n")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(err.value) == f"{path}: not UTF-8 (byte 0xe9 at position 17)"
    # UTF-8 with a byte-order mark (Notepad's) is plain UTF-8
    path.write_bytes(b"\xef\xbb\xbf" + "study: {name: cafe}\ndata: {dataset: d}\n".encode())
    assert load_study(path).study.name == "cafe"


def test_storage_and_study_folder_that_no_sweep_could_use(tmp_path):
    (tmp_path / "afile").write_text("", encoding="utf-8")
    (tmp_path / "adir").mkdir()
    path = write_yaml(tmp_path / "study.yaml", {"study": {"storage": "foo://me:secret@bar/db",
                                                          "dir": str(tmp_path / "afile" / "studies")},
                                                "data": {"dataset": "d"}})
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert err.value.problems == [
        "study.storage: not a storage optuna can open (got foo://...): give a file (name.db, name.log), "
        "sqlite:///file.db, journal:///file.log or a database URL such as postgresql://user@host/db",
        f"study.dir: cannot be created, {tmp_path / 'afile'} is a file, not a folder "
        f"(got {str(tmp_path / 'afile' / 'studies')!r})",
    ]
    assert "secret" not in str(err.value)
    adir = tmp_path / "adir"
    for url in (str(adir), f"sqlite:///{adir}"):
        with pytest.raises(ConfigError) as err:
            load_study(path, [f"study.storage={url}", f"study.dir={tmp_path}"])
        assert err.value.problems == [f"study.storage: a folder, not a database file (got {url!r}): give a file "
                                      f"in it, e.g. {adir / 'study.db'}"]
    url = f"journal://{tmp_path / 'afile' / 'study.log'}"
    with pytest.raises(ConfigError) as err:
        load_study(path, [f"study.storage={url}", f"study.dir={tmp_path}"])
    assert err.value.problems == [f"study.storage: cannot be created, {tmp_path / 'afile'} is a file, not a folder "
                                  f"(got {url!r})"]
    for url in ("postgresql://me@localhost/db", "mysql+pymysql://me@localhost/db", f"{tmp_path}/new/study.log"):
        assert load_study(path, [f"study.storage={url}", f"study.dir={tmp_path}"]).study.storage == url
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "study.yaml"]  # nothing written


@pytest.mark.integration
def test_run_and_validate_refuse_a_bad_place_in_one_line(tmp_path):
    (tmp_path / "afile").write_text("", encoding="utf-8")
    path = write_yaml(tmp_path / "study.yaml", {"study": {"dir": str(tmp_path / "studies")}, "data": {"dataset": "d"}})
    done = run_module(["run", str(path), "study.storage=foo://bar"], timeout=120)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"error: {path}: study.storage: not a storage optuna can open (got foo://...): give a "
                           "file (name.db, name.log), sqlite:///file.db, journal:///file.log or a database URL such "
                           "as postgresql://user@host/db\n")
    done = run_module(["validate", str(path), f"study.dir={tmp_path / 'afile' / 'studies'}"], timeout=120)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"error: {path}: study.dir: cannot be created, {tmp_path / 'afile'} is a file, not a "
                           f"folder (got {str(tmp_path / 'afile' / 'studies')!r})\n")
    assert not (tmp_path / "studies").exists()


SCORERS = '''\
import sys
import time

if "{name}".endswith("exits"):
    sys.exit(3)
if "{name}".endswith("sleeps"):
    time.sleep(5)


def hangs(prediction, reference, sample):
    time.sleep(5)
    return 1.0


def quits(prediction, reference, sample):
    sys.exit()
'''
SAMPLE = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def scorer_module(folder, name: str) -> str:
    (folder / f"{name}.py").write_text(SCORERS.format(name=name), encoding="utf-8")
    return name


def test_a_scorer_that_exits_or_hangs_is_named(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    exits = scorer_module(tmp_path, "lsw_scorer_exits")
    with pytest.raises(ConfigError) as err:
        validate_job({"data": {"dataset": "d"}, "objective": {"metric": f"python:{exits}:hangs"}})
    assert err.value.problems == [f"objective.metric: scorer python:{exits}:hangs: cannot import module {exits!r} "
                                  "(it called sys.exit(3))"]
    fine = scorer_module(tmp_path, "lsw_scorer_fine")
    with pytest.raises(ScorerError) as err:
        check_scorer(f"python:{fine}:quits", None, SAMPLE)
    assert str(err.value) == f"scorer python:{fine}:quits called sys.exit(None)"
    with pytest.raises(ScorerError) as err:
        check_scorer(f"python:{fine}:hangs", None, SAMPLE, timeout=0.2)
    assert str(err.value) == f"python:{fine}:hangs did not return within 0.2 s"
    check_scorer("exact_match", None, SAMPLE)  # a scorer that returns passes
    # the limit also holds for importing, and comes from the environment when not given
    monkeypatch.setenv("LORA_SWEEP_SCORER_CHECK_TIMEOUT", "0.3")
    sleeps = scorer_module(tmp_path, "lsw_scorer_sleeps")
    with pytest.raises(ConfigError) as err:
        validate_job({"data": {"dataset": "d"}, "objective": {"metric": f"python:{sleeps}:hangs"}})
    assert err.value.problems == [f"objective.metric: scorer python:{sleeps}:hangs: importing module {sleeps!r} "
                                  "did not return within 0.3 s"]


@pytest.mark.integration
def test_validate_names_a_scorer_that_exits(tmp_path, chat_data):
    scorer_module(tmp_path, "lsw_cli_scorer_exits")
    path = write_yaml(tmp_path / "job.yaml", {"data": {"dataset": str(chat_data)},
                                              "objective": {"metric": "python:lsw_cli_scorer_exits:hangs"}})
    done = run_module(["validate", str(path)], timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"error: {path}: objective.metric: scorer python:lsw_cli_scorer_exits:hangs: cannot import "
                           "module 'lsw_cli_scorer_exits' (it called sys.exit(3))\n")
