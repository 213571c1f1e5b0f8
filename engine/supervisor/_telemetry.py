"""Host, rank-process and GPU telemetry, sampled by the supervisor once per second.

``TelemetrySampler.sample(ranks)`` is synchronous and cheap (a few ``/proc`` reads per
rank and a few NVML calls per GPU), so the supervisor's event loop may call it inline.
Every value is plain JSON (``allow_nan=False`` safe). Layout, with units in the key names:

    time                        unix seconds
    host   cpu_percent          all cores together, 0-100, since the previous sample
           cpu_count            logical CPUs
           load_avg             [1 min, 5 min, 15 min]
           memory_used_bytes    total minus available (what memory_percent measures)
           memory_total_bytes, memory_percent, swap_used_bytes, swap_total_bytes
           disk_read_bytes_per_s, disk_write_bytes_per_s, net_sent_bytes_per_s, net_recv_bytes_per_s
    ranks  [{rank, pid, alive, cpu_percent, rss_bytes, num_threads}]  sorted by rank
    gpus   [{index, name, util_percent, memory_used_bytes, memory_total_bytes, temperature_c,
             power_w, power_limit_w, sm_clock_mhz, pids, ranks}]
    gpu_status                  None when GPUs were read, else why not ("no NVIDIA GPU (NVML: ...)")

Rates and CPU percentages need two readings, so they are None in the first sample (and a
rank's ``cpu_percent`` is None in the first sample after its pid changes). A rank's
``cpu_percent`` is its own process only, not its children, as a share of one core (a
busy 4-thread process shows 400). A rank whose process is gone, a zombie or unreadable is
``alive: False`` with None readings. A GPU reading NVML cannot give is None. A GPU's
``pids`` are its compute and graphics processes as NVML reports them (host pid namespace);
``ranks`` are those of the pids that are rank processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Callable

import psutil

from engine._errors import TraindeckError

__all__ = ["TelemetrySampler"]

log = logging.getLogger("traindeck")


def _busy_total(times: Any) -> tuple[float, float]:
    """Busy and total CPU seconds, counted as psutil.cpu_percent counts them (guest time is inside user)."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


