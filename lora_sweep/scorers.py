"""Score a generated answer against the reference answer of a test conversation.

Every scorer has the signature ``(prediction, reference, sample) -> float`` and
returns a value in [0, 1], higher is better. ``sample`` is the full test
conversation (``{"messages": [...]}``) so custom scorers can look at the prompt.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import numbers
import os
import re
import string
import threading
import traceback
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

Scorer = Callable[[str, str, dict], float]

__all__ = [
    "BUILTIN_SCORERS",
    "Scorer",
    "ScorerError",
    "check_scorer",
    "contains",
    "exact_match",
    "json_fields",
    "json_valid",
    "load_scorer",
    "make_regex_fields",
    "rouge_l",
    "token_f1",
]


class ScorerError(ValueError):
    """A scorer could not be loaded, or a custom scorer returned a bad value."""


# --- shared normalization -------------------------------------------------


def _normalize(text: str) -> str:
    """Strip and collapse runs of whitespace (case is kept)."""
    return " ".join(text.split())


def _loose(text: str) -> str:
    """Whitespace-normalized and case-insensitive form, for field values."""
    return _normalize(text).casefold()


def _is_punct(ch: str) -> bool:
    # ASCII string.punctuation keeps SQuAD compatibility (it includes symbols
    # such as $ and +); Unicode P* categories add «», ¿, 。, 、 etc. Emoji are
    # symbols (So), not punctuation, so they survive as tokens.
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def _tokens(text: str) -> list[str]:
    """Casefolded, punctuation-stripped, whitespace-split tokens."""
    # NFC so that a precomposed "é" and "e" + combining accent are one token.
    text = unicodedata.normalize("NFC", text).casefold()
    return "".join(ch for ch in text if not _is_punct(ch)).split()


def _f_measure(overlap: int, n_pred: int, n_ref: int) -> float:
    """Harmonic mean of precision and recall (beta=1), with empty-input rules."""
    if n_pred == 0 and n_ref == 0:
        return 1.0
    if overlap == 0:  # also covers exactly one side being empty
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def _short(value: Any, limit: int = 80) -> str:
    """One-line, length-capped repr for error messages."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- text scorers ------------------------------------------------------------


def exact_match(prediction: str, reference: str, sample: dict) -> float:
    """1.0 if both texts are equal after whitespace normalization (case-sensitive)."""
    return float(_normalize(prediction) == _normalize(reference))


def contains(prediction: str, reference: str, sample: dict) -> float:
    """1.0 if the normalized reference occurs inside the normalized prediction."""
    ref = _normalize(reference)
    # "" is a substring of everything; an empty reference only matches an
    # empty prediction so a blank test row cannot award free points.
    if not ref:
        return float(not _normalize(prediction))
    return float(ref in _normalize(prediction))


def token_f1(prediction: str, reference: str, sample: dict) -> float:
    """SQuAD-style bag-of-tokens F1."""
    pred, ref = _tokens(prediction), _tokens(reference)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    return _f_measure(overlap, len(pred), len(ref))


def _lcs_length(a: list[str], b: list[str]) -> int:
    # Two-row DP: O(len(a) * len(b)) time, O(len(b)) memory.
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str, sample: dict) -> float:
    """ROUGE-L F-measure (beta=1) over the same tokens as token_f1."""
    pred, ref = _tokens(prediction), _tokens(reference)
    return _f_measure(_lcs_length(pred, ref), len(pred), len(ref))


# --- JSON scorers ----------------------------------------------------------

# Models often wrap JSON in a Markdown fence; accept ``` or ```json around it.
_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


def _parse_json(text: str) -> Any:
    """Parse JSON, allowing one surrounding code fence; raises ValueError."""
    text = text.strip()
    fenced = _FENCE.fullmatch(text)
    if fenced:
        text = fenced.group(1)
    return json.loads(text)  # JSONDecodeError is a ValueError


def json_valid(prediction: str, reference: str, sample: dict) -> float:
    """1.0 if the prediction parses as a JSON object or array."""
    try:
        return float(isinstance(_parse_json(prediction), (dict, list)))
    except ValueError:
        return 0.0


