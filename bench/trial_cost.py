"""Benchmark 2: the fixed cost of a trial: where a trial's wall time goes besides training.

Runs real trials of the demo study through the sweep's own path (`lora_sweep.sweep.run_sweep`:
optuna trial, job.yaml, the job started by study.launcher, events, result), with the pruner off so
every trial runs its whole budget, one study per launcher (`--launchers`, default accelerate then
warm: the baseline, then the default), each in a folder of its own. Each completed trial's wall time, from the
end of the previous trial (the first: its own start) to its completion in the study DB, is cut
at timestamps that already exist:

    trial start (DB) -> job.yaml written (launch) -> job's run() starts -> `start` event
    -> `train` / `eval` / `checkpoint` events -> `done` event -> trial complete (DB)

run() start = `start` event - timings_s.data - timings_s.model_load (result.json). Steps: the
gap before each `train` event; step 1's gap also holds Trainer set-up and the first step's
one-time costs, so it counts as one median step plus "trainer set-up + step-1 warm-up".
Evaluations: timings_s.eval (the job's own eval_runtime + generation seconds); the rest of the
gaps before `eval` events is the adapter save and the predictions file. Fixed cost is all but
training steps and evaluations. The baseline = a plain trial's training steps + evaluations.

    python bench/trial_cost.py                          # 3 demo trials per launcher (SmolLM2, 20 steps each)
    python bench/trial_cost.py --storage sqlite:///studies/demo.db --study demo   # analyse a study that ran
    python bench/trial_cost.py --smoke --results /tmp/r.md
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import benchlib as B

TARGET_S = 2.0  # issue 12: from 7.6 s (accelerate launch) to <= 2 s
FIXED = ["parent: sample + set up trial", "launch + imports", "data load", "model load",
         "trainer set-up + step-1 warm-up", "adapter save + predictions (est.)", "checkpoint saves",
         "end of job (result)", "exit + parent bookkeeping", "other"]
USEFUL = ["training steps", "evaluations"]
SHRINK = {
    "parent: sample + set up trial": "the sampler's suggest (TPE) and the trial's rows in the study DB",
    "launch + imports": "accelerate: two fresh interpreters per trial (the launcher, then the job importing "
                        "torch, transformers, peft); direct: one; warm: a fork of the runner that imported them",
    "data load": "tokenizer load, the cache key (it serialises and hashes the whole tokenizer) and the cache "
                 "read: hand the job the cache file the sweep already built",
    "model load": "from_pretrained + get_peft_model every trial: a warm worker could keep the base weights "
                  "(shared copy-on-write) and add a fresh LoRA per trial",
    "trainer set-up + step-1 warm-up": "Trainer construction and the first step's one-time costs",
    "adapter save + predictions (est.)": "the adapter and predictions.jsonl written at every improving evaluation",
    "checkpoint saves": "Trainer checkpoints (adapter, optimizer, scheduler, RNG) at every save_steps and at "
                        "the end: a sweep keeps the best adapter apart, so it could skip them",
    "end of job (result)": "assembling and writing result.json",
    "exit + parent bookkeeping": "the job's exit (an interpreter's, or a forked child's), the parent seeing it "
                                 "(it waits on the process), reading the result, the trial's one DB write, the "
                                 "artifact upload",
    "other": "gaps before warning events, rounding of the timestamps",
}


def stamp(value: datetime) -> float:
    return value.timestamp()  # optuna stores naive local times; the same clock as time.time()


def breakdown(trial: Any, previous_end: float | None) -> dict[str, float] | None:
    """A completed trial's wall time cut into FIXED + USEFUL parts (seconds); None without its files."""
    from lora_sweep.events import read_events

    folder = Path(trial.user_attrs.get("trial_dir", ""))
    if not (folder / "result.json").is_file() or not (folder / "job.yaml").is_file():
        return None
    result = json.loads((folder / "result.json").read_text())
    timings = result["timings_s"]
    events = read_events(folder / "events.jsonl")
    launched = (folder / "job.yaml").stat().st_mtime
    begin = previous_end if previous_end is not None else stamp(trial.datetime_start)
    end = stamp(trial.datetime_complete)
    start = next(e for e in events if e["event"] == "start")
    done = next(e for e in events if e["event"] == "done")
    job_started = start["time"] - timings["data"] - timings["model_load"]

    parts = dict.fromkeys(FIXED + USEFUL, 0.0)
    parts["parent: sample + set up trial"] = launched - begin
    parts["launch + imports"] = job_started - launched
    parts["data load"] = timings["data"]
    parts["model load"] = timings["model_load"]
    gaps: dict[str, list[float]] = {"train": [], "eval": [], "checkpoint": []}
    previous = start
    first_step = None
    for event in events[events.index(start) + 1:]:
        gap = event["time"] - previous["time"]
        if event["event"] == "train" and first_step is None:
            first_step = gap
        elif event["event"] in gaps:
            gaps[event["event"]].append(gap)
        elif event["event"] == "done":
            parts["end of job (result)"] = gap
        else:
            parts["other"] += gap  # warning events
        previous = event
        if event is done:
            break
    step = B.median(gaps["train"]) if gaps["train"] else (first_step or 0.0)
    parts["training steps"] = sum(gaps["train"]) + min(step, first_step or 0.0)
    parts["trainer set-up + step-1 warm-up"] = (first_step or 0.0) - min(step, first_step or 0.0)
    parts["evaluations"] = timings["eval"]
    parts["adapter save + predictions (est.)"] = sum(gaps["eval"]) - timings["eval"]
    parts["checkpoint saves"] = sum(gaps["checkpoint"])
    parts["exit + parent bookkeeping"] = end - done["time"]
    parts["wall"] = end - begin
    parts["other"] += parts["wall"] - sum(parts[k] for k in FIXED + USEFUL)  # rounding of the stamps
    parts["steps"] = result["steps_run"]
    parts["tokenized here"] = float("tokenized data cached in" in (folder / "train.log").read_text(errors="replace"))
    return parts


