"""The command line: `python -m lora_sweep <command> ...` (also installed as `lora-sweep`).

Heavy libraries (torch, transformers) are imported by the commands that need them, so
`validate` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lora_sweep.config.job import ConfigError


def cmd_train(args: argparse.Namespace) -> int:
    from lora_sweep.job import train

    return train.main([args.config, *args.overrides])


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a study or job YAML and its data files, every problem at once."""
    from lora_sweep.config.files import apply_overrides, load_job, read_yaml
    from lora_sweep.config.study import is_study, load_study
    from lora_sweep.job.samples import read_files

    tree = apply_overrides(read_yaml(args.config), args.overrides)
    study = is_study(tree)
    problems: list[str] = []
    try:
        config = load_study(args.config, args.overrides) if study else load_job(args.config, args.overrides)
    except ConfigError as exc:
        problems += exc.problems
        config = None
    counts, sides = [], []
    if config is not None and study:
        from lora_sweep.sweep.loop import preflight

        problems += preflight(config)  # what `run` refuses before it starts: storage, folders, warm start, trackers
    if config is not None:
        *sides, _, found = read_files(config.data)  # train.json, test.json; every problem, as `run` has them
        problems += found
        counts, samples = [len(side) for side in sides], sides[1]
        if not problems and config.objective.is_generation:
            from lora_sweep.scorers import ScorerError, check_scorer

            try:  # on the first test answer, within a time limit: a hung user scorer is reported
                check_scorer(config.objective.metric, config.objective.regex, samples[0])
            except ScorerError as exc:
                problems.append(f"objective.metric: {exc}")
    extra = ""
    if not problems and study:
        from lora_sweep.config.space import build_space, fit_to_run, past_the_run
        from lora_sweep.sweep.search import make_pruner, make_sampler

        space = build_space(config)
        for check in (lambda: make_sampler(config, space), lambda: make_pruner(config)):
            try:
                check()
            except ConfigError as exc:
                problems += exc.problems
        extra = f", {len(space.distributions)} parameters searched over {config.study.n_trials} trials"
    warning, rows, tokenizer = None, None, None
    if not problems:
        try:  # the answers the seqlens cut away: needs the tokenizer (not the weights); writes no cache
            warning, rows, tokenizer = answer_check(config, *sides)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems, args.config)
    if warning:
        print(warning, file=sys.stderr)
    for line in past_the_run(fit_to_run(config, space, rows)) if study else []:  # a range past the run: kept
        print(f"warning: {line}", file=sys.stderr)
    kind = "study" if study else "job"
    print(f"{args.config}: valid {kind} config ({counts[0]} train and {counts[1]} test samples{extra})")
    from lora_sweep.job import data

    # each file's format and why, and the first sample as the loss sees it (a template's check, a system prompt's)
    print(data.described(config.data, data.formats(config.data), tokenizer, sides[0][0]))
    return 0


def answer_check(config: Any, train: list[dict], test: list[dict]) -> tuple[str | None, int | None, Any]:
    """Tokenize the data in memory as a job would (sampled, system prompt applied) and return the
    warning about answers the seqlens cut away, or None, the training rows (None: not counted) and
    the tokenizer (None: not loaded).
    A hub model that is not here yet (a GPU sweep validated offline) only skips the count, with a
    note; a missing folder is a problem."""
    from lora_sweep.job import data
    from lora_sweep.job.models import find_model, in_hub_cache, is_hub_id, load_tokenizer

    name = config.model.name_or_path
    if is_hub_id(name) and not in_hub_cache(name):  # validate never downloads, nor waits on the network
        return (f"note: answers cut away by the seqlens not counted: model.name_or_path {name!r} is not in the "
                f"Hugging Face cache yet"), None, None
    tokenizer = load_tokenizer(find_model(name), config.model.trust_remote_code)
    tokenized = data.tokenize(config.data, config.training.seed, tokenizer, train, test)
    warning = data.answer_warning(tokenized.stats, config.data)
    return f"warning: {warning}" if warning else None, len(tokenized.train), tokenizer


def cmd_convert(args: argparse.Namespace) -> int:
    from lora_sweep.job import data

    print(data.converted(data.load_config(args.config, args.overrides), args.out))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lora_sweep.sweep import loop as sweep

    return sweep.main(args.config, args.overrides, join_only=args.command == "worker")


