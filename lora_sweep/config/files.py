"""Config files: YAML as users write it, `key.sub=value` overrides, the AI Toolkit's flat lora.yaml
names (`FLAT_KEYS` maps them to their place here, so a flat file loads as a job), pydantic's errors
as `path: what is wrong (got value)` lines, and the explicit checks a loaded config gets (its user
scorer imported): every problem in a file is reported at once."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lora_sweep.config.job import ConfigError, JobConfig, ObjectiveSection, TrainingSection, placeholders
from lora_sweep.scorers import ScorerError, load_scorer


# The reference's flat parameter names (AI Toolkit lora.yaml) and their place in our tree.
# The same names are the parameter names of the search space.
NOT_PARAMETERS = ("logging_steps", "save_total_limit", "skip_finetune")  # training fields no reference name
FLAT_KEYS: dict[str, str] = {
    "system_prompt": "data.system_prompt",
    "varied_seqlen": "data.varied_seqlen",
    "finetune_dataset": "data.dataset",
    "finetune_train_nsamples": "data.train_nsamples",
    "finetune_test_nsamples": "data.test_nsamples",
    "finetune_train_batch_size": "data.train_batch_size",
    "finetune_test_batch_size": "data.test_batch_size",
    "finetune_train_seqlen": "data.train_seqlen",
    "finetune_test_seqlen": "data.test_seqlen",
    "lora_dropout": "lora.lora_dropout",
    **{
        name: f"training.{name}"
        for name in TrainingSection.model_fields
        if name not in NOT_PARAMETERS
    },
}
# The lora.yaml's other keys (paths, the compare step): read from a flat file, never searched.
# `model` is here only when its value is a string (the display name); a dict is our model group.
AITK_KEYS: dict[str, str] = {
    "model_path": "model.name_or_path",
    "save_dir": "output_dir",
    "adapter_path": "model.adapter_path",
    "skip_finetune": "training.skip_finetune",
    "compare_enabled": "compare.enabled",
    "compare_file": "compare.file",
    "compare_temperature": "compare.temperature",
    "trust_remote_code": "model.trust_remote_code",
    # the AI Toolkit's earlier (Olive) templates' data settings; `olive_columns` makes them data.columns
    "text_cols": "data.text_cols",
    "text_template": "data.text_template",
}


def flat_names() -> dict[str, str]:
    """Our dotted path -> the lora.yaml name, to speak to a user in the names of their file."""
    return {path: name for name, path in {**FLAT_KEYS, **AITK_KEYS, "model": "model.display_name"}.items()}


def flat_path(key: str, value: Any) -> str | None:
    """Where a flat lora.yaml key goes in our tree, or None when `key` is not a flat name."""
    if key == "model" and isinstance(value, str):
        return "model.display_name"
    return FLAT_KEYS.get(key) or AITK_KEYS.get(key)


class Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it (1.1), except that `1e-4` and `1E-08` are numbers, as in YAML 1.2:
    1.1 wants a dot and a signed exponent (`1.0e-4`), so a user's `1e-4` would be a string."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_scalar(text: str) -> Any:
    """A command-line value read as YAML (`1e-3` -> float, `[a, b]` -> list, `null` -> None)."""
    return yaml.load(text, Loader=Loader)


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating the groups on the way."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[leaf] = value


def get_path(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        node = node[key]
    return node


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (or a lora.yaml name: `learning_rate=1e-3`) to a deep copy of
    a grouped `tree`."""
    tree = copy.deepcopy(tree)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r} must look like key.sub=value")
            continue
        value = parse_scalar(text)
        set_path(tree, flat_path(key.strip(), value) or key.strip(), value)  # `finetune_dataset=d` too
    if problems:
        raise ConfigError(problems, "command line")
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"no such file: {path}"], str(path))
    try:
        # utf-8-sig: a byte-order mark (Notepad's UTF-8) is not part of the text
        tree = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=Loader)
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 (byte 0x{exc.object[exc.start]:02x} at position {exc.start})"], str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError([f"must be a mapping of groups, got {type(tree).__name__}"], str(path))
    return tree


