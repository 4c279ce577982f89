"""`export study.yaml --aitk-yaml out/lora.yaml`: the best trial's params as an AI Toolkit lora.yaml,
from a study made directly with optuna (trials as the sweep records them; no training), read
back with config.load_job."""

from __future__ import annotations

from pathlib import Path

import optuna

from helpers import REPO, memorization_samples, run_cli, write_jsonl, write_yaml
from lora_sweep.config.files import load_job
from lora_sweep.config.study import load_study
from lora_sweep.config.space import build_space

TEMPLATE = REPO / "tests" / "data" / "aitk" / "lora.yaml"
SPACE = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
         "lr_scheduler_type": {"type": "categorical", "choices": ["linear_with_warmup", "cosine_with_warmup"]},
         "finetune_train_batch_size": {"type": "categorical", "choices": [2, 4]},
         "r": {"type": "categorical", "choices": [8, 16]}}
# trial 1 is the best; trial 2 failed
TRIALS = [({"learning_rate": 2e-4, "lr_scheduler_type": "linear_with_warmup", "finetune_train_batch_size": 2,
            "r": 8}, 1.5),
          ({"learning_rate": 3.5e-5, "lr_scheduler_type": "cosine_with_warmup", "finetune_train_batch_size": 4,
            "r": 16}, 1.1)]


