"""Hardware models: one TOML file per device in `radsim/spec/hw_models/`, loaded into a frozen SI dataclass.

Every figure in a file is an inline table ``{value = ..., source = "..."}``; the loader keeps the
sources beside the values so that `radsim hw show` can print where each number came from. The folder
is the registry: `list_hardware()` lists its file stems, and an unknown name lists the valid ones.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError
from radsim.files import read_text
from radsim.spec.kernel_tables import KernelTables, load_kernel_tables
from radsim.spec.kernel_tables import resolve as resolve_tables

#: Dtypes whose dense matrix peak a file may give, and the key that holds each.
PEAK_KEYS: dict[str, str] = {
    "fp32": "fp32_dense_flops",
    "tf32": "tf32_dense_flops",
    "fp16": "fp16_dense_flops",
    "bf16": "bf16_dense_flops",
    "fp8": "fp8_dense_flops",
    "int8": "int8_dense_ops",
}
KINDS = ("gpu", "cpu")
VENDORS = ("nvidia", "amd", "intel")
_TEXT_KEYS = ("name", "kind", "vendor")
# Calibrated figures (`radsim calibrate`) refine the roofline where a device file gives them; a file
# without them prices exactly as before.
CALIBRATED_FIGURES = {
    "gemm_half_rows",
    "gemm_half_rows_streamed",
    "cache_bandwidth_Bps",
    "elementwise_bandwidth_Bps",
    "attention_efficiency",
    "routing_launch_overhead_s",
}
_OPTIONAL_FIGURES = (
    {k for k in PEAK_KEYS.values() if k != "fp32_dense_flops"}
    | {"scale_up_bandwidth_Bps", "active_power_W"}
    | CALIBRATED_FIGURES
)
_INTEGER_FIGURES = {"compute_units", "gemm_tile_m", "gemm_tile_n"}
_FRACTIONS = {"gemm_efficiency", "memory_efficiency", "attention_efficiency"}


def hw_dir() -> Path:
    """The folder of hardware files: $RADSIM_HW_DIR, else the registry shipped in the package (`radsim/spec/hw_models/`)."""
    env = os.environ.get("RADSIM_HW_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "hw_models"


@dataclass(frozen=True)
class Hardware:
    """One device, all figures in SI units; `sources` maps each figure's key to its source."""

    name: str
    stem: str
    kind: str
    vendor: str
    fp32_dense_flops: float
    exp_ops_per_s: float
    memory_capacity_bytes: float
    memory_bandwidth_Bps: float
    last_level_cache_bytes: float
    compute_units: int
    clock_Hz: float
    pcie_bandwidth_Bps: float
    link_latency_s: float
    idle_power_W: float
    max_power_W: float
    memory_energy_J_per_byte: float
    price_usd_per_hour: float
    gemm_efficiency: float
    memory_efficiency: float
    kernel_launch_overhead_s: float
    gemm_tile_m: int
    gemm_tile_n: int
    tf32_dense_flops: float | None = None
    fp16_dense_flops: float | None = None
    bf16_dense_flops: float | None = None
    fp8_dense_flops: float | None = None
    int8_dense_ops: float | None = None
    scale_up_bandwidth_Bps: float | None = None
    # rows at which a GEMM reaches half of `gemm_efficiency` (small-batch GEMMs cannot fill the units)
    gemm_half_rows: float | None = None
    # the same for a GEMM whose weights stream from DRAM (else `gemm_half_rows`)
    gemm_half_rows_streamed: float | None = None
    # bandwidth of the last-level cache, used when the model's weights fit in it
    cache_bandwidth_Bps: float | None = None
    # bytes/s the framework's elementwise kernels (norms, activations, copies) achieve, transcendentals included
    elementwise_bandwidth_Bps: float | None = None
    # achievable fraction of the matrix peak in attention kernels (else `gemm_efficiency`)
    attention_efficiency: float | None = None
    # fixed time per launch of the router and the gather/scatter (else `kernel_launch_overhead_s`)
    routing_launch_overhead_s: float | None = None
    # power while kernels run, before the work's own energy: static power at the boost voltage and the
    # clock tree (else `idle_power_W`: a device that draws the same idle or busy)
    active_power_W: float | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # measured GEMM and all-reduce tables (`radsim.spec.kernel_tables`); None: the roofline prices all
    kernel_tables: KernelTables | None = field(default=None, compare=False, repr=False)

    def peak_flops(self, dtype: str) -> float:
        """Dense matrix peak for `dtype`; raises if the device has none."""
        key = PEAK_KEYS.get(dtype)
        value = getattr(self, key) if key else None
        if value is None:
            raise ConfigError(
                f"{self.stem}: no dense {dtype} throughput on this device; "
                f"supported dtypes: {', '.join(self.dtypes())}"
            )
        return float(value)

    def dtypes(self) -> list[str]:
        """Dtypes with a matrix peak on this device."""
        return [d for d, k in PEAK_KEYS.items() if getattr(self, k) is not None]

    @property
    def busy_power_W(self) -> float:
        """Power while a kernel runs before its FLOPs and bytes: `active_power_W`, else `idle_power_W`."""
        return self.idle_power_W if self.active_power_W is None else self.active_power_W

    @property
    def collective_bandwidth_Bps(self) -> float:
        """Per-direction bandwidth a collective between devices gets: scale-up link, else PCIe."""
        return self.scale_up_bandwidth_Bps or self.pcie_bandwidth_Bps


