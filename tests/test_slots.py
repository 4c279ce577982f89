"""Trial slots: how parallel trials share the GPUs (study.devices, gpus_per_trial, trials_per_gpu)."""

from __future__ import annotations

import logging

import pytest

from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import StudyConfig
from lora_sweep.sweep.loop import device_groups
from lora_sweep.sweep.trial import slot_launch


def study(tmp_path, **fields) -> StudyConfig:
    return StudyConfig.model_validate({"study": {"dir": str(tmp_path), **fields},
                                       "data": {"train_file": "t.json", "test_file": "t.json"}})


def test_trials_per_gpu_fills_every_gpu_before_doubling_up(tmp_path):
    config = study(tmp_path, devices=[0, 1], parallel=4, trials_per_gpu=2)
    assert device_groups(config) == [[0], [1], [0], [1]]
    assert device_groups(study(tmp_path, devices=[0, 1], parallel=3, trials_per_gpu=2)) == [[0], [1], [0]]


def test_trials_per_gpu_with_gpu_groups(tmp_path):
    config = study(tmp_path, devices=[0, 1, 2, 3], parallel=4, gpus_per_trial=2, trials_per_gpu=2)
    assert device_groups(config) == [[0, 1], [2, 3], [0, 1], [2, 3]]


def test_more_parallel_than_slots_is_capped_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, "lora_sweep.sweep"):
        assert device_groups(study(tmp_path, devices=[0], parallel=3, trials_per_gpu=2)) == [[0], [0]]
    assert "study.parallel is 3 but the GPUs make 1 groups of 1, 2 trial(s) each: running 2 at once" in caplog.text


def test_too_few_gpus_for_a_group(tmp_path):
    with pytest.raises(ConfigError, match=r"study.gpus_per_trial \(2\) is more than the GPUs there are \(\[0\]\)"):
        device_groups(study(tmp_path, devices=[0], gpus_per_trial=2))


def test_cpu_slots(tmp_path):
    assert device_groups(study(tmp_path, devices="cpu", parallel=2, trials_per_gpu=3)) == [None, None]


def test_two_ddp_trials_on_one_gpu_group_rendezvous_on_different_ports(tmp_path):
    config = study(tmp_path, devices=[0, 1], parallel=2, gpus_per_trial=2, trials_per_gpu=2)
    first, second = (slot_launch(config, slot) for slot in device_groups(config))
    port = lambda flags: flags[flags.index("--main_process_port") + 1]  # noqa: E731
    assert first[1] == second[1] == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert "--multi_gpu" in first[0] and port(first[0]) != port(second[0])


def test_cpu_launcher_args_that_read_as_ddp_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"study.launcher_args: accelerate runs --cpu --num_processes 2 as one "
                                         r"process; for 2 processes on the CPU \(gloo\) give --multi_gpu "
                                         r"--num_processes 2 without --cpu"):
        study(tmp_path, launcher_args=["--cpu", "--num_processes", "2"])
    assert study(tmp_path, launcher_args=["--cpu", "--num_processes", "1"]).study.launcher_args[-1] == "1"
