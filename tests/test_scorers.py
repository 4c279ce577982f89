from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from lora_sweep.scorers import (
    BUILTIN_SCORERS,
    ScorerError,
    check_scorer,
    contains,
    exact_match,
    json_fields,
    json_valid,
    load_scorer,
    make_regex_fields,
    rouge_l,
    token_f1,
)

SAMPLE = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def raises_exactly(exc: type[Exception], message: str) -> AbstractContextManager[Any]:
    """pytest.raises that pins the whole one-line message."""
    return pytest.raises(exc, match=f"^{re.escape(message)}$")


# --- exact_match / contains ------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Paris", "Paris", 1.0),
        ("  Paris \n", "Paris", 1.0),
        ("New   York\tCity", "New York City", 1.0),
        ("paris", "Paris", 0.0),  # case-sensitive
        ("Paris.", "Paris", 0.0),  # punctuation is kept
        ("", "Paris", 0.0),
        ("", "  ", 1.0),
        ("Zürich 東京 😀", " Zürich  東京 😀 ", 1.0),
    ],
)
def test_exact_match(prediction: str, reference: str, expected: float) -> None:
    assert exact_match(prediction, reference, SAMPLE) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("The answer is Paris, France.", "Paris", 1.0),
        ("I like New  \n York a lot", "New York", 1.0),
        ("the answer is paris", "Paris", 0.0),  # case-sensitive
        ("Lyon", "Paris", 0.0),
        ("", "Paris", 0.0),
        ("anything", "", 0.0),  # empty reference does not match everything
        (" ", "", 1.0),
        ("答案是東京。", "東京", 1.0),
    ],
)
def test_contains(prediction: str, reference: str, expected: float) -> None:
    assert contains(prediction, reference, SAMPLE) == expected


# --- token_f1 / rouge_l ------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("The cat sat", "the cat sat on the mat", 2 / 3),
        ("the cat sat on a mat", "a cat sat on the mat", 1.0),  # bag of tokens: order ignored
        ("the the the", "the cat", 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)),  # repeated tokens count once each
        ("Hello,   WORLD!", "hello world", 1.0),
        ("$100", "100", 1.0),  # ASCII symbols in string.punctuation go, as in SQuAD
        ("dog", "cat", 0.0),
        ("", "cat", 0.0),
        ("cat", "", 0.0),
        ("", "", 1.0),
        ("!!!", "...", 1.0),  # punctuation only: both empty after stripping
        ("!!!", "yes", 0.0),
        # unicode: accents kept, precomposed == decomposed, unicode punctuation stripped
        ("Café, crème brûlée!", "café crème brulée", 2 / 3),
        ("Cafe\u0301", "café", 1.0),
        ("¿Qué tal?", "qué tal", 1.0),
        ("«Bonjour»", "bonjour", 1.0),
        ("我喜欢猫。", "我喜欢猫", 1.0),
        ("東京 は 大きい", "東京 は 小さい", 2 / 3),
        # whitespace split: unspaced CJK text is one token, so near misses score 0
        ("我喜欢猫", "我喜欢狗", 0.0),
        # emoji are symbols, not punctuation, so they are tokens
        ("I love it 😀", "i love it", 6 / 7),
        ("😀!", "😀", 1.0),
    ],
)
def test_token_f1(prediction: str, reference: str, expected: float) -> None:
    assert token_f1(prediction, reference, SAMPLE) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("police killed the gunman", "police killed the gunman", 1.0),
        ("police kill the gunman", "police killed the gunman", 0.75),
        ("the gunman kill police", "police killed the gunman", 0.5),
        ("the cat sat on a mat", "a cat sat on the mat", 4 / 6),  # order matters, unlike token_f1
        ("a b c", "a x b y c z", 2 / 3),  # P=1, R=1/2
        ("A, B! C?", "a b c", 1.0),
        ("dog", "cat", 0.0),
        ("", "cat", 0.0),
        ("cat", "", 0.0),
        ("", "", 1.0),
        ("Crème brûlée 😀", "crème 😀", 2 * 1 * (2 / 3) / (1 + 2 / 3)),
    ],
)
def test_rouge_l(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l(prediction, reference, SAMPLE) == pytest.approx(expected)


# --- json_valid / json_fields --------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ('{"a": 1}', 1.0),
        ("[1, 2]", 1.0),
        ("  \n{}\n ", 1.0),
        ('```json\n{"a": 1}\n```', 1.0),
        ("```\n[1]\n```", 1.0),
        ('```JSON {"a": 1} ```', 1.0),
        ('{"名前": "東京 😀"}', 1.0),
        ('"a string"', 0.0),  # valid JSON, but not an object or array
        ("42", 0.0),
        ("null", 0.0),
        ('{"a": 1,}', 0.0),
        ("", 0.0),
        ('Here you go: {"a": 1}', 0.0),
        ('```json\n{"a": 1}', 0.0),  # unclosed fence
    ],
)
def test_json_valid(prediction: str, expected: float) -> None:
    assert json_valid(prediction, "", SAMPLE) == expected


