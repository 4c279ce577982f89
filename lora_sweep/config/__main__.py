"""`python -m lora_sweep.config`: the README's parameter tables, from the config's own fields."""

from lora_sweep.config.study import reference_tables

print(reference_tables())
