"""Benchmark 3: the adapter each search hands the user, scored honestly, per training step spent.

For each task and sampler seed, real sweeps (trials launched as jobs) of four arms, with the same
model, data, search space and steps per trial:
* default: what `run` does with no study.sampler or study.pruner given (seed S);
* random: random search without pruning, on its own seed stream (1000 + S): the arms share no draws;
* hf: `Trainer.hyperparameter_search(backend="optuna")` as a transformers user writes it (bench 7's
  `run_hf_search`: optuna's defaults, seed 2000 + S), in this process;
* defaults: the documented defaults alone (trial 0 of the random sweep: one and the same run in
  every sweep, training.seed is fixed).

Every trial is chosen on a validation set; the score of an arm at a budget is the test score of the
adapter it would hand the user then: of the trials that fit in the budget (training steps, in trial
number order; a pruned trial counts the steps it ran), the complete one with the best validation
value, its kept adapter (hf: its last checkpoint) scored once on a test set of at least 64 prompts
by a launched job. Budgets: 4, 8, 12 and 24 trials' worth of steps (random: 24 trials serve every
budget as prefixes; default 12; hf 8).

Per arm and budget: the mean and median over seeds and a bootstrap 95 % interval over seeds and
prompts (seeds resampled per arm, prompts resampled alike for both sides of a difference). Target,
per task: (a) default at 8 beats random at 8 (the interval of default - random lies above zero);
(b) default at 8 reaches random at 24 (the interval of default@8 - random@24 includes zero or lies
above it). The plot (score vs budget, per arm) is search_quality.html next to --results.

`--stop-when` replays `study.stop_when: converged` (lora_sweep's own `converged`, the study's patience)
on every default and random sweep: the trials it would have run, and the test score of what it would
have handed over then minus the score of what the sweep handed over at its end.

Tasks: `demo` (sweeps/demo.yaml; trials chosen on demo/test.json's 16 scored prompts, the adapters
scored on 128 more tickets from demo/make_data.py --holdout) and `sentiment`
(bench/tasks/sentiment: a word's sentiment in four words, from the VADER lexicon; chosen on 64
validation words, scored on 256 test words).

    python bench/search_quality.py --task sentiment --workdir studies/bench3          # 5 seeds
    python bench/search_quality.py --task demo --seeds 0,1 --arms default,random --workdir studies/bench3
    python bench/search_quality.py --smoke --results /tmp/r.md
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import benchlib as B
import numpy as np
from optuna.trial import TrialState
from sweep_efficiency import trial_steps

BUDGETS = (4, 8, 12, 24)
TRIALS = {"random": 24, "default": 12, "hf": 8}
SEED_STREAM = {"default": 0, "random": 1000, "hf": 2000}
TASKS = {"demo": B.DEMO_YAML, "sentiment": B.REPO / "bench" / "tasks" / "sentiment" / "study.yaml"}
HOLDOUT = 128  # the demo's extra tickets for the test score


def task_overrides(task: str, work: Path, smoke: bool) -> list[str]:
    """The task's data with a validation set (trials choose on it) and a test set of >= 64 prompts."""
    if task == "sentiment":
        folder = B.REPO / "bench" / "tasks" / "sentiment"
        return [f"data.dataset={folder}", f"data.validation_file={folder / 'validation.json'}"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_data", B.DEMO_DATA / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    data = work / "demo-data"
    make_data.write(data, 0, 400, 48, HOLDOUT)  # train.json and test.json: the demo's own bytes
    return ["data.dataset=null", f"data.train_file={data / 'train.json'}", f"data.validation_file={data / 'test.json'}",
            f"data.test_file={data / 'holdout.json'}"]


def arm_config(task: str, arm: str, seed: int, args: Any, work: Path, model: str | None) -> Any:
    """The task's study as one arm of one seed."""
    from lora_sweep.config.study import load_study

    stream = SEED_STREAM.get(arm, 0) + seed
    sampler = {"random": f"study.sampler={{type: random, seed: {stream}, options: {{}}}}",
               # optuna's own TPE, as a transformers user gets it, whatever lora_sweep's defaults are
               "hf": f"study.sampler={{type: tpe, seed: {stream}, options: {{n_startup_trials: 10, multivariate: null}}}}",
               }.get(arm, f"study.sampler={{seed: {stream}}}")  # the default sampler: nothing but the seed given
    pruner = ("study.pruner={type: none, options: {}}", "study.lr_prior=false") if arm == "random" else ("study.pruner={}",)
    trials = args.trials.get(arm, 1)
    label = args.label if arm == "default" else arm
    overrides = [*task_overrides(task, work, args.smoke), f"study.dir={work / 'sweeps'}",
                 f"study.name={task}-{label}-s{seed}", f"study.n_trials={trials}", "study.timeout=null",
                 "objective.baseline=false", "study.test_scores=false", sampler, *pruner, *B.budget_overrides(args.steps)]
    overrides += args.set if arm == "default" else []
    if args.smoke:
        overrides += B.smoke_overrides(model) + ["data.test_nsamples=2"]
    elif model:
        overrides.append(f"model.name_or_path={model}")
    return load_study(TASKS[task], overrides)


def run_arm(task: str, arm: str, seed: int, args: Any, work: Path, model: str | None) -> dict[str, Any]:
    """One arm's sweep (kept and finished when it is in --workdir already); its trials in number order."""
    config = arm_config(task, arm, seed, args, work, model)
    if arm == "hf":
        from peer_search import hf_search

        folder = work / "sweeps" / task
        folder.mkdir(parents=True, exist_ok=True)
        study = hf_search(config, SEED_STREAM["hf"] + seed, config.study.n_trials, folder)
        chosen = {t.number: last_checkpoint(folder / f"hf-s{SEED_STREAM['hf'] + seed}" / "checkpoints" / f"run-{t.number}")
                  for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE}
    else:
        from lora_sweep.sweep.loop import run_sweep

        study, stopped, _ = run_sweep(config)
        if stopped:
            raise SystemExit(f"sweep {config.study.name} stopped: {stopped}")
        chosen = {t.number: t.user_attrs.get("adapter_path") for t in study.get_trials(deepcopy=False)
                  if t.state == TrialState.COMPLETE}
    maximize = config.objective.direction == "maximize"
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    return {"task": task, "arm": arm, "seed": seed, "config": config, "steps": spent_steps(trials),
            "trials": trials, "adapters": chosen, "maximize": maximize,
            "steps_per_trial": config.training.num_training_steps}


def last_checkpoint(run: Path) -> str | None:
    """The Trainer's last checkpoint of a trial: the model a user of its search takes away."""
    found = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return str(found[-1]) if found else None


def spent_steps(trials: dict[int, Any]) -> dict[int, int]:
    """The training steps each finished trial spent (a pruned one: until it was stopped), in number
    order, read once. A failed trial costs nothing here: every failure in these sweeps is the bench's
    own (a sweep stopped and resumed), and its params ran again as a later trial."""
    return {n: trial_steps(t) for n, t in sorted(trials.items())
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}


def chosen_at(arm: dict[str, Any], budget_steps: int) -> int | None:
    """The trial an arm hands the user once it has spent `budget_steps` training steps: the best
    complete one (by the validation value; the earliest of a tie) among the trials that fit, in
    number order (`spent_steps`)."""
    best, best_value, spent = None, None, 0
    for number, steps in arm["steps"].items():
        spent += steps
        if spent > budget_steps:
            break
        trial = arm["trials"][number]
        if trial.state != TrialState.COMPLETE or trial.value is None or not arm["adapters"].get(number):
            continue
        better = best_value is None or (trial.value > best_value if arm["maximize"] else trial.value < best_value)
        if better:
            best, best_value = number, trial.value
    return best


def stopped_at(arm: dict[str, Any]) -> tuple[int, int | None]:
    """Where `study.stop_when: converged` (its patience and noise test, lora_sweep's own `converged`)
    would have stopped this sweep: the finished trials it would have run, and the trial it would hand
    over then (the best on validation among them, as `chosen_at`)."""
    from lora_sweep.sweep.search import converged

    config = arm["config"].model_copy(deep=True)
    config.study.stop_when = "converged"
    finished = [arm["trials"][n] for n in arm["steps"]]
    for k in range(1, len(finished) + 1):
        if converged(config, finished[:k], arm["steps_per_trial"]):
            break
    return k, chosen_at(arm, sum(list(arm["steps"].values())[:k]))


def test_scores(arm: dict[str, Any], number: int, work: Path, n_prompts: int) -> list[float]:
    """The per-prompt test scores of one trial's kept adapter: a launched job, once (kept in --workdir)."""
    from lora_sweep.config.space import build_space
    from lora_sweep.sweep.holdout import score_on_test
    from lora_sweep.sweep.records import sample_scores

    out = work / "scores" / f"{arm['config'].study.name}-trial-{number}.json"
    if out.is_file():
        return json.loads(out.read_text())
    config = arm["config"].model_copy(deep=True)
    config.study.name = f"{config.study.name}-test"  # its own folder: the sweep's own test scores stay
    config.data.test_nsamples = n_prompts
    trial = arm["trials"][number]
    scored = score_on_test(config, build_space(config), SimpleNamespace(
        number=number, params=trial.params, user_attrs={"adapter_path": arm["adapters"][number]}), None)
    scores = sample_scores(scored["predictions_path"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(scores))
    return scores


def bootstrap(a: list[list[float]], b: list[list[float]] | None = None, n: int = 4000, seed: int = 0
              ) -> tuple[float, float, float]:
    """(mean, low, high) of the mean test score over seeds and prompts of `a` (minus `b`'s, when
    given): seeds resampled with replacement per side, prompts resampled alike for both sides."""
    rng = np.random.default_rng(seed)
    A = np.asarray(a, dtype=np.float64)
    Bm = np.asarray(b, dtype=np.float64) if b is not None else None
    n_prompts = A.shape[1]

    def value(sa: np.ndarray, sb: np.ndarray | None, prompts: np.ndarray) -> float:
        mean = A[sa][:, prompts].mean()
        return mean - Bm[sb][:, prompts].mean() if Bm is not None else mean

    every = np.arange(n_prompts)
    point = value(np.arange(len(A)), np.arange(len(Bm)) if Bm is not None else None, every)
    draws = [value(rng.integers(0, len(A), len(A)), rng.integers(0, len(Bm), len(Bm)) if Bm is not None else None,
                   rng.integers(0, n_prompts, n_prompts)) for _ in range(n)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(point), float(low), float(high)


def verdict(low: float, high: float) -> str:
    return "above zero" if low > 0 else ("below zero" if high < 0 else "includes zero")


def shown(d: tuple[float, float, float]) -> str:
    """A difference as printed: `+0.036 (95 % -0.011 .. +0.088, includes zero)`."""
    return f"{d[0]:+.3f} (95 % {d[1]:+.3f} .. {d[2]:+.3f}, {verdict(d[1], d[2])})"


def plot(curves: dict[str, dict[int, tuple[float, float, float]]], path: Path, title: str, metric: str,
         inline: bool) -> None:
    """Mean test score vs budget (trials' worth of steps), one line per arm, 95 % intervals as bars."""
    import plotly.graph_objects as go

    colours = {"default": "#1f77b4", "random": "#7f7f7f", "hf": "#d62728", "defaults": "#2ca02c"}
    fig = go.Figure()
    for arm, points in curves.items():
        xs = sorted(points)
        fig.add_trace(go.Scatter(
            x=xs, y=[points[x][0] for x in xs], name=arm, mode="lines+markers", line={"color": colours[arm]},
            error_y={"type": "data", "symmetric": False, "array": [points[x][2] - points[x][0] for x in xs],
                     "arrayminus": [points[x][0] - points[x][1] for x in xs]}))
    fig.update_layout(title=title, xaxis_title="budget (trials' worth of training steps)",
                      yaxis_title=f"test {metric} of the chosen adapter", template="plotly_white")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True if inline else "cdn")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = B.parser(__doc__)
    p.add_argument("--task", choices=sorted(TASKS), default="sentiment")
    p.add_argument("--seeds", default="0,1,2,3,4", help="sampler seeds, comma-separated (default: %(default)s)")
    p.add_argument("--arms", default="default,random,hf,defaults", help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="training steps per trial (default: the task's)")
    p.add_argument("--prompts", type=int, default=None, help="test prompts scored (default: all; >= 64)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the default arm (a lever under test: study.lr_prior=true); give --label too")
    p.add_argument("--label", default="default", help="the default arm's study name with --set (default: %(default)s)")
    p.add_argument("--trials", action="append", default=[], metavar="ARM=N",
                   help="finished trials of an arm's sweeps (default: random=24, default=12, hf=8)")
    p.add_argument("--stop-when", action="store_true",
                   help="also replay study.stop_when: converged on each sweep: trials saved, test score lost")
    p.add_argument("--fresh", action="store_true", help="delete this task's sweeps in --workdir first")
    p.add_argument("--plot", type=Path, default=None, help="default: search_quality.html next to --results")
    p.add_argument("--plotlyjs", choices=["inline", "cdn"], default="inline")
    args = p.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.trials = {**TRIALS, **{k: int(v) for k, v in (t.split("=", 1) for t in args.trials)}}
    budgets = BUDGETS
    if args.smoke:
        seeds, args.trials, budgets = seeds[:1], {"random": 2, "default": 2, "hf": 1}, (1, 2)
    prompts = args.prompts or (2 if args.smoke else 100000)

    B.quiet()
    B.sweep_logging()
    with B.workdir(args.workdir) as work:
        if args.fresh:
            shutil.rmtree(work / "sweeps", ignore_errors=True)
            shutil.rmtree(work / "scores", ignore_errors=True)
        model = B.demo_model(args, work)
        runs = {}
        for seed in seeds:
            for arm in (a for a in arms if a != "defaults"):
                runs[(arm, seed)] = run_arm(args.task, arm, seed, args, work, model)
        if "defaults" in arms:  # trial 0 of any lora_sweep arm: the documented defaults, one and the same run
            source = next(r for (arm, _), r in runs.items() if arm in ("random", "default"))
            runs[("defaults", seeds[0])] = {**source, "arm": "defaults"}
        first = next(iter(runs.values()))
        metric, steps = first["config"].objective.metric, first["steps_per_trial"]

        scores: dict[tuple[str, int], list[list[float]]] = {}
        chosen: dict[tuple[str, int, int], int | None] = {}
        for (arm, seed), run in runs.items():
            for k in budgets:
                if arm == "defaults":
                    number = 0
                elif k > args.trials.get(arm, 0):
                    continue
                else:
                    number = chosen_at(run, k * steps)
                chosen[(arm, seed, k)] = number
                if number is not None:
                    scores.setdefault((arm, k), []).append(test_scores(run, number, work, prompts))
        stops = {}
        if args.stop_when:  # each sweep stopped where `converged` says, against the same sweep run to its end
            for (arm, seed), run in runs.items():
                if arm in ("default", "random"):
                    k, number = stopped_at(run)
                    full = chosen_at(run, len(run["steps"]) * steps)
                    stops[(arm, seed)] = (k, len(run["steps"]), test_scores(run, number, work, prompts),
                                          test_scores(run, full, work, prompts))
        (work / f"search_quality-{args.task}.json").write_text(json.dumps(
            {f"{a} s{s} @{k}": n for (a, s, k), n in chosen.items()}, indent=1))

    n_prompts = len(next(iter(scores.values()))[0])
    curves: dict[str, dict[int, tuple[float, float, float]]] = {}
    rows = []
    for (arm, k), per_seed in sorted(scores.items(), key=lambda kv: (arms.index(kv[0][0]), kv[0][1])):
        mean, low, high = bootstrap(per_seed)
        median = float(np.median([np.mean(s) for s in per_seed]))
        curves.setdefault(arm, {})[k] = (mean, low, high)
        picked = [chosen[(arm, s, k)] for s in seeds if (arm, s, k) in chosen]
        rows.append([arm, k, len(per_seed), B.num(mean), B.num(median), f"{B.num(low)} .. {B.num(high)}",
                     ", ".join("-" if n is None else str(n) for n in picked)])
    print(f"task {args.task}: test {metric} of the adapter each arm would hand the user, {n_prompts} test prompts, "
          f"{steps} steps per trial; budget = trials' worth of training steps")
    print(B.table(["arm", "budget", "seeds", "mean", "median", "95 % interval (seeds x prompts)", "trial chosen per seed"],
                  rows))

    def diff(a: tuple[str, int], b: tuple[str, int]) -> tuple[float, float, float] | None:
        return bootstrap(scores[a], scores[b]) if a in scores and b in scores else None

    small, large = budgets[1], budgets[-1]
    a = diff(("default", small), ("random", small))
    b = diff(("default", small), ("random", large))
    lines = []
    for what, d, met in ((f"(a) default@{small} - random@{small}", a, a is not None and a[1] > 0),
                         (f"(b) default@{small} - random@{large}", b, b is not None and b[2] >= 0)):
        if d is None:
            lines.append(f"{what}: not measured")
            continue
        lines.append(f"{what}: {shown(d)}: {'met' if met else 'NOT met'}")
    # the same difference at every other budget both arms reach, and against the Trainer's search at each
    for other, k in [("random", k) for k in budgets if k != small] + [("hf", k) for k in budgets]:
        d = diff(("default", k), (other, k))
        if d:
            lines.append(f"default@{k} - {other}@{k}: {shown(d)}")
    for arm in ("default", "random"):
        replays = [v for (a, _), v in sorted(stops.items()) if a == arm]
        if replays:
            d = bootstrap([r[2] for r in replays], [r[3] for r in replays])
            lines.append(f"stop_when converged, {arm}: ran {sum(r[0] for r in replays)} of {sum(r[1] for r in replays)} "
                         f"trials ({', '.join(f'{r[0]}/{r[1]}' for r in replays)} per seed); test score stopped - run "
                         f"to the end {shown(d)}")
    print("\n".join(lines))
    plot_path = args.plot or Path(args.results).parent / "search_quality.html"
    plot(curves, plot_path, f"{args.task}: test {metric} of the chosen adapter vs budget", metric,
         args.plotlyjs == "inline")
    print(f"plot: {plot_path}")
    figures = "; ".join(f"{r[0]}@{r[1]} {r[3]} ({r[5]})" for r in rows) + "; " + "; ".join(lines)
    setup = (f"{B.model_label(args)} {args.task}, seeds {','.join(map(str, seeds))}, {steps} steps per trial, "
             f"{n_prompts} test prompts, arms {','.join(arms)}"
             + (f"; the default arm ({args.label}) with {' '.join(args.set)}" if args.set else ""))
    met = None if a is None or b is None else (a[1] > 0 and b[2] >= 0)
    ratio = a[0] if a else math.nan
    row = B.conclude("3 search quality", args, setup, figures, ratio, f"default@{small} - random@{small}, test {metric}",
                     "(a) interval above zero and (b) default@8 - random@24 interval includes or is above zero", met)
    return {"scores": scores, "chosen": chosen, "rows": rows, "a": a, "b": b, "plot": plot_path, "row": row}


if __name__ == "__main__":
    main()
