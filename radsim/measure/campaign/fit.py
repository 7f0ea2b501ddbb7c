"""Back on the CPU: hardware constants fitted from a campaign folder's microbenchmarks (`radsim calibrate --campaign`).

Nothing runs: the figures come from the files the campaign brought back, read and checked before
anything is fitted or written. measurements.csv is never read, so the model step timings stay
for validation. Fitted (rows named by their CSV line in the calibration record):

- `memory_efficiency`: the median `bandwidth_Bps` of the bandwidth.csv rows (copy and triad) with
  `array_bytes` >= `DRAM_CACHE_MULTIPLE` x the base file's `last_level_cache_bytes`, over its
  `memory_bandwidth_Bps`;
- `gemm_efficiency`: the median `flops_per_s` of the gemm.csv rows in `MODEL_DTYPE` with
  m >= `LARGE_M` (every layer shape), over the base file's peak of that dtype;
- `kernel_launch_overhead_s`: environment.json `launch.graph_launch_s` on a GPU (the harness
  replays its steps as CUDA graphs), `launch.eager_launch_s` on a CPU or where graphs failed;
- `idle_power_W`: environment.json's `power` point `idle` (NVML), where it was measured;
- `active_power_W`: its point `spin` (a busy-but-idle kernel on every SM: clocks up, no FLOPs or
  DRAM traffic to speak of), where measured, between idle and the board limit;
- `memory_energy_J_per_byte`: (stream W - spin W) / the stream point's bytes/s, where both were
  measured (the stream kernel's energy above the active baseline, per byte moved).

Recorded, not fitted (no hardware field reads them; in the file's header and the record): each
GEMM dtype's large-M efficiency and its small-M floor (m <= `SMALL_M`, weights larger than the
last-level cache: the bytes/s they stream at), the other launch figure, the power of the stream
and GEMM points with the throughput they reached, NVML's power limits and clocks.

A dry run (tiny sizes, the rehearsal of this path) calibrates only a CPU hardware file; where none
of its rows reaches a threshold above, the rows at its largest size are used, and every source says
so. A GPU file is calibrated only from a full campaign on a GPU.
"""

from __future__ import annotations

import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError
from radsim.files import atomic_write_text, json_text, output_file, read_text
from radsim.measure.calibrate import load_prior, toml_text
from radsim.measure.campaign.folder import (
    DTYPE_BYTES,
    Campaign,
    check_compatible,
    gpu_file,
    positive,
    read_campaign,
)
from radsim.spec.hardware import PEAK_KEYS, Hardware, hw_dir

DRAM_CACHE_MULTIPLE = 4  # a buffer this many times the last-level cache streams from DRAM
LARGE_M = 4096  # GEMM rows from which a layer's GEMM is compute-bound on a GPU
SMALL_M = 16  # decode-sized GEMMs: bound by reading their weights
MODEL_DTYPE = "bf16"  # the dtype the campaign's harness runs models in on a GPU


@dataclass(frozen=True)
class Calibration:
    """What a campaign calibration writes: the file's figures and header, and the record beside it."""

    name: str
    base: Hardware
    figures: dict[str, tuple[Any, str]]
    header: str
    record: dict[str, Any] = field(default_factory=dict)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def _selected(
    rows: list[tuple[int, dict]], key: str, at_least: float, dry_run: bool
) -> tuple[list[tuple[int, dict]], str]:
    """Rows with `key` >= `at_least` and the rule; in a dry run without any, the rows at the largest `key`."""
    chosen = [(line, r) for line, r in rows if r[key] >= at_least]
    if chosen or not rows or not dry_run:
        return chosen, f"{key} >= {_num(at_least)}"
    top = max(r[key] for _, r in rows)
    rule = f"{key} = {_num(top)}, the largest (dry run: none >= {_num(at_least)})"
    return [(line, r) for line, r in rows if r[key] == top], rule


def fit_bandwidth(base: Hardware, c: Campaign) -> dict[str, Any]:
    """memory_efficiency: median bandwidth of the DRAM-sized copy and triad rows over the datasheet peak."""
    path = c.folder / "bandwidth.csv"
    least = DRAM_CACHE_MULTIPLE * base.last_level_cache_bytes
    used, rule = _selected(c.bandwidth, "array_bytes", least, c.dry_run)
    if not used:
        biggest = max(r["array_bytes"] for _, r in c.bandwidth)
        raise ConfigError(
            f"{path}: no row with array_bytes >= {_num(least)} ({DRAM_CACHE_MULTIPLE} x last_level_cache_bytes "
            f"of {base.stem}); the largest is {_num(biggest)}: the bandwidth section stopped early"
        )
    bw = statistics.median(r["bandwidth_Bps"] for _, r in used)
    if bw > base.memory_bandwidth_Bps:
        raise ConfigError(
            f"{path}: median bandwidth_Bps {bw:.4g} of the rows with {rule} exceeds memory_bandwidth_Bps "
            f"{base.memory_bandwidth_Bps:.4g} of {base.stem}: cache-resident buffers, or the wrong --hw"
        )
    how = (
        f"median bandwidth_Bps {bw:.4g} of {len(used)} copy and triad rows with {rule}, over "
        f"memory_bandwidth_Bps {base.memory_bandwidth_Bps:.4g}"
    )
    lines = [ln for ln, _ in used]
    return dict(
        value=bw / base.memory_bandwidth_Bps,
        bandwidth_Bps=bw,
        file=path.name,
        rule=rule,
        lines=lines,
        how=how,
    )