def make_study(tmp_path: Path, job: Path | None, trials: list = TRIALS) -> Path:
    """A study YAML and its database with `trials` completed (user attrs as a sweep writes them)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    write_jsonl(data / "train.json", memorization_samples())
    write_jsonl(data / "test.json", memorization_samples())
    tree = {"study": {"name": "proxy", "dir": str(tmp_path / "studies"), "base_space": "none"},
            "model": {"name_or_path": "tiny-proxy"},
            "data": {"dataset": str(data)},
            "training": {"num_training_steps": 6, "eval_steps": 2, "save_steps": 2},  # the proxy's shortcut
            "search_space": SPACE}
    if job is not None:
        tree["job"] = str(job)
    path = write_yaml(tmp_path / "study.yaml", tree)
    config = load_study(path)
    space = build_space(config)
    config.folder.mkdir(parents=True)
    study = optuna.create_study(study_name="proxy", storage=config.storage_url)
    for params, value in trials:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=space.distributions, value=value,
            user_attrs={"adapter_path": str(tmp_path / "adapter"), "best_eval_loss": value}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params=TRIALS[0][0],
                                              distributions=space.distributions))
    return path


def commented_template(tmp_path: Path) -> Path:
    """The Phi Silica template with a comment line and an inline comment."""
    lines = TEMPLATE.read_text(encoding="utf-8").splitlines()
    lines.insert(0, "# my Phi Silica run")
    lines = [line + "  # tuned on a proxy" if line.startswith("learning_rate") else line for line in lines]
    path = tmp_path / "lora.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_flat_job_keeps_its_layout_with_the_best_params(tmp_path):
    source = commented_template(tmp_path)
    config = make_study(tmp_path, source)
    out = tmp_path / "out" / "lora.yaml"
    proc = run_cli(["export", str(config), "--aitk-yaml", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"AI Toolkit lora.yaml written to {out}\n"
    assert proc.stderr == "note: no lora.yaml key for r: 16: set them in the AI Toolkit\n"
    before = source.read_text(encoding="utf-8").splitlines()
    after = out.read_text(encoding="utf-8").splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert changed == [
        ("finetune_train_batch_size: 2", "finetune_train_batch_size: 4"),
        ("learning_rate: !!float 0.0002  # tuned on a proxy", "learning_rate: !!float 3.5e-05  # tuned on a proxy"),
        ('lr_scheduler_type: "linear_with_warmup"', 'lr_scheduler_type: "cosine_with_warmup"'),
    ]
    assert after[len(before):] == ["# searched or set here, no lora.yaml key (set them in the AI Toolkit's LoRA settings):",
                                   "#   r: 16"]
    # what the AI Toolkit's user fills in, as for the template itself
    job = load_job(out, ["finetune_dataset=data", "save_dir=out"])
    best = TRIALS[1][0]
    assert (job.training.learning_rate, job.training.lr_scheduler_type, job.data.train_batch_size) == (
        best["learning_rate"], best["lr_scheduler_type"], best["finetune_train_batch_size"])
    assert job.training.num_training_steps is None and job.training.eval_steps == 64  # the file's, not the proxy's


def test_a_grouped_study_writes_the_template_keys_in_order(tmp_path):
    config = make_study(tmp_path, None)
    out = tmp_path / "lora.yaml"
    proc = run_cli(["export", str(config), "--trial", "0", "--aitk-yaml", str(out)])
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# AI Toolkit lora.yaml: study proxy, trial 0 (eval_loss 1.5)\n")
    keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith("#")]
    template_keys = [line.split(":")[0] for line in TEMPLATE.read_text(encoding="utf-8").splitlines()]
    assert keys == [k for k in template_keys if k not in ("save_dir", "model")] + [  # no display name here
        "compare_enabled", "compare_file", "compare_temperature", "skip_finetune", "adapter_path", "system_prompt",
        "varied_seqlen", "trust_remote_code"]
    assert "learning_rate: 0.0002\n" in text  # YAML 1.1 floats, as the AI Toolkit reads them
    job = load_job(out)
    params = TRIALS[0][0]
    assert job.training.learning_rate == params["learning_rate"]
    assert job.training.lr_scheduler_type == params["lr_scheduler_type"]
    assert job.data.train_batch_size == params["finetune_train_batch_size"]
    assert job.training.num_training_steps == 6 and job.model.name_or_path == "tiny-proxy"  # the study's values
    assert job.data.dataset == str(tmp_path / "data")


def test_bad_input_is_refused_and_nothing_is_written(tmp_path):
    config = make_study(tmp_path, None, trials=[])
    out = tmp_path / "lora.yaml"
    proc = run_cli(["export", str(config), "--aitk-yaml", str(out)])
    assert (proc.returncode, proc.stderr) == (2, "error: --trial best: no trial has completed yet\n")
    assert not out.exists()

    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    proc = run_cli(["export", str(config), "--aitk-yaml", str(blocker / "lora.yaml")])
    assert proc.returncode == 2
    assert proc.stderr == (f"error: --aitk-yaml: cannot be created, {blocker} is a file, not a folder "
                           f"(got '{blocker / 'lora.yaml'}')\n")
    assert blocker.read_text(encoding="utf-8") == "x"

    proc = run_cli(["export", str(config), "--aitk-yaml", str(blocker)])
    assert proc.stderr == f"error: --aitk-yaml {blocker}: the file exists; give a new path\n"
    assert blocker.read_text(encoding="utf-8") == "x"

    proc = run_cli(["export", str(config)])
    assert proc.stderr == ("error: give --out DIR (the adapter), --aitk-yaml FILE (its params as a lora.yaml), "
                           "or both\n")


def test_data_in_another_format_comes_with_the_command_that_converts_it(tmp_path):
    # an Alpaca study: the AI Toolkit reads chat JSON lines only; the note's command, run, gets the data there
    config = make_study(tmp_path, None)
    alpaca = [{"instruction": s["messages"][0]["content"], "input": "", "output": s["messages"][1]["content"]}
              for s in memorization_samples()]
    for name in ("train.json", "test.json"):
        write_jsonl(tmp_path / "data" / name, alpaca)
    out = tmp_path / "out" / "lora.yaml"
    proc = run_cli(["export", str(config), "data.format=alpaca", "--trial", "0", "--aitk-yaml", str(out)])
    assert proc.returncode == 0, proc.stderr
    command = ["python", "-m", "lora_sweep", "convert", str(config), str(tmp_path / "out" / "aitk-data"),
               "data.format=alpaca"]
    note = ("the AI Toolkit reads chat JSON lines only ({\"messages\": [...]} per line), and this study's data is "
            f"alpaca records: `{' '.join(command)}` writes it as the AI Toolkit's train.json and test.json in "
            f"{tmp_path / 'out' / 'aitk-data'}, the folder to give as finetune_dataset")
    assert proc.stderr == f"note: no lora.yaml key for r: 8: set them in the AI Toolkit\nnote: {note}\n"
    assert out.read_text(encoding="utf-8").splitlines()[-1] == f"# {note}"
    done = run_cli(command[3:])  # the command as the note gives it
    assert (done.returncode, done.stderr) == (0, "")
    from lora_sweep.job.samples import load_samples

    job = load_job(out, [f"finetune_dataset={tmp_path / 'out' / 'aitk-data'}"])  # as the AI Toolkit's user sets it
    assert load_samples(job.data) == (memorization_samples(), memorization_samples())
    # chat JSON lines: no note
    chat_out = tmp_path / "chat.yaml"
    proc = run_cli(["export", str(config), "data.format=chat", f"data.dataset={tmp_path / 'out' / 'aitk-data'}",
                    "--trial", "0", "--aitk-yaml", str(chat_out)])
    assert proc.stderr == "note: no lora.yaml key for r: 8: set them in the AI Toolkit\n"
    assert "convert" not in chat_out.read_text(encoding="utf-8")
    # chat records, but in a table: the AI Toolkit cannot read it either
    import pandas as pd

    from lora_sweep.views.export import conversion_note

    pd.DataFrame(memorization_samples()).to_parquet(tmp_path / "chat.parquet")
    study = load_study(config, ["data.format=chat", f"data.train_file={tmp_path / 'chat.parquet'}"])
    assert conversion_note(study, ["python", "-m", "lora_sweep", "convert", "study.yaml", "my data"]) == (
        "the AI Toolkit reads chat JSON lines only ({\"messages\": [...]} per line), and this study's data is a "
        ".parquet file: `python -m lora_sweep convert study.yaml 'my data'` writes it as the AI Toolkit's train.json "
        "and test.json in my data, the folder to give as finetune_dataset")
