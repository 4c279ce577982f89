"""optuna-dashboard on a study's storage, with the study's artifact store.

    python -m lora_sweep dashboard study.yaml [--port N] [--host H]

Binds 127.0.0.1 unless --host says otherwise: the dashboard can edit and delete studies, so it
is not for the network by default. The artifact store is a folder beside the trial folders,
`<study.dir>/<name>/artifacts`; `upload_trial_artifacts` fills it from a sweep, so each
trial's adapter (zipped) and predictions can be downloaded from the trial's page.
"""

from __future__ import annotations

import signal
import socketserver
import sys
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudyConfig
from lora_sweep.sweep.optuna_private import storage_of, study_id
from lora_sweep.sweep.records import artifact_store, has_note, write_study_note
from lora_sweep.sweep.storage import StudyFolder, load_existing, masked

LOOPBACK = ("127.0.0.1", "localhost", "::1")












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
    app = wsgi(storage_of(study), artifact_store=artifact_store(config))
    if readonly:
        app = read_only(app)
    try:
        server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError([f"cannot listen on {host}:{port}: {exc.strerror}"]) from None
    shown = f"[{host}]" if ":" in host else host
    # the URL first, flushed: a test or a script waits for this line
    print(f"http://{shown}:{server.server_address[1]}/dashboard/studies/{study_id(study)}", flush=True)
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
