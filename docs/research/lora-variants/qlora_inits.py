"""Question 4: which init_lora_weights values (and DoRA/rsLoRA) get_peft_model accepts on a 4-bit base,
and do they train a few steps (bnb venv). Prints the exact error text of each refusal.

    /tmp/variants/bnb-venv/bin/python qlora_inits.py
"""
import json, warnings
import torch
from common import batch, train
from qlora import CASES, load_4bit
warnings.filterwarnings("ignore")

INITS = {"True": True, "gaussian": "gaussian", "orthogonal": "orthogonal", "pissa": "pissa", "pissa_niter_4": "pissa_niter_4",
         "olora": "olora", "mica": "mica", "eva": "eva", "corda": "corda", "lora_ga": "lora_ga", "loftq": "loftq",
         "rslora": "RSLORA", "dora+rslora": "DORA_RSLORA"}
res = {}
b = batch()
for name, init in INITS.items():
    from peft import LoftQConfig, LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.lora.config import LoraGAConfig
    kw = {"init_lora_weights": init}
    if init == "RSLORA": kw = {"use_rslora": True}
    if init == "DORA_RSLORA": kw = {"use_rslora": True, "use_dora": True}
    if init == "loftq": kw["loftq_config"] = LoftQConfig(loftq_bits=4)
    if init == "lora_ga": kw["lora_ga_config"] = LoraGAConfig()
    m = prepare_model_for_kbit_training(load_4bit(CASES["nf4_dq_fp32"]), use_gradient_checkpointing=False)
    try:
        torch.manual_seed(0)
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                         task_type="CAUSAL_LM", **kw)
        if init == "corda":
            from peft.tuners.lora.corda import preprocess_corda
            def run_model():
                with torch.no_grad():
                    for ids, mask in zip(b["input_ids"], b["attention_mask"]):
                        m(input_ids=ids[mask.bool()][None])
            preprocess_corda(m, cfg, run_model=run_model)
        if init == "lora_ga":
            from peft import preprocess_loraga
            preprocess_loraga(m, cfg, train_step=lambda: m(**b).loss.backward())
        if init == "eva":
            from peft import initialize_lora_eva_weights
            pm = get_peft_model(m, cfg, low_cpu_mem_usage=True)
            initialize_lora_eva_weights(pm, dataloader=[b], show_progress_bar=False)
        else:
            pm = get_peft_model(m, cfg)
        losses, _ = train(pm, b, steps=10, lr=1e-2)
        res[name] = {"ok": True, "loss": [round(losses[0], 3), round(losses[-1], 3)]}
    except Exception as exc:
        res[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print(name, json.dumps(res[name]), flush=True)
open("/tmp/variants/results/qlora_inits.json", "w").write(json.dumps(res, indent=1))
