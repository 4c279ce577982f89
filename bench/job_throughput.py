"""Benchmark 1: train tokens/s of `lora_sweep.job.train` vs a minimal hand-written Trainer + PEFT script.

Both sides train the same model with the same LoRA, the same packed rows (the demo data packed
into rows of exactly --seqlen tokens), batch, steps, optimizer settings and seed, in this one
process, alternating which goes first. What is timed, on both sides the same way:

* steady: tokens of steps 2..N over the time from the end of step 1 to the end of step N, from a
  timestamp at each step's log (ours: its `train` events; plain: a one-line on_log callback).
  Step 1 (warm-up) is excluded on both sides. This is the ratio the target is on.
* train(): Trainer's own `train_runtime` around the whole `trainer.train()` (step 1 and the work
  at the end of training included). Ours' is recovered from result.json as timings_s.train +
  timings_s.eval, since with evaluation_strategy "no" its one evaluation runs after train().
* reported: the `train_tokens_per_s` ours writes to result.json, as is.

    python bench/job_throughput.py                          # SmolLM2, 16 steps x 4 x 128 tokens, 3 pairs
    python bench/job_throughput.py --model tiny --steps 200  # the tiny model: per-step overhead shows most
    python bench/job_throughput.py --model DIR --seqlen 512   # any model folder
    python bench/job_throughput.py --smoke --results /tmp/r.md
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import benchlib as B

TARGET = 0.97


def ours(model: str, args: Any, work: Path, run: int, **training: Any) -> dict[str, float]:
    """One run of lora_sweep.job.train.run; figures from its events and result.json. `training`: more
    training settings (e.g. gradient_checkpointing=True)."""
    from lora_sweep.config.files import validate_job
    from lora_sweep.events import read_events
    from lora_sweep.job.train import run as run_job

    out = work / f"ours-{run}"
    shutil.rmtree(out, ignore_errors=True)  # events.jsonl is appended to: start from nothing
    config = validate_job({
        "model": {"name_or_path": model},
        "lora": {"r": args.r, "alpha": 2 * args.r, "lora_dropout": 0.0, "target_modules": args.target_modules},
        "data": {"dataset": str(B.DEMO_DATA), "varied_seqlen": False, "train_seqlen": args.seqlen,
                 "test_seqlen": args.seqlen, "train_batch_size": args.batch, "train_nsamples": args.samples,
                 "test_nsamples": 8, "cache_dir": str(work / "cache")},
        "training": {"num_training_steps": args.steps, "evaluation_strategy": "no", "eval_steps": args.steps,
                     "save_steps": 10**9, "learning_rate": 2e-4, "lr_scheduler_type": "linear", "seed": 42,
                     "logging_steps": 1, **training},
        "output_dir": str(out),
    })
    result = run_job(config)
    steps = [e for e in read_events(out / "events.jsonl") if e["event"] == "train"]
    t = result["timings_s"]
    return {
        "steady_s": steps[-1]["time"] - steps[0]["time"],
        "steady_tokens": steps[-1]["tokens"] - steps[0]["tokens"],
        "train_s": t["train"] + t["eval"],  # train_runtime: the only evaluation ran after train()
        "tokens": result["train_tokens"],
        "reported_tps": result["train_tokens_per_s"],
        "first_loss": steps[0]["loss"],
    }


def packed_rows(model: str, args: Any, work: Path) -> Any:
    """The packed rows ours trains on (--samples demo samples in rows of --seqlen), from its own
    pipeline; this also warms its cache."""
    from lora_sweep.job import data as D
    from lora_sweep.config.job import DataSection
    from lora_sweep.job.models import load_tokenizer

    data = DataSection(dataset=str(B.DEMO_DATA), varied_seqlen=False, train_seqlen=args.seqlen,
                       test_seqlen=args.seqlen, train_nsamples=args.samples, test_nsamples=8,
                       cache_dir=str(work / "cache"))
    rows = D.prepare(data, 42, load_tokenizer(model)).train
    if len(rows) < args.batch * args.steps:
        print(f"note: {len(rows)} rows for {args.batch * args.steps} row-steps: the data repeats (epochs > 1)")
    return rows


def plain(model: str, args: Any, work: Path, run: int, rows: Any, steps: int | None = None) -> dict[str, float]:
    """What a user writes by hand: from_pretrained, get_peft_model, Trainer on the packed rows."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments, default_data_collator
    from transformers import PrinterCallback

    stamps: list[tuple[float, int, float]] = []

    class Stamp(TrainerCallback):  # the instrument: the same hook ours writes its events from
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                stamps.append((time.time(), state.global_step, logs["loss"]))

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    lora = LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0, target_modules=args.target_modules,
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, lora)
    dataset = [{"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
               for ids, labels in (rows.row(i) for i in range(len(rows)))]
    training = TrainingArguments(
        output_dir=str(work / f"plain-{run}"), max_steps=steps or args.steps, per_device_train_batch_size=args.batch,
        learning_rate=2e-4, lr_scheduler_type="linear", adam_beta2=0.95, logging_steps=1, save_strategy="no",
        eval_strategy="no", seed=42, data_seed=42, bf16=on_gpu and dtype == torch.bfloat16, use_cpu=not on_gpu,
        remove_unused_columns=False, disable_tqdm=True, report_to="none",
    )
    trainer = Trainer(model=peft_model, args=training, train_dataset=dataset, data_collator=default_data_collator,
                      callbacks=[Stamp()])
    trainer.remove_callback(PrinterCallback)  # ours prints nothing per step either
    output = trainer.train()
    tokens_per_step = args.batch * args.seqlen  # packed rows: every token is real
    return {
        "steady_s": stamps[-1][0] - stamps[0][0],
        "steady_tokens": (stamps[-1][1] - stamps[0][1]) * tokens_per_step,
        "train_s": output.metrics["train_runtime"],
        "tokens": args.steps * tokens_per_step,
        "reported_tps": math.nan,
        "first_loss": stamps[0][2],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = B.parser(__doc__)
    p.add_argument("--steps", type=int, default=16, help="optimizer steps per run (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="rows per step (default: the demo's, %(default)s)")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per packed row (default: the demo's, %(default)s)")
    p.add_argument("--samples", type=int, default=400, help="demo samples packed into rows (default: %(default)s)")
    p.add_argument("--pairs", type=int, default=3, help="ours/plain pairs, alternating order (default: %(default)s)")
    p.add_argument("--r", type=int, default=8, help="LoRA rank (alpha = 2r; default: %(default)s)")
    args = p.parse_args(argv)
    args.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
    if args.smoke:
        args.steps, args.batch, args.seqlen, args.samples, args.pairs = 4, 2, 32, 24, 2

    B.quiet()
    with B.workdir(args.workdir) as work:
        model = B.model_path(args, work)
        rows = packed_rows(model, args, work)
        if not args.smoke:
            plain(model, args, work, -1, rows, steps=3)  # untimed: the process's first training warms up
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "plain": []}
        for pair in range(args.pairs):
            order = ["ours", "plain"] if pair % 2 == 0 else ["plain", "ours"]
            for side in order:
                runs[side].append(ours(model, args, work, pair) if side == "ours" else plain(model, args, work, pair, rows))

    def tps(r: dict[str, float], kind: str) -> float:
        return r[f"{kind}_tokens" if kind == "steady" else "tokens"] / r[f"{kind}_s"]

    table = []
    for pair in range(args.pairs):
        o, q = runs["ours"][pair], runs["plain"][pair]
        first = "ours" if pair % 2 == 0 else "plain"
        table.append([f"{pair} ({first} first)", tps(o, "steady"), tps(q, "steady"), tps(o, "steady") / tps(q, "steady"),
                      tps(o, "train"), tps(q, "train"), tps(o, "train") / tps(q, "train"), o["reported_tps"],
                      abs(o["first_loss"] - q["first_loss"])])
    print(f"model {B.model_label(args)}, {args.steps} steps x {args.batch} rows x {args.seqlen} tokens (packed), "
          f"LoRA r={args.r} on q/k/v/o, {args.pairs} pairs; train tokens/s")
    print("steady = steps 2..N from per-step log timestamps (warm-up step 1 excluded on both sides); "
          "train() = Trainer train_runtime, whole call (ours' includes the checkpoint Trainer writes at the last "
          "step with save_strategy steps; the plain script saves nothing)")
    print(B.table(["pair", "ours steady", "plain steady", "ratio", "ours train()", "plain train()", "ratio",
                   "ours reported", "|loss1 diff|"], table))
    steady = B.median([r[3] for r in table])
    whole = B.median([r[6] for r in table])
    same_start = max(r[8] for r in table) < 1e-3
    print(f"median ratio ours/plain: steady {B.num(steady)}, train() {B.num(whole)}; "
          f"same first-step loss on both sides: {'yes' if same_start else 'NO (different data or model)'}")
    figures = (f"steady tok/s ours {B.num(B.median([r[1] for r in table]))} plain {B.num(B.median([r[2] for r in table]))}; "
               f"train() ratio {B.num(whole)}; ours reported {B.num(B.median([r[7] for r in table]))} tok/s")
    setup = f"{B.model_label(args)}, {args.steps} steps x {args.batch}x{args.seqlen} packed, {args.pairs} pairs"
    row = B.conclude("1 job throughput", args, setup, figures, steady, "ours/plain steady train tok/s",
                     f"ratio >= {TARGET}", steady >= TARGET)
    return {"ratio": steady, "train_ratio": whole, "same_start": same_start, "runs": runs, "row": row}


if __name__ == "__main__":
    main()