def _values_equal(pred: Any, ref: Any) -> bool:
    if isinstance(pred, str) and isinstance(ref, str):
        return _loose(pred) == _loose(ref)
    # In Python True == 1 and False == 0.0; JSON true must not match 1.
    if isinstance(pred, bool) or isinstance(ref, bool):
        return type(pred) is type(ref) and pred == ref
    return pred == ref


def json_fields(prediction: str, reference: str, sample: dict) -> float:
    """Share of the reference object's keys whose predicted value matches.

    Strings compare whitespace-normalized and case-insensitive, other values
    by ==. Extra keys in the prediction are ignored; invalid JSON scores 0.0.
    """
    try:
        ref = _parse_json(reference)
    except ValueError as err:
        raise ValueError(f"json_fields: reference answer is not valid JSON ({err}): {_short(reference)}") from None
    if not isinstance(ref, dict):
        raise ValueError(
            f"json_fields: reference answer must be a JSON object, got {type(ref).__name__}: {_short(reference)}"
        )
    try:
        pred = _parse_json(prediction)
    except ValueError:
        return 0.0
    if not isinstance(pred, dict):
        return 0.0
    if not ref:  # nothing to compare: any JSON object is a full match
        return 1.0
    hits = sum(key in pred and _values_equal(pred[key], value) for key, value in ref.items())
    return hits / len(ref)


# --- regex scorer ------------------------------------------------------------


def make_regex_fields(pattern: str) -> Scorer:
    """Build a scorer comparing the named groups of ``pattern`` in both texts.

    The score is the share of groups that matched in the reference whose
    value (whitespace-normalized, case-insensitive) is equal in the prediction.
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ScorerError(f"regex {pattern!r} does not compile: {err}") from None
    if not regex.groupindex:
        raise ScorerError(f"regex {pattern!r} has no named groups; use (?P<name>...) for each field")

    def regex_fields(prediction: str, reference: str, sample: dict) -> float:
        ref_match = regex.search(reference)
        expected = {k: v for k, v in ref_match.groupdict().items() if v is not None} if ref_match else {}
        # A reference the pattern cannot parse is a data or pattern bug, not
        # a model error, so fail loudly like json_fields does.
        if not expected:
            raise ValueError(f"regex_fields: regex {pattern!r} matches no named group in reference {_short(reference)}")
        pred_match = regex.search(prediction)
        if pred_match is None:
            return 0.0
        got = pred_match.groupdict()
        hits = sum(got[k] is not None and _loose(got[k]) == _loose(v) for k, v in expected.items())
        return hits / len(expected)

    return regex_fields


# --- loading -------------------------------------------------------------------

BUILTIN_SCORERS: dict[str, Scorer] = {
    "exact_match": exact_match,
    "contains": contains,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
    "json_valid": json_valid,
    "json_fields": json_fields,
}

_PYTHON_PREFIX = "python:"

# Seconds a user scorer may take to import, or to score the check answer, before it is called hung.
TIMEOUT_ENV = "LORA_SWEEP_SCORER_CHECK_TIMEOUT"
DEFAULT_CHECK_TIMEOUT = 60.0

T = TypeVar("T")


def check_timeout(timeout: float | None = None) -> float:
    """The time limit of a scorer check: `timeout`, else $LORA_SWEEP_SCORER_CHECK_TIMEOUT, else 60 s."""
    if timeout is not None:
        return timeout
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_CHECK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise ScorerError(f"${TIMEOUT_ENV} must be a number of seconds above 0 (got {text!r})")
    return value


def within(seconds: float, call: Callable[[], T], what: str) -> T:
    """``call()`` given at most ``seconds``; ScorerError "<what> did not return within N s" if it
    does not return by then. It runs in a daemon thread (portable, unlike an alarm signal), which is
    left behind if it hangs: the process reports the error and ends, the thread with it."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # SystemExit too: the caller decides what it means
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="lora-sweep-scorer-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ScorerError(f"{what} did not return within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def check_scorer(spec: str, regex: str | None, sample: dict, timeout: float | None = None) -> Scorer:
    """Load a scorer and score a test sample's last answer against itself, each within the time
    limit, and return it: a user scorer that fails, hangs, exits or returns a non-number raises
    ScorerError now, before any trial runs."""
    seconds = check_timeout(timeout)
    scorer = load_scorer(spec, regex, seconds)
    reference = [m for m in sample["messages"] if m["role"] == "assistant"][-1]["content"]
    try:
        within(seconds, lambda: scorer(reference, reference, sample), spec.strip())
    except ScorerError:
        raise
    except Exception as exc:  # the user's code: anything can come out of it
        raise ScorerError(str(exc)) from None
    return scorer


