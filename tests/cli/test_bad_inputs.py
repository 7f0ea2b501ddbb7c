"""A battery of bad inputs across every entry point: each is one clear line, the right exit code, no traceback.

Every case runs `radsim.cli.main.main` in this process (fast) and asserts its exit status (2 for a
bad input, argparse's 2 for a malformed flag), that stderr names the file, field or option (the
needles) and that no traceback was printed. The files the cases read are written once per module
into a temporary folder (`{d}` in the arguments). A few cases run in a subprocess to prove that the
installed command prints no traceback either, and that `radsim ... | head -1` ends quietly.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from radsim.cli.main import main
from radsim.study.load import parse_study
from radsim.study.sweep import run_study

ROOT = Path(__file__).resolve().parents[2]
MEASUREMENTS = ROOT / "measurements" / "epyc-genoa-vm" / "measurements.csv"
HW = ROOT / "radsim" / "spec" / "hw_models"
ARCHS = ROOT / "radsim" / "spec" / "archs"
TRACE = ROOT / "traces" / "radial-scratch-p05.parquet"
SMALL = "--hw h100_sxm --arch llama3.1-8b --prompt-tokens 32 --output-tokens 8"
SIM = f"simulate {SMALL} --duration 1 --rate 2"

STUDY_HEAD = """[study]
name = "{name}"
[fixed]
hw = "{hw}"
arch = "{arch}"
prompt_tokens = 32
output_tokens = 8
"""
ESTIMATE_GRID = '[[grid]]\ncommand = "estimate"\n[grid.axes]\nbatch = [1, 2]\n'


def _study(
    name: str = "s", hw: str = "h100_sxm", arch: str = "llama3.1-8b", grids: str = ESTIMATE_GRID
) -> str:
    return STUDY_HEAD.format(name=name, hw=hw, arch=arch) + grids


def _write_rows(path: Path, rows: list[dict[str, str]], drop: str = "") -> None:
    columns = [c for c in rows[0] if c != drop]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _measurement_files(d: Path) -> None:
    """A valid two-configuration table and one corruption of it per file."""
    with MEASUREMENTS.open(newline="") as f:
        rows = list(csv.DictReader(f))[:22]  # two configurations of 11 rows (step, embed, 8 slots, head)
    _write_rows(d / "m_ok.csv", rows)

    def variant(name: str, index: int, **changes: str) -> None:
        changed = [dict(r) for r in rows]
        changed[index].update(changes)
        _write_rows(d / name, changed)

    variant("m_negative.csv", 0, time_s="-0.001")
    variant("m_nan.csv", 0, time_s="nan")
    variant("m_inf.csv", 1, time_s_p90="inf")
    variant("m_zero.csv", 2, time_s="0")
    variant("m_model.csv", 3, model="gpt-9")
    variant("m_phase.csv", 0, phase="warmup")
    variant("m_dtype.csv", 0, dtype="int4")
    variant("m_scope.csv", 1, scope="everything")
    variant("m_kind.csv", 0, kind="moe")
    variant("m_batch.csv", 0, batch="0")
    variant("m_tokens.csv", 0, tokens="x")
    variant("m_memory.csv", 0, peak_memory_bytes="-5")
    variant("m_kv.csv", 2, kv_policy="magic")
    variant("m_slot_tokens.csv", 2, new_tokens="1 2 3")
    variant("m_config.csv", 3, tokens="999")  # disagrees with the configuration's step row
    _write_rows(d / "m_nostep.csv", [r for r in rows if r["scope"] != "step"])
    _write_rows(d / "m_twostep.csv", [rows[0], *rows])
    _write_rows(d / "m_nocolumn.csv", rows, drop="time_s_p10")
    (d / "m_empty.csv").write_text(MEASUREMENTS.read_text().splitlines()[0] + "\n")
    (d / "m_truncated.csv").write_text((d / "m_ok.csv").read_text()[:-60])
    lines = (d / "m_ok.csv").read_text().splitlines(keepends=True)
    (d / "m_extra.csv").write_text("".join([lines[0], lines[1].rstrip("\r\n") + ",x\n", *lines[2:]]))
    (d / "cal.toml").write_text((HW / "epyc_2core.toml").read_text())
    (d / "cal-benchmarks.json").write_text(json.dumps({"split": {"other/config": "validate"}}))
    (d / "cal2.toml").write_text((HW / "epyc_2core.toml").read_text())
    (d / "cal2-benchmarks.json").write_text("{not json")


def _replay_files(d: Path) -> None:
    head = "arrival_s,prompt_tokens,output_tokens\n"
    for name, body in {
        "r_nan.csv": "nan,32,8\n",
        "r_inf.csv": "0,32,8\ninf,32,8\n",
        "r_negative.csv": "-1,32,8\n",
        "r_prompt0.csv": "0,0,8\n",
        "r_float.csv": "0,1.5,8\n",
        "r_short.csv": "0,32\n",
        "r_text.csv": "soon,32,8\n",
        "r_empty.csv": "",
    }.items():
        (d / name).write_text(head + body)
    (d / "r_columns.csv").write_text("time,prompt\n0,32\n")


def _study_files(d: Path) -> None:
    trace = str(TRACE)
    sim_batch = '[[grid]]\ncommand = "simulate"\narrival = "batch"\n[grid.axes]\n'
    files = {
        "s_hw.toml": _study(hw="h1000"),
        "s_arch.toml": _study(grids=ESTIMATE_GRID + '[[grid]]\ncommand = "estimate"\narch = "llama9"\n'),
        "s_trace.toml": _study(grids=sim_batch + f'trace = ["{trace}", "{d}/garbage.parquet"]\n'),
        "s_trace_missing.toml": _study(grids=sim_batch + 'trace = ["nowhere/none.parquet"]\n'),
        "s_nan.toml": _study(grids='[[grid]]\ncommand = "simulate"\n[grid.axes]\nrate_per_s = [1.0, nan]\n'),
        "s_inf.toml": _study().replace(
            "output_tokens = 8", "output_tokens = 8\nelectricity_usd_per_kWh = inf"
        ),
        "s_key.toml": _study().replace("output_tokens = 8", "output_tokens = 8\ncolour = 3"),
        "s_axis.toml": _study(grids='[[grid]]\ncommand = "estimate"\n[grid.axes]\nbatches = [1]\n'),
        "s_empty_axis.toml": _study(grids='[[grid]]\ncommand = "estimate"\n[grid.axes]\nbatch = []\n'),
        "s_repeat.toml": _study(grids='[[grid]]\ncommand = "estimate"\n[grid.axes]\nbatch = [2, 2]\n'),
        "s_huge.toml": _study(
            grids='[[grid]]\ncommand = "estimate"\n[grid.axes]\n'
            + "".join(f"{k} = {list(range(1, 41))}\n" for k in ("batch", "seed", "tp", "layers"))
        ),
        "s_ok.toml": _study(name="ok"),
        "s_replay.toml": _study(
            grids=f'[[grid]]\ncommand = "simulate"\narrival = "replay"\nreplay = "{d}/r_nan.csv"\n'
        ),
        "s_dtype.toml": _study(hw="a100_sxm_80gb", grids='[[grid]]\ncommand = "estimate"\ndtype = "fp8"\n'),
        "s_visited.toml": _study(grids='[[grid]]\ncommand = "estimate"\nvisited_layers = 64\n'),
        "s_nogrid.toml": _study(grids=""),
        "s_nocommand.toml": _study(grids="[[grid]]\n[grid.axes]\nbatch = [1]\n"),
        "s_type.toml": _study(grids='[[grid]]\ncommand = "estimate"\n[grid.axes]\nbatch = ["one"]\n'),
        # `command` under its name before `engine` named the serving engine profile
        "s_legacy_grid.toml": _study(grids='[[grid]]\nengine = "simulate"\n[grid.axes]\nseed = [1]\n'),
        "s_legacy_fixed.toml": _study(grids="[[grid]]\n[grid.axes]\nbatch = [1]\n").replace(
            "[fixed]\n", '[fixed]\nengine = "estimate"\n'
        ),
        "s_legacy_axis.toml": _study(grids='[[grid]]\n[grid.axes]\nengine = ["estimate", "capacity"]\n'),
    }
    for name, text in files.items():
        (d / name).write_text(text)
    other = d / "other_out"
    other.mkdir()
    pd.DataFrame({"point_id": ["x"], "study": ["another"], "error": [""]}).to_parquet(
        other / "results.parquet"
    )
    corrupt = d / "corrupt_out"
    corrupt.mkdir()
    (corrupt / "results.parquet").write_bytes(b"PAR1 not really")


def _result_files(d: Path) -> None:
    """A small valid result table (two estimate points) and corruptions of it."""
    study = parse_study(
        {
            "study": {"name": "res"},
            "fixed": {"hw": "h100_sxm", "arch": "llama3.1-8b", "prompt_tokens": 32, "output_tokens": 8},
            "grid": [{"command": "estimate", "axes": {"batch": [1, 2]}}],
        },
        d / "res.toml",
    )
    table = run_study(study, d / "res", stream=None)
    table.assign(batch="many").to_csv(d / "t_types.csv", index=False)
    table.assign(command="magic").to_csv(d / "t_command.csv", index=False)
    table.rename(columns={"command": "engine"}).assign(engine="vllm").to_csv(d / "t_engine.csv", index=False)
    table.assign(roofline_json="{not json").to_csv(d / "t_json.csv", index=False)
    table.drop(columns=["tpot_s"]).to_csv(d / "t_nometric.csv", index=False)
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(d / "t_other.csv", index=False)
    (d / "t_truncated.parquet").write_bytes((d / "res" / "results.parquet").read_bytes()[:2000])
    pd.DataFrame({"a": [1]}).to_parquet(d / "plain.parquet")


def _model_files(d: Path) -> None:
    base = 'name = "x"\nkind = "dense_scratch"\n'
    files = {
        "c_kind.toml": 'name = "x"\nkind = "gpt"\n',
        "c_layers.toml": base + "[model]\nnum_layers = 0\n",
        "c_heads.toml": base + "[model]\nhidden_size = 100\nnum_heads = 6\n",
        "c_odd_head.toml": base + "[model]\nhidden_size = 198\nnum_heads = 6\nnum_kv_heads = 2\n",
        "c_kv_heads.toml": base + "[model]\nnum_heads = 6\nnum_kv_heads = 4\n",
        "c_seq.toml": base + "[data]\nseq_len = 0\n",
        "c_lr.toml": base + "[train]\nlr = nan\n",
        "c_steps.toml": base + "[train]\nsteps = 0\n",
        "c_name.toml": 'name = "../up"\nkind = "dense_scratch"\n',
        "c_key.toml": base + "[model]\nwidth = 3\n",
        "c_negative.toml": base + "[train]\nwarmup_steps = -5\n",
        "c_capacity.toml": base + "[mod]\ncapacity = 2.0\n",
        "c_policy.toml": base + '[radial]\nkv_policy = "magic"\n',
        "c_seed.toml": base.replace('name = "x"', 'name = "x"\nseed = -1'),
        "c_ok.toml": base,
    }
    for name, text in files.items():
        (d / name).write_text(text)
    (d / "router.pt").write_bytes(b"")


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """A folder of bad (and a few good) input files shared by every case."""
    d = tmp_path_factory.mktemp("bad")
    (d / "bin.toml").write_bytes(b"\xff\xfe[study]\nname = 1\n")
    (d / "bin.csv").write_bytes(b"\xff\xfearrival_s\n")
    (d / "garbage.toml").write_text("[[[ not toml")
    (d / "garbage.parquet").write_bytes(b"not parquet at all")
    (d / "empty.toml").write_text("")
    (d / "afile").write_text("a file, not a folder\n")
    (d / "adir.toml").mkdir()
    (d / "adir.parquet").mkdir()
    hw = (HW / "h100_sxm.toml").read_text()
    (d / "hw_nan.toml").write_text(re.sub(r"(memory_bandwidth_Bps = \{ value = )[^,]+", r"\1nan", hw))
    (d / "hw_negative.toml").write_text(re.sub(r"(memory_bandwidth_Bps = \{ value = )[^,]+", r"\1-1.0", hw))
    arch = (ARCHS / "llama3.1-8b.toml").read_text()
    (d / "arch_heads.toml").write_text(arch.replace("num_heads = 32", "num_heads = 7"))
    (d / "arch_layers.toml").write_text(arch.replace("num_layers = 32", "num_layers = 0"))
    (d / "arch_key.toml").write_text(arch + "colour = 3\n")
    _measurement_files(d)
    _replay_files(d)
    _study_files(d)
    _result_files(d)
    _model_files(d)
    return d


@dataclass(frozen=True)
class Case:
    """One bad invocation: its arguments, the exit status, what stderr must name."""

    args: str
    needles: tuple[str, ...]
    code: int = 2
    no_models: bool = False  # run as if the `models` extra were not installed
    cwd: bool = False  # run inside the case folder
    patches: dict = field(default_factory=dict)


def c(args: str, *needles: str, **options) -> Case:
    return Case(args, needles, **options)


CASES: dict[str, list[Case]] = {
    "hw": [
        c("hw show h1000", "unknown hardware 'h1000'", "h100_sxm"),
        c("hw show {d}/bin.toml", "bin.toml", "UTF-8"),
        c("hw show {d}/missing.toml", "missing.toml", "cannot read"),
        c("hw show {d}/garbage.toml", "garbage.toml"),
        c("hw show {d}/empty.toml", "empty.toml"),
        c("hw show {d}/adir.toml", "adir.toml", "cannot read"),
        c("hw show {d}/hw_nan.toml", "hw_nan.toml", "memory_bandwidth_Bps"),
        c("hw show {d}/hw_negative.toml", "hw_negative.toml", "memory_bandwidth_Bps"),
        c("hw show", "name"),
    ],
    "arch": [
        c("arch show llama9", "unknown architecture 'llama9'", "llama3.1-8b"),
        c("arch show {d}/bin.toml", "bin.toml", "UTF-8"),
        c("arch show {d}/garbage.toml", "garbage.toml"),
        c("arch show {d}/missing.toml", "missing.toml"),
        c("arch show {d}/arch_heads.toml", "arch_heads.toml", "num_heads"),
        c("arch show {d}/arch_layers.toml", "arch_layers.toml", "num_layers"),
        c("arch show {d}/arch_key.toml", "arch_key.toml", "colour"),
    ],
    "estimate": [
        c("estimate --hw h1000 --arch llama3.1-8b", "'hw'", "unknown hardware 'h1000'", "h100_sxm"),
        c("estimate --hw h100_sxm --arch llama9", "'arch'", "llama9"),
        c(f"estimate {SMALL} --batch 0", "'batch'", ">= 1"),
        c(f"estimate {SMALL} --batch -3", "'batch'", ">= 1"),
        c(f"estimate {SMALL} --prompt-tokens 0", "'prompt_tokens'"),
        c(f"estimate {SMALL} --output-tokens 0", "'output_tokens'"),
        c(f"estimate {SMALL} --depth-fraction nan", "'depth_fraction'", "finite"),
        c(f"estimate {SMALL} --depth-fraction inf", "'depth_fraction'", "finite"),
        c(f"estimate {SMALL} --depth-fraction 0", "'depth_fraction'", "> 0"),
        c(f"estimate {SMALL} --depth-fraction 1.5", "'depth_fraction'", "<= 1"),
        c(f"estimate {SMALL} --tp 0", "'tp'"),
        c(f"estimate {SMALL} --seed -1", "'seed'", ">= 0"),
        c(f"estimate {SMALL} --dtype int4", "--dtype", "invalid choice", "bf16"),
        c(f"estimate {SMALL} --batch abc", "--batch", "invalid int value"),
        c(f"estimate {SMALL} --electricity-usd-per-kwh -1", "'electricity_usd_per_kWh'"),
        c(f"estimate {SMALL} --electricity-usd-per-kwh nan", "'electricity_usd_per_kWh'", "finite"),
        c(f"estimate {SMALL} --visited-layers 99", "'visited_layers'", "32 layers"),
        c(f"estimate {SMALL} --layers -1", "'layers'"),
        c("estimate --hw {d}/bin.toml --arch llama3.1-8b", "'hw'", "bin.toml", "UTF-8"),
        c("estimate --hw h100_sxm --arch {d}/bin.toml", "'arch'", "bin.toml", "UTF-8"),
        c("estimate --hw {d}/missing.toml --arch llama3.1-8b", "missing.toml"),
        c("estimate --hw a100_sxm_80gb --arch llama3.1-8b --dtype fp8", "'dtype'", "fp8"),
        c(f"estimate {SMALL} --prefill-chunk -1", "'prefill_chunk'"),
        c(f"estimate {SMALL} --depth-distribution uniform", "--depth-distribution", "invalid choice"),
        c(f"estimate {SMALL} --kv-policy weird", "--kv-policy", "invalid choice"),
        c("estimate --arch llama3.1-8b", "--hw", "required"),
        c(f"estimate {SMALL} --execution step_sync", "step_sync", "simulate"),
    ],
    "simulate": [
        c(f"{SIM} --rate nan", "'rate_per_s'", "finite"),
        c(f"{SIM} --rate 0", "'rate_per_s'", "> 0"),
        c(f"{SIM} --duration inf", "'duration_s'", "finite"),
        c(f"{SIM} --duration -1", "'duration_s'"),
        c(f"{SIM} --burstiness 0", "'burstiness'"),
        c(f"{SIM} --memory-fraction 0", "'memory_fraction'"),
        c(f"{SIM} --memory-fraction 2", "'memory_fraction'", "<= 1"),
        c(f"{SIM} --max-batch 0", "'max_batch'"),
        c(f"{SIM} --replicas 0", "'replicas'"),
        c(f"{SIM} --slo-ttft -1", "'slo_ttft_s'"),
        c(f"{SIM} --length-cv -1", "'length_cv'"),
        c(f"{SIM} --max-length-tokens -1", "'max_length_tokens'"),
        c(f"{SIM} --arrival replay", "arrival 'replay' needs 'replay'"),
        c(f"{SIM} --replay {{d}}/r_nan.csv", "'replay' is read with arrival 'replay'"),
        c(
            f"simulate {SMALL} --arrival replay --replay {{d}}/r_nan.csv",
            "r_nan.csv:2",
            "arrival_s",
            "finite",
        ),
        c(f"simulate {SMALL} --arrival replay --replay {{d}}/r_inf.csv", "r_inf.csv:3", "arrival_s"),
        c(f"simulate {SMALL} --arrival replay --replay {{d}}/r_negative.csv", "r_negative.csv:2", ">= 0"),
        c(
            f"simulate {SMALL} --arrival replay --replay {{d}}/r_prompt0.csv",
            "r_prompt0.csv:2",
            "prompt_tokens",
        ),
        c(f"simulate {SMALL} --arrival replay --replay {{d}}/r_float.csv", "r_float.csv:2", "prompt_tokens"),
        c(f"simulate {SMALL} --arrival replay --replay {{d}}/r_short.csv", "r_short.csv:2", "fewer fields"),
        c(f"simulate {SMALL} --arrival replay --replay {{d}}/r_text.csv", "r_text.csv:2", "arrival_s"),
        c(f"simulate {SMALL} --arrival replay --replay {{d}}/r_empty.csv", "r_empty.csv", "no requests"),
        c(f"simulate {SMALL} --arrival replay --replay {{d}}/r_columns.csv", "r_columns.csv", "arrival_s"),
        c(f"simulate {SMALL} --arrival replay --replay {{d}}/bin.csv", "bin.csv", "UTF-8"),
        c(f"simulate {SMALL} --arrival replay --replay {{d}}/missing.csv", "missing.csv", "cannot read"),
        c(f"{SIM} --trace {{d}}/garbage.parquet", "'trace'", "garbage.parquet", "Parquet"),
        c(f"{SIM} --trace {{d}}/missing.parquet", "'trace'", "missing.parquet"),
        c(f"{SIM} --trace {{d}}/plain.parquet", "'trace'", "plain.parquet"),
        c(f"{SIM} --timeline {{d}}/afile/x.parquet", "--timeline", "afile", "is a file"),
        c(f"{SIM} --timeline {{d}}/t.csv", "--timeline", ".parquet"),
        c(f"{SIM} --timeline {{d}}/adir.parquet", "--timeline", "is a folder"),
        c(f"{SIM} --lengths weird", "--lengths", "invalid choice"),
        c(f"{SIM} --execution step_sync --kv-policy compute", "compute", "layer_major"),
        c(f"{SIM} --batch 4", "'batch'", "max_batch"),
        c(f"{SIM} --prefill-chunk 0", "'prefill_chunk'", "arrival 'batch'"),
        c("simulate --hw h100_sxm --arch llama3.1-70b --duration 1", "llama3.1-70b", "h100_sxm"),
        c(f"{SIM} --depth-fraction 0.5 --trace {TRACE}", "trace sets the depth"),
        c(f"simulate {SMALL} --rate 1e9 --duration 1e9", "'rate_per_s'", "'duration_s'", "at most"),
    ],
    "trace stats": [
        c("trace stats {d}/garbage.parquet", "garbage.parquet", "Parquet"),
        c("trace stats {d}/missing.parquet", "missing.parquet"),
        c(f"trace stats {TRACE} --seed -1", "--seed", ">= 0"),
        c("trace stats {d}/bin.toml", "bin.toml"),
        c("trace stats {d}/plain.parquet", "plain.parquet", "metadata"),
        c(f"trace stats {TRACE} --seed abc", "--seed", "invalid int value"),
        c("trace stats {d}/adir.parquet", "adir.parquet"),
    ],
    "study run": [
        c("study run {d}/bin.toml --out {d}/o", "bin.toml", "UTF-8"),
        c("study run {d}/garbage.toml --out {d}/o", "garbage.toml", "TOML"),
        c("study run {d}/missing.toml --out {d}/o", "missing.toml", "cannot read study file"),
        c("study run {d}/s_hw.toml --out {d}/o", "s_hw.toml: grid 1", "'hw'", "h1000", "h100_sxm"),
        c("study run {d}/s_arch.toml --out {d}/o", "s_arch.toml: grid 2", "'arch'", "llama9"),
        c("study run {d}/s_trace.toml --out {d}/o", "s_trace.toml: grid 1", "'trace'", "garbage.parquet"),
        c("study run {d}/s_trace_missing.toml --out {d}/o", "s_trace_missing.toml", "none.parquet"),
        c("study run {d}/s_nan.toml --out {d}/o", "s_nan.toml: grid 1", "'rate_per_s'", "finite"),
        c("study run {d}/s_inf.toml --out {d}/o", "s_inf.toml: [fixed]", "electricity_usd_per_kWh", "finite"),
        c("study run {d}/s_key.toml --out {d}/o", "s_key.toml", "colour", "allowed"),
        c("study run {d}/s_axis.toml --out {d}/o", "s_axis.toml: grid 1", "batches"),
        c("study run {d}/s_empty_axis.toml --out {d}/o", "s_empty_axis.toml", "'batch'", "non-empty"),
        c("study run {d}/s_repeat.toml --out {d}/o", "s_repeat.toml", "repeats a value"),
        c("study run {d}/s_type.toml --out {d}/o", "s_type.toml: grid 1", "'batch'", "int"),
        c("study run {d}/s_huge.toml --out {d}/o", "s_huge.toml", "2,560,000 points", "--max-points"),
        c("study run {d}/s_ok.toml --out {d}/o --max-points 1", "2 points", "limit of 1"),
        c("study run {d}/s_ok.toml --out {d}/o --max-points 0", "--max-points", ">= 1"),
        c("study run {d}/s_ok.toml --out {d}/o --workers 0", "--workers", ">= 1"),
        c("study run {d}/s_ok.toml --out {d}/afile", "--out", "afile", "is a file"),
        c("study run {d}/s_ok.toml --out {d}/afile/sub", "--out", "under", "afile"),
        c("study run {d}/s_ok.toml --out {d}/o --scheduler nonsense", "--scheduler nonsense", "tcp://"),
        c(
            "study run {d}/s_ok.toml --out {d}/o --scheduler tcp://127.0.0.1:9",
            "--scheduler tcp://127.0.0.1:9",
            "cannot connect",
            patches={"radsim.cli.study.DASK_CONNECT_TIMEOUT_S": 1},
        ),
        c("study run {d}/s_replay.toml --out {d}/o", "s_replay.toml: grid 1", "'replay'", "r_nan.csv:2"),
        c("study run {d}/s_dtype.toml --out {d}/o", "s_dtype.toml: grid 1", "'dtype'", "fp8"),
        c("study run {d}/s_visited.toml --out {d}/o", "s_visited.toml: grid 1", "'visited_layers'"),
        c("study run {d}/s_nogrid.toml --out {d}/o", "s_nogrid.toml", "[[grid]]"),
        c("study run {d}/s_nocommand.toml --out {d}/o", "s_nocommand.toml", "'command' is required"),
        c(
            "study run {d}/s_legacy_grid.toml --out {d}/o",
            """s_legacy_grid.toml: grid 1: 'engine' = "simulate" is now written 'command = "simulate"'""",
            "('engine' names the serving engine profile)",
        ),
        c(
            "study run {d}/s_legacy_fixed.toml --out {d}/o",
            """s_legacy_fixed.toml: [fixed]: 'engine' = "estimate" is now written 'command = "estimate"'""",
        ),
        c(
            "study run {d}/s_legacy_axis.toml --out {d}/o",
            "s_legacy_axis.toml: grid 1: [grid.axes]",
            """is now written 'command = ["estimate", "capacity"]'""",
        ),
        c("study run {d}/s_ok.toml --out {d}/other_out", "holds results of study", "another"),
        c("study run {d}/s_ok.toml --out {d}/corrupt_out", "corrupt_out", "cannot read earlier results"),
        c("study run {d}/s_ok.toml --out {d}/o --workers x", "--workers", "invalid int value"),
    ],
    "study plot": [
        c("study plot {d}/garbage.parquet --out {d}/p", "garbage.parquet", "Parquet"),
        c("study plot {d}/bin.csv --out {d}/p", "bin.csv", "CSV"),
        c("study plot {d}/missing.parquet --out {d}/p", "missing.parquet", "no result table"),
        c("study plot {d}/t_other.csv --out {d}/p", "t_other.csv", "not a study result table"),
        c("study plot {d}/t_types.csv --out {d}/p", "t_types.csv", "'batch'", "numbers"),
        c("study plot {d}/t_command.csv --out {d}/p", "t_command.csv", "'command'", "estimate"),
        c(
            "study plot {d}/t_engine.csv --out {d}/p",
            "t_engine.csv",
            "['command']",
            "'engine' holds ['vllm']",
        ),
        c("study plot {d}/t_json.csv --out {d}/p --format html", "t_json.csv", "cannot draw"),
        c("study plot {d}/t_nometric.csv --out {d}/p --format html", "t_nometric.csv", "tpot_s"),
        c("study plot {d}/res --out {d}/afile", "--out", "is a file"),
        c("study plot {d}/res --out {d}/p --format gif", "--format", "html, png"),
        c("study plot {d}/t_truncated.parquet --out {d}/p", "t_truncated.parquet", "Parquet"),
        c("study plot {d}/afile --out {d}/p", "afile", "results.parquet or results.csv"),
    ],
    "report": [
        c("report {d}/garbage.parquet --out {d}/r.html", "garbage.parquet"),
        c("report {d}/bin.csv --out {d}/r.html", "bin.csv"),
        c("report {d}/missing.parquet --out {d}/r.html", "missing.parquet"),
        c("report {d}/res --out {d}/afile/r.html", "--out", "afile", "is a file"),
        c("report {d}/res --out {d}/r.txt", "--out", ".html"),
        c("report {d}/res --out {d}/adir.toml", "--out", ".html"),
        c("report {d}/t_json.csv --out {d}/r.html", "t_json.csv", "cannot write the report"),
        c("report {d}/t_other.csv --out {d}/r.html", "t_other.csv", "not a study result table"),
    ],
    "measure": [
        c("measure --models nope --out {d}/m", "--models", "nope", "tiny-seq"),
        c("measure --models , --out {d}/m", "--models", "empty"),
        c("measure --models tiny-seq --phases warmup --out {d}/m", "--phases", "warmup", "prefill, decode"),
        c("measure --models tiny-seq --batch 0 --out {d}/m", "--batch", "integers >= 1"),
        c("measure --models tiny-seq --batch x --out {d}/m", "--batch", "'x'"),
        c("measure --models tiny-seq --prompt 0 --out {d}/m", "--prompt", "integers >= 1"),
        c("measure --models tiny-seq --context=-1 --out {d}/m", "--context", "'-1'"),
        c("measure --models tiny-seq --prefill-batch 1,0 --out {d}/m", "--prefill-batch"),
        c("measure --models tiny-seq --repeats 0 --out {d}/m", "--repeats", ">= 1"),
        c("measure --models tiny-seq --warmup -1 --out {d}/m", "--warmup", ">= 0"),
        c("measure --models tiny-seq --threads 0 --out {d}/m", "--threads", ">= 1"),
        c("measure --models tiny-seq --threads -1 --out {d}/m", "--threads", ">= 1"),
        c("measure --models tiny-seq --min-time nan --out {d}/m", "--min-time", "finite"),
        c("measure --models tiny-seq --min-time -1 --out {d}/m", "--min-time", ">= 0"),
        c("measure --models tiny-seq --device gpu --out {d}/m", "--device", "'gpu'", "cpu, cuda"),
        c("measure --models tiny-seq --device cuda:x --out {d}/m", "--device", "cuda:N"),
        c("measure --models tiny-seq --out {d}/afile", "--out", "is a file"),
        c("measure --models tiny-seq --prompt 100000 --out {d}/m", "--prompt", "positions", "tiny-seq"),
        c("measure --models tiny-seq --dtype int8 --out {d}/m", "--dtype", "invalid choice"),
        c(
            "measure --models scratch-radial --out {d}/m",
            "scratch-radial",
            "traces/radial-scratch.parquet",
            cwd=True,
        ),
    ],
    "calibrate": [
        c("calibrate --prior nope --out {d}/c.toml", "--prior", "nope", "epyc_2core"),
        c("calibrate --prior {d}/bin.toml --out {d}/c.toml", "bin.toml", "UTF-8"),
        c("calibrate --measurements {d}/bin.csv --out {d}/c.toml", "bin.csv", "UTF-8"),
        c("calibrate --measurements {d}/missing.csv --out {d}/c.toml", "missing.csv", "cannot read"),
        c("calibrate --measurements {d}/m_empty.csv --out {d}/c.toml", "m_empty.csv", "no rows"),
        c("calibrate --measurements {d}/m_negative.csv --out {d}/c.toml", "m_negative.csv:2", "'time_s'"),
        c("calibrate --measurements {d}/m_ok.csv --out {d}/afile/c.toml", "--out", "afile", "is a file"),
        c("calibrate --measurements {d}/m_ok.csv --out {d}/c.txt", "--out", ".toml"),
        c("calibrate --measurements {d}/m_ok.csv --out {d}/c.toml --threads 0", "--threads", ">= 1"),
        c("calibrate --measurements {d}/m_ok.csv --out {d}/c.toml --device tpu", "--device", "'tpu'"),
        c("calibrate --measurements {d}/t_other.csv --out {d}/c.toml", "t_other.csv", "missing column"),
    ],
    "validate": [
        c("validate --hw nope --measurements {d}/m_ok.csv --out {d}/v", "--hw nope", "unknown hardware"),
        c("validate --hw {d}/bin.toml --measurements {d}/m_ok.csv --out {d}/v", "bin.toml", "UTF-8"),
        c("validate --hw epyc_2core --measurements {d}/m_empty.csv --out {d}/v", "m_empty.csv", "no rows"),
        c(
            "validate --hw epyc_2core --measurements {d}/m_truncated.csv --out {d}/v",
            "m_truncated.csv:",
            "truncated",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_extra.csv --out {d}/v",
            "m_extra.csv:2",
            "more fields",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_negative.csv --out {d}/v",
            "m_negative.csv:2",
            "> 0",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_nan.csv --out {d}/v",
            "m_nan.csv:2",
            "'time_s'",
            "finite",
        ),
        c("validate --hw epyc_2core --measurements {d}/m_inf.csv --out {d}/v", "m_inf.csv:3", "'time_s_p90'"),
        c("validate --hw epyc_2core --measurements {d}/m_zero.csv --out {d}/v", "m_zero.csv:4", "'time_s'"),
        c(
            "validate --hw epyc_2core --measurements {d}/m_model.csv --out {d}/v",
            "m_model.csv:5",
            "gpt-9",
            "tiny-seq",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_phase.csv --out {d}/v",
            "m_phase.csv:2",
            "'phase'",
            "prefill",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_dtype.csv --out {d}/v",
            "m_dtype.csv:2",
            "'dtype'",
            "fp32",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_scope.csv --out {d}/v",
            "m_scope.csv:3",
            "'scope'",
            "step",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_kind.csv --out {d}/v",
            "m_kind.csv:2",
            "'kind'",
            "radial",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_batch.csv --out {d}/v",
            "m_batch.csv:2",
            "'batch'",
            ">= 1",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_tokens.csv --out {d}/v",
            "m_tokens.csv:2",
            "'tokens'",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_memory.csv --out {d}/v",
            "m_memory.csv:2",
            "'peak_memory_bytes'",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_kv.csv --out {d}/v",
            "m_kv.csv:4",
            "'kv_policy'",
            "copy",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_slot_tokens.csv --out {d}/v",
            "m_slot_tokens.csv:4",
            "'new_tokens'",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_config.csv --out {d}/v",
            "m_config.csv:5",
            "tokens",
            "line 2",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_nostep.csv --out {d}/v",
            "m_nostep.csv",
            "0 step rows",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_twostep.csv --out {d}/v",
            "m_twostep.csv",
            "2 step rows",
        ),
        c(
            "validate --hw epyc_2core --measurements {d}/m_nocolumn.csv --out {d}/v",
            "m_nocolumn.csv",
            "time_s_p10",
        ),
        c("validate --hw epyc_2core --measurements {d}/m_ok.csv --out {d}/afile", "--out", "is a file"),
        c("validate --hw {d}/cal.toml --measurements {d}/m_ok.csv --out {d}/v", "not in the split"),
        c("validate --hw {d}/cal2.toml --measurements {d}/m_ok.csv --out {d}/v", "cal2-benchmarks.json"),
        c("validate --hw epyc_2core --measurements {d}/missing.csv --out {d}/v", "missing.csv"),
    ],
    "train": [
        c("train {d}/missing.toml --out {d}/runs", "missing.toml", "cannot read run config"),
        c("train {d}/bin.toml --out {d}/runs", "bin.toml", "UTF-8"),
        c("train {d}/garbage.toml --out {d}/runs", "garbage.toml", "TOML"),
        c("train {d}/c_kind.toml --out {d}/runs", "c_kind.toml", "'kind'", "dense_scratch"),
        c("train {d}/c_layers.toml --out {d}/runs", "c_layers.toml", "[model].num_layers", ">= 1"),
        c("train {d}/c_heads.toml --out {d}/runs", "c_heads.toml", "num_heads", "hidden_size"),
        c("train {d}/c_odd_head.toml --out {d}/runs", "c_odd_head.toml", "even head size"),
        c("train {d}/c_kv_heads.toml --out {d}/runs", "c_kv_heads.toml", "num_kv_heads"),
        c("train {d}/c_seq.toml --out {d}/runs", "c_seq.toml", "[data].seq_len"),
        c("train {d}/c_lr.toml --out {d}/runs", "c_lr.toml", "[train].lr", "finite"),
        c("train {d}/c_steps.toml --out {d}/runs", "c_steps.toml", "[train].steps"),
        c("train {d}/c_name.toml --out {d}/runs", "c_name.toml", "'name'", "folder name"),
        c("train {d}/c_key.toml --out {d}/runs", "c_key.toml", "width", "[model]"),
        c("train {d}/c_negative.toml --out {d}/runs", "c_negative.toml", "warmup_steps", ">= 0"),
        c("train {d}/c_capacity.toml --out {d}/runs", "c_capacity.toml", "[mod].capacity"),
        c("train {d}/c_policy.toml --out {d}/runs", "c_policy.toml", "[radial].kv_policy", "copy"),
        c("train {d}/c_seed.toml --out {d}/runs", "c_seed.toml", "'seed'"),
        c("train {d}/c_ok.toml --out {d}/afile", "--out", "afile"),
        c("train {d}/c_ok.toml --out {d}/runs --threads -1", "--threads", ">= 0"),
        c(
            "train {d}/c_ok.toml --out {d}/runs",
            "radsim[models]",
            "pip install -e '.[models]'",
            no_models=True,
        ),
    ],
    "capture": [
        c("capture --model smollm2 --out {d}/t.csv", "--out", ".parquet"),
        c("capture --model smollm2 --out {d}/afile/t.parquet", "--out", "is a file"),
        c("capture --model smollm2 --out {d}/t.parquet --tokens 0", "--tokens", ">= 1"),
        c("capture --model smollm2 --out {d}/t.parquet --batch 0", "--batch", ">= 1"),
        c("capture --model smollm2 --out {d}/t.parquet --seed -1", "--seed", ">= 0"),
        c("capture --model smollm2 --out {d}/t.parquet --seq-len 1", "--seq-len", ">= 2"),
        c("capture --model smollm2 --out {d}/t.parquet --router {d}/none.pt", "--router", "none.pt"),
        c("capture --run {d}/norun --out {d}/t.parquet", "--run", "norun", "model.pt"),
        c(
            "capture --run {d}/norun --router {d}/router.pt --out {d}/t.parquet",
            "--router",
            "--model smollm2",
        ),
        c("capture --model smollm2 --out {d}/t.parquet", "radsim[models]", no_models=True),
        c("capture --out {d}/t.parquet", "--model", "--run", "required"),
        c("capture --model smollm2 --out {d}/t.parquet --kv-policy all", "--kv-policy", "invalid choice"),
        c("capture --model smollm2 --out {d}/t.parquet --adapter {d}/none.pt", "--adapter", "none.pt"),
        c("capture --model smollm2 --out {d}/t.parquet --adapter {d}/afile", "afile", "adapter file"),
        c(
            "capture --model smollm2 --out {d}/t.parquet --adapter {d}/a.pt --router {d}/r.pt",
            "--adapter",
            "--model smollm2 only",
        ),
        c("capture --model smollm2 --out {d}/t.parquet --early-exit 1.5", "--early-exit", "(0, 1]"),
        c("capture --model smollm2 --out {d}/t.parquet --early-exit 0", "--early-exit", "(0, 1]"),
        c(
            "capture --model smollm2 --out {d}/t.parquet --early-exit 0.9 --router {d}/r.pt",
            "--early-exit",
            "--router",
        ),
        c(
            "capture --model smollm2 --out {d}/t.parquet --early-exit 0.9 --min-layer -1",
            "--min-layer",
            ">= 0",
        ),
    ],
    "profile": [
        c("profile --model smollm2 --out {d}/afile", "--out", "is a file"),
        c("profile --model smollm2 --out {d}/prof --seq-len 0", "--seq-len", ">= 2"),
        c("profile --model smollm2 --out {d}/prof --tokens 0", "--tokens", ">= 1"),
        c("profile --run {d}/norun --out {d}/prof", "--run", "model.pt"),
        c("profile --model smollm2 --out {d}/prof", "radsim[models]", no_models=True),
        c("profile --model smollm2 --split train", "--split", "invalid choice"),
        c("profile --model gpt2", "--model", "invalid choice"),
    ],
}
ALL = [(f"{command}-{i}", case) for command, cases in CASES.items() for i, case in enumerate(cases)]


def test_the_battery_is_large_and_covers_every_entry_point():
    assert len(ALL) >= 120
    assert all(len(cases) >= 5 for cases in CASES.values())


@pytest.mark.parametrize("case", [case for _, case in ALL], ids=[name for name, _ in ALL])
def test_bad_input_is_one_clear_error(case: Case, d: Path, capsys, monkeypatch):
    if case.no_models:
        for module in ("transformers", "gguf", "torch"):
            monkeypatch.setitem(sys.modules, module, None)  # import refused: as if not installed
    if case.cwd:
        monkeypatch.chdir(d)
    for target, value in case.patches.items():
        monkeypatch.setattr(target, value)
    argv = [a.replace("{d}", str(d)) for a in case.args.split()]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (malformed flags)
        code = exc.code
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err
    assert "error:" in err or "usage:" in err, err
    for needle in case.needles:
        assert needle.replace("{d}", str(d)) in err, (needle, err)


def test_study_errors_come_before_any_output(d: Path, capsys):
    out = d / "untouched"
    assert main(["study", "run", str(d / "s_trace.toml"), "--out", str(out)]) == 2
    assert not out.exists()  # nothing was created, let alone run
    capsys.readouterr()


def test_json_output_is_strict_json(d: Path, capsys):
    # one output token: no time per output token (null); every value finite or null, never NaN
    assert main(["estimate", *SMALL.split(), "--output-tokens", "1", "--json"]) == 0
    text = capsys.readouterr().out
    result = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))
    assert result["tpot_s"] is None and result["ttft_s"] > 0
    assert main(["simulate", *SMALL.split(), "--duration", "1", "--rate", "2", "--json"]) == 0
    json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert main(["trace", "stats", str(TRACE), "--json"]) == 0
    json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))


def test_json_text_maps_non_finite_numbers_to_null():
    import numpy as np

    from radsim.files import json_text

    text = json_text({"a": float("nan"), "b": [float("inf"), 1.5], "c": np.float32("-inf"), "d": (2,)})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": None, "d": [2]}


def test_debug_shows_the_traceback(d: Path):
    with pytest.raises(Exception, match="h1000"):
        main(["--debug", "hw", "show", "h1000"])


def _radsim(*args: str, code: str = "") -> subprocess.Popen:
    """The command in a fresh interpreter, started (the runs overlap: each spends a second importing)."""
    prologue = code or "import sys; from radsim.cli.main import main"
    program = f"{prologue}; sys.exit(main({list(args)!r}))"
    return subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def test_installed_command_prints_no_traceback(d: Path):
    """The same errors from a fresh interpreter: one line on stderr, exit 2."""
    runs = [
        _radsim("study", "run", str(d / "s_hw.toml"), "--out", str(d / "o")),
        _radsim("simulate", *SMALL.split(), "--arrival", "replay", "--replay", str(d / "r_nan.csv")),
        _radsim("validate", "--hw", "epyc_2core", "--measurements", str(d / "m_truncated.csv")),
        _radsim(
            "train",
            str(d / "c_ok.toml"),
            "--out",
            str(d / "runs"),
            code="import sys; sys.modules['transformers'] = None; from radsim.cli.main import main",
        ),
    ]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    for run, err in zip(runs, errors, strict=True):
        assert run.returncode == 2, err
        assert "Traceback" not in err and err.startswith("radsim: error: "), err
        assert len(err.strip().splitlines()) == 1, err
    assert "radsim[models]" in errors[-1]


def test_closed_stdout_ends_quietly():
    """`radsim arch list | head -1`: the reader leaves early; no BrokenPipe traceback, status 141."""
    program = "import sys; from radsim.cli.main import main; sys.exit(main(['arch', 'list']))"
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command has printed anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err
