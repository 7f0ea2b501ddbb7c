"""A campaign folder read back on the CPU: its files checked before anything is fitted from them.

`read_campaign` reads manifest.json, environment.json, bandwidth.csv and gemm.csv (never
measurements.csv, which validates), and refuses a missing file, a missing column or field and a
value that is not a finite positive number, naming the file, the line or field and what is allowed.
`gpu_file` maps the GPU the campaign ran on to its shipped hardware file; `check_compatible` keeps
GPU files to full GPU campaigns and CPU files to CPU ones (the rehearsal).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError
from radsim.files import read_text
from radsim.measure.campaign.config import MANIFEST
from radsim.spec.hardware import Hardware, hw_dir

DTYPE_BYTES = {"bf16": 2, "fp8": 1}  # the GEMM sweep's dtypes and their weights' bytes per element
#: GPU names (torch's device name, matched whole, case ignored) and the shipped file each maps to.
GPU_FILES: tuple[tuple[str, str], ...] = (
    (r"NVIDIA H100 80GB HBM3|NVIDIA H100 SXM5?( 80GB)?", "h100_sxm"),
    (r"NVIDIA H200( SXM)?( 141GB)?", "h200_sxm"),
    (r"NVIDIA A100[- ]SXM4[- ]80GB", "a100_sxm_80gb"),
    (r"NVIDIA L40S", "l40s"),
    (r"AMD Instinct MI300X", "mi300x"),
)
BANDWIDTH_READ = ("kernel", "array_bytes", "bandwidth_Bps")
GEMM_READ = ("model", "layer", "m", "n", "k", "dtype", "flops_per_s", "bandwidth_Bps")


@dataclass(frozen=True)
class Campaign:
    """A campaign folder's files, read and checked: manifest, environment, the two sweeps fitted."""

    folder: Path
    manifest: dict[str, Any]
    env: dict[str, Any]
    bandwidth: list[tuple[int, dict[str, Any]]]  # (CSV line, row with numbers parsed)
    gemm: list[tuple[int, dict[str, Any]]]

    @property
    def environment(self) -> dict[str, Any]:
        """environment.json's `environment` part."""
        return self.env["environment"]

    @property
    def dry_run(self) -> bool:
        """Whether the campaign was the rehearsal at tiny sizes."""
        return bool(self.manifest.get("options", {}).get("dry_run"))

    @property
    def on_gpu(self) -> bool:
        """Whether the campaign ran on a GPU."""
        return str(self.environment["device"]).startswith("cuda")

    def note(self, file: str) -> str:
        """Where a figure comes from: folder, file, device, driver, torch and date."""
        e = self.environment
        driver = e.get("driver_version") or (e.get("nvml") or {}).get("driver_version")
        dry = "dry run (the rehearsal at tiny sizes), " if self.dry_run else ""
        return (
            f"{dry}campaign {self.folder}, {file}: {e['device_name']}, "
            f"driver {driver or 'n/a'}, torch {e['torch_version']}, {e['date']}"
        )


