"""Calibration: microbenchmarks on the device at hand, fitted into a calibrated hardware file.

The microbenchmarks time, with the same `radsim.measure.timing` devices the harness uses:

- GEMM throughput of `torch.nn.functional.linear` across rows and weight shapes (weights hot in
  cache), fitted to eff(rows) = E rows / (rows + h): `gemm_efficiency` E and `gemm_half_rows` h;
- memory bandwidth: matrix-vector products streaming a set of weight matrices larger than the
  last-level cache (`memory_efficiency` against the datasheet peak) and one that fits in it
  (`cache_bandwidth_Bps`), the way decode reads weights;
- launch overhead: the time of an operator on a one-element tensor;
- attention: `scaled_dot_product_attention` at prefill shapes (`attention_efficiency`) and `exp`
  over an in-cache tensor (`exp_ops_per_s`).

Framework overhead per cost-model launch (`kernel_launch_overhead_s`) is then fitted by least
squares on the relative error of the calibration half of a measurement table (`radsim.measure.validate`
split); the validation half is never used. Every fitted figure's source says what measured it, when
and where; the figures the benchmarks cannot measure keep the host file's sources.
"""

from __future__ import annotations

import json
import statistics
import time
import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from radsim.errors import ConfigError
from radsim.files import atomic_write_text, check_text, json_text
from radsim.measure.timing import host_environment
from radsim.spec.hardware import Hardware, hw_dir, load_hardware, parse_hardware


