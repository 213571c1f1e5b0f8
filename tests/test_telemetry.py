"""Specification of the supervisor's telemetry sampler.

Real psutil on real child processes; NVML is faked at the hardware boundary, except for
the tests of the real pynvml path (one for GPU-less machines, one marked ``gpu``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from engine import TraindeckError
from engine.supervisor._telemetry import TelemetrySampler

BUSY = "print('ready', flush=True)\nwhile True: pass"
SLEEPING = "import time; print('ready', flush=True); time.sleep(600)"


class NVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


class NVMLError_NotSupported(NVMLError):
    pass


class FakeNVML:
    """A pynvml stand-in with two GPUs; ``gpu_pids``/``graphics_pids`` list the processes on each."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, gpu_pids: tuple[list[int], list[int]] = ([], []),
                 graphics_pids: tuple[list[int], list[int]] = ([], []), init_error: str | None = None,
                 count: int = 2, unsupported: tuple[str, ...] = ()) -> None:
        self.gpu_pids, self.graphics_pids = gpu_pids, graphics_pids
        self.init_error, self.count, self.unsupported = init_error, count, unsupported
        self.calls: dict[str, int] = {}

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.unsupported:
            raise NVMLError_NotSupported("Not Supported")

    def nvmlInit(self) -> None:
        self._call("nvmlInit")
        if self.init_error:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"handle{i}"

    def _i(self, handle: str) -> int:
        return int(handle.removeprefix("handle"))

    def nvmlDeviceGetName(self, h: str) -> str | bytes:
        return ["NVIDIA H100 80GB HBM3", b"NVIDIA A100-SXM4-40GB"][self._i(h)]

    def nvmlDeviceGetUtilizationRates(self, h: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=[97, 3][self._i(h)], memory=[40, 0][self._i(h)])

    def nvmlDeviceGetMemoryInfo(self, h: str) -> SimpleNamespace:
        used, total = [(30 * 2**30, 80 * 2**30), (2**20, 40 * 2**30)][self._i(h)]
        return SimpleNamespace(used=used, total=total, free=total - used)

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return [71, 34][self._i(h)]

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        self._call("nvmlDeviceGetPowerUsage")
        return [612_345, 58_000][self._i(h)]

    def nvmlDeviceGetEnforcedPowerManagementLimit(self, h: str) -> int:
        return [700_000, 400_000][self._i(h)]

    def nvmlDeviceGetClockInfo(self, h: str, clock: int) -> int:
        assert clock == self.NVML_CLOCK_SM
        return [1980, 210][self._i(h)]

    def nvmlDeviceGetComputeRunningProcesses(self, h: str) -> list[SimpleNamespace]:
        self._call("nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=p, usedGpuMemory=2**30) for p in self.gpu_pids[self._i(h)]]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: str) -> list[SimpleNamespace]:
        self._call("nvmlDeviceGetGraphicsRunningProcesses")
        return [SimpleNamespace(pid=p, usedGpuMemory=None) for p in self.graphics_pids[self._i(h)]]


def no_gpu() -> FakeNVML:
    return FakeNVML(init_error="Driver Not Loaded")


@pytest.fixture
def spawn() -> Iterator[Callable[[str], subprocess.Popen]]:
    """Starts ``python -c code`` children, past interpreter start-up, and kills what is left of them afterwards."""
    children: list[subprocess.Popen] = []

    def start(code: str) -> subprocess.Popen:
        children.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True))
        assert children[-1].stdout.readline() == "ready\n"
        return children[-1]

    yield start
    for child in children:
        child.kill()
        child.wait()
        child.stdout.close()


def by_rank(sample: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["rank"]: r for r in sample["ranks"]}


