"""Where a study lives: its Optuna storage (SQLite, a journal file, PostgreSQL), the claim under
which workers take trials, the owner of each running trial, and the study's folder layout.

The sweep writes through these; report, export and dashboard read studies through
`load_existing` and never import the sweep.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlsplit

import filelock
import optuna
import sqlalchemy
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudySection
from lora_sweep.config.places import storage_file
from lora_sweep.events import best_eval
from lora_sweep.sweep.optuna_private import storage_of, trial_id, write_user_attrs_at_once

log = logging.getLogger("lora_sweep.storage")

# The password of a storage URL can also come from this file, so a study YAML need not hold it
# (the URL itself may come from $LORA_SWEEP_STORAGE: StudyConfig.storage_url).
PASSWORD_FILE_ENV = "LORA_SWEEP_STORAGE_PASSWORD_FILE"


# ---------------------------------------------------------------- URLs (config.storage_file parses
# file-backed ones: the config checks them when it is loaded)


def is_journal(url: str) -> bool:
    file = storage_file(url)
    return file is not None and (file[0] == "journal://" or (file[0] == "" and url.endswith(".log")))


def masked(url: str) -> str:
    """The URL as it may be shown or stored: its password replaced by ***."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://[^:/@]*):[^@/]*@", r"\1:***@", url)


def with_password(url: str) -> str:
    """The URL to connect with: a server URL without a password takes it from the file named by
    $LORA_SWEEP_STORAGE_PASSWORD_FILE, if set."""
    path = os.environ.get(PASSWORD_FILE_ENV)
    if not path or storage_file(url) is not None:
        return url
    parts = urlsplit(url)
    if parts.password is not None or not parts.username:
        return url
    password = Path(path).read_text(encoding="utf-8").strip()
    return url.replace(f"://{parts.username}@", f"://{parts.username}:{quote(password, safe='')}@", 1)


def shown_config(tree: dict[str, Any] | None) -> dict[str, Any] | None:
    """A study config tree as it may be stored or shown: the storage URL's password masked."""
    if not tree or not (tree.get("study") or {}).get("storage"):
        return tree
    return {**tree, "study": {**tree["study"], "storage": masked(tree["study"]["storage"])}}


# ---------------------------------------------------------------- opening


@contextlib.contextmanager
def _connect_errors(url: str) -> Iterator[None]:
    """Turn a storage that cannot be reached into one ConfigError line, password masked."""
    try:
        yield
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        why = reason[0] if reason else type(exc).__name__
        raise ConfigError([f"cannot open the study storage {masked(url)}: {masked(why)}"]) from None


def make_storage(url: str, study: StudySection | None = None) -> optuna.storages.BaseStorage:
    """The storage at `url`. With the study's settings (a sweep), it is created if missing and
    RDB storages get heartbeats, so a killed sweep's trials are re-run; without (the commands
    that read a study), a missing database file is an error, not a new empty one."""
    file = storage_file(url)
    journal = is_journal(url)
    path = Path(file[1]) if file is not None and (journal or file[0] == "sqlite:///") else None
    if path is not None:
        if study is None and not path.is_file():
            raise ConfigError([f"no study database at {path}: run the sweep first"])
        path.parent.mkdir(parents=True, exist_ok=True)
    if journal:
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        # parallel trials write from several threads: wait for the lock instead of failing
        engine_kwargs = {"connect_args": {"timeout": 60}}
    url = with_password(url)
    with _connect_errors(url):
        if study is None:
            return RDBStorage(url, engine_kwargs=engine_kwargs)
        # A trial whose heartbeat stops (its sweep was killed) is failed and its params run again;
        # optuna 4.9 renamed the callback argument.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters:
                retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
            else:
                retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=study.heartbeat_interval,
                grace_period=study.grace_period or 2 * study.heartbeat_interval,
                **retry,
            )


def check_reachable(url: str) -> None:
    """For a server URL, connect once: a refused port or a wrong password is one ConfigError line
    (before anything is written), not a page of traceback. File URLs are checked when opened."""
    if storage_file(url) is not None:
        return
    real = with_password(url)
    with _connect_errors(url):
        try:
            engine = sqlalchemy.create_engine(real, poolclass=sqlalchemy.pool.NullPool)
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError) as exc:
            raise ConfigError([f"study.storage: {masked(url)} is not a storage optuna can open: {exc}"]) from None
        with engine.connect():
            pass
        engine.dispose()


