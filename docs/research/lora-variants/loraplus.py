"""Question 3: LoRA+ (peft.optimizers.create_loraplus_optimizer) handed to transformers 5.x's Trainer.

    python loraplus.py

Three ways, each 20 Trainer steps on the tiny Llama (linear schedule, lr 2e-3, ratio 16):
  a) Trainer(..., optimizers=(create_loraplus_optimizer(model, AdamW, lr=..., loraplus_lr_ratio=...), None))
  b) a Trainer subclass whose create_optimizer() builds it (optimizer class/kwargs from the TrainingArguments)
  c) Trainer(..., optimizer_cls_and_kwargs=(FACTORY, kwargs)): a non-Optimizer callable is treated by
     transformers 5.x as an optimizer factory, called as FACTORY()(model, **kwargs)
plus plain LoRA (Trainer default optimizer) at the same lr, and (b) again with DoRA (the magnitude vectors'
group), and a resume from a checkpoint with (b). Checks: loss falls; the param groups' lrs (B = ratio x A,
kept by the scheduler); weight decay of the groups; resume works.
"""

from __future__ import annotations

import json
import shutil
import warnings

import torch
from common import batch, load_base

warnings.filterwarnings("ignore")
LR, RATIO, STEPS = 2e-3, 16.0, 20


class Rows(torch.utils.data.Dataset):
    def __init__(self, b, n=64):
        self.rows = [{k: v[i % 8] for k, v in b.items()} for i in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def peft_model(dora=False):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    return get_peft_model(load_base(), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  task_type="CAUSAL_LM", use_dora=dora))


def args(out, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=out, max_steps=STEPS, learning_rate=LR, per_device_train_batch_size=8,
                lr_scheduler_type="linear", logging_steps=1, report_to=[], save_strategy="no",
                use_cpu=True, weight_decay=0.01, adam_beta2=0.95, seed=0, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


class LoraPlusTrainer:  # defined lazily below (needs transformers)
    pass


def make_trainer_cls():
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    class LoraPlusTrainer(Trainer):
        """create_optimizer builds the LoRA+ optimizer from the TrainingArguments' optimizer (adamw_torch ...)."""

        loraplus_lr_ratio = RATIO

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                opt_model = self.model if model is None else model
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
                optimizer_kwargs = dict(optimizer_kwargs)
                lr = optimizer_kwargs.pop("lr")
                self.optimizer = create_loraplus_optimizer(
                    opt_model, optimizer_cls, lr=lr, loraplus_lr_ratio=self.loraplus_lr_ratio,
                    loraplus_weight_decay=self.args.weight_decay, **optimizer_kwargs)
            return self.optimizer

    return LoraPlusTrainer


class LoraPlusFactory:
    """For optimizer_cls_and_kwargs=(LoraPlusFactory, kwargs): transformers calls LoraPlusFactory()(model, **kwargs)."""

    def __call__(self, model, **kwargs):
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(model, torch.optim.AdamW, **kwargs)


def groups(opt):
    return [{"n_params": len(g["params"]), "numel": sum(p.numel() for p in g["params"]), "lr": g["lr"],
             "initial_lr": g.get("initial_lr"), "weight_decay": g["weight_decay"]} for g in opt.param_groups]


def go(label, make, out):
    b = batch()
    model = peft_model(dora=label.endswith("dora"))
    trainer = make(model, out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    r = {"how": label, "loss_first": losses[0], "loss_last": losses[-1], "loss_falls": losses[-1] < 0.9 * losses[0],
         "optimizer": type(trainer.optimizer).__name__, "groups_after": groups(trainer.optimizer),
         "train_runtime": result.metrics["train_runtime"],
         "warnings": sorted({str(w.message)[:200] for w in caught if "deprecated" not in str(w.message)})}
    shutil.rmtree(out, ignore_errors=True)
    return r


def main():
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    ds = Rows(batch())
    T = make_trainer_cls()
    results = []
    results.append(go("plain_lora_default_optimizer", lambda m, o: Trainer(
        model=m, args=args(o), train_dataset=ds, data_collator=collate), "/tmp/variants/out/lp0"))
    results.append(go("a_optimizers_tuple", lambda m, o: Trainer(
        model=m, args=args(o), train_dataset=ds, data_collator=collate,
        optimizers=(create_loraplus_optimizer(m, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO,
                                              loraplus_weight_decay=0.01, betas=(0.9, 0.95)), None)),
        "/tmp/variants/out/lpa"))
    results.append(go("b_create_optimizer_override", lambda m, o: T(
        model=m, args=args(o), train_dataset=ds, data_collator=collate), "/tmp/variants/out/lpb"))
    try:
        results.append(go("c_optimizer_cls_and_kwargs_factory", lambda m, o: Trainer(
            model=m, args=args(o), train_dataset=ds, data_collator=collate,
            optimizer_cls_and_kwargs=(LoraPlusFactory, {"lr": LR, "loraplus_lr_ratio": RATIO,
                                                        "loraplus_weight_decay": 0.01, "betas": (0.9, 0.95)})),
            "/tmp/variants/out/lpc"))
    except Exception as exc:
        results.append({"how": "c_optimizer_cls_and_kwargs_factory", "error": f"{type(exc).__name__}: {exc}"})
    results.append(go("b_create_optimizer_override+dora", lambda m, o: T(
        model=m, args=args(o), train_dataset=ds, data_collator=collate), "/tmp/variants/out/lpbd"))
    # resume: 10 steps saving at 5, then a new trainer resumes from checkpoint-5 and runs to 10
    out = "/tmp/variants/out/lpr"
    shutil.rmtree(out, ignore_errors=True)
    m = peft_model()
    t1 = T(model=m, args=args(out, max_steps=10, save_strategy="steps", save_steps=5), train_dataset=ds,
           data_collator=collate)
    t1.train()
    full = [h["loss"] for h in t1.state.log_history if "loss" in h]
    m2 = peft_model()
    t2 = T(model=m2, args=args(out, max_steps=10, save_strategy="steps", save_steps=5), train_dataset=ds,
           data_collator=collate)
    try:
        t2.train(resume_from_checkpoint=f"{out}/checkpoint-5")
        resumed = [h["loss"] for h in t2.state.log_history if "loss" in h]
        results.append({"how": "resume_b", "uninterrupted_losses_6_10": full[5:], "resumed_losses_6_10": resumed[-5:],
                        "max_abs_diff": max(abs(x - y) for x, y in zip(full[5:], resumed[-5:])),
                        "groups_after": groups(t2.optimizer)})
    except Exception as exc:
        results.append({"how": "resume_b", "error": f"{type(exc).__name__}: {exc}"})
    shutil.rmtree(out, ignore_errors=True)
    text = json.dumps(results, indent=1, default=str)
    open("/tmp/variants/results/loraplus.json", "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