def is_flat(tree: dict[str, Any]) -> bool:
    """Is this an AI Toolkit lora.yaml (a top-level key is one of its names)?"""
    return any(flat_path(key, value) for key, value in tree.items())


def unflatten(tree: dict[str, Any]) -> dict[str, Any]:
    """Turn a flat AI Toolkit lora.yaml into our grouped form; grouped input passes through.

    A file is flat when one of its top-level keys is a reference name (`learning_rate`,
    `finetune_train_nsamples`, ...). Keys that are neither are left for validation to report.
    """
    if not is_flat(tree):
        return tree
    grouped: dict[str, Any] = {}
    for key, value in tree.items():
        set_path(grouped, flat_path(key, value) or key, value)
    return grouped


DOTTED = re.compile(r"\b[a-z_]+\.[a-z_]+\b")  # a config path inside a message: training.eval_steps

# The AI Toolkit's earlier Phi-3 / Phi-2 templates (windows-ai-studio-templates, project-settings.json)
# turned each record into one training text: `text_cols` (the columns it uses, ["phrase", "tone"]) and a
# `text_template` over them, "<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>" (Phi-3's turns) or
# "### Text: {phrase}\n### The tone is:\n{tone}" (Phi-2's, whose answer is the field it ends in).
PHI3_TURN = re.compile(r"<\|(system|user|assistant)\|>(.*?)(?=<\|end\|>|<\|(?:system|user|assistant)\|>|$)", re.DOTALL)
LAST_FIELD = re.compile(r"\{(\w+)\}\s*$")


def olive_columns(tree: dict[str, Any], flat: bool) -> list[str]:
    """Turn data.text_cols / data.text_template (a flat lora.yaml's text_cols / text_template) into
    data.columns' templates in `tree`, in place; what is wrong with them, named as the user wrote them."""
    data = tree.get("data")
    if not isinstance(data, dict) or not {"text_cols", "text_template"} & set(data):
        return []
    cols, template = data.pop("text_cols", None), data.pop("text_template", None)
    if data.get("columns") is not None:
        problems = ["data.text_template: give data.columns or text_cols / text_template, not both"]
    else:
        columns, problems = columns_of(cols, template)
        data["columns"] = columns if columns else data.get("columns")
    names = flat_names() if flat else {}
    return [DOTTED.sub(lambda key: names.get(key[0], key[0]), p) for p in problems]


def columns_of(cols: Any, template: Any) -> tuple[dict[str, str] | None, list[str]]:
    """data.columns' {prompt, answer[, system]} for text_cols and a text_template: Phi-3's <|user|> turn is
    the prompt, its <|assistant|> turn the answer; a template without turns is the prompt up to the
    field it ends in, which is the answer. Without a template, the last text_cols column is the answer
    and the others, joined by spaces, the prompt."""
    if cols is not None and not (isinstance(cols, list) and all(isinstance(c, str) for c in cols)):
        return None, [f"data.text_cols: a list of column names, e.g. [phrase, tone] (got {cols!r})"]
    if template is None:
        if not cols or len(cols) < 2:
            return None, ["data.text_cols: needs data.text_template, or two columns or more (the last is the answer)"]
        return {"prompt": " ".join(f"{{{c}}}" for c in cols[:-1]), "answer": f"{{{cols[-1]}}}"}, []
    text = str(template).replace("\\n", "\n")  # project-settings.json writes the line ends as \\n
    turns = {role: body.strip("\n") for role, body in PHI3_TURN.findall(text)}
    if turns and {"user", "assistant"} <= set(turns):
        columns = {"prompt": turns["user"], "answer": turns["assistant"],
                   **({"system": turns["system"]} if "system" in turns else {})}
    elif not turns and (end := LAST_FIELD.search(text)):
        columns = {"prompt": text[: end.start()].rstrip(), "answer": end.group().strip()}
    else:
        return None, [(f"data.text_template: {template!r} has neither Phi-3's <|user|> and <|assistant|> turns nor "
                       f"a field it ends in (the answer): write data.columns, e.g. {{prompt: \"{{phrase}}\", answer: "
                       f"\"{{tone}}\"}}")]
    unknown = [f for f in dict.fromkeys(re.findall(r"\{(\w+)\}", text)) if cols is not None and f not in cols]
    return columns, [f"data.text_template: {{{f}}} is not one of data.text_cols ({', '.join(cols)})" for f in unknown]


