"""Question 2, with transformers' Trainer as lora_sweep's job uses it: a base-mutating init (PiSSA/OLoRA)
  - the init adapter saved right after get_peft_model (OUT/adapter_init),
  - a callback that keeps the adapter at each evaluation CONVERTED (save_pretrained(...,
    path_initial_model_for_weight_conversion=OUT/adapter_init)), as the job's Reporter keeps its best,
  - a Trainer checkpoint at step 5, and a resume from it in a new process-like setting (fresh base,
    get_peft_model again, as the job's load_model does) that must end where the uninterrupted run ends.

    python trainer_pissa.py [pissa|olora|pissa_niter_4]
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings

import torch
from common import batch, load_base, logits, maxdiff
from loraplus import Rows, args, collate
from transformers import Trainer, TrainerCallback
from variants import build

warnings.filterwarnings("ignore")


class KeepConverted(TrainerCallback):
    def __init__(self, out):
        self.out = out
        self.kept = []

    def on_evaluate(self, args, state, control, model=None, **kw):
        d = f"{self.out}/best_step{state.global_step}"
        model.save_pretrained(d, path_initial_model_for_weight_conversion=f"{self.out}/adapter_init")
        self.kept.append((state.global_step, d))


def main(name):
    from peft import PeftModel

    b = batch()
    ds = Rows(b)
    out = f"/tmp/variants/out/trainer_{name}"
    shutil.rmtree(out, ignore_errors=True)
    res = {"variant": name}
    # uninterrupted: 10 steps, evaluation (and converted keep) at 5 and 10, checkpoint at 5
    m, _ = build(name, b)
    m.save_pretrained(f"{out}/adapter_init")
    cb = KeepConverted(out)
    kw = dict(max_steps=10, save_strategy="steps", save_steps=5, eval_strategy="steps", eval_steps=5,
              learning_rate=5e-3, weight_decay=0.0)
    t = Trainer(model=m, args=args(f"{out}/run", **kw), train_dataset=ds, eval_dataset=Rows(b, 8),
                data_collator=collate, callbacks=[cb])
    t.train()
    full_losses = [h["loss"] for h in t.state.log_history if "loss" in h]
    ft = logits(m, b)
    conv = PeftModel.from_pretrained(load_base(), cb.kept[-1][1])
    res["kept_converted_step10_on_original_base_vs_trained"] = maxdiff(logits(conv, b), ft)
    res["kept"] = [s for s, _ in cb.kept]
    # resume from checkpoint-5 with a fresh base + get_peft_model (the init runs again on the ORIGINAL base)
    m2, _ = build(name, b)
    t2 = Trainer(model=m2, args=args(f"{out}/run", **kw), train_dataset=ds, eval_dataset=Rows(b, 8),
                 data_collator=collate)
    t2.train(resume_from_checkpoint=f"{out}/run/checkpoint-5")
    res2 = [h["loss"] for h in t2.state.log_history if "loss" in h]
    res["uninterrupted_losses_6_10"] = full_losses[5:]
    res["resumed_losses_6_10"] = res2[-5:]
    res["resumed_final_vs_uninterrupted_final_logits"] = maxdiff(logits(m2, b), ft)
    res["resumed_adapters"] = list(m2.peft_config)
    shutil.rmtree(out, ignore_errors=True)
    text = json.dumps(res, indent=1)
    open(f"/tmp/variants/results/trainer_{name}.json", "w").write(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pissa")
