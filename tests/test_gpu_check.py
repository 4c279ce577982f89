"""The GPU check (bench/gpu_check.py, bench/gpu_check.sh) between GPU visits: its --cpu run end to end
(tiny models, a real sweep through `python -m lora_sweep run`), the wheels its wrapper installs, and
lora_sweep's pins against the GPU machine's versions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib import metadata

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

import benchlib  # noqa: E402
import gpu_check  # noqa: E402

WHEELS = REPO / "bench" / "gpu_wheels"


@pytest.mark.integration
def test_gpu_check_cpu_run(tmp_path):
    """`bench/gpu_check.py --cpu` as a process: every item measured, one RESULTS.md row per measured
    item, and the JSON holds the figures."""
    results, figures = tmp_path / "RESULTS.md", tmp_path / "gpu_check.json"
    before = (REPO / "bench" / "RESULTS.md").read_bytes()
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu", "--results", str(results),
                           "--json", str(figures), "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (REPO / "bench" / "RESULTS.md").read_bytes() == before

    out = json.loads(figures.read_text(encoding="utf-8"))
    assert out["mode"] == "cpu" and out["matmul_flops"] > 0
    assert {line["item"] for line in out["lines"]} == {1, 2, 3, 4, 5}
    assert all(set(line) == {"item", "measure", "value", "unit", "note"} for line in out["lines"])
    for seqlen, run in out["throughput"].items():
        assert run["ours_tps"] > 0 and run["plain_tps"] > 0, seqlen
        assert math.isfinite(run["ratio"]) and run["ratio"] > 0 and 0 < run["mfu"] < 1
        assert run["loss1_diff"] < 1e-3  # both sides trained the same rows of the same model
    memory = out["memory"]
    assert memory["with_mb"] > 0 and memory["without_mb"] > 0 and memory["with_tps"] > 0
    assert [s["per_gpu"] for s in out["sweeps"]] == [2]  # --cpu: one sweep of two trials at once (the GPU run: 1, 3 and 4)
    for s in out["sweeps"]:
        assert s["complete"] == s["trials"] == 2 and s["trials_per_hour"] > 0
        assert s["runner_found"] and not s["runner_cuda"]  # the warm runner forked them, without CUDA here
        assert s["primed_tokenizer"] == 2  # each job took the runner's tokenizer
        assert s["fixed_s"] > 0 and s["util_training"] is None  # no NVML on this machine
        assert s["baseline"]["eval_loss"] > 0  # the base model's evaluation, a forked job of its own
    lora, qlora = out["qlora"]["rows"]  # item 5 on the tiny Phi-3: LoRA, then QLoRA (bitsandbytes, the test extra)
    assert (lora["variant"], qlora["variant"]) == ("lora", "qlora-nf4") and lora["trainable"] == qlora["trainable"]
    assert qlora["step_s"] > 0 and qlora["peak_mb"] > 0 and qlora["step_x"] == qlora["step_s"] / lora["step_s"]

    rows = benchlib.read_results(results)
    assert [r["bench"] for r in rows] == ["gpu 1 job throughput", "gpu 2 memory", "gpu 3 sweep", "gpu 4 warm launcher",
                                          "gpu 5 qlora"]
    for row in rows:
        assert list(row) == benchlib.COLUMNS and row["setup"].startswith("smoke, cpu check")
        assert float(row["ratio"].split()[0]) > 0 and row["machine"]
    assert rows[3]["met"] == "yes"


def test_pyproject_pins_admit_the_gpu_machine():
    """torch 2.11, transformers 5.17 and accelerate 1.15 (the GPU machine's) satisfy lora_sweep's pins,
    and so do the carried wheels; an older version is named."""
    assert gpu_check.pin_problems(gpu_check.DEVICE_VERSIONS) == []
    assert gpu_check.pin_problems(gpu_check.wheel_list()) == []
    assert gpu_check.pin_problems({"transformers": "4.57.0"}) == [
        "transformers 4.57.0 does not satisfy pyproject's transformers>=5.0"]


def test_every_dependency_is_on_the_machine_carried_or_not_needed():
    """Each of pyproject's dependencies is on the GPU machine, among the carried wheels, or named as
    one a sweep does not import: a new dependency has to be placed."""
    from packaging.utils import canonicalize_name

    carried = gpu_check.wheel_list()
    for req in gpu_check.dependencies():
        name = canonicalize_name(req.name)
        assert name in gpu_check.DEVICE_PACKAGES or name in carried or name in gpu_check.NOT_CARRIED, name


def wheel_requirements(name: str, version: str) -> list[str] | None:
    """Requires-Dist of the carried wheel: from the downloaded wheel, else from this environment's
    copy when it is the same version; None when neither is here."""
    import zipfile

    from packaging.utils import canonicalize_name

    for wheel in WHEELS.glob("*.whl"):
        dist, wheel_version = wheel.name.split("-")[:2]
        if canonicalize_name(dist) == name and wheel_version == version:
            with zipfile.ZipFile(wheel) as archive:
                meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
                text = archive.read(meta).decode()
            return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    return list(dist.requires or []) if dist.version == version else None


def test_the_wheel_list_is_closed():
    """Every need of a carried wheel (on Python 3.12, Linux) is carried too or on the GPU machine: the
    wrapper installs them with --no-deps."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    carried = gpu_check.wheel_list()
    environment = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                   "os_name": "posix", "extra": ""}
    unknown = []
    for name, version in carried.items():
        needs = wheel_requirements(name, version)
        if needs is None:
            unknown.append(f"{name}=={version}")
            continue
        for line in needs:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            need = canonicalize_name(req.name)
            assert need in carried or need in gpu_check.DEVICE_PACKAGES, f"{name} needs {req}, neither carried nor there"
            if need in carried:
                assert req.specifier.contains(carried[need], prereleases=True), f"{name} needs {req}, carried {carried[need]}"
    if unknown:
        pytest.skip(f"no metadata here for {', '.join(unknown)}: bench/gpu_check.sh --download fetches the wheels")


@pytest.mark.integration
def test_the_wrapper_installs_exactly_the_list(tmp_path):
    """bench/gpu_check.sh as the device runs it, up to the check itself (`--help`): it installs the carried
    wheels, with no index, and those are exactly gpu_requirements.txt. pip installs them for Python 3.12
    here too, through its PIP_* settings."""
    if not list(WHEELS.glob("*.whl")):
        pytest.skip("bench/gpu_wheels is empty: bench/gpu_check.sh --download fetches the wheels")
    site = tmp_path / "site"
    env = {**os.environ, "GPU_CHECK_SITE": str(site), "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
           "PIP_PYTHON_VERSION": "3.12", "PIP_ONLY_BINARY": ":all:", "PIP_IMPLEMENTATION": "cp"}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--help"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--cpu" in proc.stdout  # gpu_check.py's usage: it ran after the install
    from packaging.utils import canonicalize_name

    installed = {}
    for info in site.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        installed[canonicalize_name(name)] = version
    carried = gpu_check.wheel_list()
    if not list(WHEELS.glob("bitsandbytes-*.whl")):  # left out by --download where it would pass 64 MiB
        carried.pop("bitsandbytes")
    assert installed == carried
    assert (tmp_path / "out" / "RESULTS.md").read_bytes() == (REPO / "bench" / "RESULTS.md").read_bytes()