def load_existing(url: str, name: str | None) -> optuna.Study:
    """A study a sweep made, for reading; the name may be left out when the storage holds one."""
    storage = make_storage(url)
    with _connect_errors(url):
        names = optuna.get_all_study_names(storage)
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        which = f"study {name!r} is" if name else "a study name is needed: it"
        raise ConfigError([f"{which} not in {masked(url)} (it holds: {', '.join(names) or 'none'})"])
    return optuna.load_study(study_name=name, storage=storage)


# The user attr of a trial copied from an earlier study by study.warm_start: it seeds the sampler,
# but it is neither a trial of this study's budget nor a candidate for its best (its adapter is
# the earlier study's).
# "baseline" names two things a study records (kept as it was, for the studies that hold it):
DEFAULTS_ATTR = "baseline"  # trial user attr: records.DEFAULTS marks the documented-defaults trial
BASE_ATTR = "baseline"  # study user attr: the base model's evaluation (events.Evaluation.record())
WARM_START_ATTR = "warm_start"
# The user attr of a trial that re-runs a killed one: {"trial": its number, "dir": its folder},
# whose last checkpoint the re-run resumes from.
RESUMES_ATTR = "resumes"


def own_trials(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
    """The study's trials in `states`, without the ones a warm start copied in."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if WARM_START_ATTR not in t.user_attrs]


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The study's best completed trial (one objective); of trials with equal values, the one
    with the lower best eval loss (optuna's `best_trial` takes the first). ValueError if none.
    Trials a warm start copied in are not candidates."""
    done = own_trials(study, (TrialState.COMPLETE,))
    records = [{"trial": t, "value": t.values[0], "eval_loss": t.user_attrs.get("best_eval_loss")} for t in done]
    best = best_eval(records, "value", study.direction.name.lower())
    if best is None:
        raise ValueError("no trial has completed yet")
    return best["trial"]


def set_trial_attrs(study: optuna.Study, trial_id: int, attrs: dict[str, Any]) -> None:
    """A running trial's user attrs, all in one database transaction on an RDB storage (one commit:
    for SQLite one lock and one fsync, not one per attr); one write each on other storages."""
    if attrs and write_user_attrs_at_once(study, trial_id, attrs):
        return
    for key, value in attrs.items():
        storage_of(study).set_trial_user_attr(trial_id, key, value)


# ---------------------------------------------------------------- the claim


class StudyClaim:
    """The lock under which a worker counts the study's trials and creates the next one, so
    that parallel slots and workers on other processes or machines never both take the last
    trial of the budget. Threads of one worker share a threading lock; across processes it is
    a lock file beside a SQLite or journal file, or a session advisory lock on a PostgreSQL or
    MySQL server (freed by the server when a killed worker's connection drops)."""

    def __init__(self, url: str, study_name: str) -> None:
        self.threads = threading.Lock()
        self.file: filelock.FileLock | None = None
        self.engine: Any = None
        self.connection: Any = None
        file = storage_file(url)
        if file is not None:
            Path(file[1]).parent.mkdir(parents=True, exist_ok=True)
            self.file = filelock.FileLock(f"{file[1]}.claim.lock", thread_local=False)
            return
        digest = hashlib.sha256(f"lora_sweep claim {study_name}".encode()).digest()
        # the statement that waits for the server's lock of this study, with its parameters
        self.lock_statement = {
            "postgresql": ("SELECT pg_advisory_lock(:key)", {"key": int.from_bytes(digest[:8], "big", signed=True)}),
            # a name of up to 64 characters; a negative timeout waits for ever
            "mysql": ("SELECT GET_LOCK(:name, -1)", {"name": f"lora_sweep-{digest.hex()[:40]}"}),
        }.get(url.split("://", 1)[0].split("+", 1)[0])
        if self.lock_statement is not None:
            self.url = with_password(url)
            self.engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)

    def acquire(self) -> None:
        self.threads.acquire()
        try:
            if self.file is not None:
                self.file.acquire()
            elif self.engine is not None:
                with _connect_errors(self.url):
                    self.connection = self.engine.connect()
                sql, params = self.lock_statement
                self.connection.execute(sqlalchemy.text(sql), params)
        except BaseException:
            self.threads.release()
            raise

    def release(self) -> None:
        try:
            if self.file is not None:
                self.file.release()
            elif self.connection is not None:
                self.connection.close()  # a session lock ends with its session (NullPool: really closed)
                self.connection = None
        finally:
            self.threads.release()

    def __enter__(self) -> StudyClaim:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------- who runs a trial

OWNER_ATTR = "worker"


