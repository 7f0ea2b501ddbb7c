"""Kernel-level costs: the roofline of one launch and the primitives layers are built from.

A kernel takes max(compute time, DRAM time, link time) plus a fixed launch overhead when it runs.
Compute time uses FLOPs padded to the GEMM library's output tile over the achievable peak
(peak x `gemm_efficiency`); DRAM time uses bytes over peak bandwidth x `memory_efficiency`.
Energy comes from `radsim.cost.power`. Arrays carry any leading shape (layers, routing steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

import numpy as np

from radsim.cost.power import op_energy_J
from radsim.spec.hardware import Hardware


@dataclass(frozen=True)
class Work:
    """What operators did: times, FLOPs, DRAM and link bytes, launches and energy (arrays)."""

    time_s: np.ndarray
    compute_time_s: np.ndarray
    memory_time_s: np.ndarray
    link_time_s: np.ndarray
    flops: np.ndarray
    weight_bytes: np.ndarray
    kv_read_bytes: np.ndarray
    kv_write_bytes: np.ndarray
    act_bytes: np.ndarray
    link_bytes: np.ndarray
    launches: np.ndarray
    energy_J: np.ndarray

    @property
    def bytes(self) -> np.ndarray:
        """All DRAM traffic."""
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes + self.act_bytes


@dataclass(frozen=True)
class Cost(Work):
    """Per-operator costs; every array has shape (len(ops), *leading)."""

    ops: tuple[str, ...] = ()

    def total(self, name: str) -> np.ndarray:
        """Sum of one field over operators, shape (*leading)."""
        return getattr(self, name).sum(axis=0)

    def op(self, name: str, field: str = "time_s") -> np.ndarray:
        """One operator's row of one field."""
        return getattr(self, field)[self.ops.index(name)]


@dataclass(frozen=True)
class KernelCost(Work):
    """One operator's totals over the batch: arrays of shape (*leading)."""

    peak_flops: float = 1.0


def zero_like(x) -> np.ndarray:
    """Float zeros shaped like `x`."""
    return np.zeros(np.shape(x))


def ceil_to(x: np.ndarray | float, tile: int) -> np.ndarray:
    return np.ceil(x / tile) * tile


def bandwidth_Bps(hw: Hardware, resident: bool = False) -> float:
    """Achievable bandwidth: the calibrated cache bandwidth for a resident working set, else DRAM's."""
    if resident and hw.cache_bandwidth_Bps is not None:
        return hw.cache_bandwidth_Bps
    return hw.memory_bandwidth_Bps * hw.memory_efficiency


def gemm_efficiency(hw: Hardware, rows, resident: bool = True) -> np.ndarray | float:
    """Fraction of the matrix peak a GEMM of `rows` rows reaches: constant, or E rows / (rows + half).

    With a calibrated half-rows figure, one row is a matrix-vector product (no packing: efficiency
    E, bound by the weights' bandwidth), and weights streamed from DRAM may have their own figure.
    """
    if hw.gemm_half_rows is None:
        return hw.gemm_efficiency
    half = hw.gemm_half_rows if resident else (hw.gemm_half_rows_streamed or hw.gemm_half_rows)
    rows = np.maximum(np.asarray(rows, dtype=np.float64), 1.0)
    return np.where(rows <= 1.0, hw.gemm_efficiency, hw.gemm_efficiency * rows / (rows + half))


def roofline(
    hw: Hardware,
    flops_time,
    memory_bytes,
    runs,
    launches,
    link_time=0.0,
    resident: bool = False,
    launch_s: float | None = None,
    measured_s: np.ndarray | None = None,
    **fields,
) -> KernelCost:
    """Combine compute, memory and link time of an operator that runs `launches` kernels when `runs`.

    `measured_s`, a measured latency of the whole launch (a kernel table), replaces the roofline's
    time where it is not NaN; compute, memory and link times stay the roofline's, so that
    boundedness is still told."""
    memory_time = memory_bytes / bandwidth_Bps(hw, resident)
    busy = np.maximum(np.maximum(flops_time, memory_time), link_time)
    overhead = hw.kernel_launch_overhead_s if launch_s is None else launch_s
    time = busy + launches * overhead
    if measured_s is not None:
        time = np.where(np.isnan(measured_s), time, measured_s)
    time = np.where(runs, time, 0.0)
    zero = np.zeros_like(time)
    base: dict[str, Any] = dict(
        weight_bytes=zero, kv_read_bytes=zero, kv_write_bytes=zero, act_bytes=zero, link_bytes=zero
    )
    base.update(fields)
    moved = base["weight_bytes"] + base["kv_read_bytes"] + base["kv_write_bytes"] + base["act_bytes"]
    energy = op_energy_J(hw, time, base["flops"], base["peak_flops"], moved + base["link_bytes"])
    return KernelCost(
        time_s=time,
        energy_J=energy,
        compute_time_s=np.where(runs, flops_time, 0.0),
        memory_time_s=np.where(runs, memory_time, 0.0),
        link_time_s=np.where(runs, link_time, 0.0),
        launches=np.where(runs, launches, 0.0),
        **base,
    )


