"""Question 4: QLoRA on the CPU with bitsandbytes (run with /tmp/variants/bnb-venv/bin/python).

    /tmp/variants/bnb-venv/bin/python qlora.py [CASE ...]

For each case (quant type nf4/fp4, double quant, compute dtype, plain LoRA or DoRA):
  load the tiny Llama with BitsAndBytesConfig(load_in_4bit=True, ...) on the CPU; are the linears Linear4bit,
  how far are its logits from the fp32 model; prepare_model_for_kbit_training; LoRA (r 8, all-linear);
  20 AdamW steps (loss falls?); save_pretrained; reload (4-bit base + PeftModel.from_pretrained) logits equal?;
  merge_and_unload on the 4-bit base (what error / how far); and the adapter merged into the fp32 base
  (what `export --merge` from the original full-precision weights would give) vs the 4-bit fine-tuned logits.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
import traceback
import warnings

import torch
from common import batch, load_base, logits, maxdiff, tiny_model_dir, train

CASES = {
    "nf4_dq_fp32": dict(quant="nf4", dq=True, cdt=torch.float32),
    "nf4_nodq_fp32": dict(quant="nf4", dq=False, cdt=torch.float32),
    "fp4_dq_fp32": dict(quant="fp4", dq=True, cdt=torch.float32),
    "nf4_dq_bf16": dict(quant="nf4", dq=True, cdt=torch.bfloat16),
    "nf4_dq_fp32_dora": dict(quant="nf4", dq=True, cdt=torch.float32, dora=True),
    "nf4_dq_fp32_pissa": dict(quant="nf4", dq=True, cdt=torch.float32, init="pissa"),
}


def load_4bit(c, no_pack=True):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=c["quant"], bnb_4bit_use_double_quant=c["dq"],
                           bnb_4bit_compute_dtype=c["cdt"])
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), quantization_config=q, device_map="cpu",
                                             dtype=torch.float32)
    if no_pack:  # see qlora_grad.py: an eval forward would repack the weights for CPU inference, breaking backward
        for mod in m.modules():
            if hasattr(mod, "support_avx512bf16_for_cpu"):
                mod.support_avx512bf16_for_cpu = False
    return m


def step(res, key, fn):
    try:
        return fn()
    except Exception as exc:
        res[key] = f"{type(exc).__name__}: {str(exc)[:500]}"
        res.setdefault("tracebacks", {})[key] = traceback.format_exc()[-1500:]
        return None


def run(name):
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    c = CASES[name]
    res = {"case": name}
    b = batch()
    fp32 = load_base()
    base_logits = logits(fp32, b)
    m = step(res, "load_error", lambda: load_4bit(c))
    if m is None:
        return res
    res["linear_types"] = sorted({type(mod).__name__ for n, mod in m.named_modules() if n.endswith("proj")})
    res["lm_head_type"] = type(m.lm_head).__name__
    res["is_loaded_in_4bit"] = getattr(m, "is_loaded_in_4bit", None)
    q_logits = step(res, "forward_error", lambda: logits(m, b))
    if q_logits is None:
        return res
    res["4bit_vs_fp32_logits_maxdiff"] = maxdiff(q_logits, base_logits)
    m = step(res, "prepare_error", lambda: prepare_model_for_kbit_training(m, use_gradient_checkpointing=True))
    if m is None:
        return res
    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM",
                     use_dora=c.get("dora", False), init_lora_weights=c.get("init", True))
    pm = step(res, "get_peft_model_error", lambda: get_peft_model(m, cfg))
    if pm is None:
        return res
    res["lora_layer_types"] = sorted({type(mod).__name__ for n, mod in pm.named_modules() if n.endswith("proj")})
    out = step(res, "train_error", lambda: train(pm, b, steps=20, lr=1e-2))
    if out is None:
        return res
    losses, step_s = out
    res.update(loss_first=round(losses[0], 4), loss_last=round(losses[-1], 4), loss_falls=losses[-1] < 0.9 * losses[0],
               step_s=round(step_s, 4))
    ft = logits(pm, b)
    d = f"/tmp/variants/out/q_{name}"
    shutil.rmtree(d, ignore_errors=True)
    if step(res, "save_error", lambda: pm.save_pretrained(d)) is None and "save_error" in res:
        return res
    loaded = step(res, "reload_error", lambda: PeftModel.from_pretrained(load_4bit(c), d))
    if loaded is not None:
        res["reloaded_4bit_vs_ft_maxdiff"] = maxdiff(logits(loaded, b), ft)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            merged = step(res, "merge_4bit_error", lambda: loaded.merge_and_unload())
        res["merge_4bit_warnings"] = sorted({str(w.message)[:300] for w in caught if "deprecat" not in str(w.message)})
        if merged is not None:
            res["merged_4bit_types"] = sorted({type(mod).__name__ for n, mod in merged.named_modules() if n.endswith("proj")})
            res["merged_4bit_vs_ft_maxdiff"] = maxdiff(logits(merged, b), ft)
    # the adapter onto the ORIGINAL full-precision weights (export --merge from the fp32 base)
    full = step(res, "fp32_base_load_error", lambda: PeftModel.from_pretrained(load_base(), d))
    if full is not None:
        res["adapter_on_fp32_base_vs_ft_maxdiff"] = maxdiff(logits(full, b), ft)
        fm = step(res, "merge_fp32_error", lambda: full.merge_and_unload())
        if fm is not None:
            res["merged_fp32_vs_adapter_on_fp32_maxdiff"] = maxdiff(logits(fm, b), logits(full, b))
    # the adapter merged into the DEQUANTIZED 4-bit base (fp32 weights = dequant(Q(W))): reproduces the trained model
    def deq_merge():
        deq = load_4bit(c)
        deq.dequantize()
        return PeftModel.from_pretrained(deq, d)

    dm = step(res, "dequantized_load_error", deq_merge)
    if dm is not None:
        res["adapter_on_dequantized_base_vs_ft_maxdiff"] = maxdiff(logits(dm, b), ft)
        mm = step(res, "merge_dequantized_error", lambda: dm.merge_and_unload())
        if mm is not None:
            res["merged_dequantized_vs_ft_maxdiff"] = maxdiff(logits(mm, b), ft)
    res["ft_vs_base"] = maxdiff(ft, base_logits)
    shutil.rmtree(d, ignore_errors=True)
    return res


if __name__ == "__main__":
    import bitsandbytes

    names = sys.argv[1:] or list(CASES)
    allres = {"versions": {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__}}
    import peft
    import transformers

    allres["versions"].update(peft=peft.__version__, transformers=transformers.__version__)
    for n in names:
        t0 = time.perf_counter()
        r = run(n)
        r["seconds"] = round(time.perf_counter() - t0, 2)
        allres[n] = r
        print(json.dumps({k: v for k, v in r.items() if k != "tracebacks"}, default=str), flush=True)
    allres["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    open(f"/tmp/variants/results/qlora{'_' + '_'.join(sys.argv[1:]) if sys.argv[1:] else ''}.json", "w").write(
        json.dumps(allres, indent=1, default=str))
