"""Question 4, the trap: are QLoRA's gradients right on this CPU, before and after an evaluation?
(run with /tmp/variants/bnb-venv/bin/python)

bitsandbytes 0.50's Linear4bit.forward, on a CPU with AVX512-BF16, in eval mode with an input that does not
require grad, repacks its weight once into an inference layout (`packing_format_for_cpu`, absmax in bf16); from
then on matmul_4bit takes F.gemv_4bit, which has no autograd formula, even in train mode.

Reference: the same 4-bit model dequantized (transformers' model.dequantize(): fp32 weights = dequant(Q(W))),
with the same LoRA weights (init_lora_weights=False: A and B both nonzero, copied over). Compare each LoRA
param's gradient (relative error), for: (A) the 4-bit model never evaluated, (B) after one eval forward.
Then: train 20 steps in each state and merge into the dequantized base (export --merge that reproduces the
fine-tuned 4-bit model), vs the fine-tuned logits.
"""

from __future__ import annotations

import json
import shutil
import warnings

import torch
from common import batch, logits, maxdiff, train
from qlora import CASES, load_4bit

warnings.filterwarnings("ignore")


def peft(m, prepare=True):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if prepare:
        m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=True)
    torch.manual_seed(0)
    return get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM",
                                        init_lora_weights=False))


@torch.no_grad()
def logits_train_mode(model, b):
    """Logits without eval(): dropout is 0 here, and Linear4bit does not repack in train mode."""
    model.train()
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
    return out[b["attention_mask"].bool()]


def grads(pm, b):
    pm.train()
    pm.zero_grad()
    pm(**b).loss.backward()
    return {n: p.grad.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}


def compare(g, ref):
    rel = {n: float((g[n] - ref[n]).norm() / ref[n].norm()) for n in ref}
    by_layer = {}
    for n, v in rel.items():
        layer = n.split("layers.")[1].split(".")[0]
        by_layer[layer] = max(by_layer.get(layer, 0.0), v)
    return {"max_rel_err": max(rel.values()), "max_rel_err_by_layer": by_layer}


def main():
    c = CASES["nf4_dq_fp32"]
    b = batch()
    out = {}
    # reference: dequantized copy (fp32 weights = dequant(Q(W))), same LoRA
    ref_base = load_4bit(c)
    ref_base.dequantize()
    out["dequantized_types"] = sorted({type(m).__name__ for n, m in ref_base.named_modules() if n.endswith("proj")})
    ref = peft(ref_base, prepare=False)
    g_ref = grads(ref, b)

    for label, eval_first, no_pack in (("A_never_evaluated", False, False), ("B_after_one_eval_forward", True, False),
                                       ("C_eval_forward_with_support_avx512bf16_for_cpu_False", True, True)):
        m4 = load_4bit(c)
        if no_pack:  # the workaround: never repack for CPU inference
            for mod in m4.modules():
                if hasattr(mod, "support_avx512bf16_for_cpu"):
                    mod.support_avx512bf16_for_cpu = False
        pm = peft(m4)
        pm.load_state_dict({k: v for k, v in ref.state_dict().items() if "lora_" in k}, strict=False)
        if eval_first:
            logits(pm, b)  # model.eval(), no_grad: what the Trainer's evaluation does
        packed = sorted({bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
                         for n, m in pm.named_modules() if type(m).__name__ == "Linear4bit"})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = grads(pm, b)
        r = {"packed_for_cpu_inference": packed, **compare(g, g_ref),
             "warnings": sorted({str(w.message)[:160] for w in caught if "deprecat" not in str(w.message)
                                 and "use_reentrant" not in str(w.message)})}
        losses, _ = train(pm, b, steps=20, lr=1e-2)
        r["loss"] = [round(losses[0], 4), round(losses[-1], 4)]
        ft = logits_train_mode(pm, b)
        r["eval_mode_vs_train_mode_logits_after_training"] = maxdiff(logits(pm, b), ft)
        d = f"/tmp/variants/out/qg_{label}"
        shutil.rmtree(d, ignore_errors=True)
        pm.save_pretrained(d)
        from peft import PeftModel

        deq = load_4bit(c)
        deq.dequantize()
        merged = PeftModel.from_pretrained(deq, d).merge_and_unload()
        r["merged_into_dequantized_base_vs_ft"] = maxdiff(logits(merged, b), ft)
        out[label] = r
        shutil.rmtree(d, ignore_errors=True)
    text = json.dumps(out, indent=1, default=str)
    open("/tmp/variants/results/qlora_grad.json", "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