def _missing(folder: Path, name: str, manifest: dict[str, Any] | None) -> ConfigError:
    why = ""
    for s in (manifest or {}).get("sections", []):
        if s.get("file") == name and s.get("status") != "done":
            why = f" (manifest.json: section {s.get('name')} {s.get('status')}: {'; '.join(s.get('reasons') or [])})"
    return ConfigError(f"{folder / name}: missing{why}; --campaign needs a folder written by radsim campaign")


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(read_text(path, "campaign file"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return doc


def _get(doc: dict[str, Any], dotted: str, path: Path, kind: type = str) -> Any:
    """The field `dotted` (a.b.c) of a JSON document, of type `kind`; ConfigError naming file and field."""
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, kind):
        allowed = "an object" if kind is dict else "a string"
        raise ConfigError(f"{path}: field '{dotted}' is {value!r}; allowed: {allowed}")
    return value


def positive(where: str | Path, what: str, value: Any) -> float:
    """`value` as a finite number > 0; ConfigError naming `where` (file, or file:line) and `what` it is."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{where}: {what} is {value!r}; allowed: a finite number > 0")
    return number


def _table(path: Path, columns: tuple[str, ...], numeric: tuple[str, ...]) -> list[tuple[int, dict]]:
    try:
        reader = csv.DictReader(io.StringIO(read_text(path, "campaign table"), newline=""))
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise ConfigError(f"{path}: not a readable CSV file ({exc})") from exc
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; allowed: the campaign's columns")
    if not rows:
        raise ConfigError(f"{path}: no rows")
    out = []
    for line, row in rows:
        parsed = dict(row)
        for c in numeric:
            parsed[c] = positive(f"{path}:{line}", f"column '{c}'", row[c])
        out.append((line, parsed))
    return out


def read_campaign(folder: str | Path) -> Campaign:
    """The folder's manifest, environment, bandwidth and GEMM tables; ConfigError naming file and field."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--campaign {folder}: not a folder")
    if not (folder / MANIFEST).is_file():
        raise _missing(folder, MANIFEST, None)
    manifest = _json(folder / MANIFEST)
    if manifest.get("campaign") != "radsim.measure.campaign":
        raise ConfigError(
            f"{folder / MANIFEST}: field 'campaign' is {manifest.get('campaign')!r}; allowed: 'radsim.measure.campaign'"
        )
    _get(manifest, "options", folder / MANIFEST, dict)
    for name in ("environment.json", "bandwidth.csv", "gemm.csv"):
        if not (folder / name).is_file():
            raise _missing(folder, name, manifest)
    env_path = folder / "environment.json"
    env = _json(env_path)
    for key in ("device", "device_name", "date", "torch_version"):
        _get(env, f"environment.{key}", env_path)
    positive(
        env_path, "field 'launch.eager_launch_s'", _get(env, "launch", env_path, dict).get("eager_launch_s")
    )
    if "power" in env:
        _get(env, "power", env_path, dict)
    bandwidth = _table(folder / "bandwidth.csv", BANDWIDTH_READ, ("array_bytes", "bandwidth_Bps"))
    gemm = _table(folder / "gemm.csv", GEMM_READ, ("m", "n", "k", "flops_per_s", "bandwidth_Bps"))
    for line, row in gemm:
        if row["dtype"] not in DTYPE_BYTES:
            raise ConfigError(
                f"{folder / 'gemm.csv'}:{line}: column 'dtype' is {row['dtype']!r}; allowed: {', '.join(DTYPE_BYTES)}"
            )
    return Campaign(folder, manifest, env, bandwidth, gemm)


def gpu_file(campaign: Campaign) -> str:
    """The shipped hardware file of the GPU the campaign ran on (`GPU_FILES`)."""
    path, name = campaign.folder / "environment.json", campaign.environment["device_name"]
    if not campaign.on_gpu:
        raise ConfigError(
            f"{path}: environment.device is {campaign.environment['device']!r}, not a GPU; give --hw "
            "(a CPU hardware file, e.g. epyc_2core, to calibrate from a rehearsal)"
        )
    for pattern, stem in GPU_FILES:
        if re.fullmatch(pattern, name.strip(), flags=re.IGNORECASE) and (hw_dir() / f"{stem}.toml").exists():
            return stem
    known = ", ".join(stem for _, stem in GPU_FILES)
    raise ConfigError(
        f"{path}: environment.device_name {name!r} maps to no shipped hardware file (mapped: {known}); "
        "give --hw NAME or a TOML path"
    )


def check_compatible(base: Hardware, option: str, campaign: Campaign) -> None:
    """A GPU file only from a full campaign on a GPU; a CPU file only from one on a CPU."""
    env_path = campaign.folder / "environment.json"
    device = campaign.environment["device"]
    if base.kind == "gpu" and not campaign.on_gpu:
        raise ConfigError(
            f"{env_path}: environment.device is {device!r} (a CPU run) but {option} {base.stem} is a GPU "
            "file; allowed: a campaign run on that GPU (or a CPU hardware file, to rehearse)"
        )
    if base.kind == "gpu" and campaign.dry_run:
        raise ConfigError(
            f"{campaign.folder / MANIFEST}: options.dry_run is true (tiny sizes); allowed for a GPU file "
            f"such as {base.stem}: a full campaign"
        )
    if base.kind == "cpu" and campaign.on_gpu:
        raise ConfigError(
            f"{env_path}: environment.device is {device!r} but {option} {base.stem} is a CPU file"
        )
