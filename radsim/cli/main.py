"""The `radsim` command line: registries, the estimate and the simulator, studies, models, traces, measurement.

Units are converted for display here and nowhere else; `--json` prints SI values as computed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from radsim.cli.capacity import add_capacity_command
from radsim.cli.estimate import add_estimate_command
from radsim.cli.measure import add_measure_commands
from radsim.cli.models import add_model_commands
from radsim.cli.simulate import add_simulate_command
from radsim.cli.study import add_study_commands
from radsim.cli.tables import add_tables_commands
from radsim.cli.trace import add_trace_commands
from radsim.errors import ConfigError
from radsim.spec.arch import list_archs, load_arch
from radsim.spec.hardware import list_hardware, load_hardware


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `radsim` console script: the exit status of the command.

    0: done; 1: a study finished with failed points, or an internal error; 2: a bad input, a file
    that cannot be read or written, a missing optional dependency (one line `radsim: error: ...`,
    no traceback unless `radsim --debug ...`); 130: interrupted; 141: stdout was closed early.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("radsim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message, code = failure(exc)
        _error_line(message)
        return code
    return int(code or 0)


#: Optional dependencies: the modules and the install line they come with.
_EXTRAS = {
    "torch": "torch (pip install -e '.[torch]')",
    "transformers": "radsim[models] (pip install -e '.[models]')",
    "gguf": "radsim[models] (pip install -e '.[models]')",
    "accelerate": "radsim[models] (pip install -e '.[models]')",
    "distributed": "dask[distributed] (pip install 'dask[distributed]')",
    "dask": "dask[distributed] (pip install 'dask[distributed]')",
    "kaleido": "kaleido (pip install kaleido) for PNG export",
}


def failure(exc: BaseException) -> tuple[str, int]:
    """The one line and the exit status that report `exc`."""
    if isinstance(exc, ConfigError):
        return str(exc), 2
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        root = exc.name.split(".")[0]
        hint = _EXTRAS.get(root, f"{root} (pip install {root})")
        return f"this command needs the module '{exc.name}', which is not installed; install {hint}", 2
    if isinstance(exc, ImportError):  # e.g. transformers without gguf: its message names the package
        return f"a dependency failed to import ({exc}); install what it names, or radsim[models]", 2
    if isinstance(exc, UnicodeDecodeError):
        return f"an input file is not UTF-8 text ({exc})", 2
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}", 2
    if type(exc).__module__.split(".")[0] in ("pyarrow", "tomllib", "csv", "json", "pandas"):
        return f"cannot parse an input file ({type(exc).__name__}: {exc})", 2
    text = f"internal error: {type(exc).__name__}: {exc} (run `radsim --debug ...` for the traceback)"
    return text, 1


def _error_line(message: str) -> None:
    """One line on stderr (the message's own line breaks are kept as spaces)."""
    try:
        print(f"radsim: error: {' '.join(message.split())}", file=sys.stderr)
    except (BrokenPipeError, ValueError):  # stderr closed too: nothing left to tell
        pass


def _stdout_closed() -> int:
    """The reader of stdout left (`radsim ... | head -1`): stop quietly, as a Unix tool does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush goes nowhere
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE


class _DefaultsHelp(argparse.HelpFormatter):
    """Help that states every option's default (unless its text already does)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default in (None, False, argparse.SUPPRESS) or not action.option_strings
        if quiet or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every radsim (sub)command's parser: help that shows the defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsHelp)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="radsim", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (radsim --debug COMMAND ...)",
    )
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
    engine = sub.add_parser("engine", help="serving-engine profiles (--engine)").add_subparsers(
        title="engine commands"
    )
    engine.add_parser("list", help="list engine profiles").set_defaults(func=_engine_list)
    eshow = engine.add_parser("show", help="show one engine profile with sources")
    eshow.add_argument("name")
    eshow.set_defaults(func=_engine_show)
    add_estimate_command(sub)
    add_simulate_command(sub)
    add_capacity_command(sub)
    add_model_commands(sub)
    add_trace_commands(sub)
    add_study_commands(sub)
    add_measure_commands(sub)
    add_tables_commands(sub)
    return parser