def wait_until_zombie(pid: int) -> None:
    deadline = time.monotonic() + 5
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process read straight from /proc, independently of psutil."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_busy_rank_cpu_percent_is_the_share_of_a_core_it_got(spawn: Callable[[str], subprocess.Popen]) -> None:
    busy = spawn(BUSY)
    sampler = TelemetrySampler(nvml=no_gpu())
    cpu0, wall0 = cpu_seconds(busy.pid), time.monotonic()
    sampler.sample({0: busy.pid})
    time.sleep(0.5)
    percent = sampler.sample({0: busy.pid})["ranks"][0]["cpu_percent"]
    got = 100 * (cpu_seconds(busy.pid) - cpu0) / (time.monotonic() - wall0)
    assert percent > 5
    assert percent == pytest.approx(got, abs=10)


def test_sleeping_rank_shows_almost_no_cpu(spawn: Callable[[str], subprocess.Popen]) -> None:
    ranks = {0: spawn(SLEEPING).pid}
    sampler = TelemetrySampler(nvml=no_gpu())
    sampler.sample(ranks)
    time.sleep(0.3)
    assert sampler.sample(ranks)["ranks"][0]["cpu_percent"] < 2


def test_live_rank_reports_pid_rss_and_threads(spawn: Callable[[str], subprocess.Popen]) -> None:
    child = spawn(SLEEPING)
    rank = by_rank(TelemetrySampler(nvml=no_gpu()).sample({3: child.pid}))[3]
    assert rank["pid"] == child.pid
    assert rank["alive"] is True
    assert rank["rss_bytes"] > 1_000_000
    assert rank["num_threads"] >= 1


def test_first_sample_has_no_rates_and_second_has_them(spawn: Callable[[str], subprocess.Popen]) -> None:
    ranks = {0: spawn(SLEEPING).pid}
    sampler = TelemetrySampler(nvml=no_gpu())
    rate_keys = ["cpu_percent", "disk_read_bytes_per_s", "disk_write_bytes_per_s",
                 "net_sent_bytes_per_s", "net_recv_bytes_per_s"]
    first = sampler.sample(ranks)
    time.sleep(0.05)
    second = sampler.sample(ranks)
    assert all(first["host"][k] is None for k in rate_keys)
    assert first["ranks"][0]["cpu_percent"] is None
    assert all(second["host"][k] >= 0 for k in rate_keys)
    assert 0 <= second["host"]["cpu_percent"] <= 100
    assert second["ranks"][0]["cpu_percent"] >= 0


def test_host_reports_cpu_memory_swap_and_load() -> None:
    host = TelemetrySampler(nvml=no_gpu()).sample({})["host"]
    assert host["cpu_count"] == psutil.cpu_count()
    assert 0 < host["memory_used_bytes"] < host["memory_total_bytes"] == psutil.virtual_memory().total
    assert 0 < host["memory_percent"] < 100
    assert 0 <= host["swap_used_bytes"] <= host["swap_total_bytes"]
    assert len(host["load_avg"]) == 3


def test_sample_time_is_unix_time() -> None:
    before = time.time()
    stamp = TelemetrySampler(nvml=no_gpu()).sample({})["time"]
    assert before <= stamp <= time.time()


def test_killed_and_reaped_rank_is_reported_not_alive(spawn: Callable[[str], subprocess.Popen]) -> None:
    child = spawn(SLEEPING)
    sampler = TelemetrySampler(nvml=no_gpu())
    sampler.sample({0: child.pid})
    child.kill()
    child.wait()
    rank = sampler.sample({0: child.pid})["ranks"][0]
    assert rank == {"rank": 0, "pid": child.pid, "alive": False, "cpu_percent": None, "rss_bytes": None,
                    "num_threads": None}


def test_killed_but_unreaped_rank_is_reported_not_alive(spawn: Callable[[str], subprocess.Popen]) -> None:
    child = spawn(SLEEPING)
    sampler = TelemetrySampler(nvml=no_gpu())
    sampler.sample({0: child.pid})
    child.kill()
    wait_until_zombie(child.pid)
    assert sampler.sample({0: child.pid})["ranks"][0]["alive"] is False


