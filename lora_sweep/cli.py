"""The command line: `python -m lora_sweep <command> ...` (also installed as `lora-sweep`).

Heavy libraries (torch, transformers) are imported by the commands that need them, so
`validate` answers at once.
"""

from __future__ import annotations

import argparse
import sys

from lora_sweep.config import ConfigError


def cmd_train(args: argparse.Namespace) -> int:
    from lora_sweep import train

    return train.main([args.config, *args.overrides])


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a study or job YAML and its data files, every problem at once."""
    from lora_sweep import config as C
    from lora_sweep.data import read_samples

    tree = C.apply_overrides(C.read_yaml(args.config), args.overrides)
    study = C.is_study(tree)
    problems: list[str] = []
    try:
        config = C.load_study(args.config, args.overrides) if study else C.load_job(args.config, args.overrides)
    except ConfigError as exc:
        problems += exc.problems
        config = None
    counts = []
    if config is not None:
        for path in (config.data.train_file, config.data.test_file):
            samples, found = read_samples(path)
            problems += found
            counts.append(len(samples))
    if problems:
        raise ConfigError(problems, args.config)
    kind = "study" if study else "job"
    extra = ""
    if study:
        from lora_sweep.space import build_space

        extra = f", {len(build_space(config).distributions)} parameters searched over {config.study.n_trials} trials"
    print(f"{args.config}: valid {kind} config ({counts[0]} train and {counts[1]} test samples{extra})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lora_sweep import sweep

    return sweep.main(args.config, args.overrides, join_only=args.command == "worker")


COMMANDS = {
    "train": (cmd_train, "run one fine-tuning job from a job YAML (or a flat AI Toolkit lora.yaml)"),
    "validate": (cmd_validate, "check a study or job YAML and its data files; print every problem"),
    "run": (cmd_run, "run (or resume) the sweep of a study YAML"),
    "worker": (cmd_run, "join a study that `run` started, from another process or machine"),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lora_sweep", description="LoRA fine-tuning sweeps with Optuna and PEFT.")
    sub = top.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", help="study or job YAML")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. study.n_trials=4")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command][0](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
