"""`radsim tables`: measured kernel tables (GEMM, collectives) per device and serving framework.

`import` converts published kernel-level measurements (NVIDIA aiconfigurator-core) into the
compact files the hardware models name; `error` reports the held-out interpolation error of a table
file; `show` lists what a file holds and where it came from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from radsim.errors import ConfigError
from radsim.files import json_text, output_dir, output_file


def add_tables_commands(sub) -> None:
    """Register `tables import|error|show` on the main CLI's subparsers."""
    tables = sub.add_parser("tables", help="measured kernel tables: import, held-out error, show")
    commands = tables.add_subparsers(title="tables commands")
    imp = commands.add_parser("import", help="convert published kernel tables (aiconfigurator-core)")
    imp.add_argument(
        "--device", required=True, help="radsim device (h100_sxm, h200_sxm, a100_sxm_80gb, l40s)"
    )
    imp.add_argument("--framework", default="vllm", help="serving framework whose tables to take")
    imp.add_argument("--version", help="framework version (default: the newest with GEMM tables)")
    imp.add_argument("--from", dest="source", help="a folder laid out as the package's systems/data")
    imp.add_argument("--source-version", help="version of the source package, when --from is given")
    imp.add_argument("--out", help="output folder (default: radsim/spec/kernel_tables/DEVICE)")
    imp.set_defaults(func=_import)
    err = commands.add_parser("error", help="held-out interpolation error of a table file")
    err.add_argument("file", help="a kernel-table file (.npz) or a device name")
    err.add_argument("--json", action="store_true", help="print one JSON list")
    err.add_argument(
        "--plot", metavar="FILE", help="also write predicted against measured latency (.html or .png)"
    )
    err.set_defaults(func=_error)
    show = commands.add_parser("show", help="what a table file holds and where it came from")
    show.add_argument("file", help="a kernel-table file (.npz) or a device name")
    show.set_defaults(func=_show)
    tables.set_defaults(func=lambda args: tables.print_help())


def _import(args: argparse.Namespace) -> None:
    from radsim.measure.tables import import_tables, package_data_dir
    from radsim.spec.kernel_tables import TABLES_DIR

    data = Path(args.source) if args.source else package_data_dir()
    if not data.is_dir():
        raise ConfigError(f"--from {data}: not a folder")
    out = output_dir(Path(args.out) if args.out else TABLES_DIR / args.device, "--out")
    path = import_tables(args.device, args.framework, data, out, args.version, args.source_version)
    print(f"wrote {path}")


def _tables(file: str):
    from radsim.spec.hardware import load_hardware
    from radsim.spec.kernel_tables import load_kernel_tables

    if file.endswith(".npz"):
        return load_kernel_tables(Path(file).resolve())
    tables = load_hardware(file).kernel_tables
    if tables is None:
        raise ConfigError(f"hardware '{file}' names no kernel tables")
    return tables


def _error(args: argparse.Namespace) -> None:
    from radsim.measure.tables import format_errors, held_out_errors

    if args.plot:
        output_file(args.plot, "--plot", (".html", ".png"))  # before any work
    tables = _tables(args.file)
    samples: dict | None = {} if args.plot else None
    rows = held_out_errors(tables, samples)
    if args.plot:
        assert samples is not None
        _write_error_plot(args.plot, samples, f"Held-out kernel-table error: {tables.source}")
    print(
        json_text(rows)
        if args.json
        else format_errors(rows, f"held-out error of {tables.path.name}: {tables.source}")
    )


def _write_error_plot(out: str, samples: dict, title: str) -> None:
    from radsim.files import atomic_write_text
    from radsim.measure.tables import error_figure

    fig = error_figure(samples, title)
    path = Path(out)
    if path.suffix == ".png":
        from radsim.files import atomic_write

        atomic_write(path, lambda tmp: fig.write_image(str(tmp), format="png", width=1000, height=650))
    else:
        atomic_write_text(path, fig.to_html(include_plotlyjs="cdn", full_html=True))
    print(f"wrote {path}", file=sys.stderr)


def _show(args: argparse.Namespace) -> None:
    tables = _tables(args.file)
    print(f"{tables.path}: {tables.source}")
    for key, value in sorted(tables.meta.items()):
        print(f"  {key:<18} {value}")
    for dtype, grid in sorted(tables.gemm.items()):
        print(
            f"  gemm {dtype}: m {len(grid.m)} values {grid.m[0]:g}..{grid.m[-1]:g}, n {len(grid.n)}, k {len(grid.k)}"
        )
    for algorithm, by_gpus in sorted(tables.allreduce.items()):
        print(f"  all-reduce {algorithm}: {', '.join(f'{g} GPUs' for g in sorted(by_gpus))}")