def time_op(device, fn: Callable[[], Any], warmup: int = 3, repeats: int = 15, inner: int = 1) -> float:
    """Median seconds of one call of `fn` (each sample times `inner` calls)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        timer = device.timer()
        timer.mark()
        for _ in range(inner):
            fn()
        timer.mark()
        samples.append(timer.elapsed_s()[0] / inner)
    return statistics.median(samples)


def bench_launch(device) -> float:
    """Seconds of one tiny operator (dispatch, allocation, return)."""
    x = torch.zeros(1, device=device.torch_device)
    return time_op(device, lambda: x + 1.0, inner=200)


def bench_gemm(device, rows: list[int], shapes: list[tuple[int, int]], dtype=torch.float32) -> list[dict]:
    """Achieved FLOP/s of x (rows, k) @ W (n, k)^T for every rows and (n, k)."""
    out = []
    for n, k in shapes:
        w = torch.randn(n, k, device=device.torch_device).to(dtype)
        for m in rows:
            x = torch.randn(m, k, device=device.torch_device).to(dtype)

            def gemm(x: torch.Tensor = x, w: torch.Tensor = w) -> torch.Tensor:
                return F.linear(x, w)

            t = time_op(device, gemm, inner=max(1, 2000 // (m * 4 + 1)))
            out.append(dict(rows=m, n=n, k=k, time_s=t, flops=2.0 * m * n * k))
    return out


def bench_gemm_streamed(
    device, rows: list[int], total_bytes: float, n: int = 576, k: int = 1536
) -> list[dict]:
    """Achieved FLOP/s of small-row GEMMs over a set of weight matrices larger than the cache."""
    count = max(1, int(total_bytes // (n * k * 4)))
    mats = [torch.randn(n, k, device=device.torch_device) for _ in range(count)]
    out = []
    for m in rows:
        x = torch.randn(m, k, device=device.torch_device)

        def sweep(x=x) -> None:
            for w in mats:
                F.linear(x, w)

        t = time_op(device, sweep, warmup=1, repeats=5) / count
        out.append(dict(rows=m, n=n, k=k, time_s=t, flops=2.0 * m * n * k))
    return out


def bench_elementwise(device, shapes: list[tuple[int, int]]) -> list[dict]:
    """Bytes/s of SiLU-and-gate and RMSNorm at (rows, width), bytes counted as `radsim.cost.kernels` does."""
    out = []
    for rows, width in shapes:
        g, u = (torch.randn(rows, width, device=device.torch_device) for _ in range(2))

        def silu_mul(g: torch.Tensor = g, u: torch.Tensor = u) -> torch.Tensor:
            return F.silu(g) * u

        t = time_op(device, silu_mul)
        out.append(dict(op="silu_mul", rows=rows, width=width, time_s=t, bytes=rows * width * 4 * 3.0))
        w = torch.ones(width, device=device.torch_device)

        def rms_norm(g: torch.Tensor = g, w: torch.Tensor = w, width: int = width) -> torch.Tensor:
            return F.rms_norm(g, (width,), w, 1e-5)

        t = time_op(device, rms_norm)
        out.append(dict(op="rms_norm", rows=rows, width=width, time_s=t, bytes=rows * width * 4 * 3.0))
    return out


def fit_streamed_half_rows(results: list[dict], peak: float, e: float, launch_s: float) -> float:
    """h of eff(rows) = E rows / (rows + h) with E fixed, least squares in 1/eff against 1/rows."""
    m = np.array([r["rows"] for r in results], dtype=float)
    eff = np.array([r["flops"] / max(r["time_s"] - launch_s, 1e-9) / peak for r in results])
    return float(max(1e-3, e * np.sum((1.0 / eff - 1.0 / e) / m) / np.sum(1.0 / m**2)))


def bench_stream(device, total_bytes: float, n: int = 576, k: int = 1536) -> tuple[float, float]:
    """Bytes/s of matrix-vector products over a set of fp32 matrices holding `total_bytes`."""
    count = max(1, int(total_bytes // (n * k * 4)))
    mats = [torch.randn(n, k, device=device.torch_device) for _ in range(count)]
    x = torch.randn(1, k, device=device.torch_device)

    def sweep() -> None:
        for w in mats:
            F.linear(x, w)

    t = time_op(device, sweep, warmup=2, repeats=7)
    return count * n * k * 4 / t, t / count


def bench_attention(device, shapes: list[tuple[int, int, int, int]]) -> list[dict]:
    """Causal SDPA (batch, heads, tokens, head_dim): time and FLOPs (4 hd per causal pair)."""
    out = []
    for b, h, t, hd in shapes:
        q, k, v = (torch.randn(b, h, t, hd, device=device.torch_device) for _ in range(3))

        def sdpa(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        s = time_op(device, sdpa)
        pairs = b * t * (t + 1) / 2.0
        out.append(
            dict(
                batch=b, heads=h, tokens=t, head_dim=hd, time_s=s, flops=4.0 * h * hd * pairs, exps=h * pairs
            )
        )
    return out


def bench_exp(device, elements: int = 1 << 18) -> float:
    """exp() results per second over an in-cache fp32 tensor."""
    x = torch.randn(elements, device=device.torch_device)
    return elements / time_op(device, lambda: torch.exp(x), inner=5)


def fit_gemm(results: list[dict], peak: float, launch_s: float) -> tuple[float, float]:
    """E and h of eff(rows) = E rows / (rows + h), from 1/eff = 1/E + (h/E) / rows (least squares)."""
    m = np.array([r["rows"] for r in results], dtype=float)
    eff = np.array([r["flops"] / max(r["time_s"] - launch_s, 1e-9) / peak for r in results])
    keep = m >= 4  # a single row is a matrix-vector product: bandwidth-bound, priced as such
    slope, intercept = np.polyfit(1.0 / m[keep], 1.0 / eff[keep], 1)
    e = min(1.0, 1.0 / intercept)
    return e, max(0.0, slope * e)


def run_benchmarks(device, quick: bool = False) -> dict[str, Any]:
    """Every microbenchmark; `quick` runs a subset sized for CI."""
    launch = bench_launch(device)
    rows = [4, 16, 64, 256] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    shapes = (
        [(576, 576), (1536, 576)]
        if quick
        else [(192, 192), (320, 192), (1024, 192), (576, 576), (960, 576), (3072, 576), (576, 1536)]
    )
    gemm = bench_gemm(device, rows, shapes)
    cache_bw, cache_t = bench_stream(device, 8e6 if quick else 16e6)
    dram_bw, dram_t = bench_stream(device, 96e6 if quick else 320e6)
    attn_shapes = (
        [(1, 6, 128, 32), (1, 9, 128, 64)]
        if quick
        else [(1, 6, 256, 32), (4, 6, 128, 32), (1, 9, 256, 64), (4, 9, 128, 64)]
    )
    attention = bench_attention(device, attn_shapes)
    streamed = bench_gemm_streamed(
        device, [2, 4, 16] if quick else [2, 4, 8, 16, 32, 64], 96e6 if quick else 320e6
    )
    elementwise = bench_elementwise(
        device,
        [(64, 576), (512, 1536)] if quick else [(16, 192), (512, 512), (2048, 512), (64, 576), (512, 1536)],
    )
    return dict(
        launch_s=launch,
        gemm=gemm,
        cache_stream_Bps=cache_bw,
        dram_stream_Bps=dram_bw,
        attention=attention,
        exp_ops_per_s=bench_exp(device),
        gemm_streamed=streamed,
        elementwise=elementwise,
        quick=quick,
    )


def fit_hardware(prior: Hardware, bench: dict[str, Any], compute_units: int, note: str) -> dict[str, Any]:
    """Figures (value, source) of the calibrated file: measured where the benchmarks measure them."""
    per_core = prior.fp32_dense_flops / prior.compute_units
    peak = per_core * compute_units
    e, h = fit_gemm(bench["gemm"], peak, bench["launch_s"])
    att = bench["attention"]
    exp_rate = bench["exp_ops_per_s"]
    # attention's matrix work after its exponentials, as the cost model adds the two
    att_eff = float(
        np.median(
            [
                a["flops"] / peak / max(a["time_s"] - a["exps"] / exp_rate - bench["launch_s"], 1e-9)
                for a in att
            ]
        )
    )
    measured = {
        "fp32_dense_flops": (
            peak,
            f"computed: the host file's {per_core:.4g} FLOP/s per core x {compute_units} "
            f"core(s) used by the measurements ({note})",
        ),
        "compute_units": (compute_units, f"measured: cores the measurements ran on ({note})"),
        "gemm_efficiency": (
            e,
            f"measured: GEMM benchmark, fit of eff(rows) = E rows / (rows + h) over "
            f"{len(bench['gemm'])} shapes, fp32, {note}",
        ),
        "gemm_half_rows": (max(h, 1e-3), f"measured: GEMM benchmark, same fit, {note}"),
        "memory_efficiency": (
            min(1.0, bench["dram_stream_Bps"] / prior.memory_bandwidth_Bps),
            f"measured: matrix-vector stream over weights beyond the last-level cache, "
            f"{bench['dram_stream_Bps'] / 1e9:.2f} GB/s over the datasheet peak, {note}",
        ),
        "cache_bandwidth_Bps": (
            bench["cache_stream_Bps"],
            f"measured: matrix-vector stream over weights that fit in the last-level cache, {note}",
        ),
        "attention_efficiency": (
            min(1.0, att_eff),
            f"measured: causal SDPA benchmark over {len(att)} shapes, matrix time after exponentials, {note}",
        ),
        "exp_ops_per_s": (exp_rate, f"measured: torch.exp over an in-cache fp32 tensor, {note}"),
        "kernel_launch_overhead_s": (bench["launch_s"], f"measured: one-element add, {note}"),
        "gemm_half_rows_streamed": (
            fit_streamed_half_rows(bench["gemm_streamed"], peak, e, bench["launch_s"]),
            f"measured: GEMM benchmark over weights streamed from DRAM, rows 2-64, E fixed, {note}",
        ),
        "elementwise_bandwidth_Bps": (
            float(
                np.median(
                    [r["bytes"] / max(r["time_s"] - bench["launch_s"], 1e-9) for r in bench["elementwise"]]
                )
            ),
            f"measured: SiLU-and-gate and RMSNorm benchmark, median over {len(bench['elementwise'])} shapes, "
            f"bytes counted as radsim.cost.kernels.elementwise does, {note}",
        ),
    }
    figures = {k: (getattr(prior, k), prior.sources[k]) for k in prior.sources}
    figures.update(measured)
    figures["clock_Hz"] = (prior.clock_Hz, prior.sources["clock_Hz"])
    return figures


REFINED = (
    "kernel_launch_overhead_s",
    "routing_launch_overhead_s",
    "gemm_efficiency",
    "gemm_half_rows_streamed",
    "attention_efficiency",
    "elementwise_bandwidth_Bps",
    "memory_efficiency",
    "cache_bandwidth_Bps",
)
PRIOR_WEIGHT = 0.05  # pulls each refined figure gently toward its microbenchmark value


def refine(hw: Hardware, rows: list[dict[str, str]], split: dict[str, str]) -> tuple[dict[str, float], int]:
    """Least-squares refinement of `REFINED` figures on the relative step-time error of the calibration half.

    The microbenchmarks give the starting values; the fit, in log space within a factor of 5 of them,
    absorbs what the benchmarks cannot see (the framework's operators per cost-model launch, the
    model's own shapes). Validation configurations are never evaluated here.
    """
    from scipy.optimize import least_squares

    from radsim.measure.validate import group_configs, predict_config

    groups = [g for cid, g in group_configs(rows).items() if split[cid] == "calibrate"]
    if not groups:
        raise ConfigError("no calibration configurations in the measurement table")
    measured = np.array([float(next(r for r in g if r["scope"] == "step")["time_s"]) for g in groups])
    start = np.array([float(getattr(hw, k)) for k in REFINED])

    def figures(x: np.ndarray) -> dict[str, float]:
        values = start * np.exp(x)
        out = dict(zip(REFINED, values.tolist(), strict=True))
        for k in ("gemm_efficiency", "attention_efficiency", "memory_efficiency"):
            out[k] = min(out[k], 1.0)
        return out

    def residuals(x: np.ndarray) -> np.ndarray:
        refined: dict[str, Any] = figures(x)  # float figures only; Any lets replace() take them as kwargs
        trial = replace(hw, **refined)
        pred = np.array([predict_config(trial, g)["time_s"] for g in groups])
        return np.concatenate([(pred - measured) / measured, PRIOR_WEIGHT * x * anchored])

    # a cost-model launch is several framework operators: its overhead may be far above one tiny op's
    launch = np.array([k.endswith("launch_overhead_s") for k in REFINED])
    anchored = (~launch).astype(float)
    upper = np.where(launch, np.log(100.0), np.log(5.0))
    x0 = np.where(launch, np.log(10.0), 0.0)
    fit = least_squares(residuals, x0, bounds=(np.full(len(REFINED), np.log(0.2)), upper), x_scale=0.5)
    return figures(fit.x), len(groups)


def toml_text(
    path: Path, name: str, prior: Hardware, figures: dict[str, tuple[Any, str]], header: str
) -> str:
    """A hardware file's text (header comment, text keys, one inline table per figure), checked by the loader.

    A figure's value is a number, or the text of `kernel_tables`; integral values keep every digit,
    others six significant ones. `path` is where the file will live (kernel tables resolve from it).
    """
    lines = [f"# {line}" for line in header.splitlines()]
    lines += ["", f'name = "{name}"', f'kind = "{prior.kind}"', f'vendor = "{prior.vendor}"', ""]
    for key, (value, source) in figures.items():
        if isinstance(value, str):
            text = json.dumps(value)
        elif isinstance(value, int):
            text = str(int(value))
        elif float(value).is_integer() and abs(value) < 2**53:
            text = repr(float(value))
        else:
            text = repr(float(f"{value:.6g}"))
        lines.append(f"{key} = {{ value = {text}, source = {json.dumps(source)} }}")
    text = "\n".join(lines) + "\n"
    parse_hardware(tomllib.loads(text), path)  # refuse to write a file the loader rejects
    return text


def write_toml(
    path: Path, name: str, prior: Hardware, figures: dict[str, tuple[Any, str]], header: str
) -> None:
    """Write the hardware file `toml_text` renders, atomically."""
    text = toml_text(path, name, prior, figures, header)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def load_prior(name: str, option: str = "--prior") -> Hardware:
    """The hardware file a calibration starts from: a registry name or a TOML path (errors name `option`)."""
    if Path(name).suffix == ".toml":
        check_text(name, "hardware file")
        return load_hardware(name)
    path = hw_dir() / f"{name}.toml"
    if not path.exists():
        names = ", ".join(p.stem for p in sorted(hw_dir().glob("*.toml")))
        raise ConfigError(f"{option} {name!r}: unknown hardware; allowed: {names}, or a TOML path")
    return load_hardware(path)


def calibrate(
    device,
    prior_name: str,
    out: Path,
    measurements: Path | None,
    quick: bool = False,
    compute_units: int = 1,
    log=print,
) -> Path:
    """Benchmark, fit and write `out` (a hardware TOML) plus `out`'s benchmarks JSON and split.

    The prior, the measurement table and the output are checked before any benchmark runs.
    """
    from radsim.files import output_file
    from radsim.measure.harness import read_measurements
    from radsim.measure.validate import group_configs, split_configs

    prior = load_prior(prior_name)
    rows = read_measurements(measurements) if measurements is not None else None
    if rows is not None and "calibrate" not in split_configs(group_configs(rows)).values():
        raise ConfigError(
            f"{measurements}: no calibration configuration (the split needs at least two batch sizes "
            "or lengths per model and phase)"
        )
    output_file(out, "--out", (".toml",))
    env = host_environment()
    note = (
        f"{env['date'][:10]}, {env['host']}, {env['cpu_model']}, torch {env['torch_version']}, "
        f"{env['torch_threads']} thread(s)"
    )
    t0 = time.perf_counter()
    bench = run_benchmarks(device, quick)
    log(f"benchmarks: {time.perf_counter() - t0:.1f} s")
    figures = fit_hardware(prior, bench, compute_units, note)
    name = f"{prior.name}, calibrated ({compute_units} core(s), {env['torch_threads']} thread(s))"
    header = (
        f"Calibrated by `radsim calibrate` from {prior.stem}.toml on {note}.\n"
        "Figures whose source says 'measured' or 'fitted' come from this machine; the rest are the "
        "host file's."
    )
    write_toml(out, name, prior, figures, header)
    record: dict[str, Any] = dict(environment=env, prior=prior.stem, benchmarks=bench)
    if measurements is not None and rows is not None:
        split = split_configs(group_configs(rows))
        figures["routing_launch_overhead_s"] = (bench["launch_s"], "measured: one-element add")
        write_toml(out, name, prior, figures, header)
        refined, used = refine(load_hardware(out), rows, split)
        for key, value in refined.items():
            figures[key] = (
                value,
                f"fitted: least squares on the relative step-time error of the {used} "
                f"calibration configurations of {measurements.name}, starting from the "
                f"microbenchmark value {figures[key][0]:.4g}, {note}",
            )
        write_toml(out, name, prior, figures, header)
        record.update(split=split, measurements=str(measurements), calibration_configs=used)
    atomic_write_text(out.with_name(out.stem + "-benchmarks.json"), json_text(record, indent=2) + "\n")
    for key, (value, source) in figures.items():
        if source.startswith(("measured", "fitted")):
            log(f"{key:28s} {value:.4g}   (prior {getattr(prior, key, None)})")
    return out
