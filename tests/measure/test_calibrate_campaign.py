"""Back on the CPU: `radsim calibrate --campaign` fits what a campaign's tables imply, `radsim validate` reads it."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest

from radsim.cli.main import main
from radsim.errors import ConfigError
from radsim.measure.campaign import BANDWIDTH_COLUMNS, GEMM_COLUMNS, CampaignConfig, run_campaign
from radsim.measure.campaign.fit import DRAM_CACHE_MULTIPLE, LARGE_M, calibrate_campaign
from radsim.measure.harness import write_csv
from radsim.measure.validate import load_split
from radsim.spec.hardware import hw_dir, load_hardware

FITTED = ("memory_efficiency", "kernel_launch_overhead_s")


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> Path:
    """A CPU rehearsal of the campaign (never written to by the tests: they copy it)."""
    out = tmp_path_factory.mktemp("campaign") / "dry"
    manifest = run_campaign(CampaignConfig(str(out), budget_s=60.0, dry_run=True))
    assert manifest["complete"]
    return out


def _copy(dry: Path, tmp_path: Path, name: str = "campaign") -> Path:
    folder = tmp_path / name
    shutil.copytree(dry, folder)
    return folder


def _rows(path: Path) -> dict[int, dict[str, str]]:
    """CSV rows by line number (the header is line 1)."""
    with open(path, newline="") as f:
        return {i + 2: row for i, row in enumerate(csv.DictReader(f))}


def test_a_dry_run_calibrates_a_cpu_file_from_its_tables(dry, tmp_path, capsys):
    folder = _copy(dry, tmp_path)
    assert main(["calibrate", "--campaign", str(folder), "--hw", "epyc_2core"]) == 0
    assert "memory_efficiency" in capsys.readouterr().out
    base, hw = load_hardware("epyc_2core"), load_hardware(folder / "calibrated.toml")
    record = json.loads((folder / "calibrated-benchmarks.json").read_text())
    fits = record["fits"]
    assert set(fits) == set(FITTED)  # no bf16 peak in epyc_2core, no NVML on a CPU: those are kept
    for key in FITTED:
        value = getattr(hw, key)
        assert math.isfinite(value) and value > 0 and value == pytest.approx(fits[key]["value"], rel=1e-5)
        assert f"campaign {folder}" in hw.sources[key] and fits[key]["file"] in hw.sources[key]
        assert "dry run" in hw.sources[key]
    for key in ("gemm_efficiency", "idle_power_W", "memory_bandwidth_Bps"):
        assert getattr(hw, key) == getattr(base, key) and hw.sources[key] == base.sources[key]

    # the bandwidth is the median of the rows the record names: in a dry run, the largest buffers
    rows = _rows(folder / "bandwidth.csv")
    largest = max(int(r["array_bytes"]) for r in rows.values())
    assert largest < DRAM_CACHE_MULTIPLE * base.last_level_cache_bytes
    used = fits["memory_efficiency"]["lines"]
    assert sorted(used) == sorted(ln for ln, r in rows.items() if int(r["array_bytes"]) == largest)
    median = statistics.median(float(rows[ln]["bandwidth_Bps"]) for ln in used)
    assert hw.memory_efficiency * hw.memory_bandwidth_Bps == pytest.approx(median, rel=1e-5)

    env = json.loads((folder / "environment.json").read_text())
    assert hw.kernel_launch_overhead_s == pytest.approx(env["launch"]["eager_launch_s"], rel=1e-5)
    gemm = _rows(folder / "gemm.csv")
    bf16 = record["facts"]["gemm"]["bf16"]
    top = max(int(r["m"]) for r in gemm.values() if r["dtype"] == "bf16")
    assert sorted(bf16["lines"]) == sorted(
        ln for ln, r in gemm.items() if r["dtype"] == "bf16" and int(r["m"]) == top
    )
    assert bf16["flops_per_s"] == pytest.approx(
        statistics.median(float(gemm[ln]["flops_per_s"]) for ln in bf16["lines"])
    )
    assert record["split"] == "validate" and load_split(folder / "calibrated-benchmarks.json") == "validate"
    assert "Recorded, not fitted" in (folder / "calibrated.toml").read_text()


def test_with_a_bf16_peak_the_gemm_efficiency_is_fitted_at_the_largest_m(dry, tmp_path):
    folder = _copy(dry, tmp_path)
    base = tmp_path / "cpu_bf16.toml"
    base.write_text(
        (hw_dir() / "epyc_2core.toml").read_text()
        + 'bf16_dense_flops = { value = 5e12, source = "test: a made-up bf16 peak" }\n'
    )
    out = tmp_path / "elsewhere" / "cal.toml"
    path, cal = calibrate_campaign(folder, str(base), out)
    assert path == out and out.with_name("cal-benchmarks.json").exists()
    assert not (folder / "calibrated.toml").exists()  # --out, not the campaign folder
    hw = load_hardware(out)
    fact = cal.record["facts"]["gemm"]["bf16"]
    assert hw.gemm_efficiency == pytest.approx(fact["flops_per_s"] / 5e12, rel=1e-5)
    assert "bf16 rows with m = " in hw.sources["gemm_efficiency"]


def _gpu_campaign(dry: Path, tmp_path: Path, device_name: str = "NVIDIA H100 80GB HBM3") -> Path:
    """The dry run dressed as a full H100 campaign: GPU environment, NVML power, DRAM-sized and large-M rows."""
    folder = _copy(dry, tmp_path, "gpu")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["options"].update(dry_run=False, device="cuda")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    env = json.loads((folder / "environment.json").read_text())
    env["environment"].update(
        device="cuda:0", device_name=device_name, driver_version="570.86", cuda_version="12.8"
    )
    env["launch"].update(graph="measured", graph_launch_s=1.5e-6, eager_launch_s=6e-6)
    points = [
        ("idle", 72.0, {}),
        ("spin", 150.0, dict(kernels_per_s=1e5)),
        ("stream", 400.0, dict(bandwidth_Bps=2.9e12)),
        ("gemm", 690.0, {}),
    ]
    env["power"] = dict(
        status="measured",
        reason=None,
        points=[dict(point=p, power_W=w, energy_source="total_energy_counter", **x) for p, w, x in points],
    )
    (folder / "environment.json").write_text(json.dumps(env))
    sizes = (2**20, 2**26, 2**28, 2**30, 2**32)
    bandwidth = [
        dict(kernel=k, array_bytes=b, time_s=1e-3, bandwidth_Bps=bw)
        for b, (k, bw) in zip(sorted(sizes * 2), [("copy", 3e12), ("triad", 3.2e12)] * 5, strict=True)
    ]
    write_csv(bandwidth, folder / "bandwidth.csv", BANDWIDTH_COLUMNS)
    gemm = [
        dict(
            model="llama3.1-8b",
            layer=layer,
            m=m,
            n=n,
            k=4096,
            dtype=d,
            time_s=1e-3,
            flops_per_s=f,
            bandwidth_Bps=b,
        )
        for layer, n, m, d, f, b in [
            ("gate_up", 28672, 1, "bf16", 1e11, 2.5e12),  # 235 MB of weights: streamed from DRAM
            ("o", 4096, 1, "bf16", 1e11, 9e12),  # 34 MB: within the 50 MiB L2, not the floor
            ("o", 4096, 4096, "bf16", 6e14, 1e11),
            ("o", 4096, 8192, "bf16", 7e14, 1e11),
            ("o", 4096, 16384, "bf16", 7.5e14, 1e11),
            ("o", 4096, 4096, "fp8", 1.2e15, 1e11),
        ]
    ]
    write_csv(gemm, folder / "gemm.csv", GEMM_COLUMNS)
    return folder


def test_a_gpu_campaign_maps_to_its_shipped_file_and_keeps_its_kernel_tables(dry, tmp_path):
    folder = _gpu_campaign(dry, tmp_path)
    path, cal = calibrate_campaign(folder)
    assert cal.base.stem == "h100_sxm"
    hw = load_hardware(path)
    assert hw.kind == "gpu" and hw.kernel_tables is not None  # the published tables stay
    assert hw.memory_efficiency == pytest.approx(3.1e12 / 3.35e12, rel=1e-5)  # 2^28 B and up: 3 x 2 rows
    assert len(cal.record["fits"]["memory_efficiency"]["lines"]) == 6
    assert hw.gemm_efficiency == pytest.approx(7e14 / 989.4e12, rel=1e-5)  # m >= LARGE_M, bf16 only
    assert LARGE_M == 4096
    assert (
        hw.kernel_launch_overhead_s == pytest.approx(1.5e-6)
        and "graph" in hw.sources["kernel_launch_overhead_s"]
    )
    assert hw.idle_power_W == 72.0 and "NVML" in hw.sources["idle_power_W"]
    # the three-point power recipe: spin sets the active baseline, stream less spin the energy per byte
    assert hw.active_power_W == 150.0 and "spin" in hw.sources["active_power_W"]
    assert hw.memory_energy_J_per_byte == pytest.approx((400.0 - 150.0) / 2.9e12)
    for key in ("memory_efficiency", "gemm_efficiency", "kernel_launch_overhead_s", "idle_power_W"):
        assert "NVIDIA H100 80GB HBM3, driver 570.86, torch" in hw.sources[key]
    assert hw.memory_capacity_bytes == load_hardware("h100_sxm").memory_capacity_bytes  # every digit kept
    facts = cal.record["facts"]
    assert facts["gemm"]["fp8"]["efficiency"] == pytest.approx(1.2e15 / 1978.9e12)
    small = facts["gemm"]["bf16"]["small_m"]
    assert small["lines"] == [2] and small["of_stream_bandwidth"] == pytest.approx(2.5e12 / 3.1e12)
    assert facts["power"]["stream_J_per_byte"] == pytest.approx((400.0 - 72.0) / 2.9e12)
    text = path.read_text()
    assert "power stream: 400 W" in text and "fp8 GEMM" in text


def test_validate_reproduces_the_report_from_the_campaign_folder(dry, tmp_path, capsys):
    folder = _copy(dry, tmp_path)
    assert main(["calibrate", "--campaign", str(folder), "--hw", "epyc_2core"]) == 0
    assert main(["validate", "--campaign", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "every one held out" in out and "| all | all |" in out
    rows = list(csv.DictReader(open(folder / "validation.csv")))
    assert rows and {r["split"] for r in rows} == {"validate"}
    assert all(math.isfinite(float(r["time_ape"])) for r in rows)
    assert (folder / "predicted_vs_measured.html").exists()


def _break(folder: Path, how: str) -> None:
    if how == "no manifest":
        (folder / "manifest.json").unlink()
    elif how == "no bandwidth":
        (folder / "bandwidth.csv").unlink()
    elif how == "gemm column":
        text = (folder / "gemm.csv").read_text()
        (folder / "gemm.csv").write_text(text.replace("flops_per_s", "flops_s", 1))
    elif how == "gemm value":
        lines = (folder / "gemm.csv").read_text().splitlines()
        cells = lines[2].split(",")  # CSV line 3
        cells[2] = "many"  # column m
        lines[2] = ",".join(cells)
        (folder / "gemm.csv").write_text("\n".join(lines) + "\n")
    elif how == "environment field":
        env = json.loads((folder / "environment.json").read_text())
        del env["launch"]["eager_launch_s"]
        (folder / "environment.json").write_text(json.dumps(env))
    elif how == "not json":
        (folder / "environment.json").write_text("{")


@pytest.mark.parametrize(
    "how, hw, match",
    [
        ("no manifest", "epyc_2core", r"manifest\.json: missing"),
        ("no bandwidth", "epyc_2core", r"bandwidth\.csv: missing"),
        ("gemm column", "epyc_2core", r"gemm\.csv: missing column\(s\) flops_per_s"),
        ("gemm value", "epyc_2core", r"gemm\.csv:3: column 'm' is 'many'"),
        ("environment field", "epyc_2core", r"environment\.json: field 'launch\.eager_launch_s'"),
        ("not json", "epyc_2core", r"environment\.json: not JSON"),
        ("", "h100_sxm", r"environment\.json: environment\.device is 'cpu'.*GPU"),
        ("", None, r"environment\.json: environment\.device is 'cpu', not a GPU; give --hw"),
        ("", "no_such_gpu", r"--hw 'no_such_gpu': unknown hardware; allowed: .*h100_sxm"),
    ],
)
def test_bad_folders_are_refused_naming_the_file_and_nothing_is_written(dry, tmp_path, how, hw, match):
    folder = _copy(dry, tmp_path)
    _break(folder, how)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ConfigError, match=match):
        calibrate_campaign(folder, hw)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_gpu_that_maps_to_no_file_and_a_gpu_dry_run_are_refused(dry, tmp_path):
    folder = _gpu_campaign(dry, tmp_path, device_name="NVIDIA H100 PCIe")
    with pytest.raises(ConfigError, match=r"device_name 'NVIDIA H100 PCIe' maps to no shipped hardware file"):
        calibrate_campaign(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["options"]["dry_run"] = True
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"manifest\.json: options\.dry_run is true"):
        calibrate_campaign(folder, "h100_sxm")
    assert not (folder / "calibrated.toml").exists()


def test_the_command_line_refuses_options_that_would_run_benchmarks(dry, tmp_path, capsys):
    folder = _copy(dry, tmp_path)
    argv = [
        "calibrate",
        "--campaign",
        str(folder),
        "--hw",
        "epyc_2core",
        "--measurements",
        "x.csv",
        "--quick",
    ]
    assert main(argv) == 2
    assert "--measurements, --quick: not allowed with --campaign" in capsys.readouterr().err
    assert main(["validate", "--campaign", str(folder)]) == 2
    assert "calibrated.toml: missing; run `radsim calibrate --campaign" in capsys.readouterr().err
    assert not (folder / "calibrated.toml").exists() and not (folder / "validation.csv").exists()
