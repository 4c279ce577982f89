"""Tests for the demo data generator (demo/make_data.py) and the committed files."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
KEYS = ["product", "category", "urgency", "order_id"]
CATEGORIES = {"billing", "shipping", "defect", "account", "return"}
URGENCIES = {"high", "normal", "low"}
ORDER_RE = re.compile(r"^[A-Z]-\d{5}$")
HIGH_CUES = ("urgent", "asap", "today")
LOW_CUES = ("no rush", "whenever you get a chance", "take your time")


def _load_module():
    """Import demo/make_data.py (demo/ is not a package)."""
    spec = importlib.util.spec_from_file_location("demo_make_data", DEMO / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


make_data = _load_module()


def _read(path: Path) -> list[dict]:
    """Parse a JSONL file into a list of objects."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _ticket(sample: dict) -> str:
    return next(m["content"] for m in sample["messages"] if m["role"] == "user")


def _answer(sample: dict) -> dict:
    (content,) = [m["content"] for m in sample["messages"] if m["role"] == "assistant"]
    return json.loads(content)


def _check_sample(sample: dict) -> None:
    """Assert that one sample follows the reference format and task rules."""
    assert list(sample) == ["messages"]
    messages = sample["messages"]
    assert isinstance(messages, list) and messages
    assert [m["role"] for m in messages] == ["user", "assistant"]
    for m in messages:
        assert set(m) == {"role", "content"}
        assert isinstance(m["content"], str) and m["content"].strip()
    ticket, content = messages[0]["content"], messages[1]["content"]
    assert "\n" not in content
    answer = json.loads(content)
    assert isinstance(answer, dict)
    assert list(answer) == KEYS
    assert content == json.dumps(answer, ensure_ascii=False)
    assert answer["product"] in make_data.PRODUCTS
    assert answer["product"] in ticket
    assert answer["category"] in CATEGORIES
    assert answer["urgency"] in URGENCIES
    oid = answer["order_id"]
    if oid is None:
        assert not re.search(r"[A-Z]-\d{5}", ticket)
    else:
        assert isinstance(oid, str) and ORDER_RE.match(oid)
        assert oid in ticket
    lowered = ticket.lower()
    has_high = any(cue in lowered for cue in HIGH_CUES)
    has_low = any(cue in lowered for cue in LOW_CUES)
    assert (answer["urgency"] == "high") == has_high
    assert (answer["urgency"] == "low") == has_low
    assert 8 <= len(ticket.split()) <= 45


@pytest.fixture(scope="module")
def committed() -> dict[str, list[dict]]:
    return {name: _read(DEMO / f"{name}.json") for name in ("train", "test")}


def test_write_is_deterministic(tmp_path: Path) -> None:
    make_data.write(tmp_path / "a", 0, 400, 48)
    make_data.write(tmp_path / "b", 0, 400, 48)
    for name in ("train.json", "test.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_seed_changes_output() -> None:
    assert make_data.generate(0, 20) != make_data.generate(1, 20)


def test_generate_matches_train_split(tmp_path: Path) -> None:
    make_data.write(tmp_path, 3, 30, 10)
    assert _read(tmp_path / "train.json") == make_data.generate(3, 30)
    assert len(_read(tmp_path / "test.json")) == 10


def test_committed_files_match_fresh_generation(tmp_path: Path) -> None:
    make_data.write(tmp_path, 0, 400, 48)
    for name in ("train.json", "test.json"):
        assert (DEMO / name).read_bytes() == (tmp_path / name).read_bytes(), (
            f"demo/{name} drifted; rerun: python demo/make_data.py"
        )


def test_cli_defaults(tmp_path: Path) -> None:
    make_data.main(["--out", str(tmp_path)])
    for name in ("train.json", "test.json"):
        assert (DEMO / name).read_bytes() == (tmp_path / name).read_bytes()


@pytest.mark.parametrize("name,count", [("train", 400), ("test", 48)])
def test_committed_format(committed: dict[str, list[dict]], name: str, count: int) -> None:
    raw = (DEMO / f"{name}.json").read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    samples = committed[name]
    assert len(samples) == count
    for sample in samples:
        _check_sample(sample)


def test_no_duplicate_or_shared_tickets(committed: dict[str, list[dict]]) -> None:
    train = [_ticket(s) for s in committed["train"]]
    test = [_ticket(s) for s in committed["test"]]
    assert len(set(train)) == len(train)
    assert len(set(test)) == len(test)
    assert not set(train) & set(test)


def test_test_split_covers_labels(committed: dict[str, list[dict]]) -> None:
    answers = [_answer(s) for s in committed["test"]]
    assert {a["category"] for a in answers} == CATEGORIES
    assert {a["urgency"] for a in answers} == URGENCIES


@pytest.mark.parametrize("name", ["train", "test"])
def test_null_order_share(committed: dict[str, list[dict]], name: str) -> None:
    answers = [_answer(s) for s in committed[name]]
    share = sum(a["order_id"] is None for a in answers) / len(answers)
    assert 0.10 <= share <= 0.30


def test_variety(committed: dict[str, list[dict]]) -> None:
    answers = [_answer(s) for s in committed["train"]]
    assert {a["product"] for a in answers} == set(make_data.PRODUCTS)
    assert all(len(t) >= 6 for t in make_data.TEMPLATES.values())
    assert set(make_data.TEMPLATES) == CATEGORIES
