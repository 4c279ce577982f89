"""Question 4 with transformers' Trainer (bnb venv): does an evaluation in the middle of QLoRA training on
this CPU change the training that follows? Three 20-step runs, nf4 + double quant, fp32 compute:
  1) no evaluation; 2) evaluation every 5 steps; 3) evaluation every 5 steps with every Linear4bit's
  support_avx512bf16_for_cpu set to False (no repacking for CPU inference).
An evaluation must not change the training losses: 1 == 3 expected; 2 shows the trap.

    /tmp/variants/bnb-venv/bin/python qlora_trainer.py
"""

from __future__ import annotations

import json
import shutil
import warnings

import torch
from common import batch
from loraplus import Rows, args, collate
from qlora import CASES, load_4bit
from transformers import Trainer

warnings.filterwarnings("ignore")


def run(eval_every, no_pack):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    b = batch()
    m = prepare_model_for_kbit_training(load_4bit(CASES["nf4_dq_fp32"], no_pack=no_pack),
                                        use_gradient_checkpointing=True)
    torch.manual_seed(0)
    pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    out = "/tmp/variants/out/qtrainer"
    shutil.rmtree(out, ignore_errors=True)
    kw = dict(learning_rate=5e-3, weight_decay=0.0)
    if eval_every:
        kw.update(eval_strategy="steps", eval_steps=eval_every)
    t = Trainer(model=pm, args=args(out, **kw), train_dataset=Rows(b), eval_dataset=Rows(b, 8), data_collator=collate)
    t.train()
    shutil.rmtree(out, ignore_errors=True)
    return [round(h["loss"], 5) for h in t.state.log_history if "loss" in h]


def main():
    r1 = run(None, no_pack=False)
    r2 = run(5, no_pack=False)
    r3 = run(5, no_pack=True)
    res = {"1_no_eval": r1, "2_eval_every_5": r2, "3_eval_every_5_no_repack": r3,
           "max_diff_2_vs_1": max(abs(x - y) for x, y in zip(r1, r2)),
           "max_diff_3_vs_1": max(abs(x - y) for x, y in zip(r1, r3)),
           "first_step_where_2_differs": next((i + 1 for i, (x, y) in enumerate(zip(r1, r2)) if x != y), None)}
    text = json.dumps(res, indent=1)
    open("/tmp/variants/results/qlora_trainer.json", "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
