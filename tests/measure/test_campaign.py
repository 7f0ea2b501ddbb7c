"""The GPU campaign: its tiny rehearsal end to end, the budget, the options, a bare machine's imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from radsim.errors import ConfigError
from radsim.measure import campaign
from radsim.measure.campaign import (
    FULL,
    SECTIONS,
    TINY,
    CampaignConfig,
    Context,
    HarnessRun,
    Item,
    Pace,
    SectionResult,
    Sink,
    bisection_levels,
    gemm_plan,
    measure_plan,
    run_campaign,
    run_items,
)
from radsim.measure.harness import Config, read_measurements
from radsim.measure.specs import SPECS, step_routes
from radsim.measure.timing import CpuDevice

ROOT = Path(__file__).resolve().parents[2]
BANNED = ("simpy", "plotly", "scipy", "dask")

# A bare GPU machine: simpy, plotly, scipy and dask cannot be imported and radsim is not installed
# (the editable install's finder is removed), so `radsim` must come from the checkout in the cwd.
BARE = """
import json, runpy, sys, time
BANNED = {banned!r}

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BANNED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU machine)", name=name)
        return None

sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.meta_path.insert(0, Blocked())
import radsim.measure.campaign
imported = sorted(m for m in sys.modules if m.split(".")[0] in BANNED + ("pandas", "pyarrow"))
sys.argv = ["campaign", *{argv!r}]
t0 = time.perf_counter()
try:
    runpy.run_module("radsim.measure.campaign", run_name="__main__")
    rc = 0
except SystemExit as exc:
    rc = exc.code
