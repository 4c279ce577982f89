"""Re-score a finished sweep's kept adapters with changed objective settings: what its trials would
have scored, without training them again.

For each COMPLETE trial numbered below --trials of the study `--study` in `--sweeps` (bench 3's
`<workdir>/sweeps`: `<study>.db` and the trial folders it names), the trial's own job.yaml with the
`key=value` overrides evaluates the trial's kept adapter (`lora_sweep.evaluate.evaluate_model`, the
`rescored.json` and `rescored_predictions.jsonl` files go to --out/<study>/<trial>). It prints each
trial's value and its new score, and the best of each. It is an estimate: a sweep run with the new
settings would have sampled other trials after the first ones.

    python bench/rescore.py --sweeps studies/bench-sweeps24/sweeps --study demo-s0 --trials 12 \\
        objective.max_new_tokens=48
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import benchlib as B


def main(argv: list[str] | None = None) -> list[tuple[int, float, float]]:
    import optuna

    from lora_sweep.config import load_job
    from lora_sweep.evaluate import evaluate_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="+", help="`key.sub=value` changes to each trial's job, e.g. objective.max_new_tokens=48")
    p.add_argument("--sweeps", type=Path, required=True, help="the folder of <study>.db (bench 3's <workdir>/sweeps)")
    p.add_argument("--study", required=True, help="the study's name, e.g. demo-s0")
    p.add_argument("--trials", type=int, default=None, help="only trials numbered below this (default: all)")
    p.add_argument("--out", type=Path, default=Path("studies/rescored"), help="where the new scores go")
    args = p.parse_args(argv)
    B.quiet()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=args.study, storage=f"sqlite:///{args.sweeps / f'{args.study}.db'}")
    rows: list[tuple[int, float, float]] = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state.name != "COMPLETE" or (args.trials is not None and trial.number >= args.trials):
            continue
        folder = Path(trial.user_attrs["trial_dir"])
        job = load_job(folder / "job.yaml", [*args.overrides, f"output_dir={args.out / args.study / str(trial.number)}"])
        result: dict[str, Any] = evaluate_model(job, folder / "adapter", "eval", "rescored")
        rows.append((trial.number, trial.value, result["score"]))
    if not rows:
        raise SystemExit(f"{args.study}: no complete trial to re-score")
    print(B.table(["trial", f"{study.metric_names[0] if study.metric_names else 'value'}", "re-scored"], rows))
    print(f"best: {B.num(max(r[1] for r in rows))} as run, {B.num(max(r[2] for r in rows))} with "
          f"{' '.join(args.overrides)}")
    return rows


if __name__ == "__main__":
    main()
