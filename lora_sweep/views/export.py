"""Using the winner: show the best trial, answer with its adapter, export it.

    python -m lora_sweep best study.yaml
    python -m lora_sweep generate study.yaml --trial best|N [--prompt TEXT | --input file.jsonl] [--base]
    python -m lora_sweep export study.yaml --trial best|N --out DIR [--merge]
    python -m lora_sweep export study.yaml --trial best|N --aitk-yaml out/lora.yaml
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

import yaml

from lora_sweep.config.files import FLAT_KEYS, flat_names, get_path, is_flat, read_yaml
from lora_sweep.config.job import ConfigError, LoraSection, variant_keys_used
from lora_sweep.config.study import StudyConfig
from lora_sweep.config.places import creation_problem
from lora_sweep.config.space import trial_ran
from lora_sweep.sweep.storage import BASE_ATTR, DEFAULTS_ATTR, best_trial, load_existing


def pick_trial(study: optuna.Study, which: str) -> FrozenTrial:
    """`best` or a trial number; the trial must have completed with an adapter."""
    trials = study.get_trials(deepcopy=False)
    if which == "best":
        if len(study.directions) > 1:
            front = ", ".join(str(t.number) for t in study.best_trials)
            raise ConfigError([f"--trial best: a multi-objective study has no single best; pick one of the "
                               f"Pareto front: {front}"])
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if not done:
            raise ConfigError(["--trial best: no trial has completed yet"])
        return best_trial(study)
    if not which.isdigit() or int(which) >= len(trials):
        raise ConfigError([f"--trial {which}: no such trial; the study has trials 0..{len(trials) - 1}"
                           if trials else f"--trial {which}: the study has no trials"])
    trial = trials[int(which)]
    if trial.state != TrialState.COMPLETE or not trial.user_attrs.get("adapter_path"):
        raise ConfigError([f"--trial {which}: trial {trial.number} is {trial.state.name}, it has no adapter"])
    return trial


def describe(config: StudyConfig, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """The trial for `best` and an export's README: its params as its job ran them (a warmup past the
    run at the run's length), and what was asked where that differs."""
    params = trial_ran(study, trial)
    requested = {name: value for name, value in trial.params.items() if params[name] != value}
    return {
        "trial": trial.number,
        config.objective.metric: trial.values[0] if trial.values else None,
        "params": params,
        **({"requested_params": requested} if requested else {}),
        "adapter_path": trial.user_attrs.get("adapter_path"),
        "best_step": trial.user_attrs.get("best_step"),
        "baseline": trial.user_attrs.get(DEFAULTS_ATTR),
    }


def best(config: StudyConfig) -> str:
    study = load_existing(config.storage_url, config.study.name)
    trial = pick_trial(study, "best")
    info = describe(config, study, trial)
    base = study.user_attrs.get(BASE_ATTR, {}).get(config.objective.key)
    if base is not None:
        info["base_model"] = base
    return json.dumps(info, indent=2)


def load(config: StudyConfig, trial: FrozenTrial | None) -> tuple[Any, Any]:
    """The base model (with the trial's adapter unless `trial` is None) and its tokenizer; the base as
    the trial's job loaded it (a QLoRA trial's 4-bit base, dequantized)."""
    from lora_sweep.config.space import apply, build_space
    from lora_sweep.job.models import load_for_inference

    if trial is None:
        return load_for_inference(config.model)
    lora = LoraSection.model_validate(apply(config.job_tree(), build_space(config), trial.params)["lora"])
    return load_for_inference(config.model, trial.user_attrs["adapter_path"], lora)


def read_conversations(path: str) -> list[list[dict]]:
    """Conversations of a JSONL file, each cut before its last assistant message if it has one."""
    from lora_sweep.job.samples import read_samples

    samples, problems = read_samples(path)
    if problems:
        raise ConfigError(problems, path)
    out = []
    for sample in samples:
        messages = sample["messages"]
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        out.append(messages)
    return out


def generate(config: StudyConfig, which: str, prompt: str | None, input_path: str | None, base: bool,
             max_new_tokens: int | None) -> list[str]:
    """Answers with the base model + the trial's adapter (or the base model alone)."""
    from lora_sweep.job.samples import with_system_prompt
    from lora_sweep.job.evaluate import generate as answer
    from lora_sweep.job.evaluate import generation_system_prompt

    if (prompt is None) == (input_path is None):
        raise ConfigError(["give exactly one of --prompt TEXT or --input file.jsonl"])
    trial = None if base else pick_trial(load_existing(config.storage_url, config.study.name), which)
    conversations = ([[{"role": "user", "content": prompt}]] if prompt is not None
                     else read_conversations(input_path))
    system = generation_system_prompt(config.data)
    conversations = [with_system_prompt(c, system) for c in conversations]
    model, tokenizer = load(config, trial)
    return answer(model, tokenizer, conversations, max_new_tokens or config.objective.max_new_tokens,
                  config.objective.generation_batch_size)