REF_JSON = '{"topic": "Billing", "priority": 2, "urgent": true}'


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ('{"topic": "  billing ", "priority": 2, "urgent": true}', 1.0),
        ('{"topic": "billing", "priority": 2}', 2 / 3),  # missing key
        ('{"topic": "billing", "priority": 2, "urgent": true, "extra": 1}', 1.0),  # extra keys ignored
        ('{"topic": "billing", "priority": 2.0, "urgent": true}', 1.0),  # numbers by ==
        ('{"topic": "billing", "priority": "2", "urgent": true}', 2 / 3),  # no str/number coercion
        ('{"topic": "billing", "priority": 2, "urgent": 1}', 2 / 3),  # 1 is not true
        ('{"topic": "shipping", "priority": 1, "urgent": false}', 0.0),
        ('```json\n{"topic": "Billing", "priority": 2, "urgent": true}\n```', 1.0),
        ('{"topic": "billing", ', 0.0),  # invalid JSON
        ('[{"topic": "billing"}]', 0.0),  # not an object
        ("", 0.0),
    ],
)
def test_json_fields(prediction: str, expected: float) -> None:
    assert json_fields(prediction, REF_JSON, SAMPLE) == pytest.approx(expected)


def test_json_fields_unicode_and_nested_values() -> None:
    assert json_fields('{"city": "ZÜRICH", "答案": "東京"}', '{"city": "Zürich", "答案": "東京"}', SAMPLE) == 1.0
    assert json_fields('{"mood": "😀"}', '{"mood": "😢"}', SAMPLE) == 0.0
    # nested values compare by ==, so strings inside lists stay case-sensitive
    assert json_fields('{"tags": ["a", "b"]}', '{"tags": ["a", "b"]}', SAMPLE) == 1.0
    assert json_fields('{"tags": ["A", "b"]}', '{"tags": ["a", "b"]}', SAMPLE) == 0.0


def test_json_fields_fenced_and_empty_reference() -> None:
    assert json_fields('{"a": 1}', '```json\n{"a": 1}\n```', SAMPLE) == 1.0
    assert json_fields("{}", "{}", SAMPLE) == 1.0
    assert json_fields("not json", "{}", SAMPLE) == 0.0


def test_json_fields_rejects_non_object_reference() -> None:
    with raises_exactly(ValueError, "json_fields: reference answer must be a JSON object, got list: '[1, 2]'"):
        json_fields("[1, 2]", "[1, 2]", SAMPLE)
    with pytest.raises(ValueError, match=r"^json_fields: reference answer is not valid JSON \(.*\): 'oops'$"):
        json_fields("{}", "oops", SAMPLE)


# --- regex_fields --------------------------------------------------------------