def format_errors(error: ValidationError, prefix: str = "", names: dict[str, str] | None = None) -> list[str]:
    """pydantic's errors as `path: message (got value)` lines; `names` renames paths (to lora.yaml names)."""
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        path = f"{prefix}{path}" if path else prefix.rstrip(".")
        path = (names or {}).get(path, path)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key (check its spelling and group)")
        elif item["type"] == "missing":
            lines.append(f"{path}: required")
        elif item["type"] == "value_error":
            # our own validators already name the paths and values they speak of, a line each
            found = [m if not path or m.startswith(f"{path}.") else f"{path}: {m}" for m in message.split("\n")]
            lines += [DOTTED.sub(lambda key: (names or {}).get(key[0], key[0]), m) for m in found]
        else:
            lines.append(f"{path}: {message} (got {item['input']!r})")
    return lines


# Values a user writes in prose, where `<name>` is text, not a template's placeholder.
FREE_TEXT = {"data.system_prompt", "data.inference_system_prompt", "objective.regex"}
EXAMPLE_VALUES = {"data.dataset": "path/to/data", "output_dir": "path/to/output", "model.name_or_path": "path/to/model",
                  "model.adapter_path": "path/to/adapter", "compare.file": "path/to/compare.jsonl"}


def placeholder_problems(tree: dict[str, Any], flat: bool) -> list[str]:
    """A problem per value that still holds an unfilled template placeholder (`mount/<run_id>/dataset`),
    named as the user wrote it: by its lora.yaml name when `flat`, else by its dotted path."""
    names = flat_names() if flat else {}
    problems = []
    for path, value in leaves(tree):
        found = placeholders(value)
        if not found or path in FREE_TEXT:
            continue
        if path == "compare.file" and not tree["compare"].get("enabled"):
            continue  # the template keeps it while comparing is off
        name = names.get(path, path)
        problems.append(f"{name}: {json.dumps(value)} still holds the placeholder{'s' if len(found) > 1 else ''} "
                        f"{', '.join(found)}: give the real value on the command line, e.g. "
                        f"{name}={EXAMPLE_VALUES.get(path, 'VALUE')}")
    return problems


def leaves(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every non-mapping value of a nested dict."""
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out += leaves(value, f"{path}.") if isinstance(value, dict) else [(path, value)]
    return out


def scorer_problems(objective: ObjectiveSection) -> list[str]:
    """The explicit check of a validated config's objective: its scorer resolved (a `python:` one
    imported, within a time limit), which no pydantic validator does."""
    if not objective.is_generation:
        return []
    try:
        load_scorer(objective.metric, objective.regex)
    except ScorerError as exc:
        return [f"objective.metric: {exc}"]
    return []


def validate_job(tree: dict[str, Any], source: str | None = None, flat: bool | None = None) -> JobConfig:
    """Validate a job tree, grouped or flat, then check it (`scorer_problems`), reporting every problem
    at once. `flat`: name problems by their lora.yaml names (default: when `tree` is flat)."""
    flat = is_flat(tree) if flat is None else flat
    problems = placeholder_problems(unflatten(tree), flat)
    grouped = copy.deepcopy(unflatten(tree))
    problems += olive_columns(grouped, flat)
    try:
        job = JobConfig.model_validate(grouped)
        problems += scorer_problems(job.objective)
    except ValidationError as exc:
        problems += format_errors(exc, names=flat_names() if flat else None)
    if problems:
        raise ConfigError(problems, source)
    return job


def load_job(path: str | Path, overrides: list[str] = ()) -> JobConfig:
    """Load a job config file (ours or a flat AI Toolkit lora.yaml), with dotted overrides."""
    tree = read_yaml(path)
    return validate_job(apply_overrides(unflatten(tree), list(overrides)), str(path), flat=is_flat(tree))


def dump_yaml(config: BaseModel, path: str | Path) -> None:
    """Write a config with every default filled in, so the file alone reproduces the run."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")