def export(config: StudyConfig, which: str, out: str, merge: bool) -> Path:
    """The trial's adapter (PEFT format) or, with `merge`, a full model folder; with a README."""
    study = load_existing(config.storage_url, config.study.name)
    trial = pick_trial(study, which)
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise ConfigError([f"--out {out}: a file of that name exists; give a new folder"])
    if target.exists() and any(target.iterdir()):
        raise ConfigError([f"--out {out}: the folder exists and is not empty"])
    adapter = Path(trial.user_attrs["adapter_path"])
    if merge:
        model, tokenizer = load(config, trial)
        merged = model.merge_and_unload()
        merged.save_pretrained(target)
        tokenizer.save_pretrained(target)
    else:
        shutil.copytree(adapter, target, dirs_exist_ok=True)
    info = describe(config, study, trial)
    base = study.user_attrs.get(BASE_ATTR, {}).get(config.objective.key)
    load_hint = (f'AutoModelForCausalLM.from_pretrained("{target}")' if merge else
                 f'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{config.model.name_or_path}"), '
                 f'"{target}")')
    (target / "README.md").write_text(
        f"# LoRA {'merged model' if merge else 'adapter'}: study {config.study.name}, trial {trial.number}\n\n"
        f"Base model: `{config.model.name_or_path}`\n\n"
        f"Objective {config.objective.metric}: {info[config.objective.metric]}"
        + (f" (base model: {base})" if base is not None else "") + "\n\n"
        f"Load it with `{load_hint}`.\n\n"
        f"Inference system prompt: {config.data.inference_system_prompt or config.data.system_prompt!r}\n\n"
        "## Parameters (as the job ran them)\n\n```json\n" + json.dumps(info["params"], indent=2) + "\n```\n"
        + (f"\nAsked for, and clamped to the run: `{json.dumps(info['requested_params'])}`\n"
           if "requested_params" in info else ""),
        encoding="utf-8",
    )
    return target


# The keys of the AI Toolkit's lora.yaml in its templates' order (tests/data/aitk/: the Aion
# template's, with the Phi Silica one's num_training_steps). save_dir is left out: where the
# AI Toolkit writes is its own.
AITK_ORDER = (
    "adam_beta1", "adam_beta2", "adam_epsilon", "early_stopping_patience", "epochs", "eval_accumulation_steps",
    "eval_delay", "eval_steps", "evaluation_strategy", "finetune_dataset", "finetune_test_batch_size",
    "finetune_test_nsamples", "finetune_test_seqlen", "finetune_train_batch_size", "finetune_train_nsamples",
    "finetune_train_seqlen", "gradient_accumulation_steps", "gradient_checkpointing", "learning_rate",
    "lora_dropout", "lr_scheduler_type", "max_grad_norm", "model", "model_path", "num_training_steps",
    "num_warmup_steps", "save_steps", "seed", "weight_decay", "compare_enabled", "compare_file",
    "compare_temperature", "skip_finetune", "adapter_path", "system_prompt", "varied_seqlen", "trust_remote_code",
)
LINE = re.compile(r"^(?P<key>[A-Za-z_]\w*):(?P<space>[ \t]*)(?P<tag>!!\w+[ \t]+)?(?P<value>.*?)(?P<comment>[ \t]+#.*)?$")


def yaml_scalar(value: Any, quoted: bool = False) -> str:
    """One value as YAML 1.1 writes it (what the AI Toolkit's PyYAML reads: `1.0e-05`, not `1e-05`)."""
    if quoted and isinstance(value, str):
        return json.dumps(value)
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def conversion_note(config: StudyConfig, command: list[str]) -> str | None:
    """What to run to give the AI Toolkit this study's data, when it is not already the chat JSON
    lines the AI Toolkit reads (another data.format, or a CSV, Parquet or saved-dataset file); None
    when it is. `command` is `python -m lora_sweep convert` with its arguments."""
    from lora_sweep.job.data import formats

    other = set()
    for path, (fmt, _) in formats(config.data).items():
        if fmt != "chat":
            other.add(f"{fmt} records")
        elif Path(path).is_dir():
            other.add("a saved dataset")
        elif Path(path).suffix.lower() not in (".json", ".jsonl"):
            other.add(f"a {Path(path).suffix} file")
    if not other:
        return None
    return (f"the AI Toolkit reads chat JSON lines only ({{\"messages\": [...]}} per line), and this study's data is "
            f"{' and '.join(sorted(other))}: `{shlex.join(command)}` writes it as the AI Toolkit's train.json and test.json "
            f"in {command[5]}, the folder to give as finetune_dataset")


