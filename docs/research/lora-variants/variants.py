"""Question 1 (and 5): one LoRA variant on the tiny Llama, in its own process.

    python variants.py NAME [--steps 20] [--lr 5e-3] [--json out.json]

For NAME (see VARIANTS): get_peft_model (with the variant's extra preprocessing: eva, corda, lora_ga),
is the fresh adapter a no-op (logits vs the base), train 20 steps with AdamW (loss falls?),
save_pretrained, PeftModel.from_pretrained on a FRESH copy of the original base (same logits?),
merge_and_unload of that loaded model (merged logits = adapter logits within 1e-4?).
Also: step time and peak RSS (ru_maxrss of this process) for question 5.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
import traceback
import warnings

import common
import torch
from common import batch, load_base, logits, maxdiff, train

R, ALPHA = 8, 16
VARIANTS = {
    "lora": {},
    "false_init": {"init_lora_weights": False},
    "gaussian": {"init_lora_weights": "gaussian"},
    "rslora": {"use_rslora": True},
    "dora": {"use_dora": True},
    "dora_rslora": {"use_dora": True, "use_rslora": True},
    "pissa": {"init_lora_weights": "pissa"},
    "pissa_niter_4": {"init_lora_weights": "pissa_niter_4"},
    "olora": {"init_lora_weights": "olora"},
    "orthogonal": {"init_lora_weights": "orthogonal"},
    "mica": {"init_lora_weights": "mica"},
    "loftq": {"init_lora_weights": "loftq", "loftq_config": "LOFTQ"},
    "eva": {"init_lora_weights": "eva"},
    "corda": {"init_lora_weights": "corda", "target_modules": "EXPLICIT"},
    "lora_ga": {"init_lora_weights": "lora_ga", "lora_ga_config": "LORAGA", "target_modules": "EXPLICIT"},
    "corda_all_linear": {"init_lora_weights": "corda"},
    "lora_ga_all_linear": {"init_lora_weights": "lora_ga", "lora_ga_config": "LORAGA"},
    "dora_pissa": {"use_dora": True, "init_lora_weights": "pissa"},
    "dora_olora": {"use_dora": True, "init_lora_weights": "olora"},
    "rslora_pissa": {"use_rslora": True, "init_lora_weights": "pissa"},
    "dora_gaussian": {"use_dora": True, "init_lora_weights": "gaussian"},
    "dora_eva": {"use_dora": True, "init_lora_weights": "eva"},
}


def make_config(name):
    from peft import LoftQConfig, LoraConfig
    from peft.tuners.lora.config import LoraGAConfig

    kw = dict(VARIANTS[name])
    if kw.get("loftq_config") == "LOFTQ":
        kw["loftq_config"] = LoftQConfig(loftq_bits=4, loftq_iter=1)
    if kw.get("lora_ga_config") == "LORAGA":
        kw["lora_ga_config"] = LoraGAConfig()
    # preprocess_corda / preprocess_loraga do not expand "all-linear": they need the module names
    if kw.get("target_modules") == "EXPLICIT":
        kw["target_modules"] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    kw.setdefault("target_modules", "all-linear")
    return LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM", **kw)


def build(name, b):
    """The PEFT model for `name`, with the variant's data-driven preprocessing; and what it needed."""
    from peft import get_peft_model

    torch.manual_seed(0)
    cfg = make_config(name)
    base = load_base()
    init = cfg.init_lora_weights
    extra = None
    if init == "corda":
        from peft.tuners.lora.corda import preprocess_corda

        def run_model():  # CorDA's hook squeezes dim 0: one unpadded sequence per forward
            with torch.no_grad():
                for ids, mask in zip(b["input_ids"], b["attention_mask"]):
                    base(input_ids=ids[mask.bool()][None])

        preprocess_corda(base, cfg, run_model=run_model)
        extra = "preprocess_corda(model, config, run_model=callable running calibration rows ONE AT A TIME, batch 1) BEFORE get_peft_model; explicit target_modules"
    if init == "lora_ga":
        from peft import preprocess_loraga

        def train_step():
            out = base(**b)
            out.loss.backward()

        preprocess_loraga(base, cfg, train_step=train_step)
        extra = "preprocess_loraga(model, config, train_step=callable doing forward+backward) BEFORE get_peft_model; explicit target_modules"
    if init == "eva":
        from peft import initialize_lora_eva_weights

        model = get_peft_model(base, cfg, low_cpu_mem_usage=True)
        initialize_lora_eva_weights(model, dataloader=[b, b], show_progress_bar=False)
        extra = "get_peft_model(..., low_cpu_mem_usage=True) then initialize_lora_eva_weights(model, dataloader) AFTER"
        return model, extra
    return get_peft_model(base, cfg), extra


