"""Re-score a finished sweep's kept adapters with changed objective settings: what its trials would
have scored, without training them again.

For each COMPLETE trial numbered below --trials of the study `--study` in `--sweeps` (bench 3's
`<workdir>/sweeps`: `<study>.db` and the trial folders it names), the trial's own job.yaml with the
`key=value` overrides evaluates the trial's kept adapter (`lora_sweep.job.evaluate.evaluate_model`, the
`rescored.json` and `rescored_predictions.jsonl` files go to --out/<study>/<trial>). It prints each
trial's value and its new score, and the best of each. It is an estimate: a sweep run with the new
settings would have sampled other trials after the first ones.

With --into DIR it also writes a copy of the study to DIR/<study>.db: the trials below --trials, each
re-scored one with its new value and predictions. A sampler that never reads values (random search)
would have drawn the same trials, so for bench 3's random arm the copy is the sweep it would have
run with the new settings: `sweep_efficiency.py --resume --workdir W` with the copy in W/sweeps
reads it back instead of training it again.

    python bench/rescore.py --sweeps studies/bench-sweeps24/sweeps --study demo-s0 --trials 12 \\
        objective.max_new_tokens=48
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import benchlib as B

NAME = "rescored"  # the evaluation's files: rescored.json, rescored_predictions.jsonl


def main(argv: list[str] | None = None) -> list[tuple[int, float, float]]:
    import optuna

    from lora_sweep.config.files import load_job
    from lora_sweep.events import JobFolder
    from lora_sweep.job.evaluate import evaluate_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="+", help="`key.sub=value` changes to each trial's job, e.g. objective.max_new_tokens=48")
    p.add_argument("--sweeps", type=Path, required=True, help="the folder of <study>.db (bench 3's <workdir>/sweeps)")
    p.add_argument("--study", required=True, help="the study's name, e.g. demo-s0")
    p.add_argument("--trials", type=int, default=None, help="only trials numbered below this (default: all)")
    p.add_argument("--out", type=Path, default=Path("studies/rescored"), help="where the new scores go")
    p.add_argument("--into", type=Path, default=None, help="write the re-scored copy of the study to INTO/<study>.db")
    args = p.parse_args(argv)
    B.quiet()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=args.study, storage=f"sqlite:///{args.sweeps / f'{args.study}.db'}")
    if args.into is not None and (args.into / f"{args.study}.db").exists():
        raise SystemExit(f"{args.into / f'{args.study}.db'} exists: nothing re-scored")
    rows: list[tuple[int, float, float]] = []
    predictions: dict[int, str] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state.name != "COMPLETE" or (args.trials is not None and trial.number >= args.trials):
            continue
        folder = Path(trial.user_attrs["trial_dir"])
        job = load_job(folder / "job.yaml", [*args.overrides, f"output_dir={args.out / args.study / str(trial.number)}"])
        result: dict[str, Any] = evaluate_model(job, folder / "adapter", "eval", NAME)
        rows.append((trial.number, trial.value, result["score"]))
        predictions[trial.number] = str(JobFolder(job.output_dir).evaluation(NAME)[1].resolve())
    if not rows:
        raise SystemExit(f"{args.study}: no complete trial to re-score")
    print(B.table(["trial", f"{study.metric_names[0] if study.metric_names else 'value'}", "re-scored"], rows))
    print(f"best: {B.num(max(r[1] for r in rows))} as run, {B.num(max(r[2] for r in rows))} with "
          f"{' '.join(args.overrides)}")
    if args.into is not None:
        copy_study(study, args.into, {n: s for n, _, s in rows}, predictions, args.trials, args.overrides)
        print(f"re-scored copy: {args.into / f'{args.study}.db'}")
    return rows


def copy_study(study: Any, into: Path, scores: dict[int, float], predictions: dict[int, str], below: int | None,
               overrides: list[str]) -> Any:
    """`study` in a new database under `into`: its attrs and its trials numbered below `below`, the
    re-scored ones with their new value and predictions."""
    import optuna
    from optuna.trial import TrialState

    into.mkdir(parents=True, exist_ok=True)
    copy = optuna.create_study(study_name=study.study_name, storage=f"sqlite:///{into / f'{study.study_name}.db'}",
                               directions=study.directions)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    copy.set_user_attr("rescored", " ".join(overrides))
    if study.metric_names:
        with warnings.catch_warnings():  # experimental since optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            copy.set_metric_names(study.metric_names)
    for trial in study.get_trials(deepcopy=True, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if below is not None and trial.number >= below:  # a queued trial (the informed one of a short sweep) never ran
            continue
        if trial.number in scores:
            trial.values = [scores[trial.number]]
            trial.user_attrs["predictions_path"] = predictions[trial.number]
        copy.add_trial(trial)
    return copy


if __name__ == "__main__":
    main()
