"""What a campaign runs: its options, its sections and their files, and the sizes of the full run and the rehearsal.

Every size the campaign uses lives here, once: `FULL` for the GPU, `TINY` for the dry run on CPU.
`RATES` are rough speeds that schedule items before they run; they are never reported.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from radsim.errors import ConfigError
from radsim.measure.harness import check_device
from radsim.measure.timing import CpuDevice, CudaDevice

Device = CpuDevice | CudaDevice

#: Sections in order of value, with the share of the remaining budget each may use.
SECTIONS: dict[str, float] = {
    "environment": 0.0,
    "power": 0.08,
    "bandwidth": 0.05,
    "launch": 0.02,
    "gemm": 0.22,
    "attention": 0.15,
    "measure": 0.48,
}
SECTION_FILES = {
    "environment": "environment.json",
    "power": "environment.json",
    "bandwidth": "bandwidth.csv",
    "launch": "environment.json",
    "gemm": "gemm.csv",
    "attention": "attention.csv",
    "measure": "measurements.csv",
}
MANIFEST, LOG = "manifest.json", "campaign.log"

TIMED = ("time_s", "time_s_p10", "time_s_p90", "repeats", "inner", "timing")
BANDWIDTH_COLUMNS: tuple[str, ...] = ("kernel", "array_bytes", "bytes", "dtype", *TIMED, "bandwidth_Bps")
GEMM_COLUMNS: tuple[str, ...] = (
    *("model", "layer", "m", "n", "k", "dtype", *TIMED),
    *("flops", "flops_per_s", "bytes", "bandwidth_Bps"),
)
ATTENTION_COLUMNS: tuple[str, ...] = (
    *("model", "phase", "batch", "query_tokens", "context_tokens", "heads", "kv_heads", "head_dim"),
    *("dtype", "causal", *TIMED, "flops", "flops_per_s", "bytes", "bandwidth_Bps"),
)


@dataclass(frozen=True)
class CampaignConfig:
    """What `radsim campaign` runs: output folder, budget, size and device (checked on construction)."""

    out: str
    budget_s: float = 480.0
    dry_run: bool = False
    device: str | None = None  # None: cuda, or cpu with dry_run
    sections: tuple[str, ...] = tuple(SECTIONS)

    def __post_init__(self) -> None:
        b = self.budget_s
        if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b) or b <= 0:
            raise ConfigError(f"--budget-s must be a finite number of seconds > 0, got {b!r}")
        if self.device is not None:
            check_device(self.device)
        if not self.sections:
            raise ConfigError(f"--sections is empty; allowed: {', '.join(SECTIONS)}")
        for name in self.sections:
            if name not in SECTIONS:
                raise ConfigError(f"--sections: unknown section {name!r}; allowed: {', '.join(SECTIONS)}")

    @property
    def device_name(self) -> str:
        """The device measured."""
        return self.device or ("cpu" if self.dry_run else "cuda")

    @property
    def selected(self) -> list[str]:
        """The sections to run, in campaign order."""
        return [s for s in SECTIONS if s in self.sections]


def config_from_args(args: argparse.Namespace) -> CampaignConfig:
    """The configuration of parsed `radsim campaign` options."""
    names = tuple(p.strip() for p in (args.sections or "").split(",") if p.strip())
    return CampaignConfig(args.out, args.budget_s, args.dry_run, args.device, names or tuple(SECTIONS))


@dataclass(frozen=True)
class GridPlan:
    """Models the harness measures over one set of axes."""

    models: tuple[str, ...]
    prefill_batches: tuple[int, ...]
    prompts: tuple[int, ...]
    decode_batches: tuple[int, ...]
    contexts: tuple[int, ...]


@dataclass(frozen=True)
class Sizes:
    """Every size the campaign uses: the full GPU campaign or the tiny rehearsal."""

    warmup: int
    repeats: int
    item_max_s: float  # timed work of one sweep item, at most
    sample_s: float  # calls per timed sample until it lasts this long (one graph replay on CUDA)
    power_s: float
    power_warm_s: float
    power_min_s: float
    power_stream_bytes: int
    power_gemm_n: int
    launch_kernels: int
    bandwidth_bytes: tuple[int, ...]
    gemm_archs: tuple[str, ...]
    gemm_m: tuple[tuple[int, ...], ...]  # groups, most informative first
    lm_head_max_m: int  # the head sees one row per sequence: no prompt-sized M
    fp8_max_flops: float  # fp8 points above this left out (CPUs emulate fp8, slowly)
    attention_archs: tuple[str, ...]
    prefill_batches: tuple[int, ...]
    prefill_seqs: tuple[int, ...]
    max_prefill_tokens: int
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    grid: tuple[GridPlan, ...]
    measure_warmup: int
    measure_repeats: int
    measure_min_s: float


POW2 = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTEXTS = (128, 256, 512, 1024, 2048, 4096)
PROMPTS = dict(prefill_batches=(1, 2, 4, 8, 16), prompts=(128, 256, 512, 1024, 2048))
FULL = Sizes(
    warmup=2,
    repeats=10,
    item_max_s=0.2,
    sample_s=1e-4,
    power_s=3.0,
    power_warm_s=0.5,
    power_min_s=0.5,
    power_stream_bytes=2**30,
    power_gemm_n=8192,
    launch_kernels=200,
    bandwidth_bytes=tuple(2**i for i in range(20, 33, 2)),  # 1 MiB (in L2) .. 4 GiB
    gemm_archs=("llama3.1-8b", "smollm2-135m", "smollm2-1.7b"),
    gemm_m=(
        tuple(2**i for i in range(15)),  # 1 .. 16384
        (3, 6, 12, 24, 48, 96, 192, 384, 768, 1536, 3072, 6144, 12288),  # 1.5 x powers of two
        (7, 100, 1000, 2047, 10000),  # off any tile
    ),
    lm_head_max_m=4096,
    fp8_max_flops=math.inf,
    attention_archs=("llama3.1-8b", "smollm2-135m", "smollm2-1.7b"),
    prefill_batches=(1, 2, 4, 8, 16, 32, 64),
    prefill_seqs=(128, 256, 512, 1024, 2048, 4096),
    max_prefill_tokens=2**17,
    decode_batches=POW2,
    decode_contexts=CONTEXTS,
    grid=(
        GridPlan(("smollm2-seq", "smollm2-radial"), **PROMPTS, decode_batches=POW2, contexts=CONTEXTS),
        GridPlan(
            ("smollm2-1.7b-seq", "smollm2-1.7b-half"), **PROMPTS, decode_batches=POW2, contexts=CONTEXTS
        ),
        GridPlan(("smollm2-half",), **PROMPTS, decode_batches=POW2, contexts=CONTEXTS),
        # the scratch shape holds 4096 positions: a decode step at context 4096 needs 4097
        GridPlan(
            ("scratch-seq", "scratch-radial", "scratch-radial-p05"),
            **PROMPTS,
            decode_batches=POW2,
            contexts=CONTEXTS[:-1],
        ),
    ),
    measure_warmup=3,
    measure_repeats=10,
    measure_min_s=0.05,
)
TINY = Sizes(
    warmup=1,
    repeats=3,
    item_max_s=0.02,
    sample_s=0.0,
    power_s=0.1,
    power_warm_s=0.02,
    power_min_s=0.02,
    power_stream_bytes=2**22,
    power_gemm_n=128,
    launch_kernels=20,
    bandwidth_bytes=(2**16, 2**20),
    gemm_archs=("smollm2-135m",),
    gemm_m=((1, 16), (3,)),
    lm_head_max_m=1,
    fp8_max_flops=2e6,
    attention_archs=("llama3.1-8b",),
    prefill_batches=(1,),
    prefill_seqs=(64, 128),
    max_prefill_tokens=128,
    decode_batches=(1, 2),
    decode_contexts=(128,),
    grid=(GridPlan(("tiny-seq", "tiny-radial", "scratch-radial"), (1, 2), (16,), (1, 2), (16,)),),
    measure_warmup=1,
    measure_repeats=3,
    measure_min_s=0.0,
)


@dataclass(frozen=True)
class Rates:
    """Rough speeds that estimate an item's cost before it runs: scheduling only, never reported."""

    flops_per_s: float
    bytes_per_s: float
    fill_Bps: float  # torch.randn into a new tensor
    launch_s: float
    item_s: float  # fixed cost of one item: allocation, capture, synchronisation, bookkeeping
    route_entry_s: float  # host work per (sequence, token, step) entry of a harness step's routes
    init_s_per_param: float  # building a harness model's random weights


RATES = {
    "cuda": Rates(3e14, 2e12, 2e11, 1e-5, 5e-3, 2e-7, 1e-9),
    "cpu": Rates(2e10, 5e9, 4e8, 2e-5, 2e-3, 2e-7, 2e-8),
}
