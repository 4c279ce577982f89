"""The GPU check (issue 26): what lora_sweep does on one GPU, measured in one invocation.

1. Job throughput on the real shape: a random-weight Phi-3.5-mini-shaped model (hidden 3072, 32
   layers, vocab 32064), bf16, LoRA on qkv/o/gate_up/down, packed rows of 1024 and 2048 tokens:
   our job's steady train tokens/s against the plain Trainer + PEFT script of bench 1
   (job_throughput.plain) in this process (target >= 0.97), and the model FLOPs utilisation.
2. Memory: peak GPU memory of our job at 2048 tokens without and with gradient checkpointing.
3. A real sweep: 6 trials of a SmolLM2-135M-shaped random model through `python -m lora_sweep
   run` (the demo study, warm launcher, SQLite), one at a time, then with study.trials_per_gpu 3
   and 4: trials per hour against one at a time, and the GPU utilisation under one small trial.
4. The warm launcher with CUDA: the sweeps above ran through it; the runner never loaded the CUDA
   driver (libcuda is not mapped in it), the jobs did; its fixed cost per trial (bench 2's cut).
5. QLoRA: the Phi-3.5-mini-shaped model's job with a 4-bit NF4 base (lora.load_in_4bit, bf16 compute),
   and with DoRA on it, against bf16 LoRA: step time and peak GPU memory (bench 10's measure, on
   the demo's data); skipped with the reason where bitsandbytes is not carried (bench/gpu_check.sh
   leaves it out when the wheels would pass the device's 64 MiB limit).

Models are built from their configs with random weights and the tiny byte-level tokenizer of
benchlib (nothing is downloaded). Prints a table, writes it as JSON (--json) and appends one row
per item to --results (bench/RESULTS.md) with the GPU's name.

    bench/gpu_check.sh                   # on the GPU machine: installs bench/gpu_wheels, runs this (< 8 min on an H200)
    python bench/gpu_check.py --cpu      # tiny models, a few steps, on the CPU: checks that it runs (the tests do)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import benchlib as B
import job_throughput
import trial_cost
import variant_cost

REQUIREMENTS = B.BENCH / "gpu_requirements.txt"
# What the GPU machine's Python has (/work/.library/device/KINDS.md), for the pins lora_sweep states
DEVICE_VERSIONS = {"torch": "2.11.0", "transformers": "5.17.0", "accelerate": "1.15.0"}
# the packages of the GPU machine's Python that lora_sweep or the carried wheels need (KINDS.md's list)
DEVICE_PACKAGES = frozenset({"torch", "transformers", "accelerate", "peft", "pandas", "pyyaml", "scipy", "filelock",
                             "numpy", "packaging", "tqdm", "markupsafe", "safetensors", "huggingface-hub",
                             "tokenizers", "psutil", "jinja2", "requests", "typing-extensions", "nvidia-ml-py"})
# pyproject dependencies a sweep does not import, so the wheels leave them out (gpu_requirements.txt)
NOT_CARRIED = {"plotly": "the report", "gguf": "the embedded SmolLM2's one conversion",
               "pyarrow": "Parquet and save_to_disk data only (the GPU check's data is chat JSON lines)"}

PHI35_MINI = {"kind": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
              "max_position_embeddings": 4096}
SMOLLM2_135M = {"kind": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "max_position_embeddings": 8192, "rope_theta": 100000.0, "tie_word_embeddings": True}
# --cpu: the Phi-3 architecture at the tests' tiny size (its vocabulary: the tokenizer's)
TINY_PHI3 = {"kind": "phi3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096}
PHI_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]  # attention and MLP projections
# dense bf16 tensor-core peak by GPU name (vendor data sheets, SXM parts), for the MFU
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
TARGET = job_throughput.TARGET


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.add_argument("--cpu", action="store_true",
                   help="tiny models and a few steps on the CPU: checks the script runs, measures nothing")
    p.add_argument("--results", type=Path, default=B.RESULTS, help="the table to append rows to (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="write every figure here as JSON (default: none)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for models, caches and studies (default: a temporary folder, removed at the end)")
    p.add_argument("--seqlens", default="1024,2048", help="packed row lengths of item 1 (default: %(default)s)")
    p.add_argument("--tokens-per-step", type=int, default=8192,
                   help="rows per step = this / seqlen, item 1 (default: %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per item-1 run (default: %(default)s)")
    p.add_argument("--pairs", type=int, default=1, help="ours/plain pairs per seqlen, alternating (default: %(default)s)")
    p.add_argument("--trials", type=int, default=6, help="trials per sweep, item 3 (default: %(default)s)")
    p.add_argument("--per-gpu", default="1,3,4", help="study.trials_per_gpu of each sweep (default: %(default)s)")
    p.add_argument("--sweep-steps", type=int, default=100, help="training steps per sweep trial (default: %(default)s)")
    p.add_argument("--skip", default="", help="items to leave out, e.g. 1,2 (default: none)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run: a sweep that would not fit (it would take as long as the one "
                        "before) is skipped, one that runs over is stopped; 0: none (default: 460; --cpu: 0)")
    args = p.parse_args(argv)
    if args.cpu:  # seconds on two cores
        args.seqlens, args.tokens_per_step, args.steps, args.trials, args.per_gpu = "64", 128, 4, 2, "2"  # one sweep, two trials at once
    if args.budget is None:
        args.budget = 0 if args.cpu else 460  # the 8 minutes, less the wrapper's set-up
    args.seqlens = [int(s) for s in args.seqlens.split(",")]
    args.per_gpu = [int(s) for s in args.per_gpu.split(",")]
    args.skip = {int(s) for s in args.skip.split(",") if s}
    return args


# ---------------------------------------------------------------- the device's packages


def wheel_list(path: Path = REQUIREMENTS) -> dict[str, str]:
    """The carried wheels: normalised name -> pinned version, from gpu_requirements.txt."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    return pins


