"""The environment and power sections: device, driver, versions, clocks and limits; board power through NVML.

NVML comes from pynvml, imported only on a GPU; without it (or on a CPU) the power points still run
for their throughput and `environment.json` says why power is missing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import radsim
from radsim.measure.campaign.config import Device
from radsim.measure.campaign.pace import Context, Item, Pace, SectionResult, Sink, run_items
from radsim.measure.timing import PowerSampler


def environment_section(ctx: Context, pace: Pace) -> SectionResult:
    """Device, driver, versions, clocks and limits; no host name."""
    env = {k: v for k, v in ctx.dev.environment().items() if k != "host"}
    env.update(numpy_version=np.__version__, radsim_version=radsim.__version__)
    if ctx.dev.kind == "cuda":
        index = ctx.dev.torch_device.index or 0
        props = torch.cuda.get_device_properties(index)
        env.update(
            compute_capability=".".join(map(str, torch.cuda.get_device_capability(index))),
            cudnn_version=torch.backends.cudnn.version(),
            l2_cache_bytes=getattr(props, "L2_cache_size", None),
        )
        nvml, reason = open_nvml(ctx.dev)
        env["nvml"] = nvml.facts() if nvml is not None else {"status": "unavailable", "reason": reason}
    env["fp8_gemm"] = fp8_unavailable(ctx.dev.torch_device) or "available"
    ctx.set_environment("environment", env)
    ctx.log(f"  {env.get('device_name')}, torch {env.get('torch_version')}, CUDA {env.get('cuda_version')}")
    return SectionResult(done=1)


class Nvml:
    """One GPU through NVML (pynvml): board power, the total-energy counter, clocks and limits."""

    def __init__(self, index: int) -> None:
        import pynvml  # lazily: only a GPU campaign needs it

        pynvml.nvmlInit()
        self.nv, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)

    def query(self, name: str, *args: Any) -> Any:
        """`pynvml.<name>(handle, *args)`, or None where the GPU or driver does not support it."""
        try:
            value = getattr(self.nv, name)(self.handle, *args)
        except Exception:  # noqa: BLE001 - NVMLError_NotSupported and kin: the figure is absent
            return None
        return value.decode() if isinstance(value, bytes) else value

    def power_W(self) -> float:
        """Board power now."""
        return self.nv.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def energy_J(self) -> float | None:
        """Energy since the driver loaded (Volta and later), or None."""
        mJ = self.query("nvmlDeviceGetTotalEnergyConsumption")
        return None if mJ is None else mJ / 1000.0

    def facts(self) -> dict[str, Any]:
        """Name, driver, clocks (now and at most), power limits, memory, modes."""
        nv, q = self.nv, self.query
        mW = lambda v: None if v is None else v / 1000.0  # noqa: E731
        mem = q("nvmlDeviceGetMemoryInfo")
        try:
            driver = nv.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001
            driver = None
        return dict(
            status="available",
            name=q("nvmlDeviceGetName"),
            driver_version=driver.decode() if isinstance(driver, bytes) else driver,
            sm_clock_MHz=q("nvmlDeviceGetClockInfo", nv.NVML_CLOCK_SM),
            memory_clock_MHz=q("nvmlDeviceGetClockInfo", nv.NVML_CLOCK_MEM),
            max_sm_clock_MHz=q("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_SM),
            max_memory_clock_MHz=q("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_MEM),
            application_sm_clock_MHz=q("nvmlDeviceGetApplicationsClock", nv.NVML_CLOCK_SM),
            power_limit_W=mW(q("nvmlDeviceGetPowerManagementLimit")),
            enforced_power_limit_W=mW(q("nvmlDeviceGetEnforcedPowerLimit")),
            default_power_limit_W=mW(q("nvmlDeviceGetPowerManagementDefaultLimit")),
            memory_bytes=None if mem is None else mem.total,
            temperature_C=q("nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU),
            persistence_mode=q("nvmlDeviceGetPersistenceMode"),
            mig_mode=q("nvmlDeviceGetMigMode"),
            energy_counter=self.energy_J() is not None,
        )


def open_nvml(dev: Device) -> tuple[Nvml | None, str | None]:
    """NVML for a CUDA device, or None and the reason it is unavailable."""
    if dev.kind != "cuda":
        return None, "no NVML power sensor on a CPU device"
    try:
        return Nvml(dev.torch_device.index or 0), None
    except ImportError as exc:
        return None, f"pynvml is not installed ({exc})"
    except Exception as exc:  # noqa: BLE001 - NVML missing from the driver, no permission, ...
        return None, f"NVML failed to start ({type(exc).__name__}: {exc})"


def fp8_unavailable(device: torch.device) -> str | None:
    """Why fp8 GEMMs (torch._scaled_mm, float8_e4m3fn) cannot run on `device`, or None."""
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no torch._scaled_mm or float8_e4m3fn"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return f"fp8 GEMMs need compute capability 8.9 or later; this GPU is {major}.{minor}"
    try:
        a = torch.ones(16, 16, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except Exception as exc:  # noqa: BLE001 - the probe is the detection
        return f"torch._scaled_mm fails on a 16x16x16 probe ({type(exc).__name__}: {str(exc)[:200]})"
    return None


# ---------------------------------------------------------------- power


@dataclass(frozen=True)
class Work:
    """A workload for a power point: one operation and the work it does."""

    op: Callable[[], Any]
    flops: float = 0.0
    moved_bytes: float = 0.0
    kernels: int = 1


def power_workloads(ctx: Context) -> list[tuple[str, Callable[[], Work | None]]]:
    """Idle, small kernels back to back, a large copy, a large bf16 GEMM."""
    dev, s = ctx.dev.torch_device, ctx.sizes

    def spin() -> Work:
        x = torch.zeros(4096, device=dev)
        return Work(lambda: x.add_(1.0))

    def stream() -> Work:
        src = torch.ones(s.power_stream_bytes // 2, device=dev, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        return Work(lambda: dst.copy_(src), moved_bytes=2.0 * s.power_stream_bytes)

    def gemm() -> Work:
        n = s.power_gemm_n
        a, b = (torch.randn(n, n, device=dev).to(torch.bfloat16) for _ in range(2))
        return Work(lambda: a @ b, flops=2.0 * n**3)

    return [("idle", lambda: None), ("spin", spin), ("stream", stream), ("gemm", gemm)]


def power_point(ctx: Context, nvml: Nvml | None, name: str, build, duration_s: float) -> list[dict]:
    """Mean board power over `duration_s` of one workload (after `power_warm_s` of it)."""
    work: Work | None = build()
    reps = 1
    if work is not None:
        work.op()
        ctx.dev.synchronize()
        t0 = time.perf_counter()
        work.op()
        ctx.dev.synchronize()
        reps = max(1, min(10000, math.ceil(0.02 / max(time.perf_counter() - t0, 1e-7))))

    def chunk() -> None:  # about 20 ms of work, then wait for it
        if work is None:
            time.sleep(0.02)
            return
        for _ in range(reps):
            work.op()
        ctx.dev.synchronize()

    _run_for(chunk, ctx.sizes.power_warm_s)
    sampler = PowerSampler(nvml.power_W, interval_s=0.02) if nvml is not None else None
    e0 = nvml.energy_J() if nvml is not None else None
    with sampler if sampler is not None else contextlib.nullcontext():
        t0 = time.perf_counter()
        chunks = _run_for(chunk, duration_s)
        elapsed = time.perf_counter() - t0
    e1 = nvml.energy_J() if nvml is not None else None
    energy = e1 - e0 if e0 is not None and e1 is not None else (sampler.energy_J if sampler else None)
    done = chunks * reps if work is not None else 0
    w = work or Work(lambda: None, kernels=0)
    return [
        dict(
            point=name,
            duration_s=elapsed,
            energy_J=energy,
            power_W=None if energy is None else energy / elapsed,
            sampled_power_W=sampler.mean_W if sampler else None,
            power_samples=len(sampler.samples) if sampler else 0,
            energy_source=None
            if nvml is None
            else ("total_energy_counter" if e0 is not None else "sampled_power"),
            flops_per_s=w.flops * done / elapsed if w.flops else None,
            bandwidth_Bps=w.moved_bytes * done / elapsed if w.moved_bytes else None,
            kernels_per_s=w.kernels * done / elapsed if w.kernels else None,
            sm_clock_MHz=nvml.query("nvmlDeviceGetClockInfo", nvml.nv.NVML_CLOCK_SM) if nvml else None,
            temperature_C=nvml.query("nvmlDeviceGetTemperature", nvml.nv.NVML_TEMPERATURE_GPU)
            if nvml
            else None,
        )
    ]


def _run_for(chunk: Callable[[], None], duration_s: float) -> int:
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < duration_s:
        chunk()
        n += 1
    return n


def power_section(ctx: Context, pace: Pace) -> SectionResult:
    """Power points; without NVML they still run (throughput) and power says why it is missing."""
    res, s = SectionResult(), ctx.sizes
    nvml, reason = open_nvml(ctx.dev)
    doc: dict[str, Any] = dict(status="measured" if nvml else "unavailable", reason=reason, points=[])
    if reason:
        res.notes.append(f"power unavailable: {reason}")
    workloads = power_workloads(ctx)
    per_point = pace.remaining_s() / len(workloads) / 1.3 - s.power_warm_s - ctx.rates.item_s
    duration = min(s.power_s, max(s.power_min_s, per_point))
    doc["duration_s"] = duration

    def write(rows: list[dict[str, Any]]) -> None:
        ctx.set_environment("power", dict(doc, points=rows))

    ctx.set_environment("power", doc)
    items = [
        Item(
            f"power/{name}",
            s.power_warm_s + duration + 0.1 + ctx.rates.item_s,
            functools.partial(power_point, ctx, nvml, name, build, duration),
        )
        for name, build in workloads
    ]
    run_items(ctx, items, pace, Sink(write), res)
    return res
