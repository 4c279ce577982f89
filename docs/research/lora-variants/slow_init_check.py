"""Question 5 follow-up: why do EVA and LoRA-GA train slower per step than plain LoRA in bench.py?
Looks for what their data-driven initialization leaves behind: hooks on modules, base weights still
requiring grad, thread count, leftover attributes; times steps before/after removing what it finds.

    python slow_init_check.py eva|lora_ga|lora
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import common  # noqa: F401
import torch

warnings.filterwarnings("ignore")
MODEL = "/tmp/variants/bench_model"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def steps(model, b, opt, n=4):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ts.append(time.perf_counter() - t)
    return round(min(ts[1:]), 3)


def leftovers(model):
    hooks = {"forward": 0, "forward_pre": 0, "backward": 0, "backward_pre": 0}
    for m in model.modules():
        hooks["forward"] += len(m._forward_hooks)
        hooks["forward_pre"] += len(m._forward_pre_hooks)
        hooks["backward"] += len(m._backward_hooks)
        hooks["backward_pre"] += len(getattr(m, "_backward_pre_hooks", {}))
    base_grad = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    attrs = sorted({a for m in model.modules() for a in vars(m) if a.startswith("_peft_") or a in ("eigens", "covariance_matrix", "sample_count")})
    return {"hooks": hooks, "base_params_requiring_grad": len(base_grad), "threads": torch.get_num_threads(),
            "leftover_attrs": attrs, "grad_enabled": torch.is_grad_enabled()}


def main(name):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    vocab = json.load(open(f"{MODEL}/config.json"))["vocab_size"]
    ids = torch.randint(3, vocab, (4, 128), generator=torch.Generator().manual_seed(0))
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    kw = {}
    if name == "lora_ga":
        from peft import preprocess_loraga
        from peft.tuners.lora.config import LoraGAConfig

        kw = {"init_lora_weights": "lora_ga", "lora_ga_config": LoraGAConfig()}
        cfg = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM", **kw)
        small = {k: v[:1, :64] for k, v in b.items()}
        preprocess_loraga(base, cfg, train_step=lambda: base(**small).loss.backward())
        model = get_peft_model(base, cfg)
    elif name == "eva":
        from peft import initialize_lora_eva_weights

        cfg = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM", init_lora_weights="eva")
        model = get_peft_model(base, cfg, low_cpu_mem_usage=True)
        initialize_lora_eva_weights(model, dataloader=[b], show_progress_bar=False)
    else:
        model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM"))
    res = {"variant": name, "after_init": leftovers(model)}
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    res["step_s"] = steps(model, b, opt)
    res["base_weight_grads_after_step"] = sum(1 for n, p in model.named_parameters() if "lora_" not in n and p.grad is not None)
    # remove what is left and time again
    for m in model.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        m._backward_hooks.clear()
        if hasattr(m, "_peft_loraga_grad"):
            del m._peft_loraga_grad
    torch.set_num_threads(1)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    res["step_s_after_cleanup"] = steps(model, b, opt)
    print(json.dumps(res))
    open(f"/tmp/variants/results/slow_init_{name}.json", "w").write(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
