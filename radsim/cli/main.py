"""The `radsim` command line: registries, the static estimate, models and traces.

Units are converted for display here and nowhere else; `--json` prints SI values as computed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from radsim.cli.measure import add_measure_commands
from radsim.cli.models import add_model_commands
from radsim.cli.simulate import add_simulate_command
from radsim.cli.study import add_study_commands
from radsim.cli.trace import add_trace_commands
from radsim.cost.estimate import Workload, estimate
from radsim.cost.layer import DTYPE_BYTES, EXPERT_LAUNCHES, KV_POLICIES, Execution
from radsim.cost.money import DEFAULT_ELECTRICITY_USD_PER_KWH, Pricing
from radsim.errors import ConfigError
from radsim.spec.arch import list_archs, load_arch
from radsim.spec.hardware import list_hardware, load_hardware


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `radsim` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        args.func(args)
    except ConfigError as exc:
        print(f"radsim: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(title="commands")
    hw = sub.add_parser("hw", help="hardware models").add_subparsers(title="hw commands")
    hw.add_parser("list", help="list hardware models").set_defaults(func=_hw_list)
    show = hw.add_parser("show", help="show one hardware model with sources")
    show.add_argument("name")
    show.set_defaults(func=_hw_show)
    arch = sub.add_parser("arch", help="architecture specs").add_subparsers(title="arch commands")
    arch.add_parser("list", help="list architectures").set_defaults(func=_arch_list)
    ashow = arch.add_parser("show", help="show one architecture")
    ashow.add_argument("name")
    ashow.set_defaults(func=_arch_show)
    _estimate_parser(sub)
    add_simulate_command(sub)
    add_model_commands(sub)
    add_trace_commands(sub)
    add_study_commands(sub)
    add_measure_commands(sub)
    return parser


def _estimate_parser(sub) -> None:
    est = sub.add_parser("estimate", help="static batch estimate: prefill together, then decode")
    est.add_argument("--hw", required=True, help="hardware name (radsim hw list) or TOML path")
    est.add_argument("--arch", required=True, help="architecture name (radsim arch list) or TOML path")
    est.add_argument("--dtype", default="fp16", choices=sorted(DTYPE_BYTES))
    est.add_argument("--batch", type=int, default=1)
    est.add_argument("--prompt", type=int, default=512, help="prompt tokens per request")
    est.add_argument("--output", type=int, default=128, help="output tokens per request")
    est.add_argument("--tp", type=int, default=1, help="tensor-parallel devices")
    est.add_argument(
        "--depth-fraction",
        type=float,
        default=1.0,
        help="fraction of layers each token visits (random per token)",
    )
    est.add_argument(
        "--expert-launch",
        default="grouped",
        choices=EXPERT_LAUNCHES,
        help="Finedeep experts: one grouped launch per projection, or one launch per expert",
    )
    est.add_argument(
        "--kv-policy",
        default="none",
        choices=KV_POLICIES,
        help="what a skipped layer does to its KV cache",
    )
    est.add_argument(
        "--prefill-chunk",
        type=int,
        default=8192,
        help="max tokens per prefill iteration (0: whole batch at once)",
    )
    est.add_argument("--seed", type=int, default=0)
    est.add_argument("--electricity-usd-per-kwh", type=float, default=DEFAULT_ELECTRICITY_USD_PER_KWH)
    est.add_argument("--json", action="store_true", help="print one JSON object")
    est.set_defaults(func=_estimate)


def _hw_list(args: argparse.Namespace) -> None:
    print(
        f"{'name':<16} {'memory':>9} {'bandwidth':>11} {'bf16 dense':>12} {'power':>7} {'price':>9}  device"
    )
    for name in list_hardware():
        hw = load_hardware(name)
        bf16 = f"{hw.bf16_dense_flops / 1e12:.0f} TFLOP/s" if hw.bf16_dense_flops else "-"
        print(
            f"{name:<16} {hw.memory_capacity_bytes / 2**30:>5.0f} GiB "
            f"{hw.memory_bandwidth_Bps / 1e12:>7.2f} TB/s "
            f"{bf16:>12} {hw.max_power_W:>5.0f} W ${hw.price_usd_per_hour:>5.2f}/h  {hw.name}"
        )


def _hw_show(args: argparse.Namespace) -> None:
    hw = load_hardware(args.name)
    print(f"{hw.stem}: {hw.name} ({hw.kind}, {hw.vendor})")
    print(f"dtypes with a matrix peak: {', '.join(hw.dtypes())}")
    for key, source in hw.sources.items():
        print(f"  {key:<28} {getattr(hw, key):>12.6g}   {source}")


def _arch_list(args: argparse.Namespace) -> None:
    print(f"{'name':<14} {'params':>8} {'layers':>6} {'hidden':>6} {'heads':>5} {'kv':>3} {'ffn':>6}")
    for name in list_archs():
        a = load_arch(name)
        print(
            f"{name:<14} {a.total_params / 1e9:>7.3f}B {a.num_layers:>6} {a.hidden_size:>6} "
            f"{a.num_heads:>5} {a.num_kv_heads:>3} {a.ffn_size:>6}"
        )


def _arch_show(args: argparse.Namespace) -> None:
    a = load_arch(args.name)
    for key, value in vars(a).items():
        print(f"  {key:<24} {value}")
    print(f"  {'params per layer':<24} {a.layer_params:,}")
    print(f"  {'total params':<24} {a.total_params:,}")


def _estimate(args: argparse.Namespace) -> None:
    if args.electricity_usd_per_kwh < 0:
        raise ConfigError("--electricity-usd-per-kwh must be >= 0")
    hw, arch = load_hardware(args.hw), load_arch(args.arch)
    exe = Execution(dtype=args.dtype, tp=args.tp, kv_policy=args.kv_policy, expert_launch=args.expert_launch)
    hw.peak_flops(args.dtype)
    work = Workload(
        batch=args.batch,
        prompt_tokens=args.prompt,
        output_tokens=args.output,
        depth_fraction=args.depth_fraction,
        prefill_chunk=args.prefill_chunk,
        seed=args.seed,
    )
    result = estimate(hw, arch, exe, work, Pricing(args.electricity_usd_per_kwh))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_estimate(result))


def format_estimate(r: dict) -> str:
    """A readable table of an estimate's main figures."""
    rows = [
        ("model", f"{r['arch']} on {r['devices']} x {r['hw']}, {r['dtype']}"),
        (
            "requests",
            f"batch {r['batch']}, prompt {r['prompt_tokens']}, output {r['output_tokens']} tokens",
        ),
        (
            "depth",
            f"{r['layers_visited_per_token']} of {r['layers']} layers per token (kv policy {r['kv_policy']})",
        ),
        ("time to first token", f"{r['ttft_s'] * 1e3:.2f} ms"),
        (
            "time per output token",
            "n/a (one output token)" if r["tpot_s"] is None else f"{r['tpot_s'] * 1e3:.3f} ms",
        ),
        ("end to end", f"{r['e2e_s']:.3f} s"),
        ("output throughput", f"{r['output_tokens_per_s']:.1f} tokens/s"),
        ("prefill throughput", f"{r['prefill_tokens_per_s']:.0f} tokens/s"),
        (
            "compute-bound time",
            f"prefill {r['prefill_compute_bound_fraction']:.0%}, "
            f"decode {r['decode_compute_bound_fraction']:.0%}",
        ),
        (
            "peak memory / device",
            f"{r['peak_memory_bytes'] / 1e9:.2f} GB of {r['memory_capacity_bytes'] / 1e9:.0f} GB "
            f"(weights {r['weights_bytes'] / 1e9:.2f}, KV {r['kv_cache_bytes'] / 1e9:.2f}, "
            f"activations {r['activation_bytes'] / 1e9:.2f})",
        ),
        ("average power", f"{r['avg_power_W']:.0f} W (all devices)"),
        ("energy per output token", f"{r['energy_J_per_output_token']:.3f} J"),
        ("cost per 1M output tokens", f"${r['cost_usd_per_Mtok']:.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


if __name__ == "__main__":
    sys.exit(main())
