"""optuna-dashboard on a study's storage, with the study's artifact store.

    python -m lora_sweep dashboard study.yaml [--port N] [--host H]

Binds 127.0.0.1 unless --host says otherwise: the dashboard can edit and delete studies, so it
is not for the network by default. The artifact store is a folder beside the trial folders,
`<study.dir>/<name>/artifacts`; `upload_trial_artifacts` fills it from a sweep, so each
trial's adapter (zipped) and predictions can be downloaded from the trial's page.
"""

from __future__ import annotations

import shutil
import signal
import socketserver
import sys
import tempfile
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial

from lora_sweep.config import ConfigError, StudyConfig
from lora_sweep.storage import StudyFolder, load_existing, masked, shown_config

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def artifact_store(config: StudyConfig) -> FileSystemArtifactStore:
    """The study's filesystem artifact store (its folder is made here: optuna does not)."""
    folder = StudyFolder(config.folder).artifacts.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def upload_trial_artifacts(study: optuna.Study, trial: optuna.Trial | FrozenTrial,
                           config: StudyConfig) -> dict[str, str]:
    """Upload a trial's adapter folder (as `adapter-trial<N>.zip`) and its `predictions.jsonl`,
    those that exist; returns {"adapter": artifact id, "predictions": artifact id}.

    Call it while the trial runs (in the objective, before it returns or raises): optuna
    records artifacts as trial system attrs, which an RDB storage refuses once the trial is
    finished. Each call uploads again, so call it once per trial."""
    store = artifact_store(config)
    folder = Path(trial.user_attrs.get("trial_dir") or StudyFolder(config.folder.resolve()).trial(trial.number))
    adapter = Path(trial.user_attrs.get("adapter_path") or folder / "adapter")
    predictions = Path(trial.user_attrs.get("predictions_path") or folder / "predictions.jsonl")
    # a FrozenTrial carries no storage of its own; an optuna.Trial does
    storage = study._storage if isinstance(trial, FrozenTrial) else None
    uploaded: dict[str, str] = {}
    if adapter.is_dir() and any(adapter.iterdir()):
        with tempfile.TemporaryDirectory() as tmp:
            archive = shutil.make_archive(str(Path(tmp) / f"adapter-trial{trial.number}"), "zip", root_dir=adapter)
            uploaded["adapter"] = upload_artifact(artifact_store=store, file_path=archive, study_or_trial=trial,
                                                  storage=storage, mimetype="application/zip")
    if predictions.is_file():
        uploaded["predictions"] = upload_artifact(artifact_store=store, file_path=str(predictions),
                                                  study_or_trial=trial, storage=storage,
                                                  mimetype="application/x-ndjson")
    return uploaded


def study_note(study: optuna.Study, config: StudyConfig | None = None) -> str:
    """A Markdown note for the study's dashboard page: objective, space, base model and the whole
    config. The dashboard cuts JSON user attrs at 1024 characters; a note is shown whole. What the
    sweep recorded in the study's user attrs comes first, `config` fills in what is missing."""
    import yaml

    from lora_sweep.space import RUN_ATTR, build_space, describe

    attrs = study.user_attrs
    tree = shown_config(attrs.get("config") or (config.model_dump(mode="json") if config else None))
    metric = attrs.get("metric") or (config.objective.metric if config else "the objective")
    space = attrs.get("space") or (describe(build_space(config)) if config else {})
    directions = ", ".join(d.name.lower() for d in study.directions)
    lines = [f"**Objective**: {metric} ({directions})", ""]
    if space:
        lines += ["**Search space**", "", *(f"- `{name}`: {text}" for name, text in space.items()), ""]
    fitted = (attrs.get(RUN_ATTR) or {}).get("notes") or []  # ranges fitted to the run's length
    lines += [*(f"- search space: {note}" for note in fitted), *([""] if fitted else [])]
    baseline = attrs.get("baseline")
    if isinstance(baseline, dict):
        parts = [f"{k} {baseline[k]:.4g}" for k in ("eval_loss", "perplexity")
                 if isinstance(baseline.get(k), (int, float))]
        if isinstance(baseline.get("score"), (int, float)):
            parts.append(f"{baseline.get('metric', 'score')} {baseline['score']:.4g}")
        lines += ["**Base model** (no adapter): " + ", ".join(parts), ""]
    for note in attrs.get("defaults_notes") or []:
        lines.append(f"- defaults trial: {note}")
    if tree:
        lines += ["", "**Config**", "", "```yaml", yaml.safe_dump(tree, sort_keys=False).rstrip(), "```"]
    return "\n".join(lines).strip() + "\n"


def write_study_note(study: optuna.Study, config: StudyConfig | None = None) -> None:
    """Write `study_note` as the study's dashboard note (replacing the note there)."""
    from optuna_dashboard import save_note

    save_note(study, study_note(study, config))


def has_note(study: optuna.Study) -> bool:
    from optuna_dashboard._note import get_note_from_system_attrs  # no public reader in 0.21

    attrs = study._storage.get_study_system_attrs(study._study_id)  # optuna 5 dropped Study.system_attrs
    return bool(get_note_from_system_attrs(attrs, None).get("body"))


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # an open browser tab must not keep the process alive at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per request is noise here
        pass


class _Stop(BaseException):
    """SIGTERM: stop serving and exit 0, as on Ctrl+C. Not an Exception: socketserver swallows
    those when the signal lands while a request is being handed to its thread."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stop


def read_only(app: Any) -> Any:
    """The dashboard app refusing every request that could change the study (optuna-dashboard
    0.21 has no read-only mode of its own): only GET and HEAD pass."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD", "GET") in ("GET", "HEAD"):
            return app(environ, start_response)
        body = b"read-only dashboard (lora_sweep dashboard --read-only): the study cannot be changed here\n"
        start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return guarded


def serve(config: StudyConfig, host: str = "127.0.0.1", port: int = 8080, readonly: bool = False) -> int:
    """Serve optuna-dashboard on the study's storage until Ctrl+C or SIGTERM; port 0: any free one."""
    from optuna_dashboard import wsgi

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_existing(config.storage_url, config.study.name)
    try:
        if not has_note(study):
            write_study_note(study, config)
    except Exception as exc:  # a note is a nicety: a locked or read-only database must not stop the dashboard
        print(f"warning: the study note was not written: {exc}", file=sys.stderr)
    app = wsgi(study._storage, artifact_store=artifact_store(config))
    if readonly:
        app = read_only(app)
    try:
        server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError([f"cannot listen on {host}:{port}: {exc.strerror}"]) from None
    shown = f"[{host}]" if ":" in host else host
    # the URL first, flushed: a test or a script waits for this line
    print(f"http://{shown}:{server.server_address[1]}/dashboard/studies/{study._study_id}", flush=True)
    print(f"optuna-dashboard for study {config.study.name!r} in {masked(config.storage_url)}; "
          f"artifacts in {StudyFolder(config.folder).artifacts}; Ctrl+C to stop", flush=True)
    if host not in LOOPBACK:
        print(f"warning: --host {host} serves the study to the network with no login: anyone who reaches "
              f"port {server.server_address[1]} can read every trial, params and artifact (adapters, predictions)"
              + ("" if readonly else ", and edit or delete the study, its trials and notes; "
                 "add --read-only to refuse changes"), file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    print("dashboard stopped", flush=True)
    return 0
