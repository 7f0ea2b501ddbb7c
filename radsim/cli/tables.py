"""`radsim tables`: measured kernel tables (GEMM, attention, collectives) per device and serving framework."""

from __future__ import annotations

import argparse


def add_tables_commands(sub) -> None:
    """Register `tables ...` on the main CLI's subparsers."""
    tables = sub.add_parser("tables", help="measured kernel tables: import, show, held-out error")
    tables.set_defaults(func=lambda args: tables.print_help())
    tables.add_subparsers(title="tables commands")


def _unused(args: argparse.Namespace) -> None:  # pragma: no cover - filled in by the importer
    raise NotImplementedError
