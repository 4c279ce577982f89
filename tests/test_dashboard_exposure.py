"""`dashboard --host` beyond loopback says what it exposes; `--read-only` refuses every change
(real HTTP against the real optuna-dashboard)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import optuna
import pytest

from helpers import memorization_samples, write_jsonl, write_yaml
from lora_sweep.sweep.storage import load_existing


def request(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.integration
@pytest.mark.parametrize("read_only", [True, False])
def test_dashboard_on_the_network_warns_and_read_only_refuses_changes(read_only, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=url, study_name="s")
    study.add_trial(optuna.trial.create_trial(value=1.0))
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data/train.json", memorization_samples())
    write_jsonl(tmp_path / "data/test.json", memorization_samples())
    config = write_yaml(tmp_path / "s.yaml", {"study": {"name": "s", "storage": url, "dir": str(tmp_path)},
                                              "data": {"dataset": str(tmp_path / "data")}})
    args = [sys.executable, "-m", "lora_sweep", "dashboard", str(config), "--host", "0.0.0.0", "--port", "0"]
    proc = subprocess.Popen(args + (["--read-only"] if read_only else []), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split(":")[2].split("/")[0])
        warning = proc.stderr.readline().strip()
        base = f"http://127.0.0.1:{port}/api/studies"
        deadline = time.time() + 30
        while True:
            try:
                status, _ = request(base)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert status == 200
        study_id = study._study_id
        changed, body = request(f"{base}/{study_id}/note", "PUT", {"version": 0, "body": "edited from afar"})
        deleted, _ = request(f"{base}/{study_id}", "DELETE")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert warning.startswith(f"warning: --host 0.0.0.0 serves the study to the network with no login: anyone "
                              f"who reaches port {port} can read every trial")
    if read_only:
        assert warning.endswith("params and artifact (adapters, predictions)")
        assert (changed, deleted) == (403, 403) and b"read-only dashboard" in body
        assert load_existing(url, "s").trials[0].value == 1.0  # still there
    else:
        assert "edit or delete the study, its trials and notes; add --read-only to refuse changes" in warning
        assert deleted == 204 and optuna.get_all_study_names(url) == []
