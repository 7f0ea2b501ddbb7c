"""The measure section: `radsim measure`'s harness over the campaign's models, into measurements.csv.

Rows have the harness's columns and are checked as `radsim validate` reads them, so a row it would
refuse never spoils the table. Steps run as CUDA graphs, eagerly after two capture failures.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch

from radsim.measure.campaign.config import Device
from radsim.measure.campaign.pace import Context, Item, Pace, SectionResult, free_memory, run_items
from radsim.measure.campaign.plan import measure_plan
from radsim.measure.harness import (
    COLUMNS,
    DTYPES,
    Config,
    Weights,
    _check_row,
    build_weights,
    measure_config,
)
from radsim.measure.specs import SPECS, spec_arch, step_routes
from radsim.routes.replay import StepRoutes


class HarnessRun:
    """Weights built once per model, trace routes read once per model and phase, graph fallback."""

    def __init__(self, ctx: Context, configs: list[Config]) -> None:
        self.ctx, self.configs = ctx, configs
        self._weights: dict[str, Weights] = {}
        self._routes: dict[tuple[str, str], StepRoutes] = {}
        self.graph_failures = 0

    def weights(self, model: str) -> Weights:
        """The model's random weights in the campaign's dtype, with rotary tables for its longest configuration."""
        if model not in self._weights:
            longest = max(c.tokens + 1 for c in self.configs if c.model == model)
            dev = self.ctx.dev.torch_device
            self._weights[model] = build_weights(
                SPECS[model],
                dev,
                DTYPES[self.ctx.measure_dtype],
                max_pos=longest + 1,
                init_on_device=dev.type == "cuda",
            )
        return self._weights[model]

    def routes(self, cfg: Config) -> StepRoutes:
        """The step's routes; a replayed trace's are a slice of the largest step (same rows, prefix)."""
        spec = SPECS[cfg.model]
        if spec.trace is None:
            return step_routes(spec, cfg.phase, cfg.batch, cfg.tokens)
        key = (cfg.model, cfg.phase)
        if key not in self._routes:
            mine = [c for c in self.configs if (c.model, c.phase) == key]
            self._routes[key] = step_routes(
                spec, cfg.phase, max(c.batch for c in mine), max(c.tokens for c in mine)
            )
        full = self._routes[key]
        length = cfg.tokens + (cfg.phase == "decode")
        return StepRoutes(cfg.phase, full.slots[: cfg.batch, :length], full.num_layers, full.kv_policy)

    def step_estimate_s(self, cfg: Config) -> float:
        """A rough step time: its FLOPs or its bytes at the prior rates, plus launches."""
        r, a = self.ctx.rates, spec_arch(SPECS[cfg.model])
        length = cfg.tokens + (cfg.phase == "decode")
        tokens = cfg.batch * (cfg.tokens if cfg.phase == "prefill" else 1)
        flops = 2.0 * a.total_params * tokens + 4.0 * tokens * a.num_layers * a.q_width * length
        moved = 2.0 * a.total_params + 4.0 * cfg.batch * length * a.kv_width * a.num_layers
        return max(flops / r.flops_per_s, moved / r.bytes_per_s) + 15 * a.num_layers * r.launch_s

    def repeats(self, cfg: Config) -> tuple[int, int]:
        """(warm-up, repeats): fewer for long steps, so that one configuration takes about a second."""
        s = self.ctx.sizes
        repeats = max(3, min(s.measure_repeats, int(0.25 / self.step_estimate_s(cfg))))
        return max(1, min(s.measure_warmup, repeats // 3)), repeats

    def estimate_s(self, cfg: Config) -> float:
        """Estimated seconds of measuring `cfg`: host-side routes, weights (once), timed steps."""
        r, s, a = self.ctx.rates, self.ctx.sizes, spec_arch(SPECS[cfg.model])
        step, (warmup, repeats) = self.step_estimate_s(cfg), self.repeats(cfg)
        timed = 2 * max(repeats * step, s.measure_min_s) + (warmup + 3) * step
        init = 0.0 if cfg.model in self._weights else a.total_params * r.init_s_per_param
        host = r.route_entry_s * cfg.batch * (cfg.tokens + 1) * a.num_layers
        return 10 * r.item_s + host + init + timed

    def run(self, cfg: Config) -> list[dict[str, Any]]:
        """The harness rows of `cfg`, checked as `radsim validate` reads them."""
        s, (warmup, repeats) = self.ctx.sizes, self.repeats(cfg)
        kw: dict[str, Any] = dict(warmup=warmup, repeats=repeats, weights=self.weights(cfg.model))
        kw |= dict(routes=self.routes(cfg), min_time_s=s.measure_min_s)
        dev = self.ctx.dev if self.graph_failures < 2 else self.ctx.eager
        try:
            rows = measure_config(dev, cfg, self.ctx.measure_dtype, **kw)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            if dev is self.ctx.eager or self.ctx.dev.kind != "cuda":
                raise
            self.graph_failures += 1
            self.ctx.log(
                f"  {cfg.config_id}: graph run failed ({type(exc).__name__}: {exc}); eager", echo=False
            )
            free_memory()
            rows = measure_config(self.ctx.eager, cfg, self.ctx.measure_dtype, **kw)
        for i, row in enumerate(rows):  # a row `radsim validate` would refuse must not spoil the table
            _check_row(
                Path("measurements.csv"),
                i + 2,
                {k: "" if row.get(k) is None else str(row.get(k)) for k in COLUMNS},
            )
        step = rows[0]
        self.ctx.log(
            f"  {cfg.config_id:40s} {step['time_s'] * 1e3:9.3f} ms  peak {step['peak_memory_bytes'] / 1e6:.1f} MB",
            echo=False,
        )
        return rows


def memory_bytes(dev: Device) -> float:
    """Memory a configuration may plan to use: 60% of the GPU's, or of the host's on CPU."""
    if dev.kind == "cuda":
        return 0.6 * torch.cuda.get_device_properties(dev.torch_device.index or 0).total_memory
    return 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measure_section(ctx: Context, pace: Pace) -> SectionResult:
    """`radsim measure` configurations (harness rows, same columns) into measurements.csv."""
    res = SectionResult()
    configs = measure_plan(ctx.sizes, memory_bytes(ctx.dev), DTYPES[ctx.measure_dtype].itemsize)
    run = HarnessRun(ctx, configs)
    items = (Item(c.config_id, run.estimate_s(c), functools.partial(run.run, c)) for c in configs)
    run_items(ctx, items, pace, ctx.csv_sink("measurements.csv", COLUMNS), res)
    if run.graph_failures:
        res.notes.append(
            f"{run.graph_failures} configuration(s) fell back to eager steps (graph capture failed)"
        )
    return res
