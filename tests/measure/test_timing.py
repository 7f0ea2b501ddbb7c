"""Timing devices: host timers, the CUDA timer through fakes, power integration, peak memory."""

from __future__ import annotations

import pytest
import torch

from radsim.errors import ConfigError
from radsim.measure.timing import CpuDevice, CudaTimer, PowerSampler, get_device, peak_of_deltas


def test_cpu_timer_intervals_are_nonnegative_and_one_fewer_than_marks():
    timer = CpuDevice().timer()
    for _ in range(4):
        timer.mark()
    times = timer.elapsed_s()
    assert len(times) == 3 and all(t >= 0 for t in times)


class _FakeEvent:
    clock = 0.0

    def record(self) -> None:
        _FakeEvent.clock += 2.5
        self.at = _FakeEvent.clock

    def elapsed_time(self, other: _FakeEvent) -> float:  # milliseconds, as torch.cuda.Event
        return other.at - self.at


def test_cuda_timer_reads_events_after_synchronising():
    synced = []
    timer = CudaTimer(_FakeEvent, lambda: synced.append(True))
    for _ in range(3):
        timer.mark()
    assert timer.elapsed_s() == [pytest.approx(2.5e-3), pytest.approx(2.5e-3)]
    assert synced == [True]


def test_power_sampler_integrates_trapezoids_on_a_fake_clock():
    ticks = iter(range(100))
    watts = iter([100.0, 200.0, 300.0])
    sampler = PowerSampler(lambda: next(watts), clock=lambda: float(next(ticks)))
    for _ in range(3):
        sampler.sample()
    # (0, 100), (1, 200), (2, 300): 150 + 250 J over 2 s
    assert sampler.energy_J == pytest.approx(400.0)
    assert sampler.mean_W == pytest.approx(200.0)


def test_power_sampler_thread_samples_a_constant_power():
    with PowerSampler(lambda: 50.0, interval_s=0.001) as sampler:
        torch.randn(200, 200) @ torch.randn(200, 200)
    assert len(sampler.samples) >= 2
    assert sampler.energy_J == pytest.approx(50.0 * sampler.duration_s)


def test_power_sampler_rejects_a_zero_interval():
    with pytest.raises(ValueError, match='"interval_s" must be > 0'):
        PowerSampler(lambda: 1.0, interval_s=0)


def test_peak_of_deltas():
    assert peak_of_deltas([8, 4, -8, 16, -4, -16]) == 20
    assert peak_of_deltas([]) == 0


def test_cpu_peak_memory_sees_transient_tensors():
    x = torch.randn(1000, 1000)

    def step():
        y = x * 2  # 4 MB
        z = y + 1  # 4 MB more while y lives
        del y
        return (z @ z).sum()  # z and the product: 8 MB

    peak = CpuDevice().peak_memory_bytes(step)
    assert 8e6 <= peak < 8.1e6


def test_environment_records_provenance():
    env = CpuDevice().environment()
    for key in ("host", "date", "cpu_model", "torch_version", "torch_threads", "affinity"):
        assert key in env


def test_get_device_names():
    assert get_device("cpu").kind == "cpu"
    with pytest.raises(ValueError, match="cpu"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            get_device("cuda")
