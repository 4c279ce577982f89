"""Using the winner: show the best trial, answer with its adapter, export it.

    python -m lora_sweep best study.yaml
    python -m lora_sweep generate study.yaml --trial best|N [--prompt TEXT | --input file.jsonl] [--base]
    python -m lora_sweep export study.yaml --trial best|N --out DIR [--merge]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lora_sweep.config import ConfigError, StudyConfig
from lora_sweep.storage import best_trial, load_existing


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


def describe(config: StudyConfig, trial: FrozenTrial) -> dict[str, Any]:
    return {
        "trial": trial.number,
        config.objective.metric: trial.values[0] if trial.values else None,
        "params": trial.params,
        "adapter_path": trial.user_attrs.get("adapter_path"),
        "best_step": trial.user_attrs.get("best_step"),
        "baseline": trial.user_attrs.get("baseline"),
    }


def best(config: StudyConfig) -> str:
    study = load_existing(config.storage_url, config.study.name)
    trial = pick_trial(study, "best")
    info = describe(config, trial)
    base = study.user_attrs.get("baseline", {}).get(config.objective.key)
    if base is not None:
        info["base_model"] = base
    return json.dumps(info, indent=2)


def load(config: StudyConfig, trial: FrozenTrial | None) -> tuple[Any, Any]:
    """The base model (with the trial's adapter unless `trial` is None) and its tokenizer."""
    from lora_sweep.models import load_for_inference

    return load_for_inference(config.model, trial.user_attrs["adapter_path"] if trial else None)


def read_conversations(path: str) -> list[list[dict]]:
    """Conversations of a JSONL file, each cut before its last assistant message if it has one."""
    from lora_sweep.data import read_samples

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
    from lora_sweep.data import with_system_prompt
    from lora_sweep.evaluate import generate as answer
    from lora_sweep.evaluate import generation_system_prompt

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
    info = describe(config, trial)
    base = study.user_attrs.get("baseline", {}).get(config.objective.key)
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
        "## Parameters\n\n```json\n" + json.dumps(trial.params, indent=2) + "\n```\n",
        encoding="utf-8",
    )
    return target


def print_answers(answers: list[str], input_path: str | None) -> None:
    if input_path is None:
        print(answers[0])
    else:
        for text in answers:
            sys.stdout.write(json.dumps({"prediction": text}, ensure_ascii=False) + "\n")
