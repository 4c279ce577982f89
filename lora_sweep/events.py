"""The job's event stream: one JSON object per line, appended and flushed as it happens.

The sweep reads it while the job runs (`EventReader`), and a crash leaves every event
written before it. Kinds: start, train, eval, checkpoint, warning, done, error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

# Set by the sweep for the jobs it launches: a job exits when this process is gone.
PARENT_PID_ENV = "LORA_SWEEP_PARENT_PID"


class EventLog:
    """Appends events to a file; `enabled=False` (non-main DDP ranks) writes nothing."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.file = None

    def emit(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        if self.file is None:  # opened once: an event per training step must cost next to nothing
            self.file = self.path.open("a", encoding="utf-8")
        line = json.dumps({"event": kind, "time": round(time.time(), 3), **fields})
        self.file.write(line + "\n")
        self.file.flush()  # a reader sees each event as it happens, and a crash loses none


class EventReader:
    """Reads the events appended since the last call; a partial last line waits for its end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0

    def new(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


def better(direction: str, value: float, loss: float | None, best_value: float | None,
           best_loss: float | None) -> bool:
    """Is an evaluation scoring `value` (eval loss `loss`) better than the best so far?

    Higher or lower by the study's `direction`; on equal values the lower eval loss wins, since a
    generation metric on a few prompts often ties between evaluations (`best_value` None:
    nothing yet)."""
    if best_value is None:
        return True
    if value != best_value:
        return value > best_value if direction == "maximize" else value < best_value
    return loss is not None and best_loss is not None and loss < best_loss


def best_eval(evals: list[dict[str, Any]], key: str, direction: str) -> dict[str, Any] | None:
    """The best of a job's `eval` events (or records) that hold `key`, ties broken by eval loss."""
    best: dict[str, Any] | None = None
    for record in evals:
        if record.get(key) is not None and better(direction, record[key], record.get("eval_loss"),
                                                  best and best[key], best and best.get("eval_loss")):
            best = record
    return best


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every complete event in a file."""
    return EventReader(path).new()