def run(name, steps, lr):
    res = {"variant": name, "config": {k: str(v) for k, v in VARIANTS[name].items()}}
    b = batch()
    base_logits = logits(load_base(), b)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, extra = build(name, b)
    res["build_s"] = round(time.perf_counter() - t0, 3)
    res["extra_step"] = extra
    res["build_warnings"] = sorted({str(w.message)[:200] for w in caught})
    res["trainable"] = model.get_nb_trainable_parameters()[0]
    res["init_noop_maxdiff"] = maxdiff(logits(model, b), base_logits)
    losses, step_s = train(model, b, steps=steps, lr=lr)
    res["loss_first"], res["loss_last"] = round(losses[0], 4), round(losses[-1], 4)
    res["loss_falls"] = losses[-1] < losses[0] * 0.9
    res["step_s"] = round(step_s, 5)
    ft = logits(model, b)
    res["ft_vs_base_maxdiff"] = maxdiff(ft, base_logits)
    tmp = tempfile.mkdtemp(prefix=f"v_{name}_", dir="/tmp/variants/out")
    try:
        model.save_pretrained(tmp)
        cfg_saved = json.load(open(f"{tmp}/adapter_config.json"))
        res["saved_init_lora_weights"] = cfg_saved.get("init_lora_weights")
        res["saved_r_rank_pattern"] = (cfg_saved.get("r"), bool(cfg_saved.get("rank_pattern")))
        res["saved"] = True
    except Exception as exc:
        res["saved"] = f"{type(exc).__name__}: {exc}"
        return res
    from peft import PeftModel

    try:
        torch.manual_seed(1234)  # a different RNG state than training had: a random re-init shows
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = PeftModel.from_pretrained(load_base(), tmp)
        res["load_warnings"] = sorted({str(w.message)[:200] for w in caught})
        lo = logits(loaded, b)
        res["loaded_vs_ft_maxdiff"] = maxdiff(lo, ft)
    except Exception as exc:
        res["loaded"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        traceback.print_exc()
        return res
    try:
        merged = loaded.merge_and_unload()
        res["merged_vs_loaded_maxdiff"] = maxdiff(logits(merged, b), lo)
        res["merged_vs_ft_maxdiff"] = maxdiff(logits(merged, b), ft)
        # the real test of a merge: the merged weights, saved and reloaded as a plain model
        mdir = tmp + "_merged"
        merged.save_pretrained(mdir)
        from transformers import AutoModelForCausalLM

        re = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
        res["merged_reloaded_vs_ft_maxdiff"] = maxdiff(logits(re, b), ft)
        shutil.rmtree(mdir, ignore_errors=True)
    except Exception as exc:
        res["merged"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        traceback.print_exc()
    shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--json")
    a = ap.parse_args()
    import os

    os.makedirs("/tmp/variants/out", exist_ok=True)
    try:
        res = run(a.name, a.steps, a.lr)
    except Exception as exc:
        traceback.print_exc()
        res = {"variant": a.name, "error": f"{type(exc).__name__}: {str(exc)[:600]}"}
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if a.json:
        open(a.json, "w").write(text)