_TABLES_KEY = "kernel_tables"
_FIGURE_KEYS = tuple(
    f.name for f in fields(Hardware) if f.name not in (*_TEXT_KEYS, "stem", "sources", _TABLES_KEY)
)


def list_hardware(directory: Path | None = None) -> list[str]:
    """Names (file stems) of the shipped hardware files."""
    folder = directory or hw_dir()
    return sorted(p.stem for p in folder.glob("*.toml"))


def load_hardware(name_or_path: str | Path) -> Hardware:
    """Load a hardware file by registry name or by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = hw_dir() / f"{name_or_path}.toml"
        if not path.exists():
            valid = ", ".join(list_hardware()) or "(none found)"
            raise ConfigError(f"unknown hardware '{name_or_path}'; valid names: {valid}")
    try:
        raw = tomllib.loads(read_text(path, "hardware file"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: cannot read hardware file: {exc}") from exc
    return parse_hardware(raw, path)


def parse_hardware(raw: dict[str, Any], path: Path) -> Hardware:
    """Validate the parsed TOML of a hardware file and build the dataclass."""
    unknown = sorted(set(raw) - set(_TEXT_KEYS) - set(_FIGURE_KEYS) - {_TABLES_KEY})
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {unknown}; allowed: {sorted((*_TEXT_KEYS, *_FIGURE_KEYS, _TABLES_KEY))}"
        )
    values: dict[str, Any] = {"stem": path.stem}
    sources: dict[str, str] = {}
    for key in _TEXT_KEYS:
        values[key] = _text(raw, key, path)
    _check_choice(values["kind"], KINDS, "kind", path)
    _check_choice(values["vendor"], VENDORS, "vendor", path)
    for key in _FIGURE_KEYS:
        if key not in raw:
            if key in _OPTIONAL_FIGURES:
                continue
            raise ConfigError(f"{path}: missing required figure '{key}'")
        values[key], sources[key] = _figure(raw[key], key, path)
    _check_consistency(values, path)
    if _TABLES_KEY in raw:
        values[_TABLES_KEY], sources[_TABLES_KEY] = _tables(raw[_TABLES_KEY], path)
    return Hardware(**values, sources=sources)


def _tables(entry: Any, path: Path) -> tuple[KernelTables, str]:
    """The measured kernel tables a hardware file names: {value = "<device>/<file>.npz", source = "..."}."""
    if (
        not isinstance(entry, dict)
        or set(entry) != {"value", "source"}
        or not isinstance(entry["value"], str)
    ):
        raise ConfigError(
            f'{path}: \'{_TABLES_KEY}\' must be {{value = "<device>/<file>.npz", source = "..."}}, got {entry!r}'
        )
    tables = load_kernel_tables(resolve_tables(entry["value"], path))
    return tables, f"{entry['source']} [{tables.source}]"


def _text(raw: dict[str, Any], key: str, path: Path) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _check_choice(value: str, allowed: tuple[str, ...], key: str, path: Path) -> None:
    if value not in allowed:
        raise ConfigError(f"{path}: '{key}' is {value!r}; allowed: {', '.join(allowed)}")


def _figure(entry: Any, key: str, path: Path) -> tuple[float | int, str]:
    if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
        raise ConfigError(
            f"{path}: '{key}' must be an inline table {{value = ..., source = \"...\"}}, got {entry!r}"
        )
    value, source = entry["value"], entry["source"]
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{path}: '{key}.source' must be a non-empty string")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: '{key}.value' must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{path}: '{key}.value' must be finite and > 0, got {value!r}")
    if key in _INTEGER_FIGURES:
        if float(value) != int(value):
            raise ConfigError(f"{path}: '{key}.value' must be a whole number, got {value!r}")
        return int(value), source
    if key in _FRACTIONS and value > 1:
        raise ConfigError(f"{path}: '{key}.value' is a fraction and must be in (0, 1], got {value}")
    return float(value), source


def _check_consistency(values: dict[str, Any], path: Path) -> None:
    if values["idle_power_W"] >= values["max_power_W"]:
        raise ConfigError(
            f"{path}: 'idle_power_W' ({values['idle_power_W']}) must be below "
            f"'max_power_W' ({values['max_power_W']})"
        )
    active = values.get("active_power_W")
    if active is not None and not values["idle_power_W"] <= active < values["max_power_W"]:
        raise ConfigError(
            f"{path}: 'active_power_W' ({active}) must be at least 'idle_power_W' "
            f"({values['idle_power_W']}) and below 'max_power_W' ({values['max_power_W']})"
        )
    if values["last_level_cache_bytes"] >= values["memory_capacity_bytes"]:
        raise ConfigError(f"{path}: 'last_level_cache_bytes' must be below 'memory_capacity_bytes'")
    per_unit_clock = values["fp32_dense_flops"] / (values["compute_units"] * values["clock_Hz"])
    if not 1 <= per_unit_clock <= 4096:
        raise ConfigError(
            f"{path}: 'fp32_dense_flops' implies {per_unit_clock:.3g} FLOP per unit per clock "
            "(allowed 1..4096): check 'compute_units', 'clock_Hz' and the peak's units"
        )
