"""Power model: an active baseline plus activity-dependent power, capped at the board limit.

While an operator runs for `t` seconds, a device draws its active baseline `P_busy` (static power at
the boost voltage and the clock tree: `Hardware.busy_power_W`, the idle power where a device file
gives no `active_power_W`), plus a compute term that reaches the board's headroom (max - P_busy)
when the matrix units run at their achievable peak, plus the energy of moving every byte between
DRAM and the compute units. The sum is capped at the board power limit, which the device's power
management enforces:

    E = min(P_busy t + (P_max - P_busy) FLOPs / (peak x gemm_efficiency) + e_byte x bytes, P_max t)

Between iterations, with no kernel to run, a device draws `idle_power_W` (`idle_energy_J`).

Achievable peak is the power-limited one (see `gemm_efficiency`), so dense GEMMs run at the cap.
`work_energy_J` is the part above the baseline, linear in FLOPs and bytes (so a tabulated model can price it
as a matrix product); `capped_energy_J` adds the baseline and applies the cap; `op_energy_J` is both.
"""

from __future__ import annotations

import numpy as np

from radsim.spec.hardware import Hardware


def op_energy_J(hw: Hardware, time_s, flops, peak_flops, bytes_moved) -> np.ndarray:
    """Energy of operators given their time, FLOPs on units of `peak_flops`, and bytes moved."""
    time_s = np.asarray(time_s, dtype=np.float64)
    return capped_energy_J(hw, time_s, work_energy_J(hw, flops, peak_flops, bytes_moved))


def work_energy_J(hw: Hardware, flops, peak_flops, bytes_moved) -> np.ndarray:
    """Energy above the active baseline of the work itself, before the cap: linear in `flops` and `bytes_moved`."""
    headroom = hw.max_power_W - hw.busy_power_W
    compute = headroom * np.asarray(flops) / (np.asarray(peak_flops) * hw.gemm_efficiency)
    return compute + hw.memory_energy_J_per_byte * np.asarray(bytes_moved)


def capped_energy_J(
    hw: Hardware, time_s: np.ndarray, work_J: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """The active baseline over `time_s` plus the work's energy, capped at the board limit (into `out`
    if given)."""
    return np.minimum(hw.busy_power_W * time_s + work_J, hw.max_power_W * time_s, out=out)


def idle_energy_J(hw: Hardware, time_s) -> np.ndarray:
    """Energy of a device that sits idle for `time_s`."""
    return hw.idle_power_W * np.asarray(time_s, dtype=np.float64)


def average_power_W(energy_J: float, time_s: float) -> float:
    """Mean power over an interval; zero for an empty interval."""
    return energy_J / time_s if time_s > 0 else 0.0
