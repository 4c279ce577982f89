"""Helpers shared by the tests: a tiny byte-level BPE tokenizer with a ChatML template (pad ==
eos, the trap a stock collator falls into), tiny random Llama / Phi-3 models saved to folders,
a small chat data set, job and study trees, and the CLI run as a user would (a child process) or
in this process. Nothing is downloaded. Fixtures built on these live in conftest.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
ANIMALS = ["cat", "dog", "owl", "fox", "bee", "cow", "eel", "yak"]


def chat(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def memorization_samples() -> list[dict]:
    """A small, learnable mapping: the favourite colour of each animal."""
    return [chat(f"colour of the {a}?", f"The {a} likes {c}.") for a, c in zip(ANIMALS, COLOURS)]


def validated_chat(*files: Path) -> list[str]:
    """What `validate` prints after its first line for memorization data in chat JSON lines (`files`,
    its train file first) and the tiny models' chat template: each file's format, the first sample."""
    return [*(f"{f}: chat (recognised from line 1: fields messages)" for f in files),
            "the first training sample as the model sees it; the loss is on what [[ ]] marks:",
            "<|im_start|>user", "colour of the cat?<|im_end|>", "<|im_start|>assistant", "[[The cat likes red.<|im_end|>",
            "]]"]


def write_jsonl(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return path


def build_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"The {a} likes {c}. colour of the {a}? {c} {a}" for a in ANIMALS for c in COLOURS]
    corpus += ["user assistant system You are a helpful bot. Answer briefly. hello world 0123456789"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>", chat_template=CHATML,
    )
    fast.save_pretrained(folder)


def build_model(folder: Path, kind: str) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM
    import torch

    build_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**common)) if kind == "llama" else Phi3ForCausalLM(Phi3Config(**common))
    model.save_pretrained(folder)
    return folder


def job_tree(model: Path, data: Path, out: Path, **training) -> dict:
    """A small job config: a few steps of the tiny model on the memorization set."""
    return {
        "model": {"name_or_path": str(model)},
        "lora": {"r": 16, "alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "data": {"dataset": str(data), "train_seqlen": 32, "test_seqlen": 32, "train_batch_size": 2,
                 "test_batch_size": 4, "cache_dir": str(out.parent / "cache")},
        "training": {"num_training_steps": 6, "eval_steps": 2, "save_steps": 2, "learning_rate": 5e-3,
                     "lr_scheduler_type": "linear", **training},
        "output_dir": str(out),
    }


def write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


def run_module(args: list[str], timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m lora_sweep ...` in a child process, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "lora_sweep", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=kwargs.pop("cwd", REPO), **kwargs)


def run_cli(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m lora_sweep ...` inside this process (`cli.main`): the same parser, commands and
    error lines without an interpreter start (seconds each). For checks of what a command prints
    and refuses; run_module keeps the real command line where the process itself matters."""
    from lora_sweep import cli

    out, err = io.StringIO(), io.StringIO()
    with working_directory(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return subprocess.CompletedProcess(["lora_sweep", *args], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """The block runs in `path` (contextlib.chdir needs Python 3.11)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def study_tree(model: Path, data: Path, folder: Path, **study) -> dict:
    return {
        "study": {"name": "tiny", "dir": str(folder), "n_trials": 3, "sampler": {"type": "random", "seed": 3},
                  "pruner": {"type": "none"}, "heartbeat_interval": 1, "grace_period": 2, **study},
        "model": {"name_or_path": str(model)},
        "lora": {"lora_dropout": 0.0},
        "data": {"dataset": str(data), "train_seqlen": 32, "test_seqlen": 32, "train_batch_size": 2,
                 "test_batch_size": 4},
        "training": {"num_training_steps": 6, "eval_steps": 2, "save_steps": 2},
        "search_space": {"num_warmup_steps": {"type": "int", "low": 0, "high": 4}},
        "objective": {"baseline": False},
    }


def mixed_study_tree(model: Path, data: Path, folder: Path) -> dict:
    """A study whose 3 trials end in each way a trial can: 0 the defaults (completes), 1 a module
    that does not exist (fails, and is made up for), 2 a rate too small to learn (pruned at step
    8, the first evaluation past the pruner's warmup). The random sampler's seed 57 draws them in
    this order. 80 steps a trial (about 2 s for this model), so that the pruned job is stopped well
    before its end: the sweep reads events every 0.5 s, in which the job runs some 20 steps."""
    return {
        "study": {"name": "seen", "dir": str(folder), "n_trials": 2,
                  "sampler": {"type": "random", "seed": 57}, "base_space": "none",
                  "pruner": {"type": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 5}},
                  "heartbeat_interval": 1, "grace_period": 2},
        "model": {"name_or_path": str(model)},
        "lora": {"lora_dropout": 0.0},
        "data": {"dataset": str(data), "train_seqlen": 32, "test_seqlen": 32, "train_batch_size": 2,
                 "test_batch_size": 4},
        "training": {"num_training_steps": 80, "eval_steps": 4, "save_steps": 4, "learning_rate": 0.03,
                     "early_stopping_patience": 0},
        "search_space": {"learning_rate": {"type": "categorical", "choices": [0.03, 1e-7]},
                         "target_modules": {"type": "categorical", "choices": ["all-linear", ["nope_proj"]]},
                         "r": {"type": "categorical", "choices": [16, 4]}},
    }


def load(folder: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/{name}.db")


def job_processes(marker: str) -> list[int]:
    """PIDs of live processes whose command line mentions `marker` (a job's file or folder), or that
    work in its folder: a job forked by the warm runner keeps the runner's command line."""
    folder = marker if os.path.isdir(marker) else os.path.dirname(marker)
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if marker in cmdline or (cwd + "/").startswith(folder + "/"):
                found.append(int(pid))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