def gemm(
    hw: Hardware,
    peak_flops: float,
    rows,
    n: int,
    k: int,
    w_bytes: float,
    a_bytes: float,
    resident: bool = False,
    launch_s: float | None = None,
    dtype: str | None = None,
) -> KernelCost:
    """One GEMM launch: `rows` tokens (summed over the batch) times a (k x n) weight matrix.

    With a `dtype` the device's kernel tables cover (`radsim.spec.kernel_tables`), the launch takes
    its measured latency; otherwise the roofline of padded FLOPs and bytes."""
    rows = np.asarray(rows, dtype=np.float64)
    runs = rows > 0
    tables = hw.kernel_tables
    measured = None if tables is None or dtype is None else tables.gemm_time_s(dtype, rows, n, k)
    flops = 2.0 * rows * n * k
    padded = 2.0 * ceil_to(rows, hw.gemm_tile_m) * ceil_to(np.float64(n), hw.gemm_tile_n) * k
    weight = np.where(runs, float(n) * k * w_bytes, 0.0)
    act = rows * (k + n) * a_bytes
    flops_time = padded / (peak_flops * gemm_efficiency(hw, rows, resident))
    return roofline(
        hw,
        flops_time,
        weight + act,
        runs,
        1.0,
        resident=resident,
        launch_s=launch_s,
        measured_s=measured,
        flops=flops,
        weight_bytes=weight,
        act_bytes=act,
        peak_flops=peak_flops,
    )


def elementwise(
    hw: Hardware,
    rows,
    width: float,
    flops_per_element: float,
    a_bytes: float,
    reads: float,
    resident: bool = False,
    launch_s: float | None = None,
) -> KernelCost:
    """A memory-bound elementwise kernel reading `reads` and writing one (rows x width) tensor."""
    rows = np.asarray(rows, dtype=np.float64)
    elements = rows * width
    flops = elements * flops_per_element
    act = elements * a_bytes * (reads + 1.0)
    flops_time = flops / hw.fp32_dense_flops
    if hw.elementwise_bandwidth_Bps is not None:  # calibrated: the framework's kernels as measured
        flops_time = np.maximum(flops_time, act / hw.elementwise_bandwidth_Bps)
    return roofline(
        hw,
        flops_time,
        act,
        rows > 0,
        1.0,
        resident=resident,
        launch_s=launch_s,
        flops=flops,
        act_bytes=act,
        peak_flops=hw.fp32_dense_flops,
    )


def allreduce(
    hw: Hardware, rows, width: int, a_bytes: float, tp: int, algorithm: str = "custom"
) -> KernelCost:
    """All-reduce of a (rows x width) activation across `tp` devices.

    Every device sends and receives 2(n-1)/n of the message (reduce-scatter then all-gather). On a
    scale-up fabric that links every pair of devices (NVSwitch, Infinity Fabric mesh) this takes two
    latency steps (the "two-shot" algorithm of NCCL's NVLS and of vLLM/TensorRT-LLM custom
    all-reduce); over PCIe a ring takes 2(n-1) steps. With measured tables, `algorithm` (the
    engine's: `Execution.allreduce`) picks the curve (`KernelTables.allreduce_curve`).
    """
    rows = np.asarray(rows, dtype=np.float64)
    if tp == 1:
        zero = np.zeros_like(rows)
        return roofline(hw, zero, zero, zero > 0, 0.0, flops=zero, peak_flops=hw.fp32_dense_flops)
    message = rows * width * a_bytes
    link = 2.0 * (tp - 1) / tp * message
    steps = 2.0 if hw.scale_up_bandwidth_Bps else 2.0 * (tp - 1)
    link_time = link / hw.collective_bandwidth_Bps + steps * hw.link_latency_s
    measured = None
    if hw.kernel_tables is not None:  # the algorithm an engine picks for the largest message here
        curve = hw.kernel_tables.allreduce_curve(tp, float(np.max(message, initial=0.0)), algorithm)
        measured = None if curve is None else curve.time_s(message)
    # Each device reads its buffer and writes the reduced result: local DRAM traffic too.
    act = 2.0 * message
    flops = (tp - 1) / tp * rows * width
    return roofline(
        hw,
        zero_like(rows),
        act,
        rows > 0,
        1.0,
        link_time=link_time,
        measured_s=measured,
        flops=flops,
        act_bytes=act,
        link_bytes=link,
        peak_flops=hw.fp32_dense_flops,
    )


def idle(rows) -> KernelCost:
    zero = np.zeros_like(np.asarray(rows, dtype=np.float64))
    return KernelCost(**dict.fromkeys(ADDITIVE, zero), peak_flops=1.0)


def sum_kernels(parts: list[KernelCost]) -> KernelCost:
    """Sequential kernels: every field adds up."""
    total = {f: sum(getattr(p, f) for p in parts) for f in ADDITIVE}
    return KernelCost(**total, peak_flops=parts[0].peak_flops)


ADDITIVE = tuple(f.name for f in dataclass_fields(Work))


def stack_ops(names: tuple[str, ...], ops: list[KernelCost]) -> Cost:
    """Stack operators' totals into a `Cost` (each kernel's energy was priced at its launch)."""
    # Every operator's arrays already have the launch shape (*leading); a plain stack suffices.
    fields = {f: np.array([getattr(o, f) for o in ops], dtype=np.float64) for f in ADDITIVE}
    return Cost(ops=names, **fields)
