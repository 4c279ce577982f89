"""`validate` and `run` on what new users bring: a model that is not there, long documents with
short answers. One line each, nothing written."""

from __future__ import annotations

from helpers import chat, run_cli, write_jsonl, write_yaml


def test_a_model_that_cannot_be_found_is_one_line(chat_data, tmp_path):
    tree = {"study": {"dir": str(tmp_path / "studies")}, "model": {"name_or_path": str(tmp_path / "no-model")},
            "data": {"dataset": str(chat_data)}}
    path = write_yaml(tmp_path / "study.yaml", tree)
    expected = f"model.name_or_path: no model at '{tmp_path}/no-model' (no such folder)"
    validate = run_cli(["validate", str(path)], cwd=tmp_path)
    assert (validate.returncode, validate.stderr.strip()) == (2, f"error: {path}: {expected}")
    run = run_cli(["run", str(path)], cwd=tmp_path)
    assert (run.returncode, run.stderr.strip().splitlines()[-1]) == (2, f"error: {expected}")
    assert not (tmp_path / "studies").exists()


def test_validate_warns_of_answers_the_seqlen_cuts_away(tiny_llama, tmp_path):
    # news items of ~200 tokens -> a one-word label, at a seqlen of 64: varied rows lose every answer
    body = " ".join(["the cat likes red and the dog likes blue"] * 20)
    samples = [chat(f"{body} item {i}", "red") for i in range(4)] + [chat("colour of the dog?", "blue")] * 2
    write_jsonl(tmp_path / "train.json", samples)
    write_jsonl(tmp_path / "test.json", samples[:2] + [chat("colour of the cat?", "red")])
    tree = {"model": {"name_or_path": str(tiny_llama)},
            "data": {"train_file": str(tmp_path / "train.json"), "test_file": str(tmp_path / "test.json"),
                     "train_seqlen": 64, "test_seqlen": 512, "varied_seqlen": True},
            "output_dir": str(tmp_path / "out")}
    proc = run_cli(["validate", str(write_yaml(tmp_path / "job.yaml", tree))], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.strip()
    assert warning.startswith("warning: 4 of 6 train samples have answers that train_seqlen 64 cuts away "
                              "(their rows were dropped); train_seqlen ")
    assert proc.stdout.splitlines()[:4] == [  # then the first sample, as the model sees it
        f"{tmp_path / 'job.yaml'}: valid job config (6 train and 3 test samples)",
        f"{tmp_path / 'train.json'}: chat (recognised from line 1: fields messages)",
        f"{tmp_path / 'test.json'}: chat (recognised from line 1: fields messages)",
        "the first training sample as the model sees it; the loss is on what [[ ]] marks:"]
    assert not (tmp_path / "out").exists()
