"""The job's event stream: one JSON object per line, appended and flushed as it happens.

The sweep reads it while the job runs (`EventReader`), and a crash leaves every event
written before it. Kinds: start, resume, train, eval, checkpoint, warning, compare, done, error.

It also reads a job's Trainer checkpoints (`last_checkpoint`, `evals_before`) for a re-run that
resumes from one; like the rest of this module, without importing torch, so the sweep can call it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("lora_sweep.events")

# Set by the sweep for the jobs it launches: a job exits when this process is gone.
PARENT_PID_ENV = "LORA_SWEEP_PARENT_PID"
# Set by the sweep for a job that does not quantize (lora.load_in_4bit false): the job keeps
# bitsandbytes out (lora_sweep.job), which PEFT imports wherever it is installed (about 1 s a job).
NO_BITSANDBYTES_ENV = "LORA_SWEEP_NO_BITSANDBYTES"


class LauncherLost(RuntimeError):
    """What ran a job died under it (the warm runner, a Ray node), not the job: the trial fails, its
    params run again (from its last checkpoint) and the failure does not count as the trial's."""


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
    """Reads the events appended since the last call; a partial last line waits for its end.

    A line that is not a JSON object (a job killed mid-write, a stray print into the file) is
    skipped with a warning and counted in `skipped`: one bad line must not end a sweep."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self.lines = 0
        self.skipped = 0

    def new(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        events = []
        for line in chunk[:end].splitlines():
            self.lines += 1
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                event = None
            if not isinstance(event, dict) or "event" not in event:
                self.skipped += 1
                log.warning("%s:%d: not an event, skipped: %.80r", self.path, self.lines, line)
                continue
            events.append(event)
        return events


# ---------------------------------------------------------------- a job's folder


BASE_EVALUATION = "baseline"  # the base model's evaluation: baseline.json (and predictions.jsonl) in its folder


class JobFolder:
    """The files of one job's folder (a trial's, the base model's, a test.json scoring's), named in
    one place: what the job writes there, and the sweep, the launchers and the views read."""

    JOB, EVENTS, RESULT, LOG, PREDICTIONS = "job.yaml", "events.jsonl", "result.json", "train.log", "predictions.jsonl"
    ADAPTER, CHECKPOINTS = "adapter", "checkpoints"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def job_yaml(self) -> Path:
        return self.root / self.JOB

    @property
    def events(self) -> Path:
        return self.root / self.EVENTS

    @property
    def result(self) -> Path:
        return self.root / self.RESULT

    @property
    def log(self) -> Path:
        return self.root / self.LOG

    @property
    def predictions(self) -> Path:
        return self.root / self.PREDICTIONS

    @property
    def adapter(self) -> Path:
        return self.root / self.ADAPTER

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    def evaluation(self, name: str = BASE_EVALUATION) -> tuple[Path, Path]:
        """The figures and the per-sample predictions of an evaluation named `name` (`python -m
        lora_sweep.job.evaluate --out NAME`): the base model's are baseline.json and predictions.jsonl."""
        predictions = self.PREDICTIONS if name == BASE_EVALUATION else f"{name}_predictions.jsonl"
        return self.root / f"{name}.json", self.root / predictions


# ---------------------------------------------------------------- what a job reports


@dataclass(frozen=True)
class EvalEvent:
    """An `eval` event: the job's evaluation at `step`. `score` is the generation metric, present
    at the evaluations where it was scored, and `scores` its per-prompt scores (in the order of the
    scored prompts: the pruner `wilcoxon` pairs them); `best` says the job kept this evaluation's adapter."""

    step: int
    eval_loss: float
    perplexity: float | None = None
    score: float | None = None
    scores: tuple[float, ...] | None = None
    best: bool = False

    @classmethod
    def of(cls, event: dict[str, Any]) -> EvalEvent:
        fields = {f.name: event[f.name] for f in dataclasses.fields(cls) if f.name in event}
        if fields.get("scores") is not None:
            fields["scores"] = tuple(fields["scores"])
        return cls(**fields)

    def value(self, key: str) -> float | None:
        """The objective's value at this evaluation (`key`: eval_loss, perplexity or score)."""
        return getattr(self, key)

    def event(self) -> dict[str, Any]:
        """The fields of its `eval` event line (a metric not scored at this evaluation left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Evaluation:
    """An evaluation of a model outside training (`evaluate.evaluate_model`): the base model's
    (baseline.json, the study's `baseline` attr), or an adapter's on test.json. `score` is the
    generation metric, when the objective is one."""

    eval_loss: float
    perplexity: float | None = None
    metric: str = "eval_loss"
    score: float | None = None
    split: str | None = None  # the set it ran on: validation or test
    n: int | None = None  # its samples
    adapter: str | None = None
    wall_time_s: float | None = None

    @classmethod
    def of(cls, tree: dict[str, Any]) -> Evaluation:
        return cls(**{f.name: tree[f.name] for f in dataclasses.fields(cls) if f.name in tree})

    @classmethod
    def read(cls, path: str | Path) -> Evaluation:
        return cls.of(json.loads(Path(path).read_text(encoding="utf-8")))

    def value(self, key: str) -> float | None:
        return getattr(self, key)

    def record(self) -> dict[str, Any]:
        """As it is written and recorded (a metric not scored left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k == "adapter"}


@dataclass(frozen=True)
class JobResult:
    """A finished job's `result.json`: the evaluation the objective chose (its adapter is kept)
    and the job's figures. Keys this version does not know are kept in `extra`."""

    best_step: int
    best_eval_loss: float
    adapter_path: str
    metric: str = "eval_loss"
    best_perplexity: float | None = None
    best_score: float | None = None
    steps_run: int = 0
    max_steps: int | None = None
    stop_reason: str = "completed"
    wall_time_s: float = 0.0
    train_tokens: int | None = None
    train_tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    real_token_share: float | None = None  # real tokens / padded batch tokens in training (1.0 packed)
    compare_path: str | None = None  # compare.jsonl, when compare.enabled
    variant: dict[str, Any] = field(default_factory=dict)  # the LoRA variant trained (job.variants.variant)
    evals: list[dict[str, Any]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # what the sweep records on the trial (wall_time_s as job_wall_time_s: the trial has its own)
    TRIAL_ATTRS = ("adapter_path", "best_step", "best_eval_loss", "best_score", "steps_run", "stop_reason",
                   "train_tokens_per_s", "peak_memory_mb", "wall_time_s")

    @classmethod
    def read(cls, path: str | Path) -> JobResult:
        tree = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in tree.items() if k in known},
                   extra={k: v for k, v in tree.items() if k not in known})

    def value(self, key: str) -> float | None:
        """The objective's value at the evaluation the job kept (`key`: eval_loss, perplexity, score)."""
        return getattr(self, f"best_{key}")

    def record(self) -> dict[str, Any]:
        """As result.json holds it (keys this version does not know, from `read`, kept)."""
        tree = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**tree, **self.extra}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.record(), indent=2), encoding="utf-8")

    def trial_attrs(self) -> dict[str, Any]:
        """The user attrs a trial records from its job (None values left out)."""
        attrs = {("job_" + k if k == "wall_time_s" else k): getattr(self, k) for k in self.TRIAL_ATTRS}
        return {k: v for k, v in attrs.items() if v is not None}


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