def process_start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), None if it is gone; with
    the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def this_worker() -> dict[str, Any]:
    """The owner record of this process: host, pid and process start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start_time(os.getpid())}


def owner_is_gone(owner: dict[str, Any] | None) -> bool:
    """Is `owner` a worker of this host that no longer runs? (A remote one is never judged here.)"""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    started = process_start_time(int(owner["pid"]))
    return started is None or started != owner.get("started")


def fail_dead_trials(study: optuna.Study) -> None:
    """Fail, and queue again, the RUNNING trials whose worker is dead: on this host at once (its
    process is gone), elsewhere once its heartbeat is stale (RDB storages)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_orphaned_trials(study)


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail the study's RUNNING trials whose worker on this host is gone (killed, crashed) and
    queue their params again, as a stale heartbeat would; returns their numbers. This is what
    makes a re-run straight after a crash safe, and the only guard on journal storage, which has
    no heartbeats."""
    orphans = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if owner_is_gone(t.user_attrs.get(OWNER_ATTR))]
    for trial in orphans:
        fail_and_requeue(study, trial, "its worker process is gone (killed or crashed)")
    return [t.number for t in orphans]


def fail_and_requeue(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Mark a RUNNING trial FAIL with `reason` and queue its params to run again."""
    storage = storage_of(study)  # the trial may belong to another worker: write through the storage
    storage.set_trial_user_attr(trial_id(trial), "error", reason)
    storage.set_trial_user_attr(trial_id(trial), "stop_reason", "error")
    try:
        storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
    except RuntimeError:  # finished meanwhile (its worker was alive after all)
        return
    if trial.params:
        attrs = {k: v for k, v in trial.user_attrs.items() if k == DEFAULTS_ATTR}
        if "trial_dir" in trial.user_attrs:  # the re-run resumes from its last checkpoint
            attrs[RESUMES_ATTR] = {"trial": trial.number, "dir": trial.user_attrs["trial_dir"]}
        study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
    log.warning("trial %d failed: %s; its params run again", trial.number, reason)


def file_identity(url: str) -> tuple[int, int] | None:
    """(device, inode) of a file storage's database file, None for a server or a missing file: a
    file deleted, or deleted and made again empty by a new connection, has another identity."""
    file = storage_file(url)
    try:
        found = os.stat(file[1]) if file is not None else None
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if found else None


# ---------------------------------------------------------------- the study folder


@dataclass(frozen=True)
class StudyFolder:
    """The files of a study, in one place: `<study.dir>/<name>/` holds `trials/<number>/`, the
    tokenized-data `cache/`, the base-model evaluation in `baseline/`, the test.json scorings in
    `test/`, the lost trials set aside in `lost-trials/` and the dashboard's
    `artifacts/`. `storage.json` says which storage the trials belong to, so two studies of one
    name and folder but different storages never delete each other's trials."""

    root: Path

    def trial(self, number: int) -> Path:
        return self.root / "trials" / str(number)

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def baseline(self) -> Path:
        return self.root / "baseline"

    def test(self, name: str) -> Path:
        """The folder of one test.json scoring after the sweep (holdout): `trial-<n>` or `base`."""
        return self.root / "test" / name

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def check_owner(self, url: str) -> None:
        """Refuse a folder that holds the trials of another storage's study (its trial folders
        would be overwritten); writes nothing."""
        marker = self.root / "storage.json"
        if marker.is_file():
            owner = json.loads(marker.read_text(encoding="utf-8")).get("storage")
            if owner != masked(url):
                raise ConfigError([f"{self.root} holds the trials of the study in {owner}, not {masked(url)}: "
                                   f"give this study its own study.dir or study.name"])

    def set_aside(self, known: Callable[[], set[int]]) -> tuple[Path, list[str]] | None:
        """Move the trial folders whose number the storage does not know (`known()`: the numbers of
        its started trials; a database deleted or replaced since they ran) to `lost-trials/<time>/`, so no new
        trial reuses or deletes one; where they went and which, or None. The folders are listed
        before the numbers: one a worker creates meanwhile belongs to a trial the storage knows."""
        trials = self.root / "trials"
        folders = [p for p in trials.iterdir() if p.name.isdigit()] if trials.is_dir() else []
        numbers = known() if folders else set()
        strays = [p for p in folders if int(p.name) not in numbers]
        if not strays:
            return None
        dest = self.root / "lost-trials" / time.strftime("%Y%m%d-%H%M%S")
        dest.mkdir(parents=True, exist_ok=True)
        for folder in strays:
            folder.rename(dest / folder.name)
        return dest, sorted((p.name for p in strays), key=int)

    def claim_for(self, url: str) -> None:
        """Record that this folder holds the trials of the study in `url` (after check_owner)."""
        self.check_owner(url)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "storage.json").write_text(json.dumps({"storage": masked(url)}) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"study.dir: cannot write {self.root}: {exc.strerror}"]) from None
