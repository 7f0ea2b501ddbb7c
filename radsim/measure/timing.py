"""Timing devices: one interface for timing, peak memory, power and the environment, on CPU and CUDA.

A `Device` hands out `Timer`s whose `mark()` records a point in the device's stream of work and whose
`elapsed_s()` returns the intervals between marks once the work is done. On CPU a mark is
`time.perf_counter_ns()`; on CUDA it is a `torch.cuda.Event(enable_timing=True)` recorded on the
current stream, read after `torch.cuda.synchronize()`, so that marks inside a step do not stall the
GPU. Peak memory on CUDA is `torch.cuda.max_memory_allocated`; on CPU it is the same allocator's view
taken from PyTorch's profiler memory events (every c10 CPU allocation and free, in order), whose
running sum gives the peak of live tensor bytes during a step. Power on CUDA is sampled through NVML
(pynvml, imported only when asked for) by a `PowerSampler` thread that integrates it into energy.
This module needs torch and numpy only, so that it runs on a bare GPU machine.
"""

from __future__ import annotations

import os
import platform
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import torch

from radsim.errors import ConfigError


class Timer:
    """Marks on the host clock; intervals in seconds between consecutive marks."""

    def __init__(self) -> None:
        self._marks: list[int] = []

    def mark(self) -> None:
        """Record the current point."""
        self._marks.append(time.perf_counter_ns())

    def elapsed_s(self) -> list[float]:
        """Seconds between consecutive marks."""
        return [(b - a) * 1e-9 for a, b in zip(self._marks, self._marks[1:], strict=False)]


class CudaTimer(Timer):
    """Marks as CUDA events on the current stream; read them after the device synchronises."""

    def __init__(self, event_factory: Callable[[], Any], synchronize: Callable[[], None]) -> None:
        super().__init__()
        self._events: list[Any] = []
        self._new, self._sync = event_factory, synchronize

    def mark(self) -> None:
        event = self._new()
        event.record()
        self._events.append(event)

    def elapsed_s(self) -> list[float]:
        self._sync()
        return [a.elapsed_time(b) * 1e-3 for a, b in zip(self._events, self._events[1:], strict=False)]


