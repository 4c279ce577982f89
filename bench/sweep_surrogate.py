"""Benchmark 3 replayed on a surrogate of the demo objective: many seeds in seconds, no training.

A real run of bench 3 takes about 45 minutes for 3 seeds, too few to tell a better sampler or
pruner from luck. This script runs the same comparison (random search without pruning vs the
demo's sampler and pruner, same trial budget, trial 0 the documented defaults, steps to reach
random search's final best) with the real optuna samplers and pruners built from the real demo
config (`make_sampler`, `make_pruner`, `build_space`), but each evaluation's score comes from a
surrogate instead of a training job:

* PROBE: json_fields of real demo trials at steps 5, 10, 15 and 20 for six learning rates
  (warmup 0, linear, everything else the defaults), recorded on 2026-11-28 with
      python -m lora_sweep run sweeps/demo.yaml study.name=probe study.n_trials=6 \\
        study.enqueue_defaults=false study.base_space=none objective.baseline=false \\
        'study.pruner={type: none}' 'study.sampler={type: grid}' training.eval_steps=5 training.save_steps=20 \\
        'search_space={learning_rate: {type: categorical, choices: [0.001, 0.0015, 0.0025, 0.004, 0.006, 0.009]}}'
* a trial's score at step s: PROBE interpolated at its effective learning rate (its peak rate
  times the share of the warmup-0 linear schedule's area its own schedule, warmup included,
  has covered by step s) in log space, fading to 0 just below the probed range (real trials
  under 7e-4 scored 0 in 20 steps); plus noise: one offset per trial (sd --noise; the metric on
  16 prompts x 4 fields alone has a sampling sd of about 0.06 near 0.5) for trials that learned
  something, a smaller one per evaluation; rounded to the metric's 1/64 steps.

* what the pruner hears is what a real trial reports (objective.prune_on): under the demo's
  default, eval_loss at every evaluation, signed for the study's direction, and the metric only
  where it is generated (every generate_every-th evaluation and the last). LOSS: the median
  eval_loss at steps 10 and 20 of bench 3's unpruned random-search trials in bins of effective
  learning rate (`--fit DIR` prints it from the sweeps in DIR), interpolated, plus a per-trial
  offset (sd --loss-noise, the fit's residual sd) and half of it per evaluation.

Other parameters (betas, epsilon, weight decay, dropout) only act through the noise. It is a
model for choosing settings, not a measurement: only bench 3 (`sweep_efficiency.py`) measures.

    python bench/sweep_surrogate.py                                  # the demo as it is, 60 seeds
    python bench/sweep_surrogate.py objective.prune_on=metric objective.generate_every=1   # the metric, as before
    python bench/sweep_surrogate.py --fit studies/bench-sweeps24/sweeps  # re-fit LOSS to bench 3's random sweeps
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
import statistics
from typing import Any

import numpy as np

import benchlib as B
from sweep_efficiency import TARGET, arm_overrides, steps_to_reach

PROBE_STEPS = (5, 10, 15, 20)
PROBE = {  # learning rate -> json_fields at PROBE_STEPS
    1.0e-3: (0.0, 0.078125, 0.234375, 0.296875),
    1.5e-3: (0.0, 0.1875, 0.328125, 0.390625),
    2.5e-3: (0.21875, 0.40625, 0.53125, 0.46875),
    4.0e-3: (0.359375, 0.34375, 0.484375, 0.546875),
    6.0e-3: (0.453125, 0.546875, 0.546875, 0.578125),
    9.0e-3: (0.1875, 0.484375, 0.4375, 0.6875),
}
FADE = 0.4  # in log learning rate below the lowest probe: 1e-3 -> 6.7e-4 goes to 0
LOSS_STEPS = (10, 20)
# log effective learning rate -> eval_loss at LOSS_STEPS: `--fit` on bench 3's random sweeps of seeds 0
# and 1 (48 unpruned trials, 24 x 20 steps each, 2026-11-29)
LOSS = {-9.25: (1.501, 1.446), -8.75: (1.438, 1.316), -8.25: (1.308, 1.173), -7.75: (1.102, 0.917),
        -7.25: (0.817, 0.663), -6.75: (0.494, 0.279), -6.25: (0.331, 0.226), -5.75: (0.273, 0.14),
        -5.25: (0.205, 0.109), -4.75: (0.175, 0.124)}
LOSS_NOISE = 0.035


def multiplier(kind: str, warmup: int, k: int, total: int) -> float:
    """transformers' linear / cosine schedule with warmup: step k's share of the peak rate."""
    if k < warmup:
        return k / warmup
    progress = (k - warmup) / max(1, total - warmup)
    return max(0.0, 1 - progress) if kind.startswith("linear") else 0.5 * (1 + math.cos(math.pi * progress))


def effective_rate(params: dict[str, Any], step: int, total: int) -> float:
    """log of the trial's effective learning rate by `step`: its peak rate times the share of the
    warmup-0 linear schedule's area its own schedule has covered (-inf before any learning)."""
    area = sum(multiplier(params["lr_scheduler_type"], params["num_warmup_steps"], k, total) for k in range(step))
    probe_area = sum(multiplier("linear", 0, k, total) for k in range(step))
    return math.log(params["learning_rate"] * area / probe_area) if area > 0 else -math.inf


