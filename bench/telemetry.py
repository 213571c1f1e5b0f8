"""The supervisor's own CPU cost of telemetry: what sampling once per second takes from one core.

Starts ``--ranks`` stand-in rank processes (python loops, busy half the time), then calls
``TelemetrySampler.sample`` ``--samples`` times back to back (default pynvml: on a
GPU-less machine NVML fails once at start and costs nothing after). CPU time is this
process's ``time.process_time`` (children excluded); at 1 Hz, CPU seconds per sample is
the fraction of one core the supervisor spends on telemetry.

    python bench/telemetry.py [--ranks 2] [--samples 200] [--interval 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.supervisor._telemetry import TelemetrySampler  # noqa: E402

RANK = """
import time
print("ready", flush=True)
while True:
    end = time.perf_counter() + 0.01
    while time.perf_counter() < end:
        pass
    time.sleep(0.01)
"""

TARGET_PERCENT = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.0, help="sleep between samples (1.0 = real 1 Hz)")
    args = parser.parse_args()

    children = [subprocess.Popen([sys.executable, "-c", RANK], stdout=subprocess.PIPE, text=True)
                for _ in range(args.ranks)]
    try:
        for child in children:
            child.stdout.readline()
        ranks = {rank: child.pid for rank, child in enumerate(children)}
        with TelemetrySampler() as sampler:
            first = sampler.sample(ranks)
            cpu, wall = [], []
            for _ in range(args.samples):
                if args.interval:
                    time.sleep(args.interval)
                c0, w0 = time.process_time(), time.perf_counter()
                sampler.sample(ranks)
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - w0)
    finally:
        for child in children:
            child.kill()
            child.wait()
            child.stdout.close()

    cpu_per_sample = sum(cpu) / len(cpu)
    print(f"{args.ranks} ranks, {len(first['gpus'])} GPUs ({first['gpu_status'] or 'NVML ok'}), "
          f"{args.samples} samples, {os.cpu_count()} CPUs, psutil {psutil.__version__}")
    print(f"CPU per sample:  mean {cpu_per_sample * 1e6:8.0f} us   (process_time resolution "
          f"{time.get_clock_info('process_time').resolution * 1e6:g} us)")
    print(f"wall per sample: median {statistics.median(wall) * 1e6:6.0f} us   p95 "
          f"{sorted(wall)[int(0.95 * (len(wall) - 1))] * 1e6:.0f} us")
    percent = cpu_per_sample * 1.0 * 100
    print(f"cost at 1 Hz:    {percent:.3f} % of one core (target < {TARGET_PERCENT:g} %: "
          f"{'met' if percent < TARGET_PERCENT else 'NOT met'})")


if __name__ == "__main__":
    main()