def aitk_yaml(config: StudyConfig, which: str, out: str, study_yaml: str, overrides: list[str]
              ) -> tuple[Path, list[str], str | None]:
    """Write the trial's params (and the study's job values) as an AI Toolkit lora.yaml; return
    its path, the values that have no lora.yaml key (searched: r, alpha, target_modules...; searched or
    not: the LoRA variant the trial used, config.job.variant_keys_used), and how to
    convert the data for the AI Toolkit when it is not chat JSON lines (`conversion_note`; also the
    file's closing comment). `study_yaml` and `overrides` are the study's, as given, for that command.

    When the study's `job:` is a flat lora.yaml, that file is copied line for line (layout,
    comments, untouched values), only the values of the searched keys changed (a proxy's shortcuts,
    such as fewer steps, stay here); else the study's job values with the trial's params are
    written under the template's keys, in its order. Nothing is written on an error."""
    from lora_sweep.config.space import apply, build_space

    target = Path(out)
    problem = (f"--aitk-yaml {out}: a folder of that name exists; give a file path" if target.is_dir() else
               f"--aitk-yaml {out}: the file exists; give a new path" if target.exists() else
               creation_problem(target.parent, "--aitk-yaml", writable=True, got=out))
    if problem:
        raise ConfigError([problem])
    study = load_existing(config.storage_url, config.study.name)
    trial = pick_trial(study, which)
    space = build_space(config)
    tree = apply(config.job_tree(), space, trial_ran(study, trial))  # what the job ran: a warmup within the run
    names = flat_names()
    flat = {names[space.paths[name]]: get_path(tree, space.paths[name])
            for name in trial.params if names.get(space.paths[name]) in FLAT_KEYS}
    unmapped = [f"{name}: {yaml_scalar(get_path(tree, space.paths[name]))}"
                for name in trial.params if names.get(space.paths[name]) not in FLAT_KEYS]
    searched = {space.paths[name] for name in trial.params}  # and the LoRA variant the trial used, searched or not
    unmapped += [f"{key}: {yaml_scalar(tree['lora'][key])}"
                 for key in variant_keys_used(LoraSection.model_validate(tree["lora"])) if f"lora.{key}" not in searched]
    header = [f"# AI Toolkit lora.yaml: study {config.study.name}, trial {trial.number} "
              f"({config.objective.metric} {trial.values[0] if trial.values else None})"]
    source = read_yaml(config.job) if config.job else None
    if source is not None and is_flat(source):
        lines = Path(config.job).read_text(encoding="utf-8-sig").splitlines()
        lines = [swap_value(line, flat) for line in lines]
        missing = [key for key in flat if key not in source]
        lines += [f"{key}: {yaml_scalar(flat[key])}" for key in missing]
    else:
        values = {name: get_path(tree, path) for path, name in names.items() if name in AITK_ORDER}
        if values.get("model") is None:  # no display name: a `model: null` line would say nothing
            values.pop("model", None)
        extra = [key for key in flat if key not in AITK_ORDER]
        lines = header + ["# model_path and finetune_dataset are this study's: set the AI Toolkit's own"]
        lines += [f"{key}: {yaml_scalar(values[key] if key in values else flat[key])}"
                  for key in [*AITK_ORDER, *extra] if key in values or key in flat]
    if unmapped:
        lines += ["# searched or set here, no lora.yaml key (set them in the AI Toolkit's LoRA settings):",
                  *[f"#   {line}" for line in unmapped]]
    note = conversion_note(config, ["python", "-m", "lora_sweep", "convert", study_yaml,
                                    str(target.parent / "aitk-data"), *overrides])
    if note:
        lines += [f"# {note}"]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target, unmapped, note


def swap_value(line: str, values: dict[str, Any]) -> str:
    """A `key: value  # comment` line with the value of `values[key]`, its tag, spacing and comment kept."""
    found = LINE.match(line)
    if not found or found["key"] not in values:
        return line
    value = yaml_scalar(values[found["key"]], quoted=found["value"].startswith('"'))
    return f"{found['key']}:{found['space']}{found['tag'] or ''}{value}{found['comment'] or ''}"


def print_answers(answers: list[str], input_path: str | None) -> None:
    if input_path is None:
        print(answers[0])
    else:
        for text in answers:
            sys.stdout.write(json.dumps({"prediction": text}, ensure_ascii=False) + "\n")