def eval_loss(params: dict[str, Any], step: int, total: int) -> float:
    """The surrogate's noiseless eval_loss at `step` (one of LOSS_STEPS)."""
    x = effective_rate(params, step, total)
    xs, losses = list(LOSS), [row[LOSS_STEPS.index(step)] for row in LOSS.values()]
    return float(np.interp(x, xs, losses))  # flat beyond the fitted range


def score(params: dict[str, Any], step: int, total: int) -> float:
    """The surrogate's noiseless json_fields at `step`."""
    x = effective_rate(params, step, total)
    xs = [math.log(lr) for lr in PROBE]
    column = [float(np.interp(step, (0, *PROBE_STEPS), (0.0, *scores))) for scores in PROBE.values()]
    if x < xs[0]:
        return column[0] * max(0.0, 1 - (xs[0] - x) / FADE)
    return float(np.interp(x, xs, column))


def simulate(config: Any, seed: int, noise: float, loss_noise: float) -> list[dict[str, Any]]:
    """One sweep of config.study.n_trials trials on the surrogate; bench 3's curve points. What each
    evaluation reports to the pruner is what a real trial reports (objective.prune_on): the metric
    where it is scored (every generate_every-th evaluation and the last), or the eval loss times
    the objective's pruner sign at every evaluation."""
    import optuna

    from lora_sweep.config import space as S
    from lora_sweep.sweep.search import make_pruner, make_sampler

    from lora_sweep.sweep.prior import apply_prior, informed_params

    objective = config.objective
    documented = S.build_space(config)
    space, prior = apply_prior(config, documented)  # study.lr_prior: as the sweep does it
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config, space),
                                pruner=make_pruner(config))
    defaults = S.default_params(config, documented)[0]
    if config.study.enqueue_defaults:
        study.enqueue_trial(defaults)
    if prior is not None:
        study.enqueue_trial(informed_params(config, documented, prior))
    rng = np.random.default_rng(seed)
    total, every = config.training.num_training_steps, config.training.eval_steps
    evals = list(range(every, total + 1, every))
    on_loss = objective.prunes_on == "eval_loss"
    if on_loss and any(step not in LOSS_STEPS for step in evals):
        raise SystemExit(f"the loss was fitted at steps {LOSS_STEPS}: evaluate there (training.eval_steps)")
    points, spent, best, chosen = [], 0, None, None
    for number in range(config.study.n_trials):
        trial = study.ask(space.distributions)
        params = {**defaults, **trial.params}
        offset, loss_offset, value, steps = rng.normal(0, noise), rng.normal(0, loss_noise), None, total
        for i, step in enumerate(evals, 1):
            metric = None
            if i % objective.generate_every == 0 or step == total:
                clean = score(params, step, total)
                metric = float(np.clip(round((clean + offset * (clean > 0.05) + rng.normal(0, noise / 2)) * 64) / 64,
                                       0, 1))
                value = metric if value is None else max(value, metric)  # a trial's value: its best evaluation
            heard = metric
            if on_loss:
                heard = objective.pruner_sign * (eval_loss(params, step, total) + loss_offset
                                                 + rng.normal(0, loss_noise / 2))
            if heard is not None:
                trial.report(heard, step)
            if step < total and trial.should_prune():  # the sweep never prunes at the last evaluation
                steps = step
                break
        pruned = steps < total
        study.tell(trial, None if pruned else value, state=optuna.trial.TrialState.PRUNED if pruned else None)
        if not pruned and (best is None or value > best):
            best, chosen = value, score(params, total, total)  # the noiseless score of the trial a user takes
        spent += steps
        points.append({"number": number, "state": "PRUNED" if pruned else "COMPLETE", "steps": spent, "best": best,
                       "chosen": chosen})
    return points