def test_rank_whose_process_already_exited_is_reported_not_alive() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert TelemetrySampler(nvml=no_gpu()).sample({0: dead.pid})["ranks"][0]["alive"] is False


def test_restarted_rank_is_followed_to_its_new_pid(spawn: Callable[[str], subprocess.Popen]) -> None:
    old, new = spawn(SLEEPING), spawn(SLEEPING)
    sampler = TelemetrySampler(nvml=no_gpu())
    sampler.sample({0: old.pid})
    sampler.sample({0: old.pid})
    old.kill()
    old.wait()
    first_after = sampler.sample({0: new.pid})["ranks"][0]
    second_after = sampler.sample({0: new.pid})["ranks"][0]
    assert first_after["pid"] == new.pid and first_after["alive"] is True
    assert first_after["cpu_percent"] is None
    assert second_after["cpu_percent"] is not None


def test_ranks_are_listed_in_rank_order_and_dropped_ranks_disappear(spawn: Callable[[str], subprocess.Popen]) -> None:
    a, b = spawn(SLEEPING), spawn(SLEEPING)
    sampler = TelemetrySampler(nvml=no_gpu())
    assert [r["rank"] for r in sampler.sample({1: b.pid, 0: a.pid})["ranks"]] == [0, 1]
    assert [r["rank"] for r in sampler.sample({1: b.pid})["ranks"]] == [1]


def test_fake_gpus_report_every_field_in_plain_units() -> None:
    sample = TelemetrySampler(nvml=FakeNVML()).sample({})
    assert sample["gpu_status"] is None
    assert sample["gpus"] == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "util_percent": 97, "memory_used_bytes": 30 * 2**30,
         "memory_total_bytes": 80 * 2**30, "temperature_c": 71, "power_w": 612.345, "power_limit_w": 700.0,
         "sm_clock_mhz": 1980, "pids": [], "ranks": []},
        {"index": 1, "name": "NVIDIA A100-SXM4-40GB", "util_percent": 3, "memory_used_bytes": 2**20,
         "memory_total_bytes": 40 * 2**30, "temperature_c": 34, "power_w": 58.0, "power_limit_w": 400.0,
         "sm_clock_mhz": 210, "pids": [], "ranks": []},
    ]


def test_gpu_processes_are_matched_to_ranks() -> None:
    nvml = FakeNVML(gpu_pids=([1001, 5555], [1002]), graphics_pids=([], [1003, 1002]))
    gpus = TelemetrySampler(nvml=nvml).sample({0: 1001, 1: 1002, 2: 1003})["gpus"]
    assert (gpus[0]["pids"], gpus[0]["ranks"]) == ([1001, 5555], [0])
    assert (gpus[1]["pids"], gpus[1]["ranks"]) == ([1002, 1003], [1, 2])


def test_unsupported_power_reading_is_none_and_the_rest_is_read() -> None:
    gpu = TelemetrySampler(nvml=FakeNVML(unsupported=("nvmlDeviceGetPowerUsage",))).sample({})["gpus"][0]
    assert gpu["power_w"] is None
    assert gpu["power_limit_w"] == 700.0
    assert gpu["temperature_c"] == 71 and gpu["util_percent"] == 97 and gpu["name"] == "NVIDIA H100 80GB HBM3"


def test_unreadable_process_lists_leave_pids_and_ranks_none() -> None:
    nvml = FakeNVML(unsupported=("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"))
    gpu = TelemetrySampler(nvml=nvml).sample({0: 1001})["gpus"][0]
    assert gpu["pids"] is None and gpu["ranks"] is None
    assert gpu["sm_clock_mhz"] == 1980