class PowerSampler:
    """A thread that reads power (W) every `interval_s` and integrates it over time (trapezoids)."""

    def __init__(
        self,
        read_W: Callable[[], float],
        interval_s: float = 0.01,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if interval_s <= 0:
            raise ConfigError('"interval_s" must be > 0.')
        self._read, self._interval, self._clock = read_W, interval_s, clock
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one reading now."""
        self.samples.append((self._clock(), float(self._read())))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> PowerSampler:
        self._stop.clear()
        self.samples = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    @property
    def energy_J(self) -> float:
        """Integral of the sampled power over the sampled interval."""
        s = self.samples
        return sum((t1 - t0) * (p0 + p1) / 2.0 for (t0, p0), (t1, p1) in zip(s, s[1:], strict=False))

    @property
    def duration_s(self) -> float:
        """Time between the first and last sample."""
        return self.samples[-1][0] - self.samples[0][0] if len(self.samples) > 1 else 0.0

    @property
    def mean_W(self) -> float:
        """Time-weighted mean power."""
        return self.energy_J / self.duration_s if self.duration_s > 0 else float("nan")


def nvml_power_reader(index: int = 0) -> Callable[[], float]:
    """A function returning the board power of GPU `index` in watts, through pynvml."""
    import pynvml  # lazily: only a GPU measurement needs it

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    return lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0


class CpuDevice:
    """The host CPU: perf_counter timers, profiler-based peak memory, no power sensor."""

    kind = "cpu"

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.torch_device = torch.device("cpu")

    def synchronize(self) -> None:
        """CPU work is synchronous."""

    def timer(self) -> Timer:
        """A fresh timer."""
        return Timer()

    def peak_memory_bytes(self, fn: Callable[[], Any]) -> float:
        """Peak of bytes allocated during `fn()` above what was live before it (PyTorch CPU allocator)."""
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        return peak_of_deltas([size for _, size in allocation_events(prof)])

    def power_sampler(self) -> PowerSampler | None:
        """No power sensor read here (RAPL is not exposed in a VM)."""
        return None

    def graph(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """No graphs on CPU: the step runs eagerly."""
        return fn

    def environment(self) -> dict[str, Any]:
        """Device facts for the measurement's provenance."""
        return {**host_environment(), "device": "cpu", "device_name": cpu_model()}


class CudaDevice:
    """One CUDA GPU: event timers, max_memory_allocated, NVML power, optional CUDA graphs."""

    kind = "cuda"

    def __init__(self, index: int = 0, use_graphs: bool = True, power: bool = True) -> None:
        self.index, self.use_graphs, self.power = index, use_graphs, power
        self.torch_device = torch.device("cuda", index)
        torch.cuda.set_device(index)

    def synchronize(self) -> None:
        """Wait for every queued kernel."""
        torch.cuda.synchronize(self.index)

    def timer(self) -> Timer:
        """A timer of CUDA events."""
        return CudaTimer(lambda: torch.cuda.Event(enable_timing=True), self.synchronize)

    def peak_memory_bytes(self, fn: Callable[[], Any]) -> float:
        """Peak allocated bytes during `fn()` above what was allocated before it."""
        self.synchronize()
        before = torch.cuda.memory_allocated(self.index)
        torch.cuda.reset_peak_memory_stats(self.index)
        fn()
        self.synchronize()
        return float(torch.cuda.max_memory_allocated(self.index) - before)

    def power_sampler(self) -> PowerSampler | None:
        """An NVML power sampler of this GPU, or None where pynvml is missing."""
        if not self.power:
            return None
        try:
            return PowerSampler(nvml_power_reader(self.index))
        except Exception:  # noqa: BLE001 - no NVML means no energy column, not a failed run
            return None

    def graph(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Capture `fn` (static shapes, no host syncs) in a CUDA graph; replaying it runs the step."""
        if not self.use_graphs:
            return fn
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # warm-up outside the graph, as torch.cuda.graphs requires
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay

    def environment(self) -> dict[str, Any]:
        """Device name, driver, CUDA version and clocks (NVML where available)."""
        props = torch.cuda.get_device_properties(self.index)
        env = {
            **host_environment(),
            "device": f"cuda:{self.index}",
            "device_name": props.name,
            "cuda_version": torch.version.cuda,
            "device_memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count,
        }
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            env["driver_version"] = pynvml.nvmlSystemGetDriverVersion()
            env["sm_clock_MHz"] = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
            env["memory_clock_MHz"] = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)
            env["power_limit_W"] = pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000.0
        except Exception:  # noqa: BLE001 - provenance is best effort without NVML
            env["driver_version"] = None
        return env


def allocation_events(prof: Any) -> list[tuple[int, float]]:
    """(time_ns, bytes) of every allocation (+) and free (-) the profiler saw, in time order."""
    from torch._C._profiler import _EventType

    out: list[tuple[int, float]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            out.append((event.start_time_ns, float(event.extra_fields.alloc_size)))
        stack.extend(event.children)
    return sorted(out)


def peak_of_deltas(deltas: list[float]) -> float:
    """Highest running sum of allocation (+) and free (-) sizes, starting from 0."""
    live = peak = 0.0
    for d in deltas:
        live += d
        peak = max(peak, live)
    return peak


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def host_environment() -> dict[str, Any]:
    """Host, CPU, affinity, threads, library versions and the date of a measurement."""
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = []
    return {
        "host": socket.gethostname(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_family": _cpuinfo_field("cpu family"),
        "cpu_model_number": _cpuinfo_field("model\t"),
        "cpu_MHz": _cpuinfo_field("cpu MHz"),
        "cpu_count": os.cpu_count(),
        "affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


def get_device(name: str, threads: int | None = None, use_graphs: bool = True) -> CpuDevice | CudaDevice:
    """'cpu' or 'cuda[:N]'."""
    if name == "cpu":
        return CpuDevice(threads)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("CUDA requested but torch.cuda.is_available() is False")
        index = int(name.split(":")[1]) if ":" in name else 0
        return CudaDevice(index, use_graphs=use_graphs)
    raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {name!r}")
