"""Hardware loader: every shipped file loads; each kind of bad field fails naming file and field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from radsim.errors import ConfigError
from radsim.spec.hardware import PEAK_KEYS, Hardware, hw_dir, list_hardware, load_hardware

REQUIRED_DEVICES = {"h100_sxm", "h200_sxm", "a100_sxm_80gb", "l40s", "mi300x"}
TOY = Path(__file__).resolve().parents[1] / "data" / "toy_gpu.toml"


def test_registry_has_the_required_devices_and_a_cpu():
    names = set(list_hardware())
    assert REQUIRED_DEVICES <= names
    assert any(load_hardware(n).kind == "cpu" for n in names)


@pytest.mark.parametrize("name", list_hardware())
def test_every_shipped_file_loads_with_sources(name):
    hw = load_hardware(name)
    assert isinstance(hw, Hardware) and hw.stem == name
    for key, source in hw.sources.items():
        assert len(source) > 10, f"{name}: {key} needs a real source"
    # dense peaks: a wider dtype never beats a narrower one on the same device
    order = [hw.fp32_dense_flops, hw.tf32_dense_flops, hw.bf16_dense_flops, hw.fp8_dense_flops]
    present = [x for x in order if x is not None]
    assert present == sorted(present)
    assert hw.peak_flops("fp32") == hw.fp32_dense_flops


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad_device.toml"
    path.write_text(text)
    return path


def _replace(line_prefix: str, new_line: str | None) -> str:
    lines = TOY.read_text().splitlines()
    out = [(new_line if ln.startswith(line_prefix) else ln) for ln in lines]
    return "\n".join(x for x in out if x is not None) + "\n"


@pytest.mark.parametrize(
    ("prefix", "new", "field", "message"),
    [
        ("name =", None, "name", "non-empty string"),
        ("kind =", 'kind = "tpu"', "kind", "allowed: gpu, cpu"),
        ("vendor =", 'vendor = "acme"', "vendor", "allowed"),
        ("memory_bandwidth_Bps", None, "memory_bandwidth_Bps", "missing required"),
        ("memory_bandwidth_Bps", "memory_bandwidth_Bps = 1e12", "memory_bandwidth_Bps", "inline table"),
        (
            "memory_bandwidth_Bps",
            'memory_bandwidth_Bps = { value = 1e12, source = "" }',
            "memory_bandwidth_Bps.source",
            "non-empty",
        ),
        (
            "memory_bandwidth_Bps",
            'memory_bandwidth_Bps = { value = -1e12, source = "x" }',
            "memory_bandwidth_Bps.value",
            "> 0",
        ),
        (
            "memory_bandwidth_Bps",
            'memory_bandwidth_Bps = { value = "fast", source = "x" }',
            "memory_bandwidth_Bps.value",
            "number",
        ),
        (
            "memory_bandwidth_Bps",
            'memory_bandwidth_Bps = { value = true, source = "x" }',
            "memory_bandwidth_Bps.value",
            "number",
        ),
        (
            "memory_bandwidth_Bps",
            'memory_bandwidth_Bps = { value = nan, source = "x" }',
            "memory_bandwidth_Bps.value",
            "finite",
        ),
        (
            "gemm_efficiency",
            'gemm_efficiency = { value = 1.5, source = "x" }',
            "gemm_efficiency.value",
            "(0, 1]",
        ),
        (
            "compute_units",
            'compute_units = { value = 10.5, source = "x" }',
            "compute_units.value",
            "whole number",
        ),
        ("idle_power_W", 'idle_power_W = { value = 900, source = "x" }', "idle_power_W", "below"),
        (
            "clock_Hz",
            'clock_Hz = { value = 1.0, source = "x" }',
            "fp32_dense_flops",
            "FLOP per unit per clock",
        ),
        ("name =", 'name = "Toy"\nhbm_speed = { value = 1, source = "x" }', "hbm_speed", "unknown key"),
    ],
)
def test_bad_fields_fail_naming_file_and_field(tmp_path, prefix, new, field, message):
    path = _write(tmp_path, _replace(prefix, new))
    with pytest.raises(ConfigError) as info:
        load_hardware(path)
    text = str(info.value)
    assert "bad_device.toml" in text and field in text and message in text


def test_malformed_toml_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="bad_device.toml"):
        load_hardware(_write(tmp_path, "name = [unclosed\n"))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        load_hardware("h1000")
    assert "h100_sxm" in str(info.value) and "unknown hardware 'h1000'" in str(info.value)


def test_missing_dtype_lists_supported(toy_gpu):
    with pytest.raises(ConfigError, match="supported dtypes: fp32, fp16, bf16"):
        toy_gpu.peak_flops("fp8")


def test_every_figure_key_in_shipped_files_is_known():
    # The loader rejects unknown keys; this guards the README's key table against drift.
    readme = (hw_dir() / "README.md").read_text()
    for name in list_hardware():
        raw = tomllib.loads((hw_dir() / f"{name}.toml").read_text())
        for key in raw:
            assert f"`{key}`" in readme or key in PEAK_KEYS.values() or key in ("name", "kind", "vendor")


def test_a_folder_of_user_files_replaces_the_registry(tmp_path, monkeypatch):
    import shutil

    from radsim.spec.hardware import list_hardware

    shutil.copy(TOY, tmp_path / "my_gpu.toml")
    monkeypatch.setenv("RADSIM_HW_DIR", str(tmp_path))
    assert list_hardware() == ["my_gpu"]
    assert load_hardware("my_gpu").stem == "my_gpu"
    monkeypatch.delenv("RADSIM_HW_DIR")
    assert "h100_sxm" in list_hardware() and load_hardware(TOY).stem == "toy_gpu"