def raised_at(fn: Callable[..., Any], exc: BaseException) -> str:
    """Where in the scorer's own file `exc` was raised (its last frame there), as `file, line N`."""
    file = getattr(getattr(fn, "__code__", None), "co_filename", None) or inspect.getsourcefile(fn) or "?"
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == file]
    return f"{file}, line {lines[-1]}" if lines else file


def _checked(fn: Callable[..., Any], name: str) -> Scorer:
    """Wrap a user scorer so a bad return value fails with a clear message."""

    @functools.wraps(fn)
    def wrapper(prediction: str, reference: str, sample: dict) -> float:
        try:
            value = fn(prediction, reference, sample)
        except SystemExit as exc:  # not an Exception: it would end the job, or lora_sweep, without a word
            raise ScorerError(f"scorer {name} called sys.exit({exc.code!r})") from None
        except ScorerError:
            raise
        except Exception as exc:  # the user's code: anything can come out of it; the traceback stays chained
            text = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise ScorerError(f"scorer {name} raised {text} ({raised_at(fn, exc)})") from exc
        # bool is an int subclass, but True/False usually means a forgotten float().
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if ok:
            score = float(value)
            if math.isfinite(score) and 0.0 <= score <= 1.0:
                return score
        raise ScorerError(
            f"scorer {name} returned {_short(value)} ({type(value).__name__}); it must return a float in [0, 1]"
        )

    return wrapper


def _load_python(spec: str, timeout: float | None = None) -> Scorer:
    target = spec[len(_PYTHON_PREFIX) :].strip()
    module_name, _, attr = target.partition(":")
    if not (all(part.isidentifier() for part in module_name.split(".")) and attr.isidentifier()):
        raise ScorerError(f"malformed scorer spec {spec!r}; expected python:package.module:function")
    name = f"{_PYTHON_PREFIX}{module_name}:{attr}"
    try:
        module = within(check_timeout(timeout), lambda: importlib.import_module(module_name),
                        f"scorer {name}: importing module {module_name!r}")
    except ScorerError:
        raise
    except SystemExit as err:
        raise ScorerError(f"scorer {name}: cannot import module {module_name!r} (it called sys.exit({err.code!r}))") from None
    except Exception as err:  # a broken user module can raise anything at import time
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise ScorerError(f"scorer {name}: cannot import module {module_name!r} ({reason})") from err
    fn = getattr(module, attr, None)
    if fn is None:
        raise ScorerError(f"scorer {name}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ScorerError(f"scorer {name}: {module_name}.{attr} is not callable (got {type(fn).__name__})")
    return _checked(fn, name)


def load_scorer(spec: str, regex: str | None = None, timeout: float | None = None) -> Scorer:
    """Resolve a scorer spec: a built-in name, ``regex_fields``, or ``python:module:function``.

    Importing a user module may take at most ``timeout`` seconds (default: check_timeout())."""
    spec = spec.strip()
    if spec == "regex_fields":
        if regex is None:
            raise ScorerError("scorer regex_fields needs a regex with named groups, e.g. topic=\"(?P<topic>[^\"]*)\"")
        return make_regex_fields(regex)
    # A regex passed with another scorer would be silently ignored; say so instead.
    if regex is not None:
        raise ScorerError(f"a regex is only used by the regex_fields scorer, not by {spec!r}")
    if spec.startswith(_PYTHON_PREFIX):
        return _load_python(spec, timeout)
    if spec in BUILTIN_SCORERS:
        return BUILTIN_SCORERS[spec]
    valid = ", ".join([*BUILTIN_SCORERS, "regex_fields"])
    raise ScorerError(f"unknown scorer {spec!r}; valid: {valid}, or python:package.module:function")