def gemm_facts(base: Hardware, c: Campaign, stream_Bps: float) -> dict[str, dict[str, Any]]:
    """Per dtype: the large-M efficiency (median FLOP/s over the peak) and the small-M floor."""
    out: dict[str, dict[str, Any]] = {}
    for dtype in sorted({r["dtype"] for _, r in c.gemm}, key=list(DTYPE_BYTES).index):
        rows = [(ln, r) for ln, r in c.gemm if r["dtype"] == dtype]
        large, rule = _selected(rows, "m", LARGE_M, c.dry_run)
        peak = getattr(base, PEAK_KEYS[dtype])
        fact: dict[str, Any] = dict(rule=rule, lines=[ln for ln, _ in large], peak_flops=peak)
        fact["flops_per_s"] = statistics.median(r["flops_per_s"] for _, r in large) if large else None
        fact["efficiency"] = None if peak is None or not large else fact["flops_per_s"] / peak
        size, llc = DTYPE_BYTES[dtype], base.last_level_cache_bytes
        small = [(ln, r) for ln, r in rows if r["m"] <= SMALL_M and r["n"] * r["k"] * size > llc]
        floor = statistics.median(r["bandwidth_Bps"] for _, r in small) if small else None
        fact["small_m"] = dict(
            rule=f"m <= {SMALL_M}, weights > last_level_cache_bytes",
            lines=[ln for ln, _ in small],
            bandwidth_Bps=floor,
            of_stream_bandwidth=None if floor is None else floor / stream_Bps,
        )
        out[dtype] = fact
    return out


