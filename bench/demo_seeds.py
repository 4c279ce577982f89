"""Benchmark 8: the demo as a user runs it, once per sampler seed.

For each seed S, `python -m lora_sweep run sweeps/demo.yaml study.sampler.seed=S` runs in its own
process (the study and its trials go to --workdir), timed from its start to its exit, as `make demo`
runs it. Read back from the study's database: the trials that finished (complete, pruned), the best
json_fields, the base model's and the documented defaults' scores. A seed passes when all of the
demo's trials (study.n_trials, 12) finished, the run took at most 10 minutes and its best reached
0.6. Target (issue 12): at least 4 of 5 seeds. This measures wall time: run it on a quiet machine
(the 1-minute load average at each seed's start is printed beside it).

    python bench/demo_seeds.py                               # seeds 0-4, about 50 minutes
    python bench/demo_seeds.py --seeds 1,2 --workdir studies/bench-demo   # kept; a finished seed is not run again
    python bench/demo_seeds.py --smoke --results /tmp/r.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib as B
from sweep_efficiency import DEMO_BEST

WALL_S = 600  # "in its 10 minutes"
SHARE = 0.8  # 4 of 5 seeds


def run_seed(seed: int, work: Path, extra: list[str]) -> dict[str, Any]:
    """One demo run (or its record from an earlier run in the same --workdir): what it reached."""
    import optuna

    from lora_sweep.sweep.records import defaults_trial
    from lora_sweep.sweep.storage import best_trial

    record = work / f"demo-s{seed}.json"
    if record.is_file():
        return json.loads(record.read_text())
    overrides = [f"study.dir={work}", f"study.name=demo-s{seed}", f"study.sampler.seed={seed}", *extra]
    config = B.load_demo(overrides)
    load = os.getloadavg()[0]
    start = time.monotonic()
    with open(work / f"demo-s{seed}.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "lora_sweep", "run", str(B.DEMO_YAML), *B.demo_overrides(),
                               *overrides],
                              cwd=B.REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: the demo exited with {done.returncode}; see {work / f'demo-s{seed}.log'}")
    study = optuna.load_study(study_name=config.study.name, storage=config.storage_url)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    best, defaults = best_trial(study), defaults_trial(study)
    result = {
        "seed": seed, "wall_s": wall, "load": load, "n_trials": config.study.n_trials,
        "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
        "best": best.value, "best_trial": best.number,
        "base": study.user_attrs.get("baseline", {}).get(config.objective.key),
        "defaults": defaults.value if defaults else None,
    }
    result["passed"] = (result["complete"] + result["pruned"] >= result["n_trials"] and wall <= WALL_S
                        and result["best"] >= DEMO_BEST)
    record.write_text(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = B.parser(__doc__)
    p.add_argument("--seeds", default="0,1,2,3,4", help="sampler seeds, comma-separated (default: %(default)s)")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds = "0"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    B.quiet()
    with B.workdir(args.workdir) as work:
        extra = B.model_overrides(args.smoke, B.demo_model(args, work)) + (["study.n_trials=1"] if args.smoke else [])
        results = []
        for seed in seeds:
            results.append(run_seed(seed, work, extra))
            r = results[-1]
            print(f"seed {seed}: {r['complete'] + r['pruned']} trials in {r['wall_s'] / 60:.1f} min, "
                  f"best {B.num(r['best'])}", flush=True)

    rows = [[r["seed"], r["load"], r["wall_s"] / 60, f"{r['complete'] + r['pruned']} ({r['pruned']} pruned)",
             r["base"], r["defaults"], r["best"], r["best_trial"], "yes" if r["passed"] else "no"] for r in results]
    print(B.table(["seed", "load at start", "minutes", "trials", "base", "defaults", "best", "best trial", "passes"],
                  rows))
    passed = sum(r["passed"] for r in results)
    ratio = passed / len(results)
    budget = results[0]["n_trials"]
    print(f"{passed} of {len(results)} seeds passed (all {budget} trials within {WALL_S // 60} minutes, best "
          f"json_fields >= {DEMO_BEST:g})")
    figures = "; ".join(f"s{r['seed']}: {r['complete'] + r['pruned']} trials in {r['wall_s'] / 60:.1f} min, "
                        f"best {B.num(r['best'])} (base {B.num(r['base'])}, defaults {B.num(r['defaults'])}), "
                        f"load {r['load']:.1f}" for r in results)
    setup = (f"{B.model_label(args)}, `python -m lora_sweep run sweeps/demo.yaml study.sampler.seed=S`, seeds "
             f"{','.join(map(str, seeds))}")
    row = B.conclude("8 demo seeds", args, setup, figures, ratio, "seeds passing / seeds",
                     f">= {SHARE:g} ({budget} trials in {WALL_S // 60} min, best >= {DEMO_BEST:g})", ratio >= SHARE)
    return {"results": results, "ratio": ratio, "row": row}


if __name__ == "__main__":
    main()
