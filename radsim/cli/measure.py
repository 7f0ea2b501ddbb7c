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

    c = sub.add_parser(
        "calibrate",
        help="fit a calibrated hardware file: from microbenchmarks run here, or from a campaign folder",
    )
    c.add_argument(
        "--campaign",
        default=None,
        metavar="DIR",
        help="fit from this campaign folder's microbenchmarks (radsim campaign), running nothing and "
        "never reading its measurements.csv; writes DIR/calibrated.toml unless --out",
    )
    c.add_argument(
        "--prior",
        "--hw",
        dest="prior",
        default=None,
        metavar="NAME",
        help="hardware file the calibration starts from, a name or a TOML path (default: epyc_2core; "
        "with --campaign: the shipped file of the GPU its environment.json names)",
    )
    c.add_argument(
        "--measurements",
        default=None,
        help=f"table whose calibration half fits the launch overhead ('' to skip; default "
        f"{DEFAULT_DIR}/measurements.csv; not with --campaign)",
    )
    c.add_argument(
        "--out",
        default=None,
        help=f"calibrated TOML (default {DEFAULT_DIR}/calibrated.toml; with --campaign DIR/calibrated.toml)",
    )
    c.add_argument("--device", default=None, help="cpu or cuda[:N] (default cpu; not with --campaign)")
    c.add_argument("--threads", type=int, default=None, help="torch threads (default 1; not with --campaign)")
    c.add_argument(
        "--quick", action="store_true", help="a fast subset of the benchmarks (CI; not with --campaign)"
    )
    c.set_defaults(func=_calibrate)

    v = sub.add_parser("validate", help="cost-model error on held-out measured configurations")
    v.add_argument(
        "--campaign",
        default=None,
        metavar="DIR",
        help="a calibrated campaign folder: --hw DIR/calibrated.toml --measurements DIR/measurements.csv --out DIR",
    )
    v.add_argument(
        "--hw", default=None, help=f"hardware name or TOML path (default {DEFAULT_DIR}/calibrated.toml)"
    )
    v.add_argument("--measurements", default=None, help=f"default {DEFAULT_DIR}/measurements.csv")
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
    if args.campaign is not None:
        _calibrate_campaign(args)
        return
    from radsim.measure.calibrate import calibrate, load_prior
    from radsim.measure.harness import check_device, read_measurements
    from radsim.measure.timing import get_device

    device_name = args.device or "cpu"
    check_device(device_name)
    threads = _threads(1 if args.threads is None else args.threads)
    prior = args.prior or "epyc_2core"
    load_prior(prior)
    measurements = f"{DEFAULT_DIR}/measurements.csv" if args.measurements is None else args.measurements
    table = Path(measurements) if measurements else None
    if table is not None:
        read_measurements(table)
    out = args.out or f"{DEFAULT_DIR}/calibrated.toml"
    output_file(out, "--out", (".toml",))
    device = get_device(device_name, threads)
    path = calibrate(device, prior, Path(out), table, quick=args.quick, compute_units=threads)
    print(f"wrote {path}")


def _calibrate_campaign(args: argparse.Namespace) -> None:
    """`radsim calibrate --campaign DIR`: fit from the folder's files (`radsim.measure.campaign.fit`)."""
    from radsim.measure.campaign.fit import calibrate_campaign

    given = [
        option
        for option, value in (
            ("--measurements", args.measurements),
            ("--device", args.device),
            ("--threads", args.threads),
            ("--quick", args.quick or None),
        )
        if value is not None
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: not allowed with --campaign (it fits from the folder's files and runs "
            "nothing); allowed with it: --hw, --out"
        )
    path, cal = calibrate_campaign(args.campaign, args.prior, args.out)
    fits = cal.record["fits"]
    for key in ("memory_efficiency", "gemm_efficiency", "kernel_launch_overhead_s", "idle_power_W"):
        how = f"measured ({fits[key]['file']})" if key in fits else f"kept from {cal.base.stem}"
        print(f"{key:26s} {cal.figures[key][0]:<12.4g} {how}")
    print(f"wrote {path} and {path.with_name(path.stem + '-benchmarks.json')}")


def _validate(args: argparse.Namespace) -> None:
    from radsim.measure.harness import read_measurements, write_csv
    from radsim.measure.validate import error_table, format_summary, format_table, load_split, plot, summary
    from radsim.scenario.run import load_hw

    base = Path(args.campaign) if args.campaign is not None else None
    if base is not None and not base.is_dir():
        raise ConfigError(f"--campaign {base}: not a folder")
    hw_name = args.hw or (str(base / "calibrated.toml") if base else f"{DEFAULT_DIR}/calibrated.toml")
    if base is not None and args.hw is None and not Path(hw_name).is_file():
        raise ConfigError(f"{hw_name}: missing; run `radsim calibrate --campaign {base}` first")
    table_path = Path(
        args.measurements or (base / "measurements.csv" if base else f"{DEFAULT_DIR}/measurements.csv")
    )
    try:
        hw = load_hw(hw_name)
    except ConfigError as exc:
        raise ConfigError(f"--hw {hw_name}: {exc}") from None
    split = (
        load_split(Path(hw_name).with_name(Path(hw_name).stem + "-benchmarks.json"))
        if Path(hw_name).suffix == ".toml"
        else None
    )
    measured = read_measurements(table_path)
    out = output_dir(Path(args.out) if args.out else (base or table_path.parent), "--out")
    table = error_table(hw, measured, split)
    rows = summary(table)
    write_csv(table, out / "validation.csv", tuple(table[0]))
    paths = plot(table, out / "predicted_vs_measured")
    if args.json:
        print(json_text(dict(summary=rows, configs=table), indent=2))
        return
    held_out = sum(r["split"] == "validate" for r in table)
    others = "every one held out" if held_out == len(table) else "the others calibrated"
    print(f"hardware {hw.stem}; {held_out} held-out of {len(table)} configurations ({others})")
    print(format_summary(rows))
    if args.all:
        print()
        print(format_table(table))
    print(f"wrote {out / 'validation.csv'}, " + ", ".join(str(p) for p in paths))