def fit_gemm(base: Hardware, c: Campaign, facts: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """gemm_efficiency from the model dtype's large-M rows; None where a CPU file has no peak for it."""
    path, key = c.folder / "gemm.csv", PEAK_KEYS[MODEL_DTYPE]
    fact = facts.get(MODEL_DTYPE)
    if fact is None or fact["flops_per_s"] is None:
        raise ConfigError(
            f"{path}: no {MODEL_DTYPE} row with m >= {LARGE_M}; gemm_efficiency is fitted from them "
            "(the gemm section stopped early?)"
        )
    if fact["peak_flops"] is None:
        if base.kind == "gpu":
            raise ConfigError(f"{base.stem}: no '{key}'; gemm_efficiency is relative to it")
        return None
    if fact["efficiency"] > 1:
        raise ConfigError(
            f"{path}: median flops_per_s {fact['flops_per_s']:.4g} of the {MODEL_DTYPE} rows with "
            f"{fact['rule']} exceeds {key} {fact['peak_flops']:.4g} of {base.stem}"
        )
    how = (
        f"median flops_per_s {fact['flops_per_s']:.4g} of {len(fact['lines'])} {MODEL_DTYPE} rows "
        f"with {fact['rule']} (every layer shape), over {key} {fact['peak_flops']:.4g}"
    )
    return dict(fact, value=fact["efficiency"], file=path.name, how=how)


def fit_launch(c: Campaign) -> dict[str, Any]:
    """kernel_launch_overhead_s: per kernel replayed from a CUDA graph on a GPU, launched eagerly on a CPU."""
    launch = c.env["launch"]
    graph = launch.get("graph_launch_s") if c.on_gpu and launch.get("graph") == "measured" else None
    if graph is not None:
        value = positive(c.folder / "environment.json", "field 'launch.graph_launch_s'", graph)
        how = "launch.graph_launch_s, tiny kernels replayed from a CUDA graph (as the harness runs its steps)"
        return dict(value=value, field="launch.graph_launch_s", file="environment.json", how=how)
    why = (
        "a CPU runs its steps eagerly" if not c.on_gpu else f"no graph launch recorded: {launch.get('graph')}"
    )
    how = f"launch.eager_launch_s, tiny kernels launched back to back ({why})"
    return dict(
        value=launch["eager_launch_s"], field="launch.eager_launch_s", file="environment.json", how=how
    )


def power_facts(base: Hardware, c: Campaign) -> dict[str, Any]:
    """The power points NVML measured (W, with the throughput reached), limits and clocks."""
    power = c.env.get("power") or {}
    points = {p.get("point"): p for p in power.get("points", []) if isinstance(p, dict)}
    out: dict[str, Any] = dict(status=power.get("status", "not run"), reason=power.get("reason"))
    keys = ("power_W", "energy_source", "flops_per_s", "bandwidth_Bps", "kernels_per_s", "sm_clock_MHz")
    out["points"] = {name: {k: p.get(k) for k in keys} for name, p in points.items()}
    idle, stream = (points.get(n, {}).get("power_W") for n in ("idle", "stream"))
    bw = points.get("stream", {}).get("bandwidth_Bps")
    if idle and stream and bw:
        out["stream_J_per_byte"] = (stream - idle) / bw  # beside memory_energy_J_per_byte, not fitted
    nvml = c.environment.get("nvml") or {}
    limits = ("power_limit_W", "enforced_power_limit_W", "default_power_limit_W", "max_sm_clock_MHz")
    out["nvml"] = {k: nvml.get(k) for k in limits if k in nvml}
    return out


def fit_idle(base: Hardware, c: Campaign, power: dict[str, Any]) -> dict[str, Any] | None:
    """idle_power_W from NVML's idle point, where it was measured."""
    point = power["points"].get("idle", {})
    if point.get("power_W") is None:
        return None
    path = c.folder / "environment.json"
    watts = positive(path, "field 'power.points[idle].power_W'", point["power_W"])
    if watts >= base.max_power_W:
        raise ConfigError(
            f"{path}: power point idle is {watts:.4g} W, not below max_power_W {base.max_power_W:.4g} of {base.stem}"
        )
    how = f"NVML power point idle ({point.get('energy_source')})"
    return dict(value=watts, field="power.points[idle].power_W", file=path.name, how=how)


def fit_active(base: Hardware, c: Campaign, power: dict[str, Any], idle_W: float) -> dict[str, Any] | None:
    """active_power_W from NVML's spin point (a kernel resident on every SM that moves no data)."""
    point = power["points"].get("spin", {})
    if point.get("power_W") is None:
        return None
    path = c.folder / "environment.json"
    watts = positive(path, "field 'power.points[spin].power_W'", point["power_W"])
    if not idle_W <= watts < base.max_power_W:
        raise ConfigError(
            f"{path}: power point spin is {watts:.4g} W; allowed: from idle_power_W {idle_W:.4g} "
            f"to below max_power_W {base.max_power_W:.4g} of {base.stem}"
        )
    how = f"NVML power point spin ({point.get('energy_source')}), a busy-but-idle kernel"
    return dict(value=watts, field="power.points[spin].power_W", file=path.name, how=how)


def fit_byte_energy(c: Campaign, power: dict[str, Any], active_W: float) -> dict[str, Any] | None:
    """memory_energy_J_per_byte: the stream point's power above the active baseline per byte/s."""
    point = power["points"].get("stream", {})
    watts, bandwidth = point.get("power_W"), point.get("bandwidth_Bps")
    if watts is None or not bandwidth or watts <= active_W:
        return None
    value = (watts - active_W) / bandwidth
    how = f"NVML power point stream ({watts:.4g} W at {bandwidth:.4g} B/s) less the active baseline {active_W:.4g} W"
    return dict(value=value, field="power.points[stream]", file="environment.json", how=how)


def _fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.4g}{unit}"


def _facts_lines(gemm: dict[str, dict[str, Any]], launch: dict[str, Any], power: dict[str, Any]) -> list[str]:
    """The header's lines on what was recorded and not fitted."""
    lines = ["Recorded, not fitted (no hardware field reads them; the record beside this file has them all):"]
    for dtype, f in gemm.items():
        s = f["small_m"]
        lines.append(
            f"  {dtype} GEMM ({f['rule']}, {len(f['lines'])} row(s)): {_fmt(f['flops_per_s'], ' FLOP/s')}, "
            f"efficiency {_fmt(f['efficiency'])}; small-M floor ({s['rule']}, {len(s['lines'])} row(s)): "
            f"{_fmt(s['bandwidth_Bps'], ' B/s')}, {_fmt(s['of_stream_bandwidth'])} of the stream bandwidth"
        )
    lines.append(
        f"  launch: eager {_fmt(launch.get('eager_launch_s'), ' s')}, graph {_fmt(launch.get('graph_launch_s'), ' s')} "
        f"per kernel, one-kernel graph replay {_fmt(launch.get('graph_replay_s'), ' s')}, synchronize "
        f"{_fmt(launch.get('synchronize_s'), ' s')}"
    )
    if power["status"] != "measured":
        lines.append(f"  power: {power['status']} ({power.get('reason')})")
    for name, p in power["points"].items():
        if p.get("power_W") is not None:
            rate = p.get("flops_per_s") or p.get("bandwidth_Bps") or p.get("kernels_per_s")
            lines.append(
                f"  power {name}: {_fmt(p['power_W'], ' W')} ({p.get('energy_source')}), rate {_fmt(rate)}"
            )
    if "stream_J_per_byte" in power:
        lines.append(f"  (stream - idle) W / stream B/s = {power['stream_J_per_byte']:.4g} J/byte")
    lines += [f"  NVML {k}: {v}" for k, v in power["nvml"].items()]
    return lines


