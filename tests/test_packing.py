"""data.packing: bounded: packed rows whose samples do not attend to each other. Position ids
restart per sample, the collator gives no attention mask, and transformers masks attention to each
sample; a model that attends across anyway is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from helpers import job_tree, memorization_samples, write_jsonl
from lora_sweep.job import data as D
from lora_sweep.job import train as T
from lora_sweep.config.job import ConfigError, DataSection
from lora_sweep.config.files import validate_job
from lora_sweep.job.evaluate import eval_loss
from lora_sweep.job.models import load_for_inference

UNMASKED = "lora_sweep_test_unmasked"  # an attention kernel that takes no mask, as custom kernels may


def unmasked_attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa with only the causal mask: a packed row's samples see each other."""
    return sdpa_attention_forward(module, query, key, value, None, is_causal=True,
                                  **{k: v for k, v in kwargs.items() if k != "is_causal"})


AttentionInterface.register(UNMASKED, unmasked_attention)


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def models(tiny_llama) -> dict[str, torch.nn.Module]:
    return {impl: AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation=impl).eval()
            for impl in ("sdpa", "eager", UNMASKED)}


@pytest.fixture(scope="module")
def examples(tok) -> list[D.Row]:
    """Three memorization samples as (ids, labels): answers labelled, prompts IGNORE."""
    template = D.chat_template(tok)
    return [D.tokenize_sample(tok, s["messages"], template, train_on_prompt=False)
            for s in memorization_samples()[:3]]


def test_positions_restart_per_sample_and_per_row():
    examples = [([1, 2, 3], [1, 2, 3]), ([4, 5, 6, 7, 8], [4, 5, 6, 7, 8]), ([9, 10], [9, 10])]
    rows = D.pack(examples, 4, keep_tail=True, bounded=True)
    # the second sample runs over into the next row: its rest starts that row at position 0
    assert rows == [([1, 2, 3, 4], [1, 2, 3, 4], [0, 1, 2, 0]),
                    ([5, 6, 7, 8], [5, 6, 7, 8], [0, 1, 2, 3]),
                    ([9, 10], [9, 10], [0, 1])]
    assert D.pack(examples, 4, keep_tail=True) == [r[:2] for r in rows]  # concat: no positions
    dataset, collate = D.RowDataset(D.Rows.of(rows)), D.Collator(pad_id=0)
    batch = collate([dataset[0], dataset[2]])  # the short tail row is padded
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # a mask would hide the samples
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [9, 10, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3, 4], [9, 10, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]  # padding: a sample of its own
    full = collate([dataset[0], dataset[1]])
    assert set(full) == {"input_ids", "labels", "position_ids"} and full["position_ids"].tolist()[1] == [0, 1, 2, 3]
    concat = D.Collator(pad_id=0)([D.RowDataset(D.Rows.of(D.pack(examples, 4, keep_tail=True)))[0]])
    assert set(concat) == {"input_ids", "labels", "attention_mask"}


def sample_losses(model, batch: dict[str, torch.Tensor], spans: list[tuple[int, int]]) -> list[float]:
    """Mean next-token loss over each span's labelled tokens, each predicted from inside the span."""
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits[0]
    labels = batch["labels"][0]
    losses = []
    for start, end in spans:
        targets = labels[start + 1 : end]
        keep = targets != D.IGNORE
        losses.append(F.cross_entropy(logits[start : end - 1][keep], targets[keep]).item())
    return losses


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_bounded_row_gives_each_sample_its_loss_alone(models, examples, impl):
    model = models[impl]
    lengths = [len(e[0]) for e in examples]
    seqlen = sum(lengths)  # one row holding the three samples whole
    spans = [(sum(lengths[:i]), sum(lengths[: i + 1])) for i in range(3)]
    alone = [sample_losses(model, D.Collator(0)([{"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}]),
                           [(0, len(ids))])[0] for ids, labels in examples]
    rows = {kind: D.RowDataset(D.Rows.of(D.pack(examples, seqlen, keep_tail=False, bounded=kind == "bounded")))
            for kind in ("bounded", "concat")}
    bounded = sample_losses(model, D.Collator(0)([rows["bounded"][0]]), spans)
    concat = sample_losses(model, D.Collator(0)([rows["concat"][0]]), spans)
    assert bounded == pytest.approx(alone, abs=1e-5)
    assert concat[0] == pytest.approx(alone[0], abs=1e-5)  # the first sample has nothing before it
    assert abs(concat[1] - alone[1]) > 1e-3 and abs(concat[2] - alone[2]) > 1e-3  # the others attend back


def test_attention_that_crosses_samples_is_refused(models, examples):
    for impl in ("sdpa", "eager"):
        D.check_bounded(models[impl])  # honours the restarting positions: no error
    with pytest.raises(ConfigError) as err:
        D.check_bounded(models[UNMASKED])
    message = str(err.value)
    assert message.startswith("data.packing: bounded keeps attention inside each sample only for models whose "
                              "masks transformers builds from restarting position ids (sdpa, eager or "
                              "flex_attention attention), but in this model (llama, attention "
                              f"{UNMASKED}) a packed sample attends to the one before it (its logits move by ")
    assert message.endswith("with concat); use data.packing: concat or data.varied_seqlen: true")
    bounded, concat = D.cross_sample_drift(models[UNMASKED])
    assert bounded > 0.1 * concat > 0
    # the job's data check refuses only bounded packed rows; evaluating bounded rows refuses too
    section = DataSection(train_file="t", test_file="t", packing="bounded")
    with pytest.raises(ConfigError):
        D.check_packing(section, models[UNMASKED])
    D.check_packing(section.model_copy(update={"packing": "concat"}), models[UNMASKED])
    D.check_packing(section.model_copy(update={"varied_seqlen": True}), models[UNMASKED])
    rows = D.Rows.of(D.pack(examples, 16, keep_tail=True, bounded=True))
    with pytest.raises(ConfigError, match="^data.packing: bounded keeps attention"):
        eval_loss(models[UNMASKED], rows, 4, 0)
    assert models[UNMASKED].training is False  # the probe left the mode as it found it


@pytest.mark.integration
def test_a_job_trains_and_evaluates_bounded_rows(tiny_llama, tmp_path):
    """The Trainer's evaluation of bounded rows is the loss with attention kept inside samples."""
    (tmp_path / "data").mkdir()
    for side in ("train", "test"):
        write_jsonl(tmp_path / "data" / f"{side}.json", memorization_samples())
    tree = job_tree(tiny_llama, tmp_path / "data", tmp_path / "out")
    tree["data"].update(packing="bounded", train_seqlen=48, test_seqlen=48)  # about 2 samples a row
    tree["training"].update(num_training_steps=4)
    config = validate_job(tree)
    result = T.run(config)
    model, tok = load_for_inference(config.model, result["adapter_path"])
    rows = {kind: D.prepare(config.data.model_copy(update={"packing": kind}), 42, tok).test
            for kind in ("bounded", "concat")}
    assert rows["bounded"].positions is not None and rows["concat"].positions is None
    assert torch.equal(rows["bounded"].ids, rows["concat"].ids)  # the same rows, with positions that
    assert rows["bounded"].positions.tolist().count(0) >= 8  # restart at each of the 8 samples at least
    bounded, concat = (eval_loss(model, rows[kind], 4, tok.pad_token_id) for kind in ("bounded", "concat"))
    assert result["best_eval_loss"] == pytest.approx(bounded, abs=1e-5)
    assert abs(result["best_eval_loss"] - concat) > 1e-3