def test_failed_nvml_init_is_reported_tried_once_and_logged_once(traindeck_log: pytest.LogCaptureFixture) -> None:
    nvml = no_gpu()
    sampler = TelemetrySampler(nvml=nvml)
    samples = [sampler.sample({}) for _ in range(3)]
    assert all(s["gpus"] == [] for s in samples)
    assert {s["gpu_status"] for s in samples} == {"no NVIDIA GPU (NVML: Driver Not Loaded)"}
    assert nvml.calls["nvmlInit"] == 1
    assert [r.getMessage() for r in traindeck_log.records if "no NVIDIA GPU" in r.getMessage()] == [
        "GPU telemetry off: no NVIDIA GPU (NVML: Driver Not Loaded)"]


def test_zero_devices_is_reported_as_no_gpu_and_nvml_is_shut_down() -> None:
    nvml = FakeNVML(count=0)
    sample = TelemetrySampler(nvml=nvml).sample({})
    assert sample["gpus"] == []
    assert sample["gpu_status"] == "no NVIDIA GPU (NVML: 0 devices)"
    assert nvml.calls["nvmlShutdown"] == 1


def test_missing_pynvml_is_reported_as_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    sample = TelemetrySampler().sample({})
    assert sample["gpus"] == []
    assert sample["gpu_status"].startswith("no NVIDIA GPU (NVML: pynvml not importable: ")


def _real_gpu_count() -> int:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.skipif(_real_gpu_count() > 0, reason="this machine has an NVIDIA GPU")
def test_real_pynvml_without_gpu_reports_no_gpu_and_keeps_sampling(spawn: Callable[[str], subprocess.Popen]) -> None:
    sampler = TelemetrySampler()
    sample = sampler.sample({0: spawn(SLEEPING).pid})
    sampler.close()
    assert sample["gpus"] == []
    assert sample["gpu_status"].startswith("no NVIDIA GPU (NVML: ")
    assert sample["ranks"][0]["alive"] is True


@pytest.mark.gpu
@pytest.mark.skipif(_real_gpu_count() == 0, reason="needs an NVIDIA GPU")
def test_real_pynvml_reads_every_gpu() -> None:
    with TelemetrySampler() as sampler:
        sample = sampler.sample({})
    assert sample["gpu_status"] is None
    assert len(sample["gpus"]) == _real_gpu_count()
    gpu = sample["gpus"][0]
    assert gpu["name"] and gpu["memory_total_bytes"] > 2**30 and gpu["sm_clock_mhz"] is not None


def test_sample_is_strict_json(spawn: Callable[[str], subprocess.Popen]) -> None:
    gone = spawn(SLEEPING)
    gone.kill()
    gone.wait()
    ranks = {0: spawn(BUSY).pid, 1: gone.pid}
    sampler = TelemetrySampler(nvml=FakeNVML(gpu_pids=([ranks[0]], []), unsupported=("nvmlDeviceGetPowerUsage",)))
    samples = [sampler.sample(ranks), sampler.sample(ranks)]
    assert json.loads(json.dumps(samples, allow_nan=False)) == samples


def test_close_shuts_nvml_down_once() -> None:
    nvml = FakeNVML()
    sampler = TelemetrySampler(nvml=nvml)
    sampler.sample({})
    sampler.close()
    sampler.close()
    assert nvml.calls["nvmlShutdown"] == 1


def test_close_without_a_sample_does_not_touch_nvml() -> None:
    nvml = FakeNVML()
    TelemetrySampler(nvml=nvml).close()
    assert nvml.calls == {}


def test_sample_after_close_raises() -> None:
    sampler = TelemetrySampler(nvml=FakeNVML())
    sampler.close()
    with pytest.raises(TraindeckError, match="after close"):
        sampler.sample({})


def test_nvml_log_goes_to_the_traindeck_logger(traindeck_log: pytest.LogCaptureFixture) -> None:
    TelemetrySampler(nvml=no_gpu()).sample({})
    assert [r.name for r in traindeck_log.records] == ["traindeck"]
    assert traindeck_log.records[0].levelno == logging.INFO