def dependencies() -> list[Any]:
    """lora_sweep's dependencies as pyproject.toml states them (packaging Requirements)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((B.REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(line) for line in project["dependencies"]]


def pin_problems(versions: dict[str, str]) -> list[str]:
    """lora_sweep's own dependency pins that `versions` (normalised name -> version) breaks; a name
    not in `versions` is not checked."""
    from packaging.utils import canonicalize_name

    problems = []
    for req in dependencies():
        found = versions.get(canonicalize_name(req.name))
        if found is not None and not req.specifier.contains(found, prereleases=True):
            problems.append(f"{req.name} {found} does not satisfy pyproject's {req}")
    return problems


def installed_versions() -> dict[str, str]:
    """Versions of lora_sweep's dependencies in this Python, by normalised name (missing: absent)."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    found = {}
    for req in dependencies():
        name = canonicalize_name(req.name)
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def preflight() -> dict[str, Any]:
    """Print the versions this run uses and any pin they break (the run goes on: the figures say
    whether it worked)."""
    from importlib import metadata

    import torch

    versions = installed_versions()
    problems = pin_problems(versions)
    missing = sorted(n for n in ("optuna", "pydantic", "transformers", "peft", "accelerate") if n not in versions)
    problems += [f"{n} is not installed" for n in missing]
    cuda = torch.version.cuda if torch.cuda.is_available() else None
    shown = {}
    for name in ("torch", "transformers", "accelerate", "peft", "optuna", "pydantic", "sqlalchemy", "typing-extensions"):
        try:
            shown[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            shown[name] = "-"
    print(f"python {sys.version.split()[0]}, CUDA {cuda or 'none'}; " + ", ".join(f"{n} {v}" for n, v in shown.items()))
    for problem in problems:
        print(f"WARNING: {problem}")
    return {"versions": versions, "problems": problems, "cuda": cuda}


# ---------------------------------------------------------------- models


def random_model(folder: Path, shape: dict[str, Any], tokenizer: Path) -> dict[str, Any]:
    """A model of `shape` with random weights (bf16 on a GPU, float32 on the CPU) and the tokenizer
    of the folder `tokenizer`, saved to `folder`; its size figures (shape.json)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    if (folder / "shape.json").is_file():
        return json.loads((folder / "shape.json").read_text())
    began = time.time()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    kind = shape["kind"]
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "phi3": (Phi3Config, Phi3ForCausalLM)}[kind]
    fields = {"vocab_size": len(tok), **{k: v for k, v in shape.items() if k != "kind"}}
    config = config_cls(**fields, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    gpu = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if gpu else "cpu"):  # a 3.8B model initialises in seconds on the GPU
        model = model_cls(config)
    model.to(torch.bfloat16 if gpu else torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    info = {
        "kind": kind, "layers": config.num_hidden_layers, "hidden": config.hidden_size, "vocab": config.vocab_size,
        "params": sum(p.numel() for p in model.parameters()),
        # the weights of the matrix products (lm_head included, the embedding lookup not): the FLOPs count
        "linear_params": sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)),
        "build_s": round(time.time() - began, 1),
    }
    del model
    free_memory()
    (folder / "shape.json").write_text(json.dumps(info))
    return info


def free_memory() -> None:
    """Collect what earlier runs left (a Trainer's cycles hold their model) and reset the peak."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float:
    """Peak GPU memory allocated since free_memory(); on the CPU the process's RSS high-water mark."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_flops() -> float:
    """Measured dense matrix-product rate (FLOP/s): bf16 8192^3 on a GPU, float32 512^3 on the CPU;
    the mean of 10 products after 3 warm-ups."""
    import torch

    gpu = torch.cuda.is_available()
    n, dtype, device = (8192, torch.bfloat16, "cuda") if gpu else (512, torch.float32, "cpu")
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    if gpu:
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(10):
        a @ b
    if gpu:
        torch.cuda.synchronize()  # note: a CPU-GPU sync point, the products were only queued
    return 10 * 2 * n**3 / (time.perf_counter() - began)


def spec_peak() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def flops_per_token(shape: dict[str, Any], seqlen: int) -> float:
    """Model FLOPs of one trained token under LoRA: forward 2N and the backward's input gradients 2N
    over the N weights of the matrix products (the frozen base gets no weight gradients; LoRA's own
    are negligible), plus attention's 12 x layers x hidden x seqlen (PaLM's count: forward and
    backward, causal masking not halved). Gradient checkpointing's recomputation is not counted."""
    return 4 * shape["linear_params"] + 12 * shape["layers"] * shape["hidden"] * seqlen


# ---------------------------------------------------------------- items 1 and 2: the job on the real shape


def job_args(args: argparse.Namespace, seqlen: int) -> argparse.Namespace:
    """job_throughput's settings for one seqlen: LoRA r 16 on the attention and MLP projections."""
    return argparse.Namespace(r=16, target_modules=PHI_TARGETS, seqlen=seqlen,
                              batch=max(1, args.tokens_per_step // seqlen), steps=args.steps, samples=400)


def tps(run: dict[str, float]) -> float:
    return run["steady_tokens"] / run["steady_s"]


def throughput(args: argparse.Namespace, model: str, shape: dict[str, Any], work: Path,
               peak: float) -> dict[str, Any]:
    """Item 1 (and item 2's run without checkpointing): ours vs plain per seqlen."""
    out: dict[str, Any] = {}
    warm = job_args(args, args.seqlens[0])
    free_memory()
    job_throughput.plain(model, warm, work, -1, job_throughput.packed_rows(model, warm, work), steps=3)  # untimed
    for seqlen in args.seqlens:
        a = job_args(args, seqlen)
        rows = job_throughput.packed_rows(model, a, work)
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "plain": []}
        for pair in range(args.pairs):
            for side in (["ours", "plain"] if pair % 2 == 0 else ["plain", "ours"]):
                free_memory()
                run = (job_throughput.ours(model, a, work, pair) if side == "ours"
                       else job_throughput.plain(model, a, work, pair, rows))
                run["peak_mb"] = peak_mb()
                runs[side].append(run)
        ours_tps = B.median([tps(r) for r in runs["ours"]])
        plain_tps = B.median([tps(r) for r in runs["plain"]])
        mfu = ours_tps * flops_per_token(shape, seqlen) / peak
        out[seqlen] = {"batch": a.batch, "ours_tps": ours_tps, "plain_tps": plain_tps, "ratio": ours_tps / plain_tps,
                       "mfu": mfu, "ours_peak_mb": B.median([r["peak_mb"] for r in runs["ours"]]),
                       "plain_peak_mb": B.median([r["peak_mb"] for r in runs["plain"]]),
                       "loss1_diff": abs(runs["ours"][0]["first_loss"] - runs["plain"][0]["first_loss"])}
    return out


def checkpointing(args: argparse.Namespace, model: str, work: Path, without: dict[str, Any]) -> dict[str, Any]:
    """Item 2: our job at the longest seqlen with gradient checkpointing; without it: item 1's run."""
    seqlen = max(args.seqlens)
    free_memory()
    run = job_throughput.ours(model, job_args(args, seqlen), work, 99, gradient_checkpointing=True)
    with_mb = peak_mb()
    return {"seqlen": seqlen, "without_mb": without["ours_peak_mb"], "with_mb": with_mb,
            "with_tps": tps(run), "without_tps": without["ours_tps"]}


# ---------------------------------------------------------------- items 3 and 4: real sweeps


class Watch:
    """Samples, every 0.1 s while a sweep runs: the GPU's utilisation (NVML, which starts no CUDA
    context) and whether the sweep's warm runner has the CUDA driver (libcuda) mapped."""

    def __init__(self, sweep_pid: int):
        self.sweep_pid = sweep_pid
        self.samples: list[tuple[float, float]] = []  # (time, GPU utilisation %)
        self.runner_pids: set[int] = set()
        self.runner_cuda = False
        self.stop = threading.Event()
        self.nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception:  # noqa: BLE001 (no NVML: no utilisation figures, said in the table)
            self.nvml = None
        self.thread = threading.Thread(target=self.loop, daemon=True, name="gpu-check-watch")
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.wait(0.1):
            if self.nvml is not None:
                nvml, handle = self.nvml
                self.samples.append((time.time(), float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)))
            for pid in self.runners():
                try:
                    self.runner_cuda |= "libcuda.so" in Path(f"/proc/{pid}/maps").read_text()
                except OSError:
                    pass

    def runners(self) -> list[int]:
        """The sweep's warm runner: its child running `-m lora_sweep.launch.warm`."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.sweep_pid \
                            and b"lora_sweep.launch.warm" in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except (OSError, ValueError, IndexError):
                    pass
        self.runner_pids.update(found)
        return found

    def close(self) -> None:
        self.stop.set()
        self.thread.join()

    def utilisation(self, windows: list[tuple[float, float]]) -> float | None:
        """Mean GPU utilisation (%) over the samples inside the windows; None without samples."""
        inside = [u for t, u in self.samples if any(a <= t <= b for a, b in windows)]
        return sum(inside) / len(inside) if inside else None


def sweep(args: argparse.Namespace, model: str, work: Path, per_gpu: int, timeout: float) -> dict[str, Any]:
    """One real sweep of the demo study on `model`: `python -m lora_sweep run` in a child process,
    `per_gpu` trials at once (study.trials_per_gpu and study.parallel), warm launcher, SQLite; stopped
    (SIGTERM, as a scheduler would) after `timeout` seconds."""
    import optuna
    from optuna.trial import TrialState

    from lora_sweep.events import read_events

    name = f"gpu-check-{per_gpu}"
    budget = B.smoke_overrides(model) if args.cpu else [f"model.name_or_path={model}",
                                                         *B.budget_overrides(args.sweep_steps)]
    overrides = [*B.demo_overrides(), *budget, f"study.dir={work / 'studies'}", f"study.name={name}",
                 f"study.n_trials={args.trials}", f"study.parallel={per_gpu}", f"study.trials_per_gpu={per_gpu}",
                 "study.launcher=warm", "study.timeout=null", "study.pruner={type: none, options: {}}",
                 # the base model's evaluation, a job of lora_sweep.job.evaluate (inference on the GPU), runs before the
                 # first trial and so does the warm runner's start: trials per hour, from the first trial's start,
                 # count neither, in every sweep alike
                 "objective.baseline=true"]
    log = work / f"{name}.log"
    began = time.time()
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "lora_sweep", "run", str(B.DEMO_YAML), *overrides],
                                stdout=sink, stderr=subprocess.STDOUT, cwd=work, start_new_session=True)
        watch = Watch(proc.pid)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the sweep stops its jobs and records their trials
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise RuntimeError(f"the sweep with trials_per_gpu {per_gpu} was stopped after {timeout:.0f} s: "
                               + log.read_text(errors="replace")[-2000:]) from None
        finally:
            watch.close()
    wall = time.time() - began
    if code != 0:
        raise RuntimeError(f"the sweep with trials_per_gpu {per_gpu} exited {code}: "
                           + log.read_text(errors="replace")[-3000:])
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'studies'}/{name}.db")
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    first = min(t.datetime_start.timestamp() for t in trials)
    last = max(t.datetime_complete.timestamp() for t in trials if t.datetime_complete)
    training, primed = [], 0
    for t in done:
        folder = Path(t.user_attrs["trial_dir"])
        events = read_events(folder / "events.jsonl")
        steps = [e["time"] for e in events if e["event"] == "train"]
        training.append((steps[0], steps[-1]))
        primed += "the warm runner's copy" in (folder / "train.log").read_text(errors="replace")
    parts = trial_cost.analyse(study)
    failures = [f"trial {t.number}: {t.user_attrs.get('error', '?')} | {str(t.user_attrs.get('log_tail', ''))[-1500:]}"
                for t in trials if t.state == TrialState.FAIL]
    baseline = study.user_attrs.get("baseline")
    return {"per_gpu": per_gpu, "trials": len(trials), "complete": len(done), "wall_s": wall, "failures": failures,
            "baseline": baseline,
            "trials_per_hour": len(done) / (last - first) * 3600, "util_training": watch.utilisation(training),
            "util_sweep": watch.utilisation([(first, last)]), "runner_found": bool(watch.runner_pids),
            "runner_cuda": watch.runner_cuda, "primed_tokenizer": primed,
            "fixed_s": B.median([sum(p[k] for k in trial_cost.FIXED) for p in parts]),
            "model_load_s": B.median([p["model load"] for p in parts])}


# ---------------------------------------------------------------- item 5


def qlora_reason() -> str | None:
    """Why the 4-bit trial cannot run here, or None when it can."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return ("bitsandbytes is not installed (not among the carried wheels: bench/gpu_check.sh --download "
                "leaves it out when they would pass the 64 MiB the device takes)")
    return None


def qlora(args: argparse.Namespace, work: Path, tokenizer: Path) -> dict[str, Any]:
    """Bench 10's jobs on the Phi-3.5-mini shape (--cpu: the tiny Phi-3): LoRA, QLoRA (NF4, double
    quantization, compute in the weights' dtype) and DoRA + QLoRA, one after the other in this process."""
    model = work / "phi"
    if not (model / "config.json").is_file():  # item 1 builds it, unless skipped
        random_model(model, TINY_PHI3 if args.cpu else PHI35_MINI, tokenizer)
    names = ["lora", "qlora-nf4"] if args.cpu else ["lora", "qlora-nf4", "dora+qlora-nf4"]
    lora = {"r": 16, "alpha": 32, "target_modules": PHI_TARGETS}
    rows = [variant_cost.measure(str(model), work, name, 2 if args.cpu else 10, lora) for name in names]
    for row in rows:
        row["step_x"], row["peak_x"] = row["step_s"] / rows[0]["step_s"], row["peak_mb"] / rows[0]["peak_mb"]
    return {"rows": rows}


# ---------------------------------------------------------------- the table and the rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    began = time.time()
    B.quiet()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --cpu for the tiny check")
    pre = preflight()
    peak = spec_peak()
    measured = matmul_flops()
    mfu_peak = peak or measured
    print(f"{B.machine()}: dense matrix products {measured / 1e12:.3g} TFLOP/s measured"
          + (f", {peak / 1e12:.0f} TFLOP/s bf16 data-sheet peak (the MFU's denominator)" if peak else
             " (the MFU's denominator: no data-sheet peak for this device)"))
    lines: list[dict[str, Any]] = []  # the table: item, measure, value, unit, note
    result: dict[str, Any] = {"mode": "cpu" if args.cpu else "gpu", "machine": B.machine(), "preflight": pre,
                              "matmul_flops": measured, "peak_flops": peak, "lines": lines, "errors": {}}
    sections: dict[str, float] = {}

    def line(item: int, measure: str, value: Any, unit: str = "", note: str = "") -> None:
        lines.append({"item": item, "measure": measure, "value": value, "unit": unit, "note": note})

    @contextmanager
    def item(number: int, name: str) -> Iterator[None]:
        """One section: its seconds, and a failure recorded (with its traceback) instead of ending the
        run, so one GPU visit brings back every item that works."""
        t0 = time.time()
        try:
            yield
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            result["errors"][name] = traceback.format_exc()[-4000:]
            line(number, f"{name}: FAILED", type(exc).__name__, "", str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "")
        finally:
            sections[name] = time.time() - t0
            free_memory()
            dump(args, result)  # a run stopped later still leaves these figures

    with B.workdir(args.workdir) as work:
        tokenizer = B.build_tiny_model(work / "tiny-llama")  # its tokenizer serves every model here
        if 1 not in args.skip:
            with item(1, "1 job throughput"):
                phi = random_model(work / "phi", TINY_PHI3 if args.cpu else PHI35_MINI, tokenizer)
                label = "tiny Phi-3" if args.cpu else "Phi-3.5-mini-shaped"
                print(f"{label} random model: {phi['params'] / 1e9:.3g} B parameters, built in {phi['build_s']} s")
                result["throughput"] = by_seqlen = throughput(args, str(work / "phi"), phi, work, mfu_peak)
                for seqlen, r in by_seqlen.items():
                    line(1, f"ours / plain steady tokens/s, seqlen {seqlen} x {r['batch']}", r["ratio"], "",
                         f"ours {r['ours_tps']:.0f}, plain {r['plain_tps']:.0f} tokens/s; |loss1 diff| "
                         f"{r['loss1_diff']:.2g}; target >= {TARGET}")
                    line(1, f"MFU, seqlen {seqlen}", r["mfu"], "", "of the data-sheet bf16 peak" if peak
                         else "of the measured matrix-product rate")
        if 2 not in args.skip and "throughput" in result:
            with item(2, "2 memory"):
                result["memory"] = mem = checkpointing(args, str(work / "phi"), work,
                                                       result["throughput"][max(args.seqlens)])
                unit = "MiB" if not args.cpu else "MiB RSS"
                line(2, f"peak memory, seqlen {mem['seqlen']}, no checkpointing", mem["without_mb"], unit)
                line(2, f"peak memory, seqlen {mem['seqlen']}, gradient checkpointing", mem["with_mb"], unit,
                     f"{mem['with_tps']:.0f} tokens/s (without: {mem['without_tps']:.0f})")
        # item 5 before the sweeps: its cost is fixed, theirs fits what is left of --budget
        reason = qlora_reason() if 5 not in args.skip else "--skip 5"
        if reason:
            result["qlora"] = {"skipped": reason}
            line(5, "QLoRA 4-bit trial vs bf16 LoRA", "skipped", "", reason)
        else:
            with item(5, "5 qlora"):
                result["qlora"] = qlora(args, work, tokenizer)
                for r in result["qlora"]["rows"]:
                    line(5, f"{r['variant']}: step s, peak memory", r["step_s"], "s",
                         f"x{r['step_x']:.2f} of LoRA's step; peak {r['peak_mb']:.0f} MiB{' RSS' if args.cpu else ''} "
                         f"(x{r['peak_x']:.2f}); load {r['load_s']:.1f} s; {r['trainable']} trainable")
        if 3 not in args.skip:
            with item(3, "3-4 sweeps"):
                if args.cpu:
                    small = str(tokenizer)  # the tiny Llama itself
                else:
                    random_model(work / "smollm2", SMOLLM2_135M, tokenizer)
                    small = str(work / "smollm2")
                result["sweeps"] = sweeps = []
                for k in args.per_gpu:
                    left = args.budget - (time.time() - began) if args.budget else math.inf
                    if sweeps and left < sweeps[-1]["wall_s"]:
                        line(3, f"trials/hour, trials_per_gpu {k}", "skipped", "",
                             f"{left:.0f} s of --budget left, the sweep before took {sweeps[-1]['wall_s']:.0f} s")
                        continue
                    sweeps.append(sweep(args, small, work, k, timeout=min(max(left, 60), 600)))
                    dump(args, result)
                alone = sweeps[0]
                for s in sweeps:
                    line(3, f"trials/hour, trials_per_gpu {s['per_gpu']}", s["trials_per_hour"], "/h",
                         f"{s['complete']}/{s['trials']} complete, x{s['trials_per_hour'] / alone['trials_per_hour']:.2f} "
                         f"of one at a time; GPU busy {B.num(s['util_sweep'])} % of the sweep")
                    for failure in s["failures"]:
                        print(f"trials_per_gpu {s['per_gpu']}: a trial failed: {failure}")
                line(3, "GPU utilisation of one small trial while it trains", alone["util_training"], "%",
                     "NVML samples every 0.1 s" if alone["util_training"] is not None else "no NVML here")
                bases = [s["baseline"] for s in sweeps if s["baseline"]]
                line(4, "base-model evaluation jobs (lora_sweep.job.evaluate, forked) that finished", len(bases), "",
                     f"of {len(sweeps)}; eval_loss {B.num(bases[0].get('eval_loss'))}" if bases else
                     "none: see the sweeps' logs")
                line(4, "warm launcher: fixed cost per trial (median, one at a time)", alone["fixed_s"], "s",
                     f"model load {B.num(alone['model_load_s'])} s of it (dtype auto: the runner leaves the model to the job)")
                line(4, "warm launcher: trials forked that completed", sum(s["complete"] for s in sweeps), "",
                     f"of {sum(s['trials'] for s in sweeps)}; {sum(s['primed_tokenizer'] for s in sweeps)} used the "
                     f"runner's tokenizer; libcuda mapped in the runner: "
                     + ("yes" if any(s["runner_cuda"] for s in sweeps) else "no" if alone["runner_found"]
                        else "runner not seen"))

    result["sections_s"] = sections
    result["elapsed_s"] = time.time() - began
    print()
    print(B.table(["item", "measure", "value", "unit", "note"],
                  [[str(x["item"]), x["measure"], x["value"] if not isinstance(x["value"], float) else B.num(x["value"]),
                    x["unit"], x["note"]] for x in lines]))
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in sections.items()) + f"; all {result['elapsed_s']:.0f}")
    result["rows"] = record(args, result)
    print(f"{len(result['rows'])} rows appended to {args.results}")
    if dump(args, result):
        print(f"figures written to {args.json}")
    if result["errors"]:
        print(f"FAILED: {', '.join(result['errors'])} (tracebacks above and in the JSON)")
    return result


