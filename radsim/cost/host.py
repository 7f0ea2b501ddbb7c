"""Host time of an iteration under a serving-engine profile (`radsim.spec.engine`), pure functions.

The GPU's time of an iteration (its kernels back to back, `radsim.cost.iteration`) is what the
device needs; the host must also launch those kernels and run its own loop. Per iteration:

    dispatch = graph_launch_s                        (a decode batch that replays one captured graph)
             = passes x graph_launch_s               (routed: one captured graph per layer pass, since
                                                      the layers a step visits change step to step)
             = passes x (graph_launch_s + 2 host_launch_s)   (piecewise: graph pieces between attention
                                                      kernels launched from the host)
             = launches x host_launch_s              (eager)
    serial   = host_iteration_s + host_sequence_s x sequences

    time = max(gpu, dispatch + serial)        with overlap (the host prepares iteration n+1 while the
                                              GPU runs iteration n, so only host time beyond the GPU's shows)
    time = max(gpu, dispatch) + serial        without (launches overlap kernels already queued; the
                                              loop's own work runs while the GPU waits)

The GPU draws its active baseline (`Hardware.busy_power_W`) over the time it waits on the host
within an iteration: clocks do not drop in microseconds. `launch_counts` gives the launches of one
layer pass and of the embedding and head, so that a load matrix's launched groups price dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from radsim.cost.layer import Execution, LayerLoad, load_cost
from radsim.spec.arch import Arch
from radsim.spec.engine import PIECEWISE_EAGER_KERNELS, EngineProfile
from radsim.spec.hardware import Hardware


@dataclass(frozen=True)
class LaunchCounts:
    """Kernel launches of one fully visited layer pass, and of the embedding and head, per device."""

    per_pass: float
    head: float
    extra_per_pass: float = 0.0  # of `per_pass`: all-reduces and routing, beyond the dense layer's

    def launches(self, passes, engine: EngineProfile | None = None):
        """Launches of an iteration with `passes` launched layer groups: the cost model's fused kernels,
        or, where the profile counts its own (an unfused eager decoder), that count plus the
        all-reduce and routing launches."""
        per_pass = self.per_pass
        if engine is not None and engine.eager_kernels_per_pass:
            per_pass = engine.eager_kernels_per_pass + self.extra_per_pass
        return np.asarray(passes, dtype=np.float64) * per_pass + self.head


@lru_cache(maxsize=64)
def launch_counts(hw: Hardware, arch: Arch, exe: Execution) -> LaunchCounts:
    """Launches of a layer pass with one new token that visits (the cost model's own count) and of the
    embedding, final norm, LM head and sampling of one token."""
    from dataclasses import replace

    from radsim.cost.iteration import head_cost

    one = np.ones(1)

    def per_pass(e: Execution) -> float:
        return float(load_cost(hw, arch, e, LayerLoad(one, one, one, one, one, one)).launches.sum())

    full = per_pass(exe)
    dense = per_pass(replace(exe, tp=1, routed=False))
    head = head_cost(hw, arch, exe, 1.0, 1.0)
    return LaunchCounts(per_pass=full, head=float(head.launches.sum()), extra_per_pass=full - dense)


def dispatch_s(engine: EngineProfile, launches, passes, sequences, decode_only, routed: bool) -> np.ndarray:
    """Host time to launch an iteration's kernels (arrays broadcast): see the module docstring."""
    launches = np.asarray(launches, dtype=np.float64)
    passes = np.asarray(passes, dtype=np.float64)
    sequences = np.asarray(sequences)
    graphed = (
        np.asarray(decode_only) & (sequences > 0) & (sequences <= engine.graph_max_batch)
        if engine.decode_graphs
        else np.zeros(np.broadcast(launches, sequences).shape, dtype=bool)
    )
    graph = (passes if routed else np.ones_like(passes)) * engine.graph_launch_s
    if engine.mixed_launches == "piecewise":
        other = passes * (engine.graph_launch_s + PIECEWISE_EAGER_KERNELS * engine.host_launch_s)
    else:
        other = launches * engine.host_launch_s
    return np.where(graphed, graph, other)


def serial_s(engine: EngineProfile, sequences) -> np.ndarray:
    """The host loop's own work in an iteration of `sequences` sequences."""
    return engine.host_iteration_s + engine.host_sequence_s * np.asarray(sequences, dtype=np.float64)


def host_floor_s(
    engine: EngineProfile, launches, passes, sequences, decode_only, routed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration: the time below which the host holds the GPU back, and the host time that adds
    after the GPU's (overlapped: dispatch and loop form the floor; serial: dispatch is the floor and
    the loop adds), so that an iteration takes max(gpu, floor) + after."""
    dispatch = dispatch_s(engine, launches, passes, sequences, decode_only, routed)
    serial = serial_s(engine, sequences)
    if engine.overlap:
        return dispatch + serial, np.zeros_like(serial)
    return dispatch, serial


def iteration_time_s(
    engine: EngineProfile, gpu_s, launches, passes, sequences, decode_only, routed: bool
) -> np.ndarray:
    """Wall time of iterations whose kernels take `gpu_s` on the GPU (arrays broadcast)."""
    gpu = np.asarray(gpu_s, dtype=np.float64)
    if engine.adds_nothing:
        return gpu
    floor, after = host_floor_s(engine, launches, passes, sequences, decode_only, routed)
    return np.maximum(gpu, floor) + after


def host_wait_energy_J(hw: Hardware, wait_s) -> np.ndarray:
    """Energy of a device waiting on its host within an iteration (clocks up, no kernel running)."""
    return hw.busy_power_W * np.asarray(wait_s, dtype=np.float64)
