"""Shared pieces of the benchmarks: arguments, the model under test, the demo config, the
printed table and the row appended to RESULTS.md.

Every benchmark script imports this module from its own folder (`python bench/<script>.py`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is a local folder

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "RESULTS.md"
DEMO_YAML = REPO / "sweeps" / "demo.yaml"
DEMO_DATA = REPO / "demo"
EMBEDDED = "smollm2-135m-instruct"

COLUMNS = ["date", "bench", "machine", "versions", "setup", "figures", "ratio", "target", "met"]
HEADER = (
    "# Benchmark results\n\n"
    "One row per run, appended by the scripts in `bench/` (see `bench/README.md` for what each one\n"
    "measures and how). `machine` is the GPU, or the CPU model and its cores; `versions` are torch,\n"
    "transformers, peft and optuna; `ratio` says what it divides; `met` is the issue's target.\n"
    "Rows marked `smoke` in `setup` come from a tiny-model run and say nothing about speed.\n\n"
    "| " + " | ".join(COLUMNS) + " |\n"
    "|" + "---|" * len(COLUMNS) + "\n"
)


# ---------------------------------------------------------------- arguments and folders


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has."""
    p = argparse.ArgumentParser(description=description.strip().split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny random model and a few steps: checks the script runs, measures nothing")
    p.add_argument("--results", type=Path, default=RESULTS, help="the table to append a row to (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for models, caches and runs (default: a temporary folder, removed at the end)")
    p.add_argument("--model", default=None,
                   help=f"model folder or alias, or `tiny` for a tiny random Llama built on the spot "
                        f"(default: {EMBEDDED}; with --smoke: tiny)")
    return p


@contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    """`path` (created, kept), or a temporary folder removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix="lora_sweep-bench-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def quiet() -> None:
    """No progress bars or deprecation chatter from the libraries: the tables are the output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


def model_path(args: argparse.Namespace, work: Path) -> str:
    """The folder of the model under test: --model (`tiny`: the tiny Llama), the tiny model with
    --smoke, else SmolLM2."""
    from lora_sweep.job.models import resolve_model

    if args.model == "tiny" or (args.smoke and not args.model):
        return str(build_tiny_model(work / "tiny-llama"))
    return resolve_model(args.model or EMBEDDED)


def demo_model(args: argparse.Namespace, work: Path) -> str | None:
    """The model folder a run of the demo config is pointed at (see `model_overrides`): the tiny
    model with --smoke, the --model folder, or None for the demo's own."""
    return model_path(args, work) if (args.smoke or args.model) else None


def model_label(args: argparse.Namespace) -> str:
    if args.model == "tiny" or (args.smoke and not args.model):
        return "tiny-llama"
    return Path(args.model).name if args.model else EMBEDDED


# ---------------------------------------------------------------- the tiny model (as tests/conftest.py)


CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(folder: Path) -> Path:
    """A tiny random Llama (2 layers, width 64) with a byte-level BPE ChatML tokenizer, pad == eos."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    corpus = [line for line in (DEMO_DATA / "train.json").read_text(encoding="utf-8").splitlines()[:50]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>", chat_template=CHATML,
    ).save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the demo task


def demo_overrides() -> list[str]:
    """Overrides that make sweeps/demo.yaml independent of the current directory."""
    return [f"data.dataset={DEMO_DATA}"]


def budget_overrides(steps: int | None) -> list[str]:
    """A demo run of `steps` optimizer steps, still evaluated (and checkpointed) twice per trial."""
    if steps is None:
        return []
    every = max(1, steps // 2)
    return [f"training.num_training_steps={steps}", f"training.eval_steps={every}", f"training.save_steps={every}"]


def smoke_overrides(model: str) -> list[str]:
    """The demo study shrunk to seconds on the tiny model."""
    return [f"model.name_or_path={model}", "data.train_nsamples=16", "data.test_nsamples=4",
            "objective.max_new_tokens=4", *budget_overrides(2)]


def model_overrides(smoke: bool, model: str | None) -> list[str]:
    """The demo config's model for a run: the tiny model with the smoke settings, the --model folder,
    or (None) the demo's own."""
    if smoke:
        return smoke_overrides(model)
    return [f"model.name_or_path={model}"] if model else []


def sweep_logging() -> None:
    """The sweep's progress lines on stderr, as `python -m lora_sweep run` prints them."""
    import logging

    import optuna

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_demo(overrides: Sequence[str] = ()) -> Any:
    """sweeps/demo.yaml as a StudyConfig, with `key.sub=value` overrides."""
    from lora_sweep.config.study import load_study

    return load_study(DEMO_YAML, [*demo_overrides(), *overrides])


# ---------------------------------------------------------------- machine and versions


def machine() -> str:
    """The GPU(s), or the CPU model and its cores."""
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"{torch.cuda.get_device_name(0)}" + (f" x{n}" if n > 1 else "")
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def versions() -> str:
    import optuna
    import peft
    import torch
    import transformers

    return (f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"peft {peft.__version__}, optuna {optuna.__version__}")


# ---------------------------------------------------------------- printing and recording


def num(x: float | None, digits: int = 3) -> str:
    """A number for a table: `-` for None, `inf` kept readable, else `digits` significant digits."""
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else num(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def append_result(path: Path, bench: str, setup: str, figures: str, ratio: float, ratio_what: str,
                  target: str, met: bool | None) -> dict[str, str]:
    """Append one row to the results table (creating the file with its header); the row's cells."""
    row = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "bench": bench,
        "machine": machine(),
        "versions": versions(),
        "setup": setup,
        "figures": figures,
        "ratio": f"{num(ratio)} ({ratio_what})",
        "target": target,
        "met": "n/a" if met is None else ("yes" if met else "no"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if "| " + " | ".join(COLUMNS) + " |" not in text:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + HEADER
    if not text.endswith("\n"):
        text += "\n"
    text += "| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |\n"
    path.write_text(text, encoding="utf-8")
    return row


def read_results(path: Path) -> list[dict[str, str]]:
    """The rows of a results table (as append_result writes it), each as {column: cell}."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def conclude(bench: str, args: argparse.Namespace, setup: str, figures: str, ratio: float, ratio_what: str,
             target: str, met: bool | None) -> dict[str, str]:
    """Print the ratio and the verdict as the last lines, and append the row to --results."""
    if args.smoke:
        setup = f"smoke, {setup}"
    print(f"\nratio: {num(ratio)} ({ratio_what})")
    print(f"target: {target}: {'n/a' if met is None else ('met' if met else 'NOT met')}")
    row = append_result(args.results, bench, setup, figures, ratio, ratio_what, target, met)
    print(f"row appended to {args.results}")
    return row
