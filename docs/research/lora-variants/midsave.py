"""Question 2, for the job: a converted save in the MIDDLE of training (the best adapter is kept at an
evaluation, training goes on) must not disturb training. PiSSA: 10 steps, save converted, 10 more steps,
vs 20 uninterrupted steps from the same init (losses and final logits must be identical). Also: the
converted adapter saved at step 10 on the original base = the model's logits at step 10.

    python midsave.py [pissa|olora]
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings

import torch
from common import batch, load_base, logits, maxdiff, train
from variants import build

warnings.filterwarnings("ignore")


def main(name):
    from peft import PeftModel

    b = batch()
    out = f"/tmp/variants/out/midsave_{name}"
    shutil.rmtree(out, ignore_errors=True)
    # uninterrupted
    m1, _ = build(name, b)
    opt1 = torch.optim.AdamW([p for p in m1.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    l1a, _ = train(m1, b, steps=10, optimizer=opt1)
    l1b, _ = train(m1, b, steps=10, optimizer=opt1)
    # with a converted save at step 10
    m2, _ = build(name, b)
    m2.save_pretrained(f"{out}/adapter_init")
    opt2 = torch.optim.AdamW([p for p in m2.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    l2a, _ = train(m2, b, steps=10, optimizer=opt2)
    at10 = logits(m2, b)
    trainable_before = sorted(n for n, p in m2.named_parameters() if p.requires_grad)
    m2.save_pretrained(f"{out}/best", path_initial_model_for_weight_conversion=f"{out}/adapter_init")
    trainable_after = sorted(n for n, p in m2.named_parameters() if p.requires_grad)
    l2b, _ = train(m2, b, steps=10, optimizer=opt2)
    conv = PeftModel.from_pretrained(load_base(), f"{out}/best")
    res = {"variant": name, "losses_identical": l1a + l1b == l2a + l2b,
           "max_loss_diff": max(abs(x - y) for x, y in zip(l1a + l1b, l2a + l2b)),
           "final_logits_diff": maxdiff(logits(m1, b), logits(m2, b)),
           "trainable_params_unchanged": trainable_before == trainable_after,
           "adapters_after_save": list(m2.peft_config), "active_adapter": m2.active_adapter,
           "converted_step10_on_original_base_vs_step10": maxdiff(logits(conv, b), at10)}
    shutil.rmtree(out, ignore_errors=True)
    text = json.dumps(res, indent=1)
    open(f"/tmp/variants/results/midsave_{name}.json", "w").write(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pissa")
