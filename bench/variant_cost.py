"""Benchmark 10: each LoRA variant's step time and peak memory against plain LoRA, on the demo task.

Every variant runs as a real job (`lora_sweep.job.train.run`, in this one process, one after the
other) on the demo's data, model and LoRA (r 8 on q/k/v/o), for --steps optimizer steps of batch 4,
with no evaluation but the job's last one. What is measured, per variant:

* step s: the time from the end of step 1 to the end of the last step over the steps between, from
  the job's `train` events (step 1, the warm-up, is left out);
* load s: the job's timings_s.model_load: loading the base, quantizing it (QLoRA) and the variant's
  initialization (PiSSA's SVD, OLoRA's QR);
* peak MB: the process's peak resident memory during the job (Linux: VmHWM, reset before each job
  through /proc/self/clear_refs), or on a GPU torch's peak allocated memory. It includes what the
  process held before (torch, the tokenizer), the same for every variant.

Before the measured jobs one short plain-LoRA job warms the data cache and the imports (not with --smoke). The ratio is
the slowest variant's step time over plain LoRA's. One thread (as the demo's trials run); the 2 cores
are shared, so differences within about 10 % are noise.

    python bench/variant_cost.py                         # SmolLM2, 6 steps per variant, 12 variants
    python bench/variant_cost.py --variants lora,dora,qlora-nf4 --steps 10
    python bench/variant_cost.py --smoke --results /tmp/r.md
"""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import benchlib as B

TARGET = 1.5  # no variant's step above 1.5x plain LoRA's (the research measured DoRA at ~1.3x)
VARIANTS: dict[str, dict[str, Any]] = {  # the name a job records -> its lora keys
    "lora": {},
    "rslora": {"use_rslora": True},
    "dora": {"use_dora": True},
    "gaussian": {"init_lora_weights": "gaussian"},
    "orthogonal": {"init_lora_weights": "orthogonal"},
    "mica": {"init_lora_weights": "mica"},
    "pissa": {"init_lora_weights": "pissa"},
    "pissa_niter_4": {"init_lora_weights": "pissa_niter_4"},
    "olora": {"init_lora_weights": "olora"},
    "lora+": {"loraplus_lr_ratio": 16},
    "qlora-nf4": {"load_in_4bit": True},
    "dora+qlora-nf4": {"use_dora": True, "load_in_4bit": True},
}
SMOKE_VARIANTS = ["lora", "dora+qlora-nf4"]


def job_config(model: str | None, work: Path, name: str, steps: int, lora: dict[str, Any] | None = None) -> Any:
    """The demo's job with `name`'s lora keys (and `lora`'s, e.g. another model's target_modules), `steps`
    steps, no evaluation before the last, loss only."""
    from lora_sweep.config.files import validate_job

    overrides = [f"model.name_or_path={model}"] if model else []
    tree = B.load_demo(overrides).job_tree()
    tree["lora"].update({**(lora or {}), **VARIANTS[name]})
    tree["data"].update({"train_nsamples": 64, "test_nsamples": 4, "cache_dir": str(work / "cache")})
    tree["training"].update({"num_training_steps": steps, "evaluation_strategy": "no", "eval_steps": steps,
                             "save_steps": 10**9, "logging_steps": 1, "early_stopping_patience": 0})
    tree["objective"] = {"metric": "eval_loss", "baseline": False}
    tree["compare"] = {"enabled": False}
    tree["output_dir"] = str(work / name)
    return validate_job(tree)


def reset_peak() -> bool:
    """Start a new peak of this process's memory; False where it cannot (then the peak is the process's)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def peak_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model: str | None, work: Path, name: str, steps: int, lora: dict[str, Any] | None = None) -> dict[str, Any]:
    """One variant's job: its step time, load time, peak memory, trainable parameters and losses."""
    from lora_sweep.events import read_events
    from lora_sweep.job.train import run as run_job

    config = job_config(model, work, name, steps, lora)
    shutil.rmtree(config.output_dir, ignore_errors=True)
    gc.collect()
    fresh = reset_peak()
    result = run_job(config)
    peak = peak_mb()
    events = read_events(Path(config.output_dir) / "events.jsonl")
    train = [e for e in events if e["event"] == "train"]
    start = next(e for e in events if e["event"] == "start")
    shutil.rmtree(config.output_dir, ignore_errors=True)  # adapters and checkpoints: not needed
    assert result["variant"]["name"] == name, (result["variant"]["name"], name)
    return {
        "variant": name,
        "step_s": (train[-1]["time"] - train[0]["time"]) / (len(train) - 1),
        "load_s": result["timings_s"]["model_load"],
        "peak_mb": peak,
        "peak_is_this_jobs": fresh,
        "trainable": start["trainable_parameters"],
        "loss": (train[0]["loss"], train[-1]["loss"]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = B.parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default 6; --smoke 2)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: all; --smoke: {','.join(SMOKE_VARIANTS)})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as the demo's trials)")
    args = p.parse_args(argv)
    import torch

    B.quiet()
    torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.smoke else 6)
    names = args.variants.split(",") if args.variants else (SMOKE_VARIANTS if args.smoke else list(VARIANTS))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        skipped = [n for n in names if VARIANTS[n].get("load_in_4bit")]
        names = [n for n in names if n not in skipped]
        if skipped:
            print(f"note: bitsandbytes is not installed, so {', '.join(skipped)} are left out "
                  "(pip install 'lora-sweep[qlora]')")
    names = ["lora", *[n for n in names if n != "lora"]]  # the reference first
    load = os.getloadavg()[0]  # other work on the machine: the step times are only as good as it is quiet
    with B.workdir(args.workdir) as work:
        model = B.demo_model(args, work)
        if not args.smoke:
            measure(model, work, "lora", 2)  # warm-up: the data cache, lazy imports; not counted
        rows = [measure(model, work, name, steps) for name in names]
    plain = rows[0]
    for row in rows:
        row["step_x"] = row["step_s"] / plain["step_s"]
        row["peak_x"] = row["peak_mb"] / plain["peak_mb"]
    print(B.table(["variant", "step s", "x LoRA", "load s", "peak MB", "x LoRA", "trainable", "loss 1st -> last"],
                  [[r["variant"], r["step_s"], r["step_x"], r["load_s"], r["peak_mb"], r["peak_x"], r["trainable"],
                    f"{r['loss'][0]:.3f} -> {r['loss'][1]:.3f}"] for r in rows]))
    if not all(r["peak_is_this_jobs"] for r in rows):
        print("note: the peak could not be reset here: each is the process's peak so far")
    slowest = max(rows, key=lambda r: r["step_x"])
    figures = "; ".join(f"{r['variant']} {B.num(r['step_s'])} s {B.num(r['step_x'], 2)}x, "
                        f"{B.num(r['peak_mb'], 4)} MB {B.num(r['peak_x'], 2)}x" for r in rows)
    setup = (f"{B.model_label(args)} (demo task, r 8 q/k/v/o), {steps} steps x batch 4, varied seqlen <= 128, "
             f"threads {args.threads}, one process, step s and peak vs plain LoRA, load average {load:.1f} -> "
             f"{os.getloadavg()[0]:.1f}")
    row = B.conclude("10 variant cost", args, setup, figures, slowest["step_x"],
                     f"slowest variant's step / LoRA's: {slowest['variant']}",
                     f"every variant's step <= {TARGET}x LoRA's", slowest["step_x"] <= TARGET)
    return {"rows": rows, "ratio": slowest["step_x"], "slowest": slowest["variant"], "row": row}


if __name__ == "__main__":
    main()
