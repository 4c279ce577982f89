"""lora_sweep: hyperparameter sweeps for LoRA fine-tuning of small chat models."""

__version__ = "0.1.0"