class TelemetrySampler:
    """Reads host, per-rank and per-GPU telemetry; keeps the state that rates and CPU% need between calls."""

    def __init__(self, nvml: Any | None = None) -> None:
        """``nvml``: a pynvml-compatible module (tests pass a fake); default: pynvml, imported on first sample."""
        self._nvml = nvml
        self._nvml_tried = False
        self._handles: list[tuple[int, Any, str | None]] = []
        self._gpu_status: str | None = None
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_count = psutil.cpu_count()
        self._last: tuple[float, tuple[float, float], Any, Any] | None = None
        self._closed = False

    def __enter__(self) -> TelemetrySampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut NVML down if this sampler started it; idempotent."""
        if self._handles and not self._closed:
            self._shutdown_quietly()
        self._handles = []
        self._closed = True

    def sample(self, ranks: Mapping[int, int]) -> dict[str, Any]:
        """One reading of everything; ``ranks`` maps rank number to the pid of its process."""
        if self._closed:
            raise TraindeckError("TelemetrySampler.sample() called after close(); create a new sampler")
        if not self._nvml_tried:
            self._init_nvml()
        pid_rank = {pid: rank for rank, pid in ranks.items()}
        for gone in self._procs.keys() - ranks.keys():
            del self._procs[gone]
        return {
            "time": time.time(),
            "host": self._host(),
            "ranks": [self._rank(rank, ranks[rank]) for rank in sorted(ranks)],
            "gpus": [self._gpu(index, handle, name, pid_rank) for index, handle, name in self._handles],
            "gpu_status": self._gpu_status,
        }

    def _init_nvml(self) -> None:
        """Start NVML once; on any failure record a one-line reason, log it once, and never try again."""
        self._nvml_tried = True
        try:
            if self._nvml is None:
                import pynvml
                self._nvml = pynvml
            nvml = self._nvml
            nvml.nvmlInit()
        except ImportError as exc:
            return self._no_gpu(f"pynvml not importable: {exc}")
        except (OSError, nvml.NVMLError) as exc:
            return self._no_gpu(str(exc))
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            self._handles = [(i, h, self._read(lambda: _text(nvml.nvmlDeviceGetName(h))))
                             for i, h in enumerate(handles)]
        except nvml.NVMLError as exc:
            self._handles = []
            reason = str(exc)
        else:
            reason = "0 devices"
        if not self._handles:
            self._shutdown_quietly()
            self._no_gpu(reason)

    def _no_gpu(self, reason: str) -> None:
        self._gpu_status = f"no NVIDIA GPU (NVML: {reason})"
        log.info("GPU telemetry off: %s", self._gpu_status)

    def _shutdown_quietly(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass

    def _host(self) -> dict[str, Any]:
        """System-wide CPU, memory, swap, disk and network; rates are per second since the previous sample."""
        now = time.monotonic()
        cpu, disk, net = _busy_total(psutil.cpu_times()), psutil.disk_io_counters(), psutil.net_io_counters()
        vm, swap = psutil.virtual_memory(), psutil.swap_memory()
        host: dict[str, Any] = {
            "cpu_percent": None, "cpu_count": self._cpu_count, "load_avg": list(psutil.getloadavg()),
            "memory_used_bytes": vm.total - vm.available, "memory_total_bytes": vm.total,
            "memory_percent": vm.percent, "swap_used_bytes": swap.used, "swap_total_bytes": swap.total,
            "disk_read_bytes_per_s": None, "disk_write_bytes_per_s": None,
            "net_sent_bytes_per_s": None, "net_recv_bytes_per_s": None,
        }
        if self._last is not None and now > self._last[0]:
            then, (busy0, total0), disk0, net0 = self._last
            dt, d_total = now - then, cpu[1] - total0
            if d_total > 0:
                host["cpu_percent"] = round(min(100.0, max(0.0, 100.0 * (cpu[0] - busy0) / d_total)), 1)
            for key, new, old, field in (("disk_read", disk, disk0, "read_bytes"),
                                         ("disk_write", disk, disk0, "write_bytes"),
                                         ("net_sent", net, net0, "bytes_sent"),
                                         ("net_recv", net, net0, "bytes_recv")):
                if new is not None and old is not None:
                    host[f"{key}_bytes_per_s"] = max(0.0, (getattr(new, field) - getattr(old, field)) / dt)
        self._last = (now, cpu, disk, net)
        return host

    def _rank(self, rank: int, pid: int) -> dict[str, Any]:
        """One rank's process; a new pid gets a new cached Process (whose first cpu_percent means nothing)."""
        proc = self._procs.get(rank)
        fresh = proc is None or proc.pid != pid
        try:
            if fresh:
                self._procs.pop(rank, None)
                proc = self._procs[rank] = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.ZombieProcess(pid)
                cpu = proc.cpu_percent()
                rss = proc.memory_info().rss
                threads = proc.num_threads()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return {"rank": rank, "pid": pid, "alive": False, "cpu_percent": None, "rss_bytes": None,
                    "num_threads": None}
        return {"rank": rank, "pid": pid, "alive": True, "cpu_percent": None if fresh else cpu,
                "rss_bytes": rss, "num_threads": threads}

    def _gpu(self, index: int, handle: Any, name: str | None, pid_rank: Mapping[int, int]) -> dict[str, Any]:
        """One GPU; each NVML call that fails (not supported, GPU lost) leaves only its own field None."""
        nvml, read = self._nvml, self._read
        util = read(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        mem = read(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        power = read(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        limit = read(lambda: nvml.nvmlDeviceGetEnforcedPowerManagementLimit(handle))
        listers = (nvml.nvmlDeviceGetComputeRunningProcesses,
                   getattr(nvml, "nvmlDeviceGetGraphicsRunningProcesses", None))
        lists = [read(lambda: lister(handle)) for lister in listers if lister is not None]
        pids = None if all(ps is None for ps in lists) else sorted({p.pid for ps in lists for p in ps or ()})
        return {
            "index": index, "name": name,
            "util_percent": None if util is None else util.gpu,
            "memory_used_bytes": None if mem is None else mem.used,
            "memory_total_bytes": None if mem is None else mem.total,
            "temperature_c": read(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
            "power_w": None if power is None else power / 1000.0,
            "power_limit_w": None if limit is None else limit / 1000.0,
            "sm_clock_mhz": read(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
            "pids": pids,
            "ranks": None if pids is None else sorted(pid_rank[p] for p in pids if p in pid_rank),
        }

    def _read(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._nvml.NVMLError:
            return None


def _text(value: str | bytes) -> str:
    """Older pynvml releases return bytes for names."""
    return value.decode() if isinstance(value, bytes) else value
