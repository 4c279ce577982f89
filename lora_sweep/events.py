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


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every complete event in a file."""
    return EventReader(path).new()
