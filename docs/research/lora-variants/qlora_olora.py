"""Question 4: OLoRA on a 4-bit base (PEFT accepts it): does its conversion to a plain LoRA reproduce the
fine-tuned model on the 4-bit base, on the dequantized base, on the original fp32 base? (bnb venv)"""
import json, shutil, warnings
import torch
from common import batch, load_base, logits, maxdiff, train
from qlora import CASES, load_4bit
warnings.filterwarnings("ignore")
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

c = CASES["nf4_dq_fp32"]; b = batch(); out = "/tmp/variants/out/q_olora"
shutil.rmtree(out, ignore_errors=True)
m = prepare_model_for_kbit_training(load_4bit(c), use_gradient_checkpointing=False)
torch.manual_seed(0)
pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights="olora"))
q0 = logits(load_4bit(c), b)
res = {"init_vs_4bit_base": maxdiff(logits(pm, b), q0)}
pm.save_pretrained(f"{out}/adapter_init")
losses, _ = train(pm, b, steps=20, lr=1e-2); res["loss"] = [round(losses[0], 3), round(losses[-1], 3)]
ft = logits(pm, b)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pm.save_pretrained(f"{out}/adapter", path_initial_model_for_weight_conversion=f"{out}/adapter_init")
res["convert_warnings"] = sorted({str(w.message)[:200] for w in caught if "deprecat" not in str(w.message)})
res["converted_on_4bit_base_vs_ft"] = maxdiff(logits(PeftModel.from_pretrained(load_4bit(c), f"{out}/adapter"), b), ft)
d = load_4bit(c); d.dequantize()
res["converted_on_dequantized_base_vs_ft"] = maxdiff(logits(PeftModel.from_pretrained(d, f"{out}/adapter"), b), ft)
res["converted_on_fp32_base_vs_ft"] = maxdiff(logits(PeftModel.from_pretrained(load_base(), f"{out}/adapter"), b), ft)
print(json.dumps(res, indent=1)); open("/tmp/variants/results/qlora_olora.json", "w").write(json.dumps(res, indent=1))
