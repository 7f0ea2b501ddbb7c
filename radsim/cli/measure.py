"""`radsim measure`, `radsim campaign`, `radsim calibrate` and `radsim validate`: real timings against the cost model.

`measure` and `campaign` need torch (and numpy) only; `calibrate` and `validate` also use the cost model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from radsim.errors import ConfigError
from radsim.files import json_text, output_dir, output_file

DEFAULT_DIR = "measurements/epyc-genoa-vm"


def _ints(text: str, option: str = "--batch") -> list[int]:
    """Comma-separated integers >= 1; ConfigError naming the option."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(
                f"{option} {text!r}: {part!r} is not allowed; give comma-separated integers >= 1"
            )
        values.append(int(part))
    return values


def _names(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _threads(value: int, option: str = "--threads") -> int:
    if value < 1:
        raise ConfigError(f"{option} must be an integer >= 1, got {value}")
    return value


def add_campaign_arguments(p) -> None:
    """The options of `radsim campaign`, also parsed by `python -m radsim.measure.campaign`."""
    p.add_argument("--out", required=True, help="folder for the campaign's files, empty (on a device: $OUT)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="seconds the run may take; what would not fit is skipped",
    )
    p.add_argument("--dry-run", action="store_true", help="every section at tiny sizes, in seconds (CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda; cpu with --dry-run)")
    p.add_argument(
        "--sections",
        default="",
        help="comma-separated subset (default: all: environment, power, bandwidth, launch, gemm, attention, measure)",
    )


def add_measure_commands(sub) -> None:
    """Register the four subcommands."""
    m = sub.add_parser("measure", help="time prefill and decode steps of the project's models")
    m.add_argument(
        "--models", default="scratch-seq,scratch-radial", help="comma-separated (radsim.measure.specs.SPECS)"
    )
    m.add_argument("--phases", default="prefill,decode")
    m.add_argument("--batch", default="1,4,16", help="comma-separated batch sizes")
    m.add_argument("--prefill-batch", default="", help="batch sizes of prefill (default: --batch)")
    m.add_argument("--prompt", default="32,128", help="prompt lengths (prefill)")
    m.add_argument("--context", default="64,255", help="context lengths (decode)")
    m.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    m.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    m.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    m.add_argument("--warmup", type=int, default=3)
    m.add_argument("--repeats", type=int, default=10, help="timed repeats (at least)")
    m.add_argument(
        "--min-time",
        type=float,
        default=0.5,
        help="repeat short steps until this many seconds are timed (at most 60 repeats)",
    )
    m.add_argument("--no-graphs", action="store_true", help="CUDA: run steps eagerly, not as CUDA graphs")
    m.add_argument("--out", default=DEFAULT_DIR, help="folder for measurements.csv and environment.json")
    m.set_defaults(func=_measure)

    g = sub.add_parser(
        "campaign", help="the whole GPU campaign as one budgeted run (radsim.measure.campaign)"
    )
    add_campaign_arguments(g)
    g.set_defaults(func=_campaign)

    c = sub.add_parser("calibrate", help="microbenchmarks fitted into a calibrated hardware file")
    c.add_argument("--prior", default="epyc_2core", help="host hardware file the calibration starts from")
    c.add_argument(
        "--measurements",
        default=f"{DEFAULT_DIR}/measurements.csv",
        help="table whose calibration half fits the launch overhead ('' to skip)",
    )
    c.add_argument("--out", default=f"{DEFAULT_DIR}/calibrated.toml")
    c.add_argument("--device", default="cpu")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--quick", action="store_true", help="a fast subset of the benchmarks (CI)")
    c.set_defaults(func=_calibrate)

    v = sub.add_parser("validate", help="cost-model error on held-out measured configurations")
    v.add_argument("--hw", default=f"{DEFAULT_DIR}/calibrated.toml", help="hardware name or TOML path")
    v.add_argument("--measurements", default=f"{DEFAULT_DIR}/measurements.csv")
    v.add_argument(
        "--out", default=None, help="folder for the error table and plot (default: beside the table)"
    )
    v.add_argument("--all", action="store_true", help="also print every configuration")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_validate)


def _measure(args: argparse.Namespace) -> None:
    from radsim.measure.harness import Settings, grid, measure

    configs = grid(
        _names(args.models),
        _names(args.phases),
        _ints(args.batch, "--batch"),
        _ints(args.prompt, "--prompt"),
        _ints(args.context, "--context"),
        _ints(args.prefill_batch, "--prefill-batch") or None,
    )
    Settings(args.device, _threads(args.threads), args.dtype, args.warmup, args.repeats, args.min_time)
    output_dir(args.out, "--out")
    path = measure(
        configs,
        args.out,
        args.device,
        args.threads,
        args.dtype,
        args.warmup,
        args.repeats,
        use_graphs=not args.no_graphs,
        min_time_s=args.min_time,
    )
    print(f"wrote {path} and {Path(path).with_name('environment.json')}")


def _campaign(args: argparse.Namespace) -> int:
    from radsim.measure.campaign import config_from_args, exit_status, run_campaign

    manifest = run_campaign(config_from_args(args))
    print(f"wrote {manifest['options']['out']}: {', '.join(manifest['files'])}")
    return exit_status(manifest)


def _calibrate(args: argparse.Namespace) -> None:
    from radsim.measure.calibrate import calibrate, load_prior
    from radsim.measure.harness import check_device, read_measurements
    from radsim.measure.timing import get_device

    check_device(args.device)
    threads = _threads(args.threads)
    load_prior(args.prior)
    table = Path(args.measurements) if args.measurements else None
    if table is not None:
        read_measurements(table)
    output_file(args.out, "--out", (".toml",))
    device = get_device(args.device, threads)
    out = calibrate(device, args.prior, Path(args.out), table, quick=args.quick, compute_units=threads)
    print(f"wrote {out}")


def _validate(args: argparse.Namespace) -> None:
    from radsim.measure.harness import read_measurements, write_csv
    from radsim.measure.validate import error_table, format_summary, format_table, load_split, plot, summary
    from radsim.scenario.run import load_hw

    table_path = Path(args.measurements)
    try:
        hw = load_hw(args.hw)
    except ConfigError as exc:
        raise ConfigError(f"--hw {args.hw}: {exc}") from None
    split = (
        load_split(Path(args.hw).with_name(Path(args.hw).stem + "-benchmarks.json"))
        if Path(args.hw).suffix == ".toml"
        else None
    )
    measured = read_measurements(table_path)
    out = output_dir(Path(args.out) if args.out else table_path.parent, "--out")
    table = error_table(hw, measured, split)
    rows = summary(table)
    write_csv(table, out / "validation.csv", tuple(table[0]))
    paths = plot(table, out / "predicted_vs_measured")
    if args.json:
        print(json_text(dict(summary=rows, configs=table), indent=2))
        return
    print(
        f"hardware {hw.stem}; {sum(r['split'] == 'validate' for r in table)} held-out of {len(table)} "
        f"configurations (the others calibrated)"
    )
    print(format_summary(rows))
    if args.all:
        print()
        print(format_table(table))
    print(f"wrote {out / 'validation.csv'}, " + ", ".join(str(p) for p in paths))
