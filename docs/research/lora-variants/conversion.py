"""Question 2: convert a PiSSA/OLoRA (and CorDA, LoRA-GA) adapter to a plain LoRA against the ORIGINAL base.

    python conversion.py NAME [--late]

Sequence A (default, PEFT's documented one):
  1. model = get_peft_model(base, LoraConfig(init_lora_weights=NAME...))   # base weights become W_res
  2. model.save_pretrained(OUT/"init")                                    # BEFORE any training step
  3. train
  4. model.save_pretrained(OUT/"converted", path_initial_model_for_weight_conversion=str(OUT/"init"))
  5. check: PeftModel.from_pretrained(ORIGINAL base, OUT/"converted") logits == fine-tuned logits (1e-4),
     and its merge_and_unload too.
Sequence B (--late: nothing saved at the start, e.g. a trial's kept adapter converted at export time):
  2'. model.save_pretrained(OUT/"trained") after training (plain save)
  4'. init = get_peft_model(fresh base, LoraConfig.from_pretrained(OUT/"trained") with inference_mode=False)
      init.save_pretrained(OUT/"init");  loaded = PeftModel.from_pretrained(fresh base, OUT/"trained")
      loaded.save_pretrained(OUT/"converted", path_initial_model_for_weight_conversion=OUT/"init")
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import traceback
import warnings
from pathlib import Path

import torch
from common import batch, load_base, logits, maxdiff, train
from variants import VARIANTS, build


def run(name, late, lr):
    from peft import LoraConfig, PeftModel, get_peft_model

    out = Path(f"/tmp/variants/out/conv_{name}{'_late' if late else ''}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    res = {"variant": name, "sequence": "B (late)" if late else "A (init saved first)"}
    b = batch()
    base_logits = logits(load_base(), b)
    model, _ = build(name, b)
    if not late:
        model.save_pretrained(out / "init")
        res["init_config_as_saved"] = json.load(open(out / "init/adapter_config.json"))["init_lora_weights"]
    losses, _ = train(model, b, steps=20, lr=lr)
    res["loss"] = [round(losses[0], 3), round(losses[-1], 3)]
    ft = logits(model, b)
    if late:
        model.save_pretrained(out / "trained")
        cfg = LoraConfig.from_pretrained(out / "trained")
        cfg.inference_mode = False
        torch.manual_seed(0)  # as the job seeds before get_peft_model (matters for pissa_niter_N)
        init_model = get_peft_model(load_base(), cfg)
        init_model.save_pretrained(out / "init")
        model = PeftModel.from_pretrained(load_base(), out / "trained")
        res["late_loaded_vs_ft"] = maxdiff(logits(model, b), ft)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(out / "converted", path_initial_model_for_weight_conversion=str(out / "init"))
    res["convert_warnings"] = sorted({str(w.message)[:300] for w in caught if "deprecated" not in str(w.message)})
    res["model_after_convert_vs_ft"] = maxdiff(logits(model, b), ft)  # the save must not disturb the model
    conv_cfg = json.load(open(out / "converted/adapter_config.json"))
    res["converted_config"] = {k: conv_cfg[k] for k in ("r", "lora_alpha", "init_lora_weights", "use_dora", "use_rslora")}
    from safetensors.torch import load_file

    sd = load_file(out / "converted/adapter_model.safetensors")
    res["converted_keys_kinds"] = sorted({k.split(".")[-2] for k in sd})
    conv = PeftModel.from_pretrained(load_base(), out / "converted")
    lc = logits(conv, b)
    res["converted_on_original_base_vs_ft"] = maxdiff(lc, ft)
    res["ok_1e-4"] = res["converted_on_original_base_vs_ft"] < 1e-4
    merged = conv.merge_and_unload()
    res["converted_merged_vs_ft"] = maxdiff(logits(merged, b), ft)
    res["ft_vs_base"] = maxdiff(ft, base_logits)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--late", action="store_true")
    ap.add_argument("--lr", type=float, default=1e-2)
    a = ap.parse_args()
    try:
        res = run(a.name, a.late, a.lr)
    except Exception as exc:
        traceback.print_exc()
        res = {"variant": a.name, "late": a.late, "error": f"{type(exc).__name__}: {str(exc)[:600]}"}
    Path("/tmp/variants/results").mkdir(exist_ok=True)
    text = json.dumps(res, indent=1, default=str)
    (Path("/tmp/variants/results") / f"conv_{a.name}{'_late' if a.late else ''}.json").write_text(text)
    print(text)