after = sorted(m for m in sys.modules if m.split(".")[0] in BANNED)
print(json.dumps(dict(rc=rc, wall_s=time.perf_counter() - t0, radsim=radsim.__file__, imported=imported, after=after)))
"""


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, Path]:
    """The rehearsal, run as the GPU machine runs it: from the checkout, with a bare environment."""
    out = tmp_path_factory.mktemp("campaign") / "out"
    script = BARE.format(banned=BANNED, argv=["--dry-run", "--budget-s", "60", "--out", str(out)])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), out


def test_the_dry_run_completes_within_its_budget_from_a_bare_checkout(dry_run):
    report, out = dry_run
    assert report["rc"] == 0
    assert report["wall_s"] < 60
    assert Path(report["radsim"]).resolve().is_relative_to(ROOT)
    assert report["imported"] == []  # importing the campaign needs torch and numpy alone
    assert report["after"] == []  # and the whole run none of simpy, plotly, scipy, dask
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["elapsed_s"] <= manifest["options"]["budget_s"]
    assert [s["name"] for s in manifest["sections"]] == list(SECTIONS)
    assert {s["status"] for s in manifest["sections"]} == {"done"}
    assert all(s["time_s"] >= 0 and s["items_done"] >= 1 for s in manifest["sections"])


def test_the_dry_run_writes_few_small_files(dry_run):
    _, out = dry_run
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        {"manifest.json", "campaign.log", *campaign.SECTION_FILES.values()}
    )  # no temporaries left behind
    assert len(files) <= 8 and all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    env = json.loads((out / "environment.json").read_text())
    assert env["power"]["status"] == "unavailable" and env["power"]["reason"]
    assert [p["point"] for p in env["power"]["points"]] == ["idle", "spin", "stream", "gemm"]
    assert env["launch"]["eager_launch_s"] > 0 and env["launch"]["graph"].startswith("unavailable")
    assert "host" not in env["environment"] and env["environment"]["date"].endswith("+00:00")


def test_the_measurement_table_is_what_calibrate_and_validate_read(dry_run):
    from radsim.measure.validate import error_table, group_configs, split_configs
    from radsim.spec.hardware import load_hardware

    _, out = dry_run
    rows = read_measurements(out / "measurements.csv")
    configs = group_configs(rows)
    assert {r["model"] for r in rows} == {"tiny-seq", "tiny-radial", "scratch-radial"}
    assert "calibrate" in split_configs(configs).values()  # `radsim calibrate --measurements` accepts it
    assert {r["dtype"] for r in rows} == {"fp32"}  # on CPU, as `radsim measure`; bf16 on a GPU
    table = error_table(load_hardware("epyc_2core"), rows)
    assert len(table) == len(configs) and all(np.isfinite(r["time_ape"]) for r in table)


def test_the_sweeps_have_si_columns(dry_run):
    import csv

    _, out = dry_run
    gemm = list(csv.DictReader(open(out / "gemm.csv")))
    assert {"m", "n", "k", "dtype", "time_s", "flops_per_s"} <= set(gemm[0])
    assert {r["dtype"] for r in gemm} == {"bf16", "fp8"}  # CPU torch has _scaled_mm
    for r in gemm:
        assert float(r["flops_per_s"]) == pytest.approx(
            2 * int(r["m"]) * int(r["n"]) * int(r["k"]) / float(r["time_s"])
        )
    attention = list(csv.DictReader(open(out / "attention.csv")))
    assert {r["phase"] for r in attention} == {"prefill", "decode"}
    assert {"batch", "context_tokens", "heads", "kv_heads", "head_dim", "time_s"} <= set(attention[0])
    bandwidth = list(csv.DictReader(open(out / "bandwidth.csv")))
    assert {r["kernel"] for r in bandwidth} == {"copy", "triad"} and float(bandwidth[0]["bandwidth_Bps"]) > 0


def test_a_tiny_budget_skips_later_sections_cleanly(tmp_path):
    t0 = time.perf_counter()
    code = campaign.main(["--dry-run", "--budget-s", "1", "--out", str(tmp_path / "out")])
    wall = time.perf_counter() - t0
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    sections = {s["name"]: s for s in manifest["sections"]}
    assert list(sections) == list(SECTIONS) and manifest["complete"]
    assert sections["environment"]["status"] == "done"
    assert not {s["status"] for s in sections.values()} & {"failed", "pending", "running"}
    cut = [s for s in sections.values() if s["status"] in ("skipped", "partial")]
    assert cut and all(any("budget" in r for r in s["reasons"]) for s in cut)
    assert wall < 6


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(budget_s=-1.0), "--budget-s"),
        (dict(budget_s=0.0), "--budget-s"),
        (dict(budget_s=float("nan")), "--budget-s"),
        (dict(budget_s=float("inf")), "--budget-s"),
        (dict(device="tpu"), "--device"),
        (dict(device="cuda:x"), "--device"),
        (dict(sections=("gemm", "nope")), "--sections"),
        (dict(sections=()), "--sections"),
    ],
)
def test_bad_options_raise_before_any_work(tmp_path, kwargs, option):
    with pytest.raises(ConfigError, match=option):
        CampaignConfig(str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_the_command_line_rejects_bad_options_with_status_2(tmp_path, capsys):
    from radsim.cli.main import main

    out = tmp_path / "out"
    assert main(["campaign", "--out", str(out), "--budget-s", "-5"]) == 2
    assert "--budget-s" in capsys.readouterr().err
    assert campaign.main(["--out", str(out), "--device", "tpu"]) == 2
    assert "allowed: cpu, cuda" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="--device cuda"):
        run_campaign(CampaignConfig(str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_a_campaign_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a campaign"):
        run_campaign(CampaignConfig(str(tmp_path), dry_run=True))


def test_bisection_orders_a_grid_coarse_to_fine():
    assert bisection_levels(1) == [0]
    assert bisection_levels(2) == [0, 0]
    assert bisection_levels(5) == [0, 2, 1, 2, 0]
    assert bisection_levels(9) == [0, 3, 2, 3, 1, 3, 2, 3, 0]


def test_the_full_plans_start_coarse_and_fit_the_gpu():
    gemm = gemm_plan(FULL, ["bf16", "fp8"])
    first = gemm[: 9 * len(FULL.gemm_archs)]  # M 1 and 16384 of every bf16 shape (lm_head: 1 only)
    assert {p.m for p in first} == {1, 16384} and {p.dtype for p in first} == {"bf16"}
    assert {(p.n, p.k) for p in gemm if p.model == "llama3.1-8b"} == {
        (6144, 4096),
        (4096, 4096),
        (28672, 4096),
        (4096, 14336),
        (128256, 4096),
    }
    assert max(p.m for p in gemm if p.layer == "lm_head") == FULL.lm_head_max_m
    configs = measure_plan(FULL, memory_bytes=0.6 * 80e9)  # an H100
    assert len({c.config_id for c in configs}) == len(configs) > 400
    assert [c.config_id for c in configs[:4]] == [
        "smollm2-seq/decode/b1/t128",
        "smollm2-seq/decode/b1/t4096",
        "smollm2-seq/decode/b256/t128",
        "smollm2-seq/decode/b256/t4096",
    ]
    assert all(campaign.config_bytes(c, 2) <= 0.6 * 80e9 for c in configs)
    assert "smollm2-1.7b-seq/decode/b256/t4096" not in {c.config_id for c in configs}
    assert {c.model for c in configs} == {m for plan in FULL.grid for m in plan.models}


def test_sliced_trace_routes_are_the_routes_of_the_smaller_step(tmp_path):
    cfg = CampaignConfig(str(tmp_path), dry_run=True)
    ctx = Context(cfg, TINY, campaign.RATES["cpu"], CpuDevice(), CpuDevice(), tmp_path)
    configs = [
        Config("scratch-radial", ph, b, t) for ph in ("prefill", "decode") for b, t in ((4, 64), (2, 40))
    ]
    run = HarnessRun(ctx, configs)
    for c in configs:
        want = step_routes(SPECS[c.model], c.phase, c.batch, c.tokens)
        got = run.routes(c)
        assert np.array_equal(got.slots, want.slots) and got.kv_policy == want.kv_policy


def test_pace_learns_and_skips_what_would_not_fit():
    now = [0.0]
    pace = Pace(deadline_at=10.0, clock=lambda: now[0])
    assert pace.fits(9.0) and not pace.fits(11.0)
    for _ in range(4):  # the first item warms up and is not learnt; then items take 3x their estimate
        pace.learn(1.0, 3.0)
    assert pace.scale == 3.0 and not pace.fits(4.0) and pace.fits(3.0)
    now[0] = 9.5
    assert not pace.fits(0.5)


def test_failed_items_are_recorded_and_the_size_cap_stops_a_table(tmp_path, monkeypatch):
    cfg = CampaignConfig(str(tmp_path), dry_run=True)
    ctx = Context(cfg, TINY, campaign.RATES["cpu"], CpuDevice(), CpuDevice(), tmp_path)
    written: list[list[dict]] = []

    def boom() -> list[dict]:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(campaign.pace, "MAX_FILE_BYTES", 30)  # where Sink reads it
    items = [
        Item("a", 0.0, lambda: [dict(x="1" * 10)]),
        Item("b", 0.0, boom),
        Item("c", 0.0, lambda: [dict(x="2" * 40)]),
    ]
    items.append(Item("d", 0.0, lambda: [dict(x="3")]))
    res = SectionResult()
    run_items(ctx, items, Pace(time.monotonic() + 60), Sink(written.append), res)
    assert (res.done, res.failed, res.skipped, res.capped) == (1, 1, 2, True)
    assert res.errors == ["b: RuntimeError: out of memory"] and res.status() == "partial"
    assert written[-1] == [dict(x="1" * 10)]


def _fake_pynvml(watts: float = 300.0):
    """The parts of pynvml the campaign reads: a GPU drawing `watts`, with an energy counter."""
    from types import SimpleNamespace

    def unsupported(*args):
        raise RuntimeError("NVMLError_NotSupported")

    return SimpleNamespace(
        NVML_CLOCK_SM=0,
        NVML_CLOCK_MEM=1,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetPowerUsage=lambda h: watts * 1000.0,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: int(time.perf_counter() * watts * 1000.0),
        nvmlDeviceGetName=lambda h: b"Fake H100",
        nvmlSystemGetDriverVersion=lambda: "570.1",
        nvmlDeviceGetClockInfo=lambda h, kind: 1980 if kind == 0 else 2619,
        nvmlDeviceGetMaxClockInfo=lambda h, kind: 1980,
        nvmlDeviceGetApplicationsClock=unsupported,
        nvmlDeviceGetPowerManagementLimit=lambda h: 700000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700000,
        nvmlDeviceGetPowerManagementDefaultLimit=lambda h: 700000,
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=80 * 2**30),
        nvmlDeviceGetTemperature=lambda h, kind: 41,
        nvmlDeviceGetPersistenceMode=lambda h: 1,
        nvmlDeviceGetMigMode=unsupported,
    )


def test_nvml_facts_and_a_power_point_from_the_energy_counter(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(300.0))
    nvml = campaign.Nvml(0)
    facts = nvml.facts()
    assert facts["name"] == "Fake H100" and facts["power_limit_W"] == 700.0 and facts["energy_counter"]
    assert facts["mig_mode"] is None and facts["application_sm_clock_MHz"] is None  # not supported: absent
    ctx = Context(
        CampaignConfig(str(tmp_path), dry_run=True),
        TINY,
        campaign.RATES["cpu"],
        CpuDevice(),
        CpuDevice(),
        tmp_path,
    )
    (row,) = campaign.power_point(ctx, nvml, "idle", lambda: None, 0.1)
    assert row["energy_source"] == "total_energy_counter"
    assert row["power_W"] == pytest.approx(300.0, rel=0.05) and row["sampled_power_W"] == pytest.approx(300.0)
    assert row["power_samples"] >= 3 and row["sm_clock_MHz"] == 1980 and row["temperature_C"] == 41


def test_weights_drawn_on_the_device_have_the_shapes_of_the_default_ones():
    import torch

    from radsim.measure.harness import build_weights

    spec, cpu = SPECS["tiny-radial"], torch.device("cpu")
    a, b = (build_weights(spec, cpu, torch.float32, 64, init_on_device=d) for d in (False, True))
    assert a.nbytes() == b.nbytes() and a.embed.shape == b.embed.shape and len(a.layers) == len(b.layers)