def analyse(study: Any) -> list[dict[str, float]]:
    """The breakdown of each completed trial, in order. A trial's wall time starts at the last end of
    another trial before its own start (the end that freed its slot: with trials in parallel, not
    the end of the trial started before it), else at its own start."""
    from optuna.trial import TrialState

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.datetime_start or datetime.max)
    ends = sorted(stamp(t.datetime_complete) for t in trials if t.datetime_complete is not None)
    out = []
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            own = stamp(trial.datetime_start)
            parts = breakdown(trial, max((e for e in ends if e <= own), default=None))
            if parts is not None:
                parts["number"] = trial.number
                out.append(parts)
    return out


def run_study(args: Any, work: Path, launcher: str, once: dict[str, float]) -> tuple[Any, str]:
    """A fresh study of args.trials demo trials started by `launcher`; what ran before its first trial
    goes into `once`."""
    from lora_sweep.sweep.loop import run_sweep

    name = f"trial-cost-{launcher}"
    shutil.rmtree(work / name, ignore_errors=True)  # a fresh study, never a resumed one
    (work / f"{name}.db").unlink(missing_ok=True)
    overrides = [f"study.dir={work}", f"study.name={name}", f"study.n_trials={args.trials}",
                 f"study.launcher={launcher}", "study.timeout=null", "study.pruner={type: none, options: {}}",
                 "study.parallel=1",  # one trial at a time: the demo's two at once would share the runner's start
                 f"objective.baseline={str(args.baseline).lower()}", *B.budget_overrides(args.steps)]
    overrides += B.model_overrides(args.smoke, B.demo_model(args, work))
    config = B.load_demo(overrides)
    began = time.time()
    study, stopped, _ = run_sweep(config)
    if stopped:
        raise SystemExit(f"the sweep stopped: {stopped}")
    first = min(stamp(t.datetime_start) for t in study.get_trials(deepcopy=False))
    label = (f"{launcher}: before the first trial (the study's one tokenization, its DB"
             + (", the base-model evaluation" if args.baseline else "")
             + (", the warm runner's imports)" if launcher == "warm" else ")"))
    once[label] = first - began
    return study, f"{config.training.num_training_steps} steps"


