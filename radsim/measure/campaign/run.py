"""The campaign itself: sections in order within the budget, the manifest, SIGTERM, `main`.

Everything is checked before anything runs (options, output folder, device, traces); each section
gets a share of the time left (`SECTIONS`), and the manifest is rewritten atomically after each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from radsim.errors import ConfigError
from radsim.files import atomic_write_text, json_text, output_dir
from radsim.measure.campaign.config import (
    FULL,
    LOG,
    MANIFEST,
    RATES,
    SECTION_FILES,
    SECTIONS,
    TINY,
    CampaignConfig,
    Device,
    config_from_args,
)
from radsim.measure.campaign.env import environment_section, power_section
from radsim.measure.campaign.grid import measure_section
from radsim.measure.campaign.kernels import attention_section, bandwidth_section, gemm_section, launch_section
from radsim.measure.campaign.pace import Context, Interrupted, Pace, SectionResult, free_memory
from radsim.measure.specs import SPECS
from radsim.measure.timing import get_device

RUNNERS: dict[str, Callable[[Context, Pace], SectionResult]] = {
    "environment": environment_section,
    "power": power_section,
    "bandwidth": bandwidth_section,
    "launch": launch_section,
    "gemm": gemm_section,
    "attention": attention_section,
    "measure": measure_section,
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_device(cfg: CampaignConfig) -> None:
    name = cfg.device_name
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: torch.cuda.is_available() is False here; allowed here: cpu")
    if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _open_device(cfg: CampaignConfig) -> tuple[Device, Device]:
    name = cfg.device_name
    threads = 1 if name == "cpu" else None  # one core, as `radsim measure` on CPU: robust to neighbours
    return get_device(name, threads, use_graphs=True), get_device(name, threads, use_graphs=False)


def _check_inputs(cfg: CampaignConfig) -> Path:
    folder = output_dir(cfg.out, "--out")
    if (folder / MANIFEST).exists():
        raise ConfigError(f"--out {folder}: already holds a campaign ({MANIFEST}); give an empty folder")
    if "measure" in cfg.sections:
        sizes = TINY if cfg.dry_run else FULL
        for model in {m for plan in sizes.grid for m in plan.models}:
            trace = SPECS[model].trace
            if trace and not os.path.exists(trace):
                raise ConfigError(
                    f"model {model} replays {trace}, which is not in {os.path.abspath('.')} (run from the repository root)"
                )
    return folder


def _suggested_folder(env: dict[str, Any]) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", str(env.get("device_name", "device")).lower()).strip("-")
    return f"measurements/{name}-{str(env.get('date', _now()))[:10]}"


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Interrupted` (in the main thread), so the manifest records what was done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_campaign(cfg: CampaignConfig) -> dict[str, Any]:
    """Run the selected sections in order within the budget; returns the manifest (also written).

    The options, the output folder, the device and the traces are checked before anything runs.
    """
    _check_device(cfg)
    folder = _check_inputs(cfg)
    threads = torch.get_num_threads()
    try:
        return _run(cfg, folder)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: CampaignConfig, folder: Path) -> dict[str, Any]:
    dev, eager = _open_device(cfg)
    start = time.monotonic()
    end = start + cfg.budget_s - min(2.0, 0.02 * cfg.budget_s)  # time left to write the manifest
    sizes = TINY if cfg.dry_run else FULL
    ctx = Context(cfg, sizes, RATES[dev.kind], dev, eager, folder)
    entries: dict[str, dict[str, Any]] = {
        s: dict(name=s, status="pending", file=SECTION_FILES[s]) for s in SECTIONS
    }
    for s in SECTIONS:
        if s not in cfg.sections:
            entries[s].update(status="skipped", reasons=["not selected (--sections)"])
    manifest: dict[str, Any] = dict(
        campaign="radsim.measure.campaign",
        options=dict(out=str(folder), budget_s=cfg.budget_s, dry_run=cfg.dry_run, device=cfg.device_name),
        started_at=_now(),
        complete=False,
        sections=list(entries.values()),
    )

    def write_manifest() -> None:
        manifest["elapsed_s"] = time.monotonic() - start
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        manifest["files"] = {p.name: p.stat().st_size for p in files if p.name != MANIFEST}
        atomic_write_text(folder / MANIFEST, json_text(manifest, indent=2) + "\n")

    with open(folder / LOG, "a", encoding="utf-8") as log_file, _sigterm_raises():
        ctx.log_file = log_file
        write_manifest()
        ctx.log(
            f"campaign: {cfg.device_name}, budget {cfg.budget_s:g} s, {'dry run' if cfg.dry_run else 'full'}"
        )
        try:
            for name in cfg.selected:
                _run_section(ctx, name, entries[name], start, end, write_manifest)
            manifest["complete"] = True
        except (Interrupted, KeyboardInterrupt):
            manifest["interrupted"] = True
            raise
        finally:
            env = ctx.env_doc.get("environment", {})
            manifest.update(finished_at=_now(), suggested_folder=_suggested_folder(env))
            write_manifest()
    return manifest


def _run_section(
    ctx: Context, name: str, entry: dict[str, Any], start: float, end: float, write_manifest
) -> None:
    now = time.monotonic()
    rest = [s for s in ctx.cfg.selected if ctx.cfg.selected.index(s) >= ctx.cfg.selected.index(name)]
    share = SECTIONS[name] / sum(SECTIONS[s] for s in rest) if sum(SECTIONS[s] for s in rest) else 1.0
    deadline = now + max(0.0, end - now) * share
    entry.update(status="running", started_at=_now(), budget_s=max(0.0, deadline - now))
    write_manifest()
    ctx.log(f"{name}: up to {max(0.0, deadline - now):.1f} s ({now - start:.1f} s into the campaign)")
    t0 = time.monotonic()
    try:
        res = RUNNERS[name](ctx, Pace(deadline))
    except (Interrupted, KeyboardInterrupt):
        entry.update(status="interrupted", time_s=time.monotonic() - t0)
        raise
    except Exception as exc:  # noqa: BLE001 - a failed section leaves the others their time
        ctx.log(traceback.format_exc(), echo=False)
        res = SectionResult(failed=1, errors=[f"{type(exc).__name__}: {str(exc)[:500]}"])
    finally:
        free_memory()
    entry.update(
        status=res.status(),
        time_s=time.monotonic() - t0,
        items_done=res.done,
        items_skipped=res.skipped,
        items_failed=res.failed,
        reasons=res.reasons(),
        errors=res.errors,
    )
    ctx.log(
        f"{name}: {entry['status']} in {entry['time_s']:.2f} s ({res.done} done, {res.skipped} skipped, {res.failed} failed)"
    )
    write_manifest()


def exit_status(manifest: dict[str, Any]) -> int:
    """0 when every selected section ran (fully, partly or skipped for time); 1 when one failed."""
    return 1 if any(s["status"] == "failed" for s in manifest["sections"]) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m radsim.measure.campaign`: the options of `radsim campaign`, without the rest of radsim."""
    from radsim.cli.measure import add_campaign_arguments  # the one definition of the options

    package = sys.modules[__name__.rpartition(".")[0]]  # its docstring describes the campaign
    parser = argparse.ArgumentParser(
        prog="python -m radsim.measure.campaign", description=(package.__doc__ or "").splitlines()[0]
    )
    add_campaign_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return exit_status(run_campaign(config_from_args(args)))
    except ConfigError as exc:
        print(f"radsim: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except Interrupted:
        print("radsim: interrupted (SIGTERM); manifest.json says what was done", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("radsim: interrupted; manifest.json says what was done", file=sys.stderr)
        return 130
