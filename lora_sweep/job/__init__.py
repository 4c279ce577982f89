"""The job: one fine-tune, a process of its own that never opens the study database.

    data.py      samples from the user's files (every format), checked; tokenized rows and label masks
    models.py    the model and tokenizer (the embedded default converted once), dtypes
    evaluate.py  eval loss and the generation metric on the test answers; the base-model evaluation
    train.py     the job itself: data, model, LoRA, Trainer, events, adapter, result
    tracking.py  the job's side of MLflow / W&B / TensorBoard (the Trainer's report_to)
"""

import os
import sys

from lora_sweep.events import NO_BITSANDBYTES_ENV

if os.environ.get(NO_BITSANDBYTES_ENV) == "1":
    # None in sys.modules: PEFT, transformers and accelerate take bitsandbytes for not installed
    sys.modules.setdefault("bitsandbytes", None)