def fit(folder: Path) -> None:
    """Print LOSS and the loss noise fitted to bench 3's random sweeps in `folder` (their trials are
    never pruned and report the eval loss at every evaluation): the median eval_loss of the trials
    in each 0.5-wide bin of effective learning rate, and the residual sd around that curve."""
    import glob

    import optuna

    from lora_sweep.config import space as S

    config = B.load_demo()
    sign, defaults = config.objective.pruner_sign, S.default_params(config, S.build_space(config))[0]
    points: dict[int, list[tuple[float, float]]] = {step: [] for step in LOSS_STEPS}
    for db in sorted(glob.glob(str(folder / "random-s*.db"))):
        study = optuna.load_study(study_name=Path(db).stem, storage=f"sqlite:///{db}")
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            params = {**defaults, **trial.params}
            for step in LOSS_STEPS:
                if step in trial.intermediate_values:
                    points[step].append((effective_rate(params, step, LOSS_STEPS[-1]),
                                         trial.intermediate_values[step] / sign))
    if not points[LOSS_STEPS[0]]:
        raise SystemExit(f"no random-s*.db sweep with eval losses in {folder}")
    edges = np.arange(math.floor(min(x for x, _ in points[LOSS_STEPS[0]]) * 2) / 2,
                      max(x for x, _ in points[LOSS_STEPS[0]]) + 0.5, 0.5)
    table = {}
    for lo in edges:
        row = [statistics.median([loss for x, loss in points[step] if lo <= x < lo + 0.5] or [math.nan])
               for step in LOSS_STEPS]
        if not any(math.isnan(v) for v in row):
            table[round(float(lo) + 0.25, 2)] = tuple(round(v, 3) for v in row)
    residuals = [loss - float(np.interp(x, list(table), [r[i] for r in table.values()]))
                 for i, step in enumerate(LOSS_STEPS) for x, loss in points[step]]
    print(f"{len(points[LOSS_STEPS[0]])} trials; LOSS = {table}")
    print(f"residual sd {statistics.pstdev(residuals):.3f} (--loss-noise)")


def chosen_at(points: list[dict[str, Any]], budget: int) -> float:
    """The noiseless score of the trial an arm hands over once it has spent `budget` steps (0: none yet)."""
    return next((p["chosen"] for p in reversed(points) if p["steps"] <= budget and p["chosen"] is not None), 0.0)


