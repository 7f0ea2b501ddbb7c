"""`radsim trace stats`: depth, layer use, reuse and union coverage of a trace file."""

from __future__ import annotations

import argparse
from typing import Any

from radsim.errors import ConfigError
from radsim.files import json_text


def _stats_command(args: argparse.Namespace) -> None:
    from radsim.routes.stats import format_stats, trace_stats  # pandas and pyarrow: only here
    from radsim.routes.trace import read_trace

    if args.seed < 0:
        raise ConfigError(f"--seed must be an integer >= 0, got {args.seed}")
    stats = trace_stats(read_trace(args.file), seed=args.seed)
    print(json_text(stats) if args.json else format_stats(stats))


def add_trace_commands(subparsers: Any) -> Any:
    """Register `trace stats FILE [--json] [--seed N]`; return the `trace` subparsers for more commands."""
    trace = subparsers.add_parser("trace", help="routing traces").add_subparsers(title="trace commands")
    stats = trace.add_parser("stats", help="depth, layer use, reuse and union coverage of a trace file")
    stats.add_argument("file", help="trace file (Parquet, written by radsim.routes.trace.write_trace)")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.add_argument("--seed", type=int, default=0, help="seed of the union-coverage samples")
    stats.set_defaults(func=_stats_command)
    return trace
