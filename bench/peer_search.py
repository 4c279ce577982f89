"""Benchmark 7: the demo's sweep against what a transformers user runs instead, `Trainer.hyperparameter_search`.

Three arms on the demo task, with the same model, data, search space, trial budget (--trials
finished trials), steps per trial and metric (json_fields, by generation):
* demo: lora_sweep's sweep with the demo's settings (bench 3's `demo` arm: TPE with seed S, the
  median pruner on eval_loss, the metric generated at the last evaluation, trials as jobs, two
  one-thread trials at once);
* random: random search without pruning (bench 3's `random` arm);
* hf: `Trainer.hyperparameter_search(backend="optuna")` in this process, written as a transformers
  user writes it: a `model_init(trial)` that puts LoRA on the base model with the trial's
  lora_dropout, an `hp_space` over the same parameters, an `evaluate` that adds json_fields by
  generation at every evaluation (the Trainer reports the objective to optuna's pruner there, and a
  trial's value is its last evaluation's), optuna's TPE with seed S and the demo's options, the
  demo's median pruner, and all of this process's threads. Trial 0 is not the documented defaults
  here: nothing in the Trainer's search enqueues a trial.

The demo and random sweeps are bench 3's: point --workdir at its work folder to reuse them (they
are run there first when missing). Each arm's best-so-far is taken in the order its trials ended
and plotted against wall time since its first trial's start in peer_search.html. L = the lowest of the three arms'
final bests (every arm reaches it); the row gives the minutes each arm took to reach L, and the
ratio demo / hf. Wall time depends on the machine's load: run it on a quiet machine. A finished
hf study in --workdir (hf-s<seed>.db) is read back, not run again (delete it to re-run).

    python bench/peer_search.py --seed 0 --trials 24 --workdir studies/bench-sweeps24
    python bench/peer_search.py --smoke --results /tmp/r.md
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import benchlib as B
from sweep_efficiency import curve, plot, run_arm, steps_to_reach

ARMS = ("random", "demo", "hf")
log = logging.getLogger("peer_search")


def hf_search(config: Any, seed: int, trials: int, work: Path) -> Any:
    """The Trainer's own optuna search on the demo task: its study in work/hf-s<seed>.db, read back
    when it finished `trials` trials already, else run afresh."""
    import optuna

    db, study_name = work / f"hf-s{seed}.db", f"hf-s{seed}"
    storage = f"sqlite:///{db}"
    if db.is_file():
        study = optuna.load_study(study_name=study_name, storage=storage)
        if sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)) >= trials:
            return study
        db.unlink()
    run_hf_search(config, seed, trials, work, storage, study_name)
    return optuna.load_study(study_name=study_name, storage=storage)


def run_hf_search(config: Any, seed: int, trials: int, work: Path, storage: str, study_name: str) -> None:
    """`Trainer.hyperparameter_search(backend="optuna")` as a transformers user writes it."""
    import optuna
    from transformers import PrinterCallback

    from lora_sweep.config.space import build_space, suggest
    from lora_sweep.job import train
    from lora_sweep.job.data import Collator, RowDataset, prepare
    from lora_sweep.job.evaluate import GenerationMetric, causal_lm_loss, check_scorer
    from lora_sweep.job.models import find_model, load_tokenizer, pick_dtype
    from lora_sweep.job.samples import load_samples
    from lora_sweep.sweep.search import make_pruner, make_sampler
    from lora_sweep.sweep.trial import job_config

    space = build_space(config)
    folder = work / f"hf-s{seed}"
    base = job_config(config, space, {}, folder)

    def job(trial: optuna.Trial | None) -> Any:
        return base if trial is None else job_config(config, space, suggest(trial, space), folder)

    samples = load_samples(base.data)
    metric = GenerationMetric(base.objective, base.data, base.training.seed, samples[1],
                              check_scorer(base.objective, samples[1]))
    path = find_model(base.model.name_or_path)
    tokenizer = load_tokenizer(path, base.model.trust_remote_code)
    tokenized = prepare(base.data, base.training.seed, tokenizer, samples)
    max_steps = train.plan_steps(base, len(tokenized.train), 1)
    dtype = pick_dtype(base.model.dtype)

    def arguments(trial: optuna.Trial | None) -> Any:
        config_ = job(trial)
        return train.training_arguments(config_, folder, max_steps, train.warmup_steps(config_, max_steps)[0], dtype)

    base_args = arguments(None)

    def hp_space(trial: optuna.Trial) -> dict[str, Any]:
        """The trial's TrainingArguments where they differ from the base's (LoRA's are model_init's)."""
        args = arguments(trial)
        return {k: getattr(args, k) for k in ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
                                                "adam_beta1", "adam_beta2", "adam_epsilon")
                if getattr(args, k) != getattr(base_args, k)}

    name = f"eval_{config.objective.metric}"

    class Search(train.LoraTrainer):
        def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            metrics = super().evaluate(*args, **kwargs)
            metrics[name] = metric(self.model, tokenizer)[0]
            log.info("hf trial %s  step %d/%d  eval_loss %.4f  %s %.4f", getattr(self._trial, "number", "-"),
                     self.state.global_step, max_steps, metrics["eval_loss"], name, metrics[name])
            return metrics

        def _report_to_hp_search(self, trial: Any, step: int, metrics: dict[str, float]) -> None:
            if trial is not None:
                trial.set_user_attr("steps_run", step)  # bench 3's curve counts a trial's steps from it
            super()._report_to_hp_search(trial, step, metrics)

    trainer = Search(model_init=lambda trial: train.load_model(job(trial), path), args=base_args,
                     train_dataset=RowDataset(tokenized.train), eval_dataset=RowDataset(tokenized.test),
                     data_collator=Collator(tokenizer.pad_token_id), processing_class=tokenizer,
                     compute_loss_func=causal_lm_loss)
    trainer.remove_callback(PrinterCallback)
    trainer.hyperparameter_search(
        hp_space=hp_space, compute_objective=lambda metrics: metrics[name], n_trials=trials,
        direction=config.objective.direction, backend="optuna", storage=storage, study_name=study_name,
        sampler=make_sampler(config, space), pruner=make_pruner(config))


def minutes_to(points: list[dict[str, Any]], level: float, maximize: bool) -> float:
    return steps_to_reach(points, level, maximize, key="seconds") / 60


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = B.parser(__doc__)
    p.add_argument("--seed", type=int, default=0, help="sampler seed of all three arms (default: %(default)s)")
    p.add_argument("--trials", type=int, default=24, help="finished trials per arm (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="training steps per trial (default: the demo's, 20)")
    p.add_argument("--plot", type=Path, default=None, help="default: peer_search.html next to --results")
    p.add_argument("--plotlyjs", choices=["inline", "cdn"], default="inline",
                   help="inline: the HTML opens offline (about 5 MB); cdn: small, needs the network")
    args = p.parse_args(argv)
    args.resume = True  # bench 3's sweeps in --workdir are kept and finished, not run again
    if args.smoke:
        args.trials = 1  # bench 3's smoke sweeps, so that a shared --workdir reuses them

    B.quiet()
    B.sweep_logging()
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with B.workdir(args.workdir) as work:
        model = B.demo_model(args, work)
        for arm in ("random", "demo"):
            results[(arm, args.seed)] = run_arm(arm, args.seed, args, work, model)
        config = B.load_demo([f"study.dir={work / 'sweeps'}", f"study.sampler.seed={args.seed}",
                              *B.budget_overrides(args.steps), *B.model_overrides(args.smoke, model)])
        maximize = config.objective.direction == "maximize"
        study = hf_search(config, args.seed, args.trials, work)
        results[("hf", args.seed)] = {"timeline": curve(study, maximize, by="time"), "points": curve(study, maximize)}

    finals = {arm: results[(arm, args.seed)]["timeline"][-1]["best"] for arm in ARMS}
    reached = [b for b in finals.values() if b is not None]
    if not reached:
        raise SystemExit("no arm completed a trial: nothing to compare")
    level = min(reached) if maximize else max(reached)
    rows = []
    for arm in ARMS:
        points = results[(arm, args.seed)]["timeline"]
        states = [p["state"] for p in points]
        rows.append([arm, len(points), states.count("PRUNED"), points[-1]["steps"], finals[arm],
                     minutes_to(points, level, maximize), points[-1]["seconds"] / 60])
    metric = config.objective.metric
    print(f"{metric}, seed {args.seed}, {args.trials} finished trials per arm; L = {B.num(level)}, the lowest final best")
    print(B.table(["arm", "trials", "pruned", "steps", "final best", "minutes to L", "minutes in all"], rows))
    minutes = {r[0]: r[5] for r in rows}
    ratio = minutes["demo"] / minutes["hf"] if minutes["hf"] and not math.isinf(minutes["hf"]) else math.inf
    plot_path = args.plot or Path(args.results).parent / "peer_search.html"
    plot(results, plot_path, f"Best {metric} so far vs wall time: lora_sweep's demo, random search, "
         f"Trainer.hyperparameter_search", metric, args.plotlyjs == "inline", x="minutes")
    print(f"plot: {plot_path}")
    figures = "; ".join(f"{r[0]}: best {B.num(r[4])}, {B.num(r[5])} min to L, {r[1]} trials ({r[2]} pruned) "
                        f"in {B.num(r[6])} min" for r in rows)
    setup = (f"{B.model_label(args)} demo task, seed {args.seed}, {args.trials} trials x "
             f"{config.training.num_training_steps} steps per arm; L = {B.num(level)}")
    row = B.conclude("7 peer search", args, setup, figures, ratio, "demo / hf minutes to L",
                     "ratio < 1 (faster than the Trainer's own search)", ratio < 1)
    return {"ratio": ratio, "rows": rows, "plot": plot_path, "results": results, "row": row}


if __name__ == "__main__":
    main()
