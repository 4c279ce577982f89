"""The LoRA variants a job runs (config.job.LoraSection's use_dora, use_rslora, init_lora_weights,
loraplus_lr_ratio): the PEFT config, the wrapped model, how its adapter is saved, LoRA+'s optimizer.

What each does in the installed PEFT, and why some combinations are refused, was measured in
docs/research/lora-variants/README.md. Two things here follow from it:

- pissa, pissa_niter_<N> and olora take their start out of the base weights. Loading such an adapter
  elsewhere re-runs that start on the original base, which pissa_niter_<N> (a random SVD) gets wrong
  silently. So the job saves the adapter as it starts (`adapter_init/`, right after get_peft_model,
  before any step) and every adapter it keeps converted to a plain LoRA of rank 2r against the
  original base (PEFT's `path_initial_model_for_weight_conversion`): `export`, `export --merge`,
  `generate` and skip_finetune then load it as any LoRA. Trainer checkpoints stay unconverted (a
  resumed job seeds get_peft_model again and gets the same start).
- LoRA+ goes through PEFT's `create_loraplus_optimizer`, with the Trainer's own AdamW class, betas and
  epsilon, and the job's weight_decay (PEFT's default for it is 0.0: it would be dropped silently).
- QLoRA (load_in_4bit) loads the base through transformers' bitsandbytes integration and PEFT's
  prepare_model_for_kbit_training. On a CPU, bitsandbytes' 4-bit layers must not repack themselves for
  inference (`keep_4bit_differentiable`): after the first evaluation, training would go silently wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import LoraConfig, get_peft_model

from lora_sweep.config.job import QUANTIZATION_KEYS, LoraSection, base_mutating
from lora_sweep.job.models import load_quantized_model

INIT_ADAPTER = "adapter_init"  # a job folder's adapter as it started; its name must not be `default` (PEFT loads it under it)


def lora_config(lora: LoraSection) -> LoraConfig:
    """PEFT's LoraConfig for the job's lora group."""
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=lora.target_modules,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        init_lora_weights=lora.init_lora_weights,
        task_type="CAUSAL_LM",
    )


def wrap(model: Any, lora: LoraSection, out: Path, main_process: bool) -> Any:
    """The base model with LoRA adapters; for a base-mutating init, its start saved in out/adapter_init
    (only there can the kept adapter be converted from: PEFT cannot rebuild it for every init)."""
    model = get_peft_model(model, lora_config(lora))
    if base_mutating(lora.init_lora_weights) and main_process:
        model.save_pretrained(out / INIT_ADAPTER)
    return model


def save_adapter(model: Any, folder: Path, lora: LoraSection, out: Path) -> None:
    """Save the adapter to use: as trained, or for a base-mutating init converted to a plain LoRA
    (rank 2r, alpha doubled) against the original base model."""
    if base_mutating(lora.init_lora_weights):
        model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(out / INIT_ADAPTER))
    else:
        model.save_pretrained(folder)  # small: only the LoRA weights


def quantized_base(path: str, dtype: Any, trust_remote_code: bool, lora: LoraSection,
                   gradient_checkpointing: bool) -> Any:
    """QLoRA's base: the model with 4-bit linear layers, prepared for training by PEFT (the rest in float32,
    input gradients for checkpointing), kept differentiable on a CPU."""
    from peft import prepare_model_for_kbit_training

    model = load_quantized_model(path, dtype, trust_remote_code, lora)
    keep_4bit_differentiable(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


def keep_4bit_differentiable(model: Any) -> int:
    """Stop bitsandbytes repacking its 4-bit layers for CPU inference; the number of layers.

    Why: on a CPU with AVX512-BF16, a bitsandbytes (0.50) Linear4bit repacks its weight into an inference
    layout the first time it runs in eval mode without grad, as every evaluation does, and from then on
    computes through a kernel that has no gradient, in train mode too: the LoRA layers below it get wrong
    gradients (0.46-0.69 relative error measured), with only a one-time C++ warning. Its
    `support_avx512bf16_for_cpu` switches that off (the layer then computes as in training, eval logits
    equal). Should a later bitsandbytes repack by another switch, the check hung on every layer raises at
    its next forward instead of training on silently (tests/test_variants.py checks the gradients)."""
    from bitsandbytes.nn import Linear4bit

    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False  # harmless on a GPU: only CPU inputs are repacked
        layer.register_forward_pre_hook(refuse_repacked)
    return len(layers)


def refuse_repacked(layer: Any, args: Any) -> None:
    """A forward pre-hook: raise if bitsandbytes repacked this 4-bit layer for CPU inference anyway."""
    if getattr(getattr(layer.weight, "quant_state", None), "packing_format_for_cpu", False):
        raise RuntimeError("a 4-bit layer was repacked for CPU inference (bitsandbytes' packing_format_for_cpu), "
                           "which computes without gradients: this bitsandbytes version does not honour "
                           "support_avx512bf16_for_cpu = False; QLoRA cannot train correctly on this CPU with it")


def variant(lora: LoraSection) -> dict[str, Any]:
    """What ran, for the `start` event and result.json: a short name (`lora`, `dora+rslora`,
    `pissa+lora+`, `dora+qlora-nf4`...) and PEFT's settings; `saved`: how the kept adapter was written."""
    parts = (["dora"] if lora.use_dora else []) + (["rslora"] if lora.use_rslora else [])
    parts += [] if lora.init_lora_weights is True else [str(lora.init_lora_weights)]
    parts += ["lora+"] if lora.loraplus_lr_ratio is not None else []
    parts += [f"qlora-{lora.bnb_4bit_quant_type}"] if lora.load_in_4bit else []
    quantized = {key: getattr(lora, key) for key in QUANTIZATION_KEYS} if lora.load_in_4bit else {}
    return {
        "name": "+".join(parts) or "lora",
        "use_dora": lora.use_dora,
        "use_rslora": lora.use_rslora,
        "init_lora_weights": lora.init_lora_weights,
        "loraplus_lr_ratio": lora.loraplus_lr_ratio,
        "load_in_4bit": lora.load_in_4bit,
        **quantized,
        "saved": f"converted to a plain LoRA of rank {2 * lora.r}" if base_mutating(lora.init_lora_weights) else "as trained",
    }


def loraplus_optimizer(trainer: Any, model: Any, ratio: float) -> Any:
    """LoRA+'s optimizer for a Trainer: its optimizer class and kwargs (AdamW, betas, epsilon), the B
    matrices at learning_rate x ratio (DoRA's magnitudes too: PEFT puts every 1-D weight there)."""
    from peft.optimizers import create_loraplus_optimizer

    cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    kwargs = dict(kwargs)
    lr = kwargs.pop("lr")
    return create_loraplus_optimizer(model, cls, lr=lr, loraplus_lr_ratio=ratio,
                                     loraplus_weight_decay=trainer.args.weight_decay, **kwargs)