def cmd_best(args: argparse.Namespace) -> int:
    from lora_sweep.views import export
    from lora_sweep.config.study import load_study

    print(export.best(load_study(args.config, args.overrides)))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from lora_sweep.views import export
    from lora_sweep.config.study import load_study

    config = load_study(args.config, args.overrides)
    answers = export.generate(config, args.trial, args.prompt, args.input, args.base, args.max_new_tokens)
    export.print_answers(answers, args.input)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lora_sweep.views import export
    from lora_sweep.config.study import load_study

    if args.out is None and args.aitk_yaml is None:
        raise ConfigError(["give --out DIR (the adapter), --aitk-yaml FILE (its params as a lora.yaml), or both"])
    if args.merge and args.out is None:
        raise ConfigError(["--merge needs --out DIR: the folder of the merged model"])
    config = load_study(args.config, args.overrides)
    if args.aitk_yaml is not None:  # first: it checks its path, so a bad one leaves no adapter copy either
        path, unmapped, data_note = export.aitk_yaml(config, args.trial, args.aitk_yaml, args.config, args.overrides)
        print(f"AI Toolkit lora.yaml written to {path}")
        if unmapped:
            print(f"note: no lora.yaml key for {', '.join(unmapped)}: set them in the AI Toolkit", file=sys.stderr)
        if data_note:
            print(f"note: {data_note}", file=sys.stderr)
    if args.out is not None:
        out = export.export(config, args.trial, args.out, args.merge)
        print(f"{'merged model' if args.merge else 'adapter'} written to {out}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from lora_sweep.views import dashboard
    from lora_sweep.config.study import load_study

    return dashboard.serve(load_study(args.config, args.overrides), args.host, args.port, args.read_only)


def cmd_report(args: argparse.Namespace) -> int:
    from lora_sweep.views import report
    from lora_sweep.config.study import load_study

    report.write_report(load_study(args.config, args.overrides), args.output, args.png)
    return 0


def add_trial(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trial", default="best", help="`best` or a trial number (default: best)")


COMMANDS = {
    "train": (cmd_train, "run one fine-tuning job from a job YAML (or a flat AI Toolkit lora.yaml)", None),
    "validate": (cmd_validate, "check a study or job YAML and its data files; print every problem", None),
    "convert": (cmd_convert, "write the data, from any data.format and file type, as the AI Toolkit's chat "
                "train.json and test.json in OUT", lambda p: (
        p.add_argument("out", help="the folder to write them in (new, or without those files)"),
    )),
    "run": (cmd_run, "run (or resume) the sweep of a study YAML", None),
    "worker": (cmd_run, "join a study that `run` started, from another process or machine", None),
    "best": (cmd_best, "print the best trial: value, params, adapter path", None),
    "generate": (cmd_generate, "answer prompts with a trial's adapter (or --base without it)", lambda p: (
        add_trial(p),
        p.add_argument("--prompt", help="one user message to answer"),
        p.add_argument("--input", help="a JSONL file of conversations (the reference format) to answer"),
        p.add_argument("--base", action="store_true", help="answer with the base model, without an adapter"),
        p.add_argument("--max-new-tokens", type=int, help="default: objective.max_new_tokens"),
    )),
    "export": (cmd_export, "copy a trial's adapter (or --merge: a full model) to a folder, and/or write its "
               "params as an AI Toolkit lora.yaml", lambda p: (
        add_trial(p),
        p.add_argument("--out", help="the folder to write (new or empty)"),
        p.add_argument("--aitk-yaml", help="write the trial's params (and the study's job values) as an AI Toolkit "
                       "lora.yaml here (a new file); a study whose job: is a lora.yaml keeps that file's layout"),
        p.add_argument("--merge", action="store_true", help="merge the adapter into the base model"),
    )),
    "dashboard": (cmd_dashboard, "serve optuna-dashboard on the study's storage", lambda p: (
        p.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free one)"),
        p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)"),
        p.add_argument("--read-only", action="store_true",
                       help="refuse every request that would change the study (notes, deletions, trial edits)"),
    )),
    "report": (cmd_report, "write the sweep report as one self-contained HTML file", lambda p: (
        p.add_argument("-o", "--output", help="default: <study.dir>/<name>/report.html"),
        p.add_argument("--png", action="store_true", help="also a PNG per figure (needs kaleido and a Chromium)"),
    )),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lora_sweep", description="LoRA fine-tuning sweeps with Optuna and PEFT.")
    sub = top.add_subparsers(dest="command", required=True)
    for name, (_, help_text, extra) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", help="study or job YAML")
        if extra:  # before the overrides: a command's own positional (convert's OUT) comes first
            extra(p)
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. study.n_trials=4")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command][0](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before or after a sweep's trials (those are stopped and recorded there)
        print("error: interrupted", file=sys.stderr)
        return 130