def _hw_list(args: argparse.Namespace) -> None:
    print(
        f"{'name':<16} {'memory':>9} {'bandwidth':>11} {'bf16 dense':>12} {'power':>7} {'price':>9}  device"
    )
    for name in list_hardware():
        hw = load_hardware(name)
        bf16 = f"{hw.bf16_dense_flops / 1e12:.0f} TFLOP/s" if hw.bf16_dense_flops else "-"
        print(
            f"{name:<16} {hw.memory_capacity_bytes / 1e9:>6.1f} GB "
            f"{hw.memory_bandwidth_Bps / 1e12:>7.2f} TB/s "
            f"{bf16:>12} {hw.max_power_W:>5.0f} W ${hw.price_usd_per_hour:>5.2f}/h  {hw.name}"
        )


def _hw_show(args: argparse.Namespace) -> None:
    from radsim.scenario.run import load_hw

    hw = load_hw(args.name)
    print(f"{hw.stem}: {hw.name} ({hw.kind}, {hw.vendor})")
    print(f"dtypes with a matrix peak: {', '.join(hw.dtypes())}")
    for key, source in hw.sources.items():
        if key == "kernel_tables":
            continue
        print(f"  {key:<28} {getattr(hw, key):>12.6g}   {source}")
    tables = hw.kernel_tables
    if tables is None:
        print("measured kernel tables: none (GEMMs and all-reduces priced by the roofline)")
    else:
        print(f"measured kernel tables: {tables.path.name}, {hw.sources['kernel_tables']}")
        print(
            f"  GEMM dtypes {', '.join(sorted(tables.gemm))}; all-reduce {', '.join(sorted(tables.allreduce))}"
        )
        print(
            f"  decode attention: {len(tables.generation_attention)} head geometries x KV dtypes, priced as a "
            "fitted kernel time plus time per KV entry; prefill attention by the roofline"
        )
        others = sorted(p.stem for p in tables.path.parent.glob("*.npz") if p != tables.path)
        if others:
            print(f"  other frameworks' tables (selected by --engine): {', '.join(others)}")


def _engine_list(args: argparse.Namespace) -> None:
    from radsim.spec.engine import DEFAULT_ENGINE, list_engines, load_engine

    print(
        f"{'name':<8} {'launch':>8} {'graphs':>12} {'iteration':>10} {'per seq':>8} {'overlap':>7}  all-reduce"
    )
    for name in list_engines():
        e = load_engine(name)
        graphs = f"decode <= {e.graph_max_batch}" if e.decode_graphs else "none"
        print(
            f"{name:<8} {e.host_launch_s * 1e6:>5.1f} us {graphs:>12} {e.host_iteration_s * 1e6:>7.0f} us "
            f"{e.host_sequence_s * 1e6:>5.2f} us {'yes' if e.overlap else 'no':>7}  {e.allreduce}"
            f"{'   (default)' if name == DEFAULT_ENGINE else ''}"
        )


def _engine_show(args: argparse.Namespace) -> None:
    from radsim.spec.engine import load_engine

    e = load_engine(args.name)
    print(f"{e.stem}: {e.description}")
    for key, source in e.sources.items():
        value = getattr(e, key)
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        print(f"  {key:<18} {shown:>12}   {source}")


def _arch_list(args: argparse.Namespace) -> None:
    print(f"{'name':<14} {'params':>8} {'layers':>6} {'hidden':>6} {'heads':>5} {'kv':>3} {'ffn':>6}")
    for name in list_archs():
        a = load_arch(name)
        print(
            f"{name:<14} {a.total_params / 1e9:>7.3f}B {a.num_layers:>6} {a.hidden_size:>6} "
            f"{a.num_heads:>5} {a.num_kv_heads:>3} {a.ffn_size:>6}"
        )


def _arch_show(args: argparse.Namespace) -> None:
    from radsim.scenario.run import load_architecture

    a = load_architecture(args.name)
    for key, value in vars(a).items():
        print(f"  {key:<24} {value}")
    print(f"  {'params per layer':<24} {a.layer_params:,}")
    print(f"  {'total params':<24} {a.total_params:,}")


if __name__ == "__main__":
    sys.exit(main())