PATTERN = r'topic="(?P<topic>[^"]*)";\s*sentiment="(?P<sentiment>[^"]*)";'
REF_FIELDS = 'topic="billing"; sentiment="negative";'


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ('topic="billing"; sentiment="negative";', 1.0),
        ('Sure! topic="Billing";\n sentiment=" negative ";', 1.0),  # case and whitespace ignored
        ('topic="billing"; sentiment="positive";', 0.5),
        ('sentiment="negative"; topic="billing";', 0.0),  # pattern does not match at all
        ("no idea", 0.0),
        ("", 0.0),
    ],
)
def test_regex_fields(prediction: str, expected: float) -> None:
    assert make_regex_fields(PATTERN)(prediction, REF_FIELDS, SAMPLE) == pytest.approx(expected)


def test_regex_fields_only_counts_groups_matched_in_reference() -> None:
    scorer = make_regex_fields(r'topic="(?P<topic>[^"]*)";(?:\s*sentiment="(?P<sentiment>[^"]*)";)?')
    assert scorer('topic="billing"; sentiment="x";', 'topic="billing";', SAMPLE) == 1.0
    assert scorer('topic="billing";', 'topic="billing"; sentiment="negative";', SAMPLE) == 0.5
    assert scorer('topic="Zürich 😀";', 'topic="zürich 😀";', SAMPLE) == 1.0


def test_regex_fields_reference_without_match_raises() -> None:
    with raises_exactly(ValueError, f"regex_fields: regex {PATTERN!r} matches no named group in reference 'oops'"):
        make_regex_fields(PATTERN)(REF_FIELDS, "oops", SAMPLE)


def test_make_regex_fields_rejects_bad_patterns() -> None:
    with raises_exactly(ScorerError, "regex 'topic=(\\\\w+)' has no named groups; use (?P<name>...) for each field"):
        make_regex_fields(r"topic=(\w+)")
    with pytest.raises(ScorerError, match=r"^regex '\(\?P<x' does not compile: .+$"):
        make_regex_fields("(?P<x")
    assert issubclass(ScorerError, ValueError)


# --- load_scorer: built-ins ------------------------------------------------------


def test_builtin_scorers() -> None:
    assert set(BUILTIN_SCORERS) == {"exact_match", "contains", "token_f1", "rouge_l", "json_valid", "json_fields"}
    for name, fn in BUILTIN_SCORERS.items():
        assert load_scorer(name) is fn
    assert load_scorer("  token_f1 ") is token_f1


def test_load_regex_fields() -> None:
    scorer = load_scorer("regex_fields", regex=PATTERN)
    assert scorer('topic="billing"; sentiment="positive";', REF_FIELDS, SAMPLE) == 0.5
    with raises_exactly(
        ScorerError, 'scorer regex_fields needs a regex with named groups, e.g. topic="(?P<topic>[^"]*)"'
    ):
        load_scorer("regex_fields")


def test_load_scorer_errors() -> None:
    valid = "exact_match, contains, token_f1, rouge_l, json_valid, json_fields, regex_fields"
    with raises_exactly(ScorerError, f"unknown scorer 'bleu'; valid: {valid}, or python:package.module:function"):
        load_scorer("bleu")
    with raises_exactly(ScorerError, "a regex is only used by the regex_fields scorer, not by 'exact_match'"):
        load_scorer("exact_match", regex=PATTERN)


@pytest.mark.parametrize(
    "spec", ["python:", "python:mod", "python:mod:", "python::score", "python:mod:a:b", "python:my-mod:score"]
)
def test_load_scorer_malformed_python_spec(spec: str) -> None:
    with raises_exactly(ScorerError, f"malformed scorer spec {spec!r}; expected python:package.module:function"):
        load_scorer(spec)


# --- load_scorer: python: specs --------------------------------------------------