def base_figures(base: Hardware, base_raw: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """Every figure of the base file, its kernel tables as the file names them (a published calibration source)."""
    figures: dict[str, tuple[Any, str]] = {k: (getattr(base, k), base.sources[k]) for k in base.sources}
    if "kernel_tables" in base_raw:
        figures["kernel_tables"] = (base_raw["kernel_tables"]["value"], base_raw["kernel_tables"]["source"])
    return figures


def fit_campaign(base: Hardware, base_raw: dict[str, Any], option: str, c: Campaign) -> Calibration:
    """The calibrated figures of `base` from the campaign (pure: reads nothing, writes nothing)."""
    check_compatible(base, option, c)
    fits: dict[str, Any] = dict(memory_efficiency=fit_bandwidth(base, c))
    gemm = gemm_facts(base, c, fits["memory_efficiency"]["bandwidth_Bps"])
    power = power_facts(base, c)
    for key, fit in (
        ("gemm_efficiency", fit_gemm(base, c, gemm)),
        ("kernel_launch_overhead_s", fit_launch(c)),
        ("idle_power_W", fit_idle(base, c, power)),
    ):
        if fit is not None:
            fits[key] = fit
    idle_W = fits["idle_power_W"]["value"] if "idle_power_W" in fits else base.idle_power_W
    active = fit_active(base, c, power, idle_W)
    if active is not None:
        fits["active_power_W"] = active
        joules = fit_byte_energy(c, power, active["value"])
        if joules is not None:
            fits["memory_energy_J_per_byte"] = joules
    figures = base_figures(base, base_raw)
    for key, fit in fits.items():
        figures[key] = (fit["value"], f"measured: {fit['how']}, {c.note(fit['file'])}")
    e = c.environment
    header = [
        f"Calibrated by `radsim calibrate --campaign {c.folder}` from {base.stem}.toml: {e['device_name']}, "
        f"torch {e['torch_version']}, CUDA {e.get('cuda_version') or 'n/a'}, campaign of {e['date']}"
        f"{' (dry run)' if c.dry_run else ''}.",
        f"Figures whose source names campaign {c.folder} come from its microbenchmarks (measurements.csv is "
        f"never read: it validates); the rest are {base.stem}.toml's.",
        *_facts_lines(gemm, c.env["launch"], power),
    ]
    record = dict(
        calibrated_from="campaign",
        campaign=str(c.folder),
        base=base.stem,
        environment=e,
        options=c.manifest.get("options"),
        fits=fits,
        facts=dict(gemm=gemm, launch=c.env["launch"], power=power),
        split="validate",  # measurements.csv was not read: every configuration is held out
    )
    name = f"{base.name}, calibrated from campaign {c.folder.name}"
    return Calibration(name, base, figures, "\n".join(header), record)


def calibrate_campaign(
    folder: str | Path, hw: str | None = None, out: str | Path | None = None
) -> tuple[Path, Calibration]:
    """Fit `folder`'s campaign into `out` (default `folder/calibrated.toml`) and its record; returns both.

    Every input is read and checked, the figures fitted and the file rendered and loaded before
    anything is written; the two files are then written atomically.
    """
    campaign = read_campaign(folder)
    option = "--hw" if hw is not None else f"{campaign.folder / 'environment.json'} device_name"
    name = hw if hw is not None else gpu_file(campaign)
    base = load_prior(name, "--hw")
    base_path = Path(name) if Path(name).suffix == ".toml" else hw_dir() / f"{name}.toml"
    base_raw = tomllib.loads(read_text(base_path, "hardware file"))
    cal = fit_campaign(base, base_raw, option, campaign)
    target = output_file(out if out is not None else campaign.folder / "calibrated.toml", "--out", (".toml",))
    text = toml_text(target, cal.name, cal.base, cal.figures, cal.header)
    record = json_text(cal.record, indent=2) + "\n"
    atomic_write_text(target, text)
    atomic_write_text(target.with_name(target.stem + "-benchmarks.json"), record)
    return target, cal
