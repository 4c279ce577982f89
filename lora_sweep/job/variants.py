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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import LoraConfig, get_peft_model

from lora_sweep.config.job import LoraSection, base_mutating

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


def variant(lora: LoraSection) -> dict[str, Any]:
    """What ran, for the `start` event and result.json: a short name (`lora`, `dora+rslora`,
    `pissa+lora+`...) and PEFT's settings; `saved`: how the kept adapter was written."""
    parts = (["dora"] if lora.use_dora else []) + (["rslora"] if lora.use_rslora else [])
    parts += [] if lora.init_lora_weights is True else [str(lora.init_lora_weights)]
    parts += ["lora+"] if lora.loraplus_lr_ratio is not None else []
    return {
        "name": "+".join(parts) or "lora",
        "use_dora": lora.use_dora,
        "use_rslora": lora.use_rslora,
        "init_lora_weights": lora.init_lora_weights,
        "loraplus_lr_ratio": lora.loraplus_lr_ratio,
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