USER_MODULE = """
import math

THRESHOLD = 3

def good(prediction, reference, sample):
    return len(sample["messages"]) / 4

def as_int(prediction, reference, sample):
    return 1

def as_str(prediction, reference, sample):
    return "abc"

def as_bool(prediction, reference, sample):
    return True

def too_big(prediction, reference, sample):
    return 1.5

def negative(prediction, reference, sample):
    return -0.1

def as_nan(prediction, reference, sample):
    return math.nan

def as_none(prediction, reference, sample):
    return None

def boom(prediction, reference, sample):
    raise RuntimeError("user bug")
"""


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    (tmp_path / "user_scorers_mod.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "broken_scorers_mod.py").write_text("import does_not_exist_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("user_scorers_mod", "broken_scorers_mod"):
        sys.modules.pop(name, None)


@pytest.mark.usefixtures("user_modules")
def test_python_scorer_good() -> None:
    scorer = load_scorer("python: user_scorers_mod:good")  # whitespace after python: is allowed
    assert scorer("p", "r", SAMPLE) == 0.5
    assert scorer.__name__ == "good"
    result = load_scorer("python:user_scorers_mod:as_int")("p", "r", SAMPLE)
    assert result == 1.0 and type(result) is float


@pytest.mark.usefixtures("user_modules")
@pytest.mark.parametrize(
    ("function", "shown"),
    [
        ("as_str", "'abc' (str)"),
        ("as_bool", "True (bool)"),
        ("too_big", "1.5 (float)"),
        ("negative", "-0.1 (float)"),
        ("as_nan", "nan (float)"),
        ("as_none", "None (NoneType)"),
    ],
)
def test_python_scorer_bad_return(function: str, shown: str) -> None:
    scorer = load_scorer(f"python: user_scorers_mod:{function}")
    message = f"scorer python:user_scorers_mod:{function} returned {shown}; it must return a float in [0, 1]"
    with raises_exactly(ScorerError, message):
        scorer("p", "r", SAMPLE)


@pytest.mark.usefixtures("user_modules")
def test_python_scorer_exceptions_name_the_scorer_and_its_file(tmp_path: Path) -> None:
    file = tmp_path / "user_scorers_mod.py"
    line = USER_MODULE.splitlines().index('    raise RuntimeError("user bug")') + 1
    message = f"scorer python:user_scorers_mod:boom raised RuntimeError: user bug ({file}, line {line})"
    with raises_exactly(ScorerError, message) as caught:
        load_scorer("python:user_scorers_mod:boom")("p", "r", SAMPLE)
    assert isinstance(caught.value.__cause__, RuntimeError)  # the user's traceback stays chained
    with raises_exactly(ScorerError, message):  # the check before a sweep says the same
        check_scorer("python:user_scorers_mod:boom", None, SAMPLE)


@pytest.mark.usefixtures("user_modules")
def test_python_scorer_load_errors() -> None:
    with raises_exactly(
        ScorerError,
        "scorer python:broken_scorers_mod:score: cannot import module 'broken_scorers_mod' "
        "(ModuleNotFoundError: No module named 'does_not_exist_xyz')",
    ):
        load_scorer("python:broken_scorers_mod:score")
    with raises_exactly(
        ScorerError,
        "scorer python:no_such_mod_xyz.sub:score: cannot import module 'no_such_mod_xyz.sub' "
        "(ModuleNotFoundError: No module named 'no_such_mod_xyz')",
    ):
        load_scorer("python:no_such_mod_xyz.sub:score")
    with raises_exactly(
        ScorerError, "scorer python:user_scorers_mod:missing: module 'user_scorers_mod' has no attribute 'missing'"
    ):
        load_scorer("python:user_scorers_mod:missing")
    with raises_exactly(
        ScorerError, "scorer python:user_scorers_mod:THRESHOLD: user_scorers_mod.THRESHOLD is not callable (got int)"
    ):
        load_scorer("python:user_scorers_mod:THRESHOLD")
