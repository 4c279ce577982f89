"""Question 5: step time and peak memory of each variant vs plain LoRA, one fresh process per measurement.

    python bench.py build                 # once (main venv): a bigger random Llama in /tmp/variants/bench_model
    python bench.py run VARIANT           # one measurement, prints JSON (qlora_* need the bnb venv)
    bash bench.sh                         # all variants, interleaved rounds -> results/bench_*.json

Model: Llama, hidden 512, intermediate 1408, 4 layers, 8 heads (4 kv), vocab of the tiny tokenizer (~400),
float32; batch 4 x 128 random tokens; LoRA r 16 alpha 32 on all linear layers; AdamW; 2 warmup + 6 timed steps.
Memory: peak RSS (ru_maxrss) minus the RSS just before the first step (the training's own peak: activations,
gradients, optimizer state), and the peak RSS of the whole process.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings

import common  # noqa: F401  (env, threads)
import torch

warnings.filterwarnings("ignore")
MODEL = "/tmp/variants/bench_model"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = {
    "lora": {},
    "rslora": {"use_rslora": True},
    "dora": {"use_dora": True},
    "gaussian": {"init_lora_weights": "gaussian"},
    "pissa": {"init_lora_weights": "pissa"},
    "pissa_niter_4": {"init_lora_weights": "pissa_niter_4"},
    "olora": {"init_lora_weights": "olora"},
    "eva": {"init_lora_weights": "eva"},
    "corda": {"init_lora_weights": "corda"},
    "lora_ga": {"init_lora_weights": "lora_ga"},
    "loraplus": {"_loraplus": 16.0},
    "qlora_nf4": {"_4bit": True},
    "qlora_nf4_dora": {"_4bit": True, "use_dora": True},
}


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def vm_hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


def reset_hwm():
    """Linux: writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build():
    from transformers import LlamaConfig, LlamaForCausalLM

    from common import tokenizer

    tok = tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(MODEL)
    tok.save_pretrained(MODEL)


def run(name):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kw = dict(VARIANTS[name])
    ratio = kw.pop("_loraplus", None)
    four = kw.pop("_4bit", False)
    g = torch.Generator().manual_seed(0)
    vocab = json.load(open(f"{MODEL}/config.json"))["vocab_size"]
    ids = torch.randint(3, vocab, (4, 128), generator=g)
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    if four:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
        base = AutoModelForCausalLM.from_pretrained(MODEL, quantization_config=q, device_map="cpu", dtype=torch.float32)
        for mod in base.modules():
            if hasattr(mod, "support_avx512bf16_for_cpu"):
                mod.support_avx512bf16_for_cpu = False
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    else:
        base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    if kw.get("init_lora_weights") == "lora_ga":
        from peft.tuners.lora.config import LoraGAConfig

        kw["lora_ga_config"] = LoraGAConfig()
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM", **kw)
    small = {k: v[:1, :64] for k, v in b.items()}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    init = kw.get("init_lora_weights")
    if init == "corda":
        from peft.tuners.lora.corda import preprocess_corda

        def run_model():
            with torch.no_grad():
                for row in b["input_ids"]:
                    base(input_ids=row[None])

        preprocess_corda(base, cfg, run_model=run_model)
    if init == "lora_ga":
        from peft import preprocess_loraga

        preprocess_loraga(base, cfg, train_step=lambda: base(**small).loss.backward())
    if init == "eva":
        from peft import initialize_lora_eva_weights

        model = get_peft_model(base, cfg, low_cpu_mem_usage=True)
        initialize_lora_eva_weights(model, dataloader=[b], show_progress_bar=False)
    else:
        model = get_peft_model(base, cfg)
    init_s = time.perf_counter() - t0
    params = [p for p in model.parameters() if p.requires_grad]
    if ratio:
        from peft.optimizers import create_loraplus_optimizer

        opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=ratio)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    rss0 = rss_mb()
    hwm_reset = reset_hwm()
    times = []
    for i in range(8):
        t = time.perf_counter()
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    train_peak = vm_hwm_mb() - rss0 if hwm_reset else None
    return {"variant": name, "step_s_median": times[len(times) // 2], "step_s_min": times[0], "init_s": round(init_s, 3),
            "peak_rss_mb": round(peak, 1), "train_peak_over_start_mb": round(train_peak, 1) if train_peak is not None else None,
            "trainable": sum(p.numel() for p in params)}


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build()
    else:
        print(json.dumps(run(sys.argv[2])))
