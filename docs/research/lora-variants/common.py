"""Shared bits for the variant experiments: the tiny Llama of /work/main/tests/helpers.py (built once
into /tmp/variants/tiny), a fixed batch of the memorization chat set, a plain torch training loop,
logits comparison. Runs with /work/main/.venv/bin/python (or the bnb venv, which has the same libs)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, "/work/main/tests")
sys.path.insert(0, "/work/main")

import torch  # noqa: E402

torch.set_num_threads(1)

HERE = Path("/tmp/variants")
TINY = HERE / "tiny"


def tiny_model_dir() -> Path:
    if not (TINY / "config.json").exists():
        try:
            from helpers import build_model
        except Exception:  # the bnb venv lacks optuna/yaml: fall back to a copy of the builder
            build_model = _build_model_copy
        TINY.mkdir(parents=True, exist_ok=True)
        build_model(TINY, "llama")
    return TINY


def _build_model_copy(folder: Path, kind: str) -> Path:  # same as tests/helpers.py build_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    raise RuntimeError("build the tiny model with /work/main/.venv/bin/python first")


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir())


def load_base(dtype=torch.float32, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=dtype, **kw)


ANIMALS = ["cat", "dog", "owl", "fox", "bee", "cow", "eel", "yak"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]


def batch() -> dict:
    """8 chat rows (the memorization set), right-padded; labels -100 on padding."""
    tok = tokenizer()
    rows = []
    for a, c in zip(ANIMALS, COLOURS):
        msgs = [{"role": "user", "content": f"colour of the {a}?"}, {"role": "assistant", "content": f"The {a} likes {c}."}]
        text = tok.apply_chat_template(msgs, tokenize=False)
        rows.append(tok(text)["input_ids"])
    n = max(map(len, rows))
    ids = torch.full((len(rows), n), tok.pad_token_id)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def logits(model, b) -> torch.Tensor:
    was = model.training
    model.eval()
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
    model.train(was)
    m = b["attention_mask"].bool()
    return out[m]  # only real positions


def maxdiff(a, b) -> float:
    return float((a - b).abs().max())


def train(model, b, steps=20, lr=5e-3, optimizer=None):
    """Plain loop: AdamW on the trainable params, full batch each step; losses and seconds per step."""
    model.train()
    opt = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        out = model(**b)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    return losses, (time.perf_counter() - t0) / steps