# ---------------------------------------------------------------- checkpoints to resume from

# What a Trainer checkpoint of a LoRA job holds for resuming: the adapter weights, the optimizer and
# scheduler states, the RNG states (rng_state.pth, one per process under DDP), and trainer_state.json,
# which the Trainer writes after all of them: a folder that has it is complete.
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
RESUME_FILES = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json")


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a Trainer checkpoint (its trainer_state.json's global_step); None when unreadable."""
    try:
        return int(json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` is not a complete Trainer checkpoint a LoRA job can resume from; None when it is one."""
    path = Path(path)
    if not path.is_dir():
        return f"no folder at {str(path)!r}"
    missing = [] if any((path / name).is_file() for name in ADAPTER_WEIGHTS) else [ADAPTER_WEIGHTS[0]]
    missing += [pattern for pattern in RESUME_FILES if not any(path.glob(pattern))]
    if missing:
        return (f"{str(path)!r} is not a Trainer checkpoint of a LoRA job to resume from "
                f"(a checkpoints/checkpoint-<step> folder of a job): it has no {', '.join(missing)}")
    if checkpoint_step(path) is None:
        return f"{str(path)!r}: its trainer_state.json has no readable global_step (cut short?)"
    return None


def last_checkpoint(folder: str | Path) -> Path | None:
    """The latest complete checkpoint of a job's folder (`<folder>/checkpoints/checkpoint-<step>`,
    the highest step); none there (killed before its first one), the checkpoint that folder's job
    itself resumed from, if still complete; else None. A folder cut short by a kill is passed over."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in (folder / "checkpoints").glob("checkpoint-*")
             if (m := CHECKPOINT_NAME.fullmatch(p.name)) and checkpoint_problem(p) is None]
    if found:
        return max(found)[1]
    resumed = [e["from"] for e in read_events(JobFolder(folder).events) if e["event"] == "resume" and e.get("from")]
    if resumed and checkpoint_problem(resumed[-1]) is None:
        return Path(resumed[-1])
    return None


def evals_before(checkpoint: str | Path) -> tuple[list[dict[str, Any]], int | None]:
    """The evaluations of the job that wrote `checkpoint` up to its step, and the step whose adapter
    that job's folder holds (`adapter/`; None if unknown). Read from that job's events.jsonl (beside
    checkpoints/): its `eval` events and, where it had itself resumed, its `resume` event's
    evaluations; the last event of a step wins (a late-scored evaluation is reported twice). Without
    events, the losses of trainer_state.json's log history (no generation scores there)."""
    checkpoint = Path(checkpoint)
    step = checkpoint_step(checkpoint)
    if step is None:
        raise ValueError(checkpoint_problem(checkpoint) or f"{checkpoint}: no trainer_state.json")
    records: dict[int, dict[str, Any]] = {}
    adapter_step: int | None = None
    for event in read_events(JobFolder(checkpoint.parent.parent).events):
        if event["event"] == "start":  # a folder run again from scratch: what came before is not this run
            records, adapter_step = {}, None
        elif event["event"] == "resume":
            records = {r["step"]: r for r in event.get("evals", [])}
            adapter_step = event.get("adapter_step")
        elif event["event"] == "eval":
            if event["step"] <= step:
                records[event["step"]] = {k: v for k, v in event.items() if k not in ("event", "time", "best")}
            if event.get("best"):
                adapter_step = event["step"]  # a step past the checkpoint overwrote the adapter too
    if not records:
        history = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
        records = {h["step"]: {"step": h["step"], "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h}
    return [records[s] for s in sorted(records)], adapter_step