def honest(args: argparse.Namespace) -> dict[str, Any]:
    """Bench 3's measure on the surrogate: random search (24 trials, its own seed stream) against the
    contender (its own n_trials), mean noiseless score of the trial handed over, per budget; and the
    two differences of the target with a bootstrap 95 % interval over seeds."""
    shared = [o for o in args.overrides if not o.startswith(("study.sampler", "study.pruner", "study.lr_prior",
                                                              "study.n_trials"))]
    contender = B.load_demo(args.overrides)
    steps = contender.training.num_training_steps
    rnd, mine = [], []
    for seed in range(args.seeds):
        rnd.append(simulate(B.load_demo([*shared, *arm_overrides("random", 1000 + seed), "study.n_trials=24"]), seed,
                            args.noise, args.loss_noise))
        mine.append(simulate(B.load_demo([*args.overrides, *arm_overrides("demo", seed)]), 10_000 + seed, args.noise,
                             args.loss_noise))
    table = {(arm, k): np.array([chosen_at(pts, k * steps) for pts in runs])
             for arm, runs in (("contender", mine), ("random", rnd)) for k in (4, 8, 12, 24)
             if arm == "random" or k <= contender.study.n_trials}
    rng = np.random.default_rng(0)

    def interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
        draws = [a[rng.integers(0, len(a), len(a))].mean() - b[rng.integers(0, len(b), len(b))].mean()
                 for _ in range(4000)]
        return float(a.mean() - b.mean()), *map(float, np.percentile(draws, [2.5, 97.5]))

    print(f"contender {args.overrides}; {args.seeds} seeds; noiseless score of the trial handed over, mean over seeds")
    print(B.table(["arm", "budget (trials' worth)", "mean", "median"],
                  [[a, k, float(v.mean()), float(np.median(v))] for (a, k), v in table.items()]))
    out = {}
    for name, a, b in (("a", ("contender", 8), ("random", 8)), ("b", ("contender", 8), ("random", 24))):
        if a in table:
            out[name] = interval(table[a], table[b])
            print(f"({name}) {a[0]}@{a[1]} - {b[0]}@{b[1]}: {out[name][0]:+.3f} (95 % {out[name][1]:+.3f} .. "
                  f"{out[name][2]:+.3f})")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import optuna

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="`key.sub=value` changes to sweeps/demo.yaml for both arms; "
                   "study.sampler / study.pruner / study.lr_prior ones are the contender's")
    p.add_argument("--seeds", type=int, default=60, help="sampler seeds 0..N-1 (default: %(default)s)")
    p.add_argument("--noise", type=float, default=0.07, help="sd of a trial's offset (default: %(default)s)")
    p.add_argument("--loss-noise", type=float, default=LOSS_NOISE,
                   help="sd of a trial's eval-loss offset (default: %(default)s, fitted)")
    p.add_argument("--fit", type=Path, default=None, metavar="DIR",
                   help="print LOSS fitted to bench 3's random sweeps in DIR (its workdir's sweeps/) and exit")
    p.add_argument("--honest", action="store_true",
                   help="bench 3's measure instead: the noiseless score of the trial each arm would hand the user "
                        "(its best by the noisy value) at 4, 8, 12 trials' worth of steps, and random search's at 24")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.fit is not None:
        fit(args.fit)
        return {}
    if args.honest:
        return honest(args)
    shared = [o for o in args.overrides if not o.startswith(("study.sampler", "study.pruner", "study.lr_prior"))]
    contender = B.load_demo(args.overrides)
    if contender.training.num_training_steps != PROBE_STEPS[-1]:
        raise SystemExit(f"the probe was recorded for {PROBE_STEPS[-1]} training steps a trial")
    ratios, bests = [], []
    for seed in range(args.seeds):
        rnd = simulate(B.load_demo([*shared, *arm_overrides("random", seed)]), seed, args.noise, args.loss_noise)
        demo = simulate(B.load_demo([*args.overrides, *arm_overrides("demo", seed)]), seed, args.noise,
                        args.loss_noise)
        target = rnd[-1]["best"]
        bests.append(target)
        ratios.append(steps_to_reach(demo, target, True) / steps_to_reach(rnd, target, True))
    triples = [statistics.median(ratios[i:i + 3]) for i in range(0, len(ratios) - 2, 3)]
    out = {"median": statistics.median(ratios), "share_met": float(np.mean([r <= TARGET for r in ratios])),
           "never": sum(math.isinf(r) for r in ratios), "triples_met": float(np.mean([m <= TARGET for m in triples])),
           "random_best": statistics.median(bests)}
    s, pr = contender.study.sampler, contender.study.pruner
    print(f"contender: sampler {s.type} {s.options}, pruner {pr.type} {pr.options}, "
          f"on {'eval_loss' if contender.objective.prunes_on == 'eval_loss' else 'the metric'}, evaluated every {contender.training.eval_steps} steps; "
          f"{args.seeds} seeds, {contender.study.n_trials} trials, noise {args.noise}, loss noise {args.loss_noise}")
    print(B.table(["median ratio", f"seeds <= {TARGET:g}", "seeds never reaching R",
                   f"3-seed medians <= {TARGET:g}", "random best (median)"],
                  [[out["median"], out["share_met"], f"{out['never']}/{args.seeds}", out["triples_met"],
                    out["random_best"]]]))
    return out


if __name__ == "__main__":
    main()