def dump(args: argparse.Namespace, result: dict[str, Any]) -> bool:
    """Write the figures so far to --json, if given."""
    if not args.json:
        return False
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return True


def record(args: argparse.Namespace, result: dict[str, Any]) -> list[dict[str, str]]:
    """One RESULTS.md row per item measured."""
    tag = "smoke, cpu check, " if args.cpu else ""
    rows = []
    if "throughput" in result:
        t = result["throughput"]
        worst = min(r["ratio"] for r in t.values())
        figures = "; ".join(f"seqlen {s}x{r['batch']}: ours {r['ours_tps']:.0f} plain {r['plain_tps']:.0f} tok/s, "
                            f"MFU {r['mfu']:.1%}" for s, r in t.items())
        rows.append(B.append_result(args.results, "gpu 1 job throughput", f"{tag}Phi-3.5-mini shape, random, LoRA r16 "
                                    f"qkv/o/gate_up/down, {args.steps} steps, {args.pairs} pair(s)", figures, worst,
                                    "ours/plain steady tok/s, worst seqlen", f"ratio >= {TARGET}", worst >= TARGET))
    if "memory" in result:
        m = result["memory"]
        rows.append(B.append_result(args.results, "gpu 2 memory", f"{tag}seqlen {m['seqlen']}",
                                    f"peak {m['without_mb']:.0f} MiB without, {m['with_mb']:.0f} MiB with gradient "
                                    f"checkpointing ({m['with_tps']:.0f} vs {m['without_tps']:.0f} tok/s)",
                                    m["with_mb"] / m["without_mb"], "peak with / without", "-", None))
    if "sweeps" in result:
        s = result["sweeps"]
        best = max(x["trials_per_hour"] for x in s) / s[0]["trials_per_hour"]
        figures = "; ".join(f"per GPU {x['per_gpu']}: {x['trials_per_hour']:.0f} trials/h, busy "
                            f"{B.num(x['util_sweep'])} %" for x in s)
        figures += f"; one trial training: GPU {B.num(s[0]['util_training'])} %"
        rows.append(B.append_result(args.results, "gpu 3 sweep", f"{tag}SmolLM2-135M shape, random, demo study, "
                                    f"{args.trials} trials x {args.sweep_steps if not args.cpu else 2} steps",
                                    figures, best, "best trials/h / one at a time", "-", None))
        cuda = any(x["runner_cuda"] for x in s)
        rows.append(B.append_result(args.results, "gpu 4 warm launcher", f"{tag}the sweeps of gpu 3",
                                    f"fixed {s[0]['fixed_s']:.2f} s/trial (model load {s[0]['model_load_s']:.2f} s); "
                                    f"{sum(x['complete'] for x in s)} of {sum(x['trials'] for x in s)} forked trials "
                                    f"complete; libcuda mapped in the runner: {'yes' if cuda else 'no'}",
                                    s[0]["fixed_s"], "fixed s per trial", "every forked trial completes",
                                    all(x["complete"] == x["trials"] for x in s)))
    if result.get("qlora", {}).get("rows"):
        q = {r["variant"]: r for r in result["qlora"]["rows"]}
        figures = "; ".join(f"{name} {r['step_s']:.3g} s/step x{r['step_x']:.2f}, peak {r['peak_mb']:.0f} MiB "
                            f"x{r['peak_x']:.2f}" for name, r in q.items())
        rows.append(B.append_result(args.results, "gpu 5 qlora", f"{tag}{'tiny Phi-3' if args.cpu else 'Phi-3.5-mini shape'}"
                                    ", random, LoRA r16 qkv/o/gate_up/down, demo data, NF4 + double quant",
                                    figures, q["qlora-nf4"]["peak_x"], "QLoRA peak / LoRA peak", "-", None))
    return rows


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
