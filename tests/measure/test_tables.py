"""Importing published kernel tables: units converted, gaps filled, provenance and licence kept."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from radsim.cli.main import main
from radsim.errors import ConfigError
from radsim.measure.tables import import_tables
from radsim.spec.kernel_tables import load_kernel_tables


def _fixture(root):
    """A tiny folder laid out as aiconfigurator-core's systems/data, for one device."""
    dev = root / "h100_sxm"
    gemm_dir = dev / "gemm" / "vllm" / "0.9.0"
    gemm_dir.mkdir(parents=True)
    rows = []
    for dtype, kernel, scale in (
        ("bfloat16", "torch.nn.functional.linear", 1.0),
        ("fp8", "CutlassFP8ScaledMMLinearKernel", 0.6),
    ):
        for m in (1, 16, 128):
            for n in (64, 128):
                for k in (64, 128):
                    if (dtype, m, n, k) == ("bfloat16", 128, 128, 128):
                        continue  # a point the source lacks: filled from the smaller k
                    rows.append(
                        (
                            "VLLM",
                            "0.9.0",
                            "NVIDIA H100 80GB HBM3",
                            "gemm",
                            kernel,
                            dtype,
                            m,
                            n,
                            k,
                            scale * (0.01 + m * n * k * 1e-9),
                        )
                    )
    columns = [
        "framework",
        "version",
        "device",
        "op_name",
        "kernel_source",
        "gemm_dtype",
        "m",
        "n",
        "k",
        "latency",
    ]
    pd.DataFrame(rows, columns=columns).to_parquet(gemm_dir / "gemm_perf.parquet")
    comm = dev / "comm" / "nccl" / "2.27.3"
    comm.mkdir(parents=True)
    nccl = [
        ("TRTLLM", "2.27.3", "H100", "all_reduce", "NCCL", "half", g, s, 0.005 * g + s * 1e-9)
        for g in (2, 4)
        for s in (128, 4096, 1 << 20)
    ]
    cols = [
        "framework",
        "version",
        "device",
        "op_name",
        "kernel_source",
        "nccl_dtype",
        "num_gpus",
        "message_size",
        "latency",
    ]
    pd.DataFrame(nccl, columns=cols).to_parquet(comm / "nccl_perf.parquet")
    custom = dev / "comm" / "vllm" / "0.9.0"
    custom.mkdir(parents=True)
    rows = [
        (
            "vLLM",
            "0.9.0",
            "H100",
            "all_reduce",
            "vLLM_custom_graph",
            "bfloat16",
            2,
            s,
            0.004 + s * 1e-9,
            "vllm_graph",
        )
        for s in (128, 4096)
    ]
    cols = [
        "framework",
        "version",
        "device",
        "op_name",
        "kernel_source",
        "allreduce_dtype",
        "num_gpus",
        "message_size",
        "latency",
        "backend",
    ]
    pd.DataFrame(rows, columns=cols).to_parquet(custom / "custom_allreduce_perf.parquet")
    return root


def test_import_converts_units_fills_gaps_and_records_provenance(tmp_path):
    data = _fixture(tmp_path / "data")
    path = import_tables("h100_sxm", "vllm", data, tmp_path / "out", source_version="0.12.0")
    tables = load_kernel_tables(path)
    grid = tables.gemm["bf16"]
    assert grid.latency_s[0, 0, 0] == pytest.approx((0.01 + 64 * 64 * 1e-9) * 1e-3)  # ms -> s
    assert grid.latency_s[2, 1, 1] == pytest.approx(grid.latency_s[2, 1, 0] * 2)  # filled along k
    assert set(tables.gemm) == {"bf16", "fp8"}
    curve = tables.allreduce["NCCL"][2]
    np.testing.assert_allclose(curve.message_bytes, [256.0, 8192.0, 2.0 * (1 << 20)])  # elements -> bytes
    assert tables.meta["framework_version"] == "0.9.0" and tables.meta["licence"] == "Apache-2.0"
    assert tables.meta["gemm_kernels"]["fp8"] == "CutlassFP8ScaledMMLinearKernel"
    notice = (tmp_path / "out" / "NOTICE.md").read_text()
    assert "Apache License, Version 2.0" in notice and "vllm-0.9.0.npz" in notice
    assert json.loads(json.dumps(tables.meta))["source_version"] == "0.12.0"


def test_import_names_what_is_missing(tmp_path):
    data = _fixture(tmp_path / "data")
    with pytest.raises(ConfigError, match="allowed: h100_sxm"):
        import_tables("b9000", "vllm", data, tmp_path / "out")
    with pytest.raises(ConfigError, match="no GEMM tables of sglang"):
        import_tables("h100_sxm", "sglang", data, tmp_path / "out")
    with pytest.raises(ConfigError, match="allowed versions: 0.9.0"):
        import_tables("h100_sxm", "vllm", data, tmp_path / "out", version="0.1")


def test_cli_imports_shows_and_reports_the_error(tmp_path, capsys):
    data = _fixture(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["tables", "import", "--device", "h100_sxm", "--from", str(data), "--out", str(out)]) == 0
    assert main(["tables", "show", str(out / "vllm-0.9.0.npz")]) == 0
    assert "gemm bf16: m 3 values" in capsys.readouterr().out
    assert main(["tables", "error", str(out / "vllm-0.9.0.npz"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["op"] for r in rows} == {"gemm", "all_reduce"}


def test_error_plot_holds_every_held_out_series(tmp_path, capsys):
    from radsim.measure.tables import error_figure, held_out_errors
    from radsim.spec.kernel_tables import load_kernel_tables

    data = _fixture(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["tables", "import", "--device", "h100_sxm", "--from", str(data), "--out", str(out)]) == 0
    samples: dict = {}
    rows = held_out_errors(load_kernel_tables(out / "vllm-0.9.0.npz"), samples)
    assert {op for op, _ in samples} == {r["op"] for r in rows}
    names = [t.name for t in error_figure(samples, "t").data]
    assert any(n.startswith("gemm bf16 (median") for n in names) and "y = x" in names
    plot = tmp_path / "plot.html"
    assert main(["tables", "error", str(out / "vllm-0.9.0.npz"), "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 1000
    assert main(["tables", "error", str(out / "vllm-0.9.0.npz"), "--plot", str(tmp_path / "p.txt")]) == 2
    assert "--plot" in capsys.readouterr().err
