"""GPU campaign: what the cost model needs from one GPU, measured in one prepared, budgeted run.

Device time is scarce, so everything is one command that respects `--budget-s`, writes each
section's file as it goes and brings all back from one folder. Sections, most valuable first:

1. environment: GPU, driver, CUDA and torch versions, clocks and power limits (NVML), date; no host name.
2. power: board power through NVML (the total-energy counter where the GPU has one, else sampled
   power) while idle, while launching small elementwise kernels back to back, while copying a large
   buffer and while running a large bf16 GEMM, with the FLOP/s, bytes/s or kernels/s achieved.
3. bandwidth: copy and triad (a = b + s c) over buffers from cache-sized to DRAM-sized.
4. launch: seconds per tiny kernel launched eagerly, and per kernel replayed from a CUDA graph.
5. gemm: `F.linear` in bf16 and `torch._scaled_mm` in fp8 (e4m3, where the device has it) over M
   = 1..16384 (powers of two first, then others) and the N x K of every projection and LM head of
   Llama-3.1-8B, SmolLM2-135M and SmolLM2-1.7B (shapes read from `radsim/spec/archs/*.toml`).
6. attention: causal prefill SDPA (prompt 128-4096, batch 1-64) and decode SDPA (one query per
   sequence against a KV cache, batch 1-256, context 128-4096), bf16, the same models' heads.
7. measure: `radsim measure`'s harness (`radsim.measure.harness.measure_config`) over sequential and
   radial models (`radsim.measure.specs`: SmolLM2-135M with replayed and random routes, a ~1B
   SmolLM2-1.7B shape, the scratch shape), random weights, bf16 (fp32 on CPU), batch 1-256, prompts
   128-2048, contexts 128-4096 (what fits in 60% of the memory), with CUDA graphs and NVML energy as
   the harness does them. The harness runs slots in order (layer-major): there is no second policy.

Each section may use a share of the time left (`SECTIONS`); an unused share passes on. Inside a
section, items run coarse grid first, then refinements; before each item its cost is estimated
(rough speeds, corrected by what the section's earlier items took) and an item that would not fit
is skipped. Sweep timings are medians of repeats after warm-up, by CUDA events over calls replayed
from a CUDA graph (eager where capture fails; `time.perf_counter` on CPU).

Files written to `--out` (at most 8, each under 16 MiB; each rewritten atomically as it grows):
`manifest.json` (sections done, partial or skipped, with times, counts and reasons),
`environment.json` (environment, power points, launch overhead), `bandwidth.csv`, `gemm.csv`,
`attention.csv`, `measurements.csv` (the harness's columns, read by `radsim validate`) and
`campaign.log`. SI units throughout (`time_s`, `flops_per_s`, `bandwidth_Bps`, `power_W`, `energy_J`).

On the GPU machine, from the repository root (needs torch and numpy, plus pandas and pyarrow for
the replayed traces; not simpy, plotly, scipy or dask, and radsim need not be installed):

    python -m radsim.measure.campaign --out "$OUT" --budget-s 450

The budget counts from the start of the run (CUDA start-up included); importing torch comes before
it. `--dry-run` runs every section at tiny sizes (on CPU unless `--device` says otherwise) in
seconds: the rehearsal of the whole path.

Back on the CPU, nothing runs on a device again:

1. Copy the folder to `measurements/<gpu>-<date>/` (the manifest's `suggested_folder`, e.g.
   `measurements/nvidia-h200-2026-12-02`) and commit it as it came back.
2. `radsim calibrate --campaign measurements/<gpu>-<date>` fits the hardware constants from the
   microbenchmarks alone (`radsim.measure.campaign.fit`: memory_efficiency from bandwidth.csv,
   gemm_efficiency from gemm.csv, kernel_launch_overhead_s and idle_power_W from environment.json)
   into `calibrated.toml` and `calibrated-benchmarks.json` in that folder, starting from the shipped
   file of the GPU environment.json names (`--hw h100_sxm` to choose it). measurements.csv is never
   read: the model step timings stay for validation.
3. `radsim validate --campaign measurements/<gpu>-<date>` prices every configuration of its
   measurements.csv with its calibrated.toml (all held out) and writes `validation.csv` and
   `predicted_vs_measured.{html,png}` beside them; a README.md as in `measurements/epyc-genoa-vm/`
   records the provenance and the error table it prints.

Modules: `config` (options, sections, sizes), `plan` (what each section measures, coarse first),
`pace` (budget, items, sinks, timing), `env` (environment and power), `kernels` (bandwidth, launch,
GEMM, attention), `grid` (the harness), `run` (the campaign and `main`); back on the CPU, `folder`
(a campaign folder read back and checked) and `fit` (`radsim calibrate --campaign`), not imported
here: the GPU machine never needs them.
"""

from radsim.measure.campaign.config import (
    ATTENTION_COLUMNS,
    BANDWIDTH_COLUMNS,
    FULL,
    GEMM_COLUMNS,
    LOG,
    MANIFEST,
    RATES,
    SECTION_FILES,
    SECTIONS,
    TINY,
    CampaignConfig,
    GridPlan,
    Rates,
    Sizes,
    config_from_args,
)
from radsim.measure.campaign.env import Nvml, fp8_unavailable, open_nvml, power_point
from radsim.measure.campaign.grid import HarnessRun, memory_bytes
from radsim.measure.campaign.pace import (
    Context,
    Interrupted,
    Item,
    Pace,
    SectionResult,
    Sink,
    run_items,
    time_calls,
)
from radsim.measure.campaign.plan import (
    AttentionPoint,
    GemmPoint,
    attention_plan,
    bandwidth_plan,
    bisection_levels,
    config_bytes,
    gemm_plan,
    grouped_levels,
    layer_shapes,
    levels_of,
    measure_plan,
)
from radsim.measure.campaign.run import exit_status, main, run_campaign

__all__ = [
    "ATTENTION_COLUMNS",
    "BANDWIDTH_COLUMNS",
    "FULL",
    "GEMM_COLUMNS",
    "LOG",
    "MANIFEST",
    "RATES",
    "SECTIONS",
    "SECTION_FILES",
    "TINY",
    "AttentionPoint",
    "CampaignConfig",
    "Context",
    "GemmPoint",
    "GridPlan",
    "HarnessRun",
    "Interrupted",
    "Item",
    "Nvml",
    "Pace",
    "Rates",
    "SectionResult",
    "Sink",
    "Sizes",
    "attention_plan",
    "bandwidth_plan",
    "bisection_levels",
    "config_bytes",
    "config_from_args",
    "exit_status",
    "fp8_unavailable",
    "gemm_plan",
    "grouped_levels",
    "layer_shapes",
    "levels_of",
    "main",
    "measure_plan",
    "memory_bytes",
    "open_nvml",
    "power_point",
    "run_campaign",
    "run_items",
    "time_calls",
]
