"""Every use of optuna's (and optuna-dashboard's) private API, in one place, each with why no public
API serves. Checked against optuna 5.0 and 5.1 and optuna-dashboard 0.21; a newer release that moves
one of these breaks here, and only here.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage object. optuna has no public accessor; the sweep needs it to record a
    running trial's heartbeat (what `Study.optimize` does itself), to write to a trial another worker
    owns (fail and requeue a dead worker's trial) and to hand optuna-dashboard's `wsgi` a storage."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage: storage methods take ids, and the dashboard's URL holds it;
    `Study` exposes no public id."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id in its storage (a trial's `number` is per study, storage methods take the id):
    public on neither `Trial` nor `FrozenTrial`."""
    return trial._trial_id


def write_user_attrs_at_once(study: optuna.Study, trial_id: int, attrs: dict[str, Any]) -> bool:
    """Write a running trial's user attrs in one database transaction on an RDB storage (one commit:
    for SQLite one lock and one fsync, not one per attr). optuna's public `set_trial_user_attr`
    commits each attr on its own; its RDB storage writes one without committing in
    `_set_trial_attr_without_commit`, inside `_create_scoped_session` (which commits once), and wraps
    the RDB storage in a cache whose `_backend` is the RDB storage. False (nothing written) where
    these are not there: a journal file, or an optuna that moved them."""
    backend = getattr(study._storage, "_backend", study._storage)
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    if not isinstance(backend, RDBStorage) or write is None:
        return False
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session) as session:
        for key, value in attrs.items():
            write(session, models.TrialUserAttributeModel, trial_id, key, value)
    return True


def dashboard_note(study: optuna.Study) -> str:
    """The body of the study's optuna-dashboard note ("" when none). optuna-dashboard 0.21 writes
    notes with the public `save_note` but reads them only with its private `_note` module; optuna 5
    dropped `Study.system_attrs`, so the note's attrs are read through the storage."""
    from optuna_dashboard._note import get_note_from_system_attrs

    attrs = storage_of(study).get_study_system_attrs(study_id(study))
    return get_note_from_system_attrs(attrs, None).get("body") or ""


def fixed_params(trial: optuna.Trial) -> dict[str, Any]:
    """The params a queued trial (`enqueue_trial`) was taken with: optuna keeps them in the trial's
    `_fixed_params` (read from its system attrs, whose public accessor on `Trial` is deprecated); the
    sweep reads them to draw a queued value outside its searched range from a range that holds it."""
    return dict(trial._fixed_params)