def report(trials: list[dict[str, float]], setup: str) -> tuple[float, float]:
    """Print one study's breakdown; its median fixed cost (s) and fixed share of a trial's wall time."""
    names = FIXED + USEFUL
    rows = [[name] + [t[name] for t in trials] + [B.median([t[name] for t in trials])] for name in names]
    fixed = [sum(t[k] for k in FIXED) for t in trials]
    useful = [sum(t[k] for k in USEFUL) for t in trials]
    walls = [t["wall"] for t in trials]
    rows += [["= fixed cost"] + fixed + [B.median(fixed)], ["= training + evaluations"] + useful + [B.median(useful)],
             ["= trial wall time"] + walls + [B.median(walls)]]
    print(f"\nseconds per completed trial ({setup}); wall = the last other trial's end before its start (else its "
          f"own start) -> trial complete")
    print(B.table(["part"] + [f"trial {t['number']}" for t in trials] + ["median"], rows))
    return B.median(fixed), B.median([f / w for f, w in zip(fixed, walls)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = B.parser(__doc__)
    p.add_argument("--trials", type=int, default=3, help="demo trials per launcher (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="training steps per trial (default: the demo's, 20)")
    p.add_argument("--launchers", default="accelerate,warm",
                   help="study.launcher of each study, in turn; the last one is held to the target, the first "
                   "is the baseline of the ratio (default: %(default)s)")
    p.add_argument("--baseline", action="store_true",
                   help="also evaluate the base model once, as the demo does (a once-per-study cost)")
    p.add_argument("--storage", default=None, help="analyse this existing study's completed trials instead")
    p.add_argument("--study", default="demo", help="its name, with --storage (default: %(default)s)")
    args = p.parse_args(argv)

    import optuna

    B.quiet()
    B.sweep_logging()
    once: dict[str, float] = {}
    launchers = [args.study] if args.storage else args.launchers.split(",")
    by_launcher: dict[str, list[dict[str, float]]] = {}
    with B.workdir(args.workdir) as work:
        for launcher in launchers:
            if args.storage:
                study, budget = optuna.load_study(study_name=args.study, storage=args.storage), "as it ran"
            else:
                study, budget = run_study(args, work, launcher, once)
            by_launcher[launcher] = analyse(study)
            if not by_launcher[launcher]:
                raise SystemExit(f"{launcher}: no completed trial with its events and result.json to analyse")
    setup = (f"existing study {args.study}" if args.storage else
             f"{B.model_label(args)} demo, {args.trials} trials x {budget} per launcher ({', '.join(launchers)}), "
             "pruner off")
    fixed_by: dict[str, float] = {}
    for launcher, trials in by_launcher.items():
        fixed_by[launcher], share = report(trials, f"{setup}; study.launcher: {launcher}")
    for what, seconds in once.items():
        print(f"once per study, {what}: {seconds:.1f} s")
    measured = launchers[-1]
    trials, fixed_s = by_launcher[measured], fixed_by[measured]
    tokenized = int(sum(t["tokenized here"] for ts in by_launcher.values() for t in ts))
    print(f"trials that tokenized the data themselves: {tokenized} "
          f"({'none: every trial read the study cache' if not tokenized else 'SHOULD BE NONE'})")
    ranked = sorted(FIXED, key=lambda k: -B.median([t[k] for t in trials]))
    print(f"\nwhat dominates the fixed cost ({measured}), and what would shrink it:")
    for name in ranked[:3]:
        median = B.median([t[name] for t in trials])
        print(f"  {name}: {median:.2f} s ({median / fixed_s:.0%}) - {SHRINK[name]}")
    ratio = fixed_s / fixed_by[launchers[0]]
    figures = ("; ".join(f"{name} fixed {fixed_by[name]:.2f} s/trial" for name in launchers)
               + f" ({share:.1%} of {B.median([t['wall'] for t in trials]):.1f} s); top ({measured}): "
               + ", ".join(f"{n} {B.median([t[n] for t in trials]):.2f} s" for n in ranked[:3])
               + f"; tokenized in trials: {tokenized}")
    met = fixed_s <= TARGET_S and tokenized == 0
    row = B.conclude("2 trial fixed cost", args, setup, figures, ratio,
                     f"{measured}/{launchers[0]} fixed s per trial",
                     f"fixed <= {TARGET_S:g} s per trial ({measured}), no per-trial tokenizing", met)
    return {"ratio": ratio, "fixed_s": fixed_s, "fixed_by": fixed_by, "share": share, "trials": trials,
            "by_launcher": by_launcher, "tokenized": tokenized, "once": once, "row": row}


if __name__ == "__main__":
    main()
